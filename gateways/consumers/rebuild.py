"""Blue/green rebuilds of a projection (decision 8 in docs/architecture.md): fill the next
version's tables from position 0 beside the live ones, then swap them in atomically.

The live tables keep serving and keep being fed by their runner (in whichever process runs
it) for the whole build. Readers query the view named after each logical table (`leads`),
which the swap re-points; a process's own `Projector.tables()` follows at once in the
process that rebuilt, and at the next batch elsewhere.

Steps for a projection whose live tables are generation N (`leads_vN`):

1. Build generation N+1 (`leads_v<N+1>`, checkpoint `projection:leads:v<N+1>`) from position 0
   up to the head, then catch up the tail a few times while events keep arriving.
2. In one transaction: take the registry lock, the live consumer's lock (so no live batch
   interleaves) and the build's; apply the last few events to the new tables; optionally
   compare them with the live ones at the same position (`verify`); move the live
   checkpoint to where the new tables are; re-point the views; update
   `projection_versions`; forget the build's checkpoint.
3. Keep generation N (the previous live copy) for one more rebuild, as a fallback and for
   readers that still name it; drop anything older.

Generations vs versions: `projection_versions.live_version` stays the *code* version of the
projection that built the live tables (what `Projector` compares with to decide a rebuild is
needed); the generation is only the number in the table names, and goes up by one with each
rebuild, whatever the code version.

An interrupted rebuild (Ctrl-C, crash) leaves the N+1 tables and their checkpoint, each
batch committed with its rows: running it again resumes from there; `restart=True` drops
them and starts from 0. Two rebuilds of the same projection never run at once (a session
advisory lock, released when the process dies).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from gateways.consumers.consumer_state import ConnectionDb, consumer_lock_key, live_consumer
from gateways.consumers.projector import Projector
from gateways.postgres.log_store import Record
from projections.base import Projection, Tables

log = structlog.get_logger(__name__)

# Catch up outside the swap transaction until the tail is at most this long (or after a few
# rounds): the swap holds the live lock while it applies the rest.
TAIL = 500
CATCH_UP_ROUNDS = 5
SHOWN_KEYS = 10
_GENERATION = re.compile(r"_v(\d+)$")

Progress = Callable[[int, int], None]
"""Called with (position reached, head the build is going to) as the build advances."""


class RebuildError(Exception):
    """A rebuild that cannot start or finish (the message says why and what to do)."""


DiffKind = Literal["missing", "extra", "changed"]
"""How a row differs: only in the copy rebuilt from the log (`missing` from the live one), only
in the live copy (`extra`), or in both with other values (`changed`)."""


@dataclass(frozen=True)
class RowDiff:
    """One differing row, as an example: its key, how it differs, and the values each side has."""

    key: str
    """The primary key as a JSON array (the whole row for a table without one)."""
    kind: DiffKind
    columns: list[str] = field(default_factory=list)
    """The columns whose values differ (a `changed` row only), in table order."""
    live: dict[str, Any] | None = None
    """The live side: the whole row when `extra`, the differing columns when `changed`."""
    rebuilt: dict[str, Any] | None = None
    """The rebuilt side: the whole row when `missing`, the differing columns when `changed`."""

    def json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "columns": self.columns,
            "live": self.live,
            "rebuilt": self.rebuilt,
        }


@dataclass(frozen=True)
class TableDiff:
    """One logical table, live vs rebuilt, compared at the same log position."""

    logical: str
    live_table: str
    rebuilt_table: str
    live_rows: int
    rebuilt_rows: int
    differing: int
    """Rows whose key is in one table only, or whose values differ."""
    first_keys: list[str] = field(default_factory=list)
    """The first differing primary keys (JSON arrays), in key order."""
    missing: int = 0
    """Rows only in the rebuilt copy: the live one lacks them."""
    extra: int = 0
    """Rows only in the live copy: the log does not yield them."""
    changed: int = 0
    """Rows in both with other values."""
    examples: list[RowDiff] = field(default_factory=list)
    """The first differing rows (those of `first_keys`), with what differs."""

    @property
    def rows(self) -> int:
        """Rows compared: every key found in either copy."""
        return self.live_rows + self.missing

    def json(self) -> dict[str, Any]:
        return {
            "table": self.logical,
            "liveTable": self.live_table,
            "rebuiltTable": self.rebuilt_table,
            "liveRows": self.live_rows,
            "rebuiltRows": self.rebuilt_rows,
            "differing": self.differing,
            "firstKeys": self.first_keys,
            "missing": self.missing,
            "extra": self.extra,
            "changed": self.changed,
            "examples": [e.json() for e in self.examples],
        }


@dataclass
class RebuildResult:
    name: str
    old_tables: Tables
    new_tables: Tables
    position: int
    """The log position the new live tables reflect at the swap."""
    resumed_from: int
    events: int
    """Log positions the build went through in this run (filtered or not)."""
    seconds: float
    verified: list[TableDiff] | None = None
    verify_note: str | None = None
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return sum(d.differing for d in self.verified or [])

    def json(self) -> dict[str, Any]:
        return {
            "projection": self.name,
            "oldTables": dict(self.old_tables),
            "newTables": dict(self.new_tables),
            "position": self.position,
            "resumedFrom": self.resumed_from,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "verify": None
            if self.verified is None and self.verify_note is None
            else {
                "differences": self.differences,
                "tables": [d.json() for d in self.verified or []],
                "note": self.verify_note,
            },
            "kept": self.kept,
            "dropped": self.dropped,
        }


def generation_of(tables: Tables) -> int:
    """The number in the concrete table names (`leads_v3` → 3); 1 when there is none."""
    found = [int(m.group(1)) for t in tables.values() if (m := _GENERATION.search(t))]
    return max(found, default=1)


def build_consumer(name: str, generation: int) -> str:
    return f"{live_consumer(name)}:v{generation}"


async def _live(conn: PoolConnectionProxy | asyncpg.Connection, name: str) -> tuple[int, Tables]:
    row = await conn.fetchrow(
        "SELECT live_version, live_tables FROM projection_versions WHERE name = $1", name
    )
    if row is None:
        raise RebuildError(f"{name} is not registered yet (start leadlog once first)")
    return int(row["live_version"]), Tables(json.loads(row["live_tables"]))


async def rebuild(
    projector: Projector,
    projection: Projection,
    *,
    verify: bool = False,
    restart: bool = False,
    on_progress: Progress | None = None,
) -> RebuildResult:
    """Rebuild `projection` blue/green and swap it in; see the module's docstring."""
    name = projection.name
    await projector.register()
    pool = projector.pool
    started = time.monotonic()
    async with pool.acquire() as guard:
        key = f"leadlog.rebuild.{projector.log.schema}.{name}"
        if not await guard.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            raise RebuildError(f"a rebuild of {name} is already running")
        try:
            _, old = await _live(guard, name)
            generation = generation_of(old) + 1
            new = Tables.versioned(projection.table_names, generation)
            consumer = build_consumer(name, generation)
            if restart:
                await _discard_build(guard, new, consumer)
            resumed_from = int(
                await guard.fetchval("SELECT position FROM tracking WHERE consumer = $1", consumer)
                or 0
            )
            log.info(
                "rebuild started",
                projection=name,
                live=dict(old),
                new=dict(new),
                resumed_from=resumed_from,
            )
            await analyze_log_if_stale(guard)
            reached = resumed_from
            for _ in range(CATCH_UP_ROUNDS):
                head = await projector.log.max_position()
                if reached > 0 and head - reached <= TAIL:
                    break

                def progress(position: int, head: int = head) -> None:
                    if on_progress is not None:
                        on_progress(position, head)

                if on_progress is not None:
                    on_progress(reached, head)
                reached = await projector.build(
                    projection, new, consumer, until=head, on_progress=progress
                )
                progress(reached)
            # A table filled in one go has no statistics until autovacuum comes round, and
            # without them the planner guesses (a search over a million leads by a full
            # scan): the new tables are analysed before they go live.
            for table in new.values():
                await guard.execute(f"ANALYZE {table}")
            result = RebuildResult(
                name=name,
                old_tables=old,
                new_tables=new,
                position=reached,
                resumed_from=resumed_from,
                events=0,
                seconds=0.0,
            )
            await _swap(projector, projection, old, new, consumer, verify, result)
            projector.adopt(name, new, projection.version)
            result.kept, result.dropped = await _drop_older(guard, old)
        finally:
            await guard.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
    result.events = result.position - resumed_from
    result.seconds = time.monotonic() - started
    log.info(
        "rebuild swapped in",
        projection=name,
        new=dict(new),
        position=result.position,
        differences=result.differences if verify else None,
        seconds=round(result.seconds, 3),
    )
    return result


