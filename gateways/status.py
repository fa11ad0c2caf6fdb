"""What every consumer is doing: position, lag, last error; NATS intake and delivery backlogs."""

from __future__ import annotations

import asyncpg

from gateways.bootstrap import Engine
from gateways.consumers.leases import lease_holders
from gateways.nats.intake import DURABLE, stream_name
from gateways.workers import partition_names


async def engine_status(engine: Engine) -> dict[str, object]:
    """The log head, each consumer (from `tracking` and `consumer_errors`, plus the
    projections this process holds stopped), NATS backlog, deliveries.

    A consumer is `stopped` while it has an unresolved error (it failed at an event, or
    crashed, in any process) or this process holds it failed: it will not catch up by
    itself, unlike one that is only behind. Lag counts events after the consumer's
    checkpoint; consumers move it past events they do not read (lazily, within about a
    second), so an idle consumer shows none.

    `leases` says which worker process runs which leased consumer (see `worker_leases`);
    each consumer that is leased names its process in `heldBy` (None: no process runs it).
    """
    head = await engine.store.max_position()
    rows = await engine.pool.fetch(
        """
        WITH names AS (
            SELECT consumer FROM tracking
            UNION SELECT consumer FROM consumer_errors WHERE resolved_at IS NULL
        )
        SELECT n.consumer, coalesce(t.position, 0) AS position, t.updated_at,
               extract(epoch FROM (SELECT max(recorded_at) FROM events)
                                 - coalesce((SELECT recorded_at FROM events
                                              WHERE position = t.position), 'epoch'))
                   AS lag_seconds,
               (SELECT e.error || ' (at position ' || e.position || ', '
                               || coalesce(e.event_type, '?') || ')'
                  FROM consumer_errors e
                 WHERE e.consumer = n.consumer AND e.resolved_at IS NULL
                 ORDER BY e.position LIMIT 1) AS error
          FROM names n LEFT JOIN tracking t ON t.consumer = n.consumer
         ORDER BY n.consumer
        """
    )
    held = engine.projector.stopped()
    consumers: list[dict[str, object]] = []
    for row in rows:
        name = row["consumer"]
        error = row["error"] or held.pop(name, None)
        held.pop(name, None)
        consumers.append(_consumer(name, row["position"], head, row, error))
    for name, error in held.items():
        consumers.append(_consumer(name, 0, head, None, error))
    consumers.sort(key=lambda c: str(c["name"]))
    leases = await worker_leases(engine)
    holders = leases["partitions"]
    assert isinstance(holders, dict)
    for consumer in consumers:
        consumer["heldBy"] = holders.get(consumer["name"])
    return {
        "head": head,
        "consumers": consumers,
        "stopped": {str(c["name"]): c["lastError"] for c in consumers if c["stopped"]},
        "natsIntake": await intake_backlog(engine),
        "deliveries": await delivery_backlog(engine),
        "leases": leases,
    }


async def worker_leases(engine: Engine) -> dict[str, object]:
    """Which worker process runs which leased consumer (`gateways.consumers.leases`).

    `workers`: each live worker process of this schema (`member`: `<pid>.<random>@<host>`
    of the process, with its lease session's `backendPid`, `client` address and `since`)
    and the partitions it holds; `partitions`: every partition by name, with the member
    holding it or None; `free`: the partitions nobody runs now (for a moment while they
    move between processes; for longer, no worker runs, or none can run it: a view
    waiting for its rebuild).
    """
    async with engine.pool.acquire() as conn:
        members, holders = await lease_holders(
            conn, engine.settings.database_schema, partition_names(engine)
        )
    return {
        "workers": [
            {
                "member": member.id,
                "backendPid": member.backend_pid,
                "client": member.client,
                "since": member.since.isoformat() if member.since is not None else None,
                "partitions": list(member.partitions),
            }
            for member in members
        ],
        "partitions": dict(sorted(holders.items())),
        "free": sorted(name for name, holder in holders.items() if holder is None),
    }


