"""What every consumer is doing: position, lag, last error; NATS intake and delivery backlogs."""

from __future__ import annotations

import asyncpg

from gateways.bootstrap import Engine
from gateways.nats.intake import DURABLE, stream_name


async def engine_status(engine: Engine) -> dict[str, object]:
    """The log head, each consumer (from `tracking` and `consumer_errors`), NATS backlog."""
    head = await engine.store.max_position()
    rows = await engine.pool.fetch(
        """
        SELECT t.consumer, t.position, t.updated_at,
               extract(epoch FROM (SELECT max(recorded_at) FROM events)
                                 - coalesce((SELECT recorded_at FROM events
                                              WHERE position = t.position), 'epoch'))
                   AS lag_seconds,
               (SELECT e.error || ' (at position ' || e.position || ', '
                               || coalesce(e.event_type, '?') || ')'
                  FROM consumer_errors e
                 WHERE e.consumer = t.consumer AND e.resolved_at IS NULL
                 ORDER BY e.position LIMIT 1) AS error
          FROM tracking t ORDER BY t.consumer
        """
    )
    consumers = [
        {
            "name": row["consumer"],
            "position": row["position"],
            "lagEvents": max(head - row["position"], 0),
            "lagSeconds": round(max(float(row["lag_seconds"] or 0), 0.0), 3)
            if head > row["position"]
            else 0.0,
            "lastError": row["error"],
            "updatedAt": row["updated_at"].isoformat(),
        }
        for row in rows
    ]
    return {
        "head": head,
        "consumers": consumers,
        "natsIntake": await intake_backlog(engine),
        "deliveries": await delivery_backlog(engine),
    }


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
    """Set the metrics read at scrape time from the status above."""
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
    backlog = report["natsIntake"]
    if isinstance(backlog, dict):
        metrics.intake_pending.set(backlog["pending"])