async def analyze_log_if_stale(conn: PoolConnectionProxy | asyncpg.Connection) -> bool:
    """`ANALYZE events` when the log has no statistics or a fifth of it came since; True if
    it ran. A build reads the log in batches "after position P, of these event types, in
    position order": without statistics (a log loaded in bulk, autovacuum off or not round
    yet) the planner took a batch of 2,000 to be all there was, and sorted every matching
    event for each one (2 s a batch at a million events, against milliseconds in position
    order)."""
    stale = await conn.fetchval(
        """
        SELECT c.reltuples < 0 OR s.n_mod_since_analyze > greatest(c.reltuples, 1000) / 5
          FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE c.oid = 'events'::regclass
        """
    )
    if stale:
        await conn.execute("ANALYZE events")
    return bool(stale)


async def _discard_build(
    conn: PoolConnectionProxy | asyncpg.Connection, tables: Tables, consumer: str
) -> None:
    async with conn.transaction():
        for concrete in tables.values():
            await conn.execute(f"DROP TABLE IF EXISTS {concrete} CASCADE")
        await conn.execute("DELETE FROM tracking WHERE consumer = $1", consumer)
        await conn.execute("DELETE FROM consumer_errors WHERE consumer = $1", consumer)


async def apply_range(
    projector: Projector,
    conn: PoolConnectionProxy,
    projection: Projection,
    tables: Tables,
    after: int,
    upto: int,
    *,
    transaction_per_batch: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Apply the events in (after, upto] to `tables` on `conn`; returns how many it applied.

    By default inside the caller's transaction; with `transaction_per_batch`, each batch in
    a transaction of its own (a long replay into tables nobody else writes). The next batch
    is read while one is applied. `on_progress` is called with each position reached.
    """
    types = projection.event_types
    if types is not None and not types:
        return 0
    wanted = sorted(types) if types is not None else None
    db = ConnectionDb(conn)
    size = projector.batch_size

    def fetch(start: int) -> asyncio.Task[list[Record]]:
        return asyncio.create_task(projector.log.read(start, size, stop=upto, event_types=wanted))

    applied = 0
    pending = fetch(after) if after < upto else None
    try:
        while pending is not None:
            records = await pending
            pending = None
            if not records:
                break
            after = records[-1].position
            if len(records) >= size and after < upto:
                pending = fetch(after)
            events = [projector.store.logged(r) for r in records]
            if transaction_per_batch:
                async with conn.transaction():
                    await projection.apply(db, tables, events)
            else:
                await projection.apply(db, tables, events)
            applied += len(events)
            if on_progress is not None:
                on_progress(after)
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
    return applied


async def _set_checkpoint(conn: PoolConnectionProxy, consumer: str, position: int) -> None:
    await conn.execute(
        """
        INSERT INTO tracking (consumer, position) VALUES ($1, $2)
        ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
        """,
        consumer,
        position,
    )


async def _swap(
    projector: Projector,
    projection: Projection,
    old: Tables,
    new: Tables,
    consumer: str,
    verify: bool,
    result: RebuildResult,
) -> None:
    name = projection.name
    schema = projector.log.schema
    live = live_consumer(name)
    async with projector.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", projector.registry_key)
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", consumer_lock_key(schema, live)
        )
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", consumer_lock_key(schema, consumer)
        )
        live_version, current = await _live(conn, name)
        if current != old:
            raise RebuildError(f"{name}'s live tables changed during the rebuild ({current})")
        row = await conn.fetchrow(
            """
            SELECT (SELECT position FROM tracking WHERE consumer = $1),
                   (SELECT position FROM tracking WHERE consumer = $2),
                   (SELECT coalesce(max(position), 0) FROM events)
            """,
            consumer,
            live,
        )
        assert row is not None
        built, live_at, head = int(row[0] or 0), int(row[1] or 0), int(row[2])
        if verify:
            if live_version != projection.version:
                result.verify_note = (
                    f"not compared: the live tables were built by version {live_version} of "
                    f"{name}, this is version {projection.version}"
                )
            else:
                # Bring both copies to the same position, as their runners would.
                if built < live_at:
                    await apply_range(projector, conn, projection, new, built, live_at)
                    built = live_at
                elif live_at < built:
                    await apply_range(projector, conn, projection, old, live_at, built)
                    live_at = built
                result.verified = [
                    await compare_tables(conn, logical, old[logical], new[logical])
                    for logical in new
                ]
        await apply_range(projector, conn, projection, new, built, head)
        await _set_checkpoint(conn, live, head)
        await conn.execute(
            """
            UPDATE consumer_errors SET resolved_at = now(), resolution = 'retried'
             WHERE consumer = $1 AND resolved_at IS NULL AND position <= $2
            """,
            live,
            head,
        )
        for logical, concrete in new.items():
            await _point_view(conn, logical, concrete)
        await conn.execute(
            """
            UPDATE projection_versions
               SET live_version = $2, live_tables = $3::jsonb, updated_at = now()
             WHERE name = $1
            """,
            name,
            projection.version,
            json.dumps(dict(new)),
        )
        await conn.execute("DELETE FROM tracking WHERE consumer = $1", consumer)
        result.position = head


async def _point_view(conn: PoolConnectionProxy, logical: str, concrete: str) -> None:
    """Re-point view `logical` at `concrete`, keeping the view (and its grants) when the
    columns allow; a new version with other columns gets a new view, same transaction."""
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE OR REPLACE VIEW {logical} AS SELECT * FROM {concrete}")
    except asyncpg.PostgresError:
        await conn.execute(f"DROP VIEW IF EXISTS {logical}")
        await conn.execute(f"CREATE VIEW {logical} AS SELECT * FROM {concrete}")


async def _primary_key(conn: PoolConnectionProxy, table: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT a.attname
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
         WHERE i.indrelid = $1::regclass AND i.indisprimary
         ORDER BY array_position(i.indkey::int2[], a.attnum)
        """,
        table,
    )
    return [str(r[0]) for r in rows]