def _consumer(
    name: str, position: int, head: int, row: asyncpg.Record | None, error: str | None
) -> dict[str, object]:
    lag_seconds = float(row["lag_seconds"] or 0) if row is not None else 0.0
    updated_at = row["updated_at"] if row is not None else None
    return {
        "name": name,
        "position": position,
        "lagEvents": max(head - position, 0),
        "lagSeconds": round(max(lag_seconds, 0.0), 3) if head > position else 0.0,
        "stopped": error is not None,
        "lastError": error,
        "updatedAt": updated_at.isoformat() if updated_at is not None else None,
    }


async def stopped_consumers(engine: Engine) -> dict[str, str]:
    """Consumers that will not catch up by themselves, with why (see `engine_status`)."""
    stopped = engine.projector.stopped()
    rows = await engine.pool.fetch(
        """
        SELECT DISTINCT ON (consumer) consumer,
               error || ' (at position ' || position || ', '
                     || coalesce(event_type, '?') || ')' AS error
          FROM consumer_errors WHERE resolved_at IS NULL
         ORDER BY consumer, position
        """
    )
    for row in rows:
        stopped.setdefault(row["consumer"], row["error"])
    return dict(sorted(stopped.items()))


async def delivery_backlog(engine: Engine) -> dict[str, object] | None:
    """Outbound webhooks and emails by state (from the `deliveries` view), and how overdue
    the oldest pending one is; None when the view is not there."""
    try:
        rows = await engine.pool.fetch(
            """
            SELECT state, count(*) AS n,
                   extract(epoch FROM now() - min(coalesce(next_attempt_at, updated_at)))
                       AS overdue
              FROM deliveries GROUP BY state
            """
        )
    except asyncpg.UndefinedTableError:
        return None
    counts = {row["state"]: int(row["n"]) for row in rows}
    overdue = max(
        (float(row["overdue"] or 0) for row in rows if row["state"] == "pending"), default=0.0
    )
    return {
        "pending": counts.get("pending", 0),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0),
        "disabled": counts.get("disabled", 0),
        "oldestPendingSeconds": round(max(overdue, 0.0), 3),
    }


async def intake_backlog(engine: Engine) -> dict[str, int] | None:
    """The intake consumer's backlog in JetStream, or None before the engine ever ran."""
    try:
        info = await engine.nats.jetstream().consumer_info(
            stream_name(engine.settings.nats_prefix), DURABLE
        )
    except Exception:
        return None
    return {
        "pending": int(info.num_pending or 0),
        "ackPending": int(info.num_ack_pending or 0),
        "redelivered": int(info.num_redelivered or 0),
    }


async def refresh_metrics(engine: Engine) -> None:
    """Set the metrics read at scrape time from the status above, and the lead counts from
    the log (the leads view), so every process's intake (the CLI's too) is counted."""
    report = await engine_status(engine)
    metrics = engine.metrics
    head = report["head"]
    assert isinstance(head, int)
    metrics.head.set(head)
    consumers = report["consumers"]
    assert isinstance(consumers, list)
    for consumer in consumers:
        name = consumer["name"]
        metrics.lag_events.labels(name).set(consumer["lagEvents"])
        metrics.lag_seconds.labels(name).set(consumer["lagSeconds"])
        metrics.consumer_errors.labels(name).set(1 if consumer["lastError"] else 0)
        metrics.consumer_stopped.labels(name).set(1 if consumer["stopped"] else 0)
    backlog = report["natsIntake"]
    if isinstance(backlog, dict):
        metrics.intake_pending.set(backlog["pending"])
    await _count_leads(engine)


async def _count_leads(engine: Engine) -> None:
    try:
        # Summed from the dashboard's daily counts (a row per workspace, day and source),
        # not counted over every lead at every scrape.
        rows = await engine.pool.fetch(
            """
            SELECT source, sum(leads) AS received, sum(duplicates) AS dups
              FROM dash_leads_daily GROUP BY source
            """
        )
    except asyncpg.UndefinedTableError:
        return
    engine.metrics.leads.set(
        {row["source"]: int(row["received"]) for row in rows},
        {row["source"]: int(row["dups"]) for row in rows},
    )