async def _columns(conn: PoolConnectionProxy, table: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT attname FROM pg_attribute
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
         ORDER BY attnum
        """,
        table,
    )
    return [str(r[0]) for r in rows]


def _row(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    row: dict[str, Any] = json.loads(text)
    return row


def _example(
    key: str, live: dict[str, Any] | None, rebuilt: dict[str, Any] | None, order: list[str]
) -> RowDiff:
    if live is None:
        return RowDiff(key=key, kind="missing", rebuilt=rebuilt)
    if rebuilt is None:
        return RowDiff(key=key, kind="extra", live=live)
    names = order + sorted((live.keys() | rebuilt.keys()) - set(order))
    columns = [c for c in names if live.get(c) != rebuilt.get(c)]
    return RowDiff(
        key=key,
        kind="changed",
        columns=columns,
        live={c: live.get(c) for c in columns},
        rebuilt={c: rebuilt.get(c) for c in columns},
    )


async def compare_tables(
    conn: PoolConnectionProxy, logical: str, live: str, rebuilt: str, *, shown: int = SHOWN_KEYS
) -> TableDiff:
    """Every row of `live` vs `rebuilt`, by primary key (or as whole rows without one).

    Counts the rows missing from the live copy, extra in it and changed, and describes the
    first `shown` differing ones (in key order). Both are read in the caller's snapshot.
    """
    live_rows = int(await conn.fetchval(f"SELECT count(*) FROM {live}"))
    rebuilt_rows = int(await conn.fetchval(f"SELECT count(*) FROM {rebuilt}"))
    key = await _primary_key(conn, rebuilt)
    limit = max(shown, 1)  # the first row carries the counts
    if key:
        columns = ", ".join(f'"{c}"' for c in key)
        rows = await conn.fetch(
            f"""
            SELECT jsonb_build_array({columns})::text AS key,
                   a.r::text AS live, b.r::text AS rebuilt,
                   count(*) OVER () AS total,
                   count(*) FILTER (WHERE a.r IS NULL) OVER () AS missing,
                   count(*) FILTER (WHERE b.r IS NULL) OVER () AS extra
              FROM (SELECT {columns}, to_jsonb(x) AS r FROM {live} x) a
              FULL JOIN (SELECT {columns}, to_jsonb(y) AS r FROM {rebuilt} y) b USING ({columns})
             WHERE a.r IS DISTINCT FROM b.r
             ORDER BY {columns}
             LIMIT {limit}
            """
        )
    else:
        rows = await conn.fetch(
            f"""
            SELECT d.r::text AS key,
                   CASE WHEN d.extra THEN d.r::text END AS live,
                   CASE WHEN NOT d.extra THEN d.r::text END AS rebuilt,
                   count(*) OVER () AS total,
                   count(*) FILTER (WHERE NOT d.extra) OVER () AS missing,
                   count(*) FILTER (WHERE d.extra) OVER () AS extra
              FROM (SELECT e.r, true AS extra
                      FROM (SELECT to_jsonb(x) AS r FROM {live} x
                            EXCEPT ALL SELECT to_jsonb(y) FROM {rebuilt} y) e
                    UNION ALL
                    SELECT m.r, false
                      FROM (SELECT to_jsonb(y) AS r FROM {rebuilt} y
                            EXCEPT ALL SELECT to_jsonb(x) FROM {live} x) m) d
             ORDER BY 1
             LIMIT {limit}
            """
        )
    total = int(rows[0]["total"]) if rows else 0
    missing = int(rows[0]["missing"]) if rows else 0
    extra = int(rows[0]["extra"]) if rows else 0
    rows = rows[:shown]
    order = await _columns(conn, rebuilt) if rows else []
    return TableDiff(
        logical=logical,
        live_table=live,
        rebuilt_table=rebuilt,
        live_rows=live_rows,
        rebuilt_rows=rebuilt_rows,
        differing=total,
        first_keys=[str(r["key"]) for r in rows],
        missing=missing,
        extra=extra,
        changed=total - missing - extra,
        examples=[
            _example(str(r["key"]), _row(r["live"]), _row(r["rebuilt"]), order) for r in rows
        ],
    )


async def _drop_older(
    conn: PoolConnectionProxy | asyncpg.Connection, previous: Tables
) -> tuple[list[str], list[str]]:
    """Keep the previous live generation; drop the generations before it."""
    keep = generation_of(previous)
    dropped: list[str] = []
    for logical in previous:
        rows = await conn.fetch(
            """
            SELECT tablename FROM pg_tables
             WHERE schemaname = current_schema() AND tablename ~ ('^' || $1 || '_v[0-9]+$')
            """,
            logical,
        )
        for row in rows:
            table = str(row[0])
            match = _GENERATION.search(table)
            if match and int(match.group(1)) < keep:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                dropped.append(table)
    return sorted(previous.values()), sorted(dropped)


def find(projections: Sequence[Projection], name: str) -> Projection:
    for projection in projections:
        if projection.name == name:
            return projection
    known = ", ".join(p.name for p in projections)
    raise RebuildError(f"no projection named {name!r}; known: {known}")
