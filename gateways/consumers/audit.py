"""`leadlog audit verify`: replay the log into scratch copies of the views, compare every row.

The audit confirms that each live view is what the log says it should be, and lists any
difference, without swapping, locking out or writing to anything live. It is safe to run
while the engine runs and ingests.

**Where the comparison happens.** A live view keeps moving while leads arrive, so the two
copies must be compared at one fixed log position. Its runner writes each batch's rows
*and* its checkpoint (`tracking`, `projection:<name>`) in one transaction, so one database
snapshot holds a live view together with the exact position its rows reflect. The audit
therefore compares each projection at its own live checkpoint, inside one REPEATABLE READ
transaction, rather than at one global position (holding every view at one position would
mean stopping or writing to them):

1. The log head H is read when the audit starts.
2. Per projection, the log is replayed from position 0 into scratch tables, in rounds, up to
   the view's live checkpoint as it moves, waiting (at most `wait` seconds for the whole
   audit) for that checkpoint to reach H: with the engine running, everything logged
   before the audit started is covered.
3. One REPEATABLE READ transaction takes ACCESS SHARE locks on the live tables (so a
   concurrent rebuild cannot drop them under the snapshot; the live runner's writes do
   not conflict), then reads the registry and the live checkpoint L in its snapshot,
   replays (reached, L] into the scratch tables, and compares every table row by row
   (`gateways.consumers.rebuild.compare_tables`, the same comparison as `rebuild --verify`). The
   live runner keeps committing meanwhile; the snapshot just does not see it. No advisory
   lock of the live consumer is taken, so the live runner never waits for the audit.

Each projection's report says at which position it was compared. A view whose runner is
stopped, failing or not running anywhere stays behind H: it is compared where it is, and
the report says how far behind that was (`leadlog status` says why). Such a view may match
the log where it is (`matches`) but is not clean, and neither is the audit: a view that
stopped for good must not pass.
A view whose live tables were built by another version of its code than this one
is not compared (rebuild it first), nor is one whose replay fails at an event; both make
the audit unclean. An event an operator skipped in the live view is replayed here, so it
shows as a difference when it yields rows.

**Scratch tables.** Temporary tables of the audit's own connection: while it runs, that
connection's `search_path` starts with `pg_temp`, so the projection's own DDL, given
`<table>_audit` names, creates them there. No other session sees them; no checkpoint,
registry row or view is written. They are dropped after each projection, `DISCARD TEMP`
clears the rest when the audit ends or fails (Ctrl-C included), and PostgreSQL drops any
left over when the session ends, even if the process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from gateways.consumers.consumer_state import live_consumer
from gateways.consumers.projector import Projector
from gateways.consumers.rebuild import SHOWN_KEYS, TableDiff, apply_range, compare_tables
from gateways.postgres.errors import connection_alive, is_unavailable
from projections.base import Projection, Tables

log = structlog.get_logger(__name__)

WAIT = 10.0
"""Seconds the audit waits, at most and in all, for live views to reach the head it started at."""
SCRATCH_SUFFIX = "_audit"
# Catch up outside the comparing transaction until the tail is at most this long (or after a
# few rounds): the rest is replayed inside it.
TAIL = 500
CATCH_UP_ROUNDS = 5
POLL = 0.1
SETTLE_ATTEMPTS = 5

AuditProgress = Callable[[str, int, int], None]
"""Called with (projection, position its scratch copy reached, position it is heading for)."""


class _Backwards(Exception):
    """The live checkpoint moved back behind the scratch copy (someone reset it)."""


@dataclass
class ProjectionAudit:
    """One projection's live tables vs its replay from the log, at one log position."""

    name: str
    version: int
    head: int
    """The log head when the audit started."""
    position: int = 0
    """The log position both copies reflected when compared (the live checkpoint)."""
    events: int = 0
    """Events replayed into the scratch copy (those the projection reads)."""
    seconds: float = 0.0
    live_tables: dict[str, str] = field(default_factory=dict)
    scratch_tables: dict[str, str] = field(default_factory=dict)
    tables: list[TableDiff] = field(default_factory=list)
    compared: bool = False
    note: str | None = None

    @property
    def differences(self) -> int:
        return sum(t.differing for t in self.tables)

    @property
    def rows(self) -> int:
        """Rows compared, over every table."""
        return sum(t.rows for t in self.tables)

    @property
    def behind(self) -> int:
        """How far the live view was behind the head at the start when it was compared."""
        return max(self.head - self.position, 0) if self.compared else 0

    @property
    def matches(self) -> bool:
        """Compared, and the live view is what the log says at the position compared."""
        return self.compared and self.differences == 0

    @property
    def clean(self) -> bool:
        """Matches, and was not behind the head: a view stuck behind (its runner stopped or
        failing) is not clean even though what it holds is right."""
        return self.matches and self.behind == 0

    def json(self) -> dict[str, Any]:
        return {
            "projection": self.name,
            "version": self.version,
            "compared": self.compared,
            "matches": self.matches,
            "clean": self.clean,
            "position": self.position,
            "head": self.head,
            "behind": self.behind,
            "events": self.events,
            "rows": self.rows,
            "differences": self.differences,
            "seconds": round(self.seconds, 3),
            "liveTables": self.live_tables,
            "scratchTables": self.scratch_tables,
            "tables": [t.json() for t in self.tables],
            "note": self.note,
        }


@dataclass
class AuditReport:
    """Every audited projection, in the order asked."""

    head: int
    """The log head when the audit started."""
    projections: list[ProjectionAudit]
    seconds: float

    @property
    def differences(self) -> int:
        return sum(p.differences for p in self.projections)

    @property
    def clean(self) -> bool:
        """Every view was compared, matches the log, and had reached the head."""
        return all(p.clean for p in self.projections)

    @property
    def behind(self) -> dict[str, int]:
        """Views compared behind the head (by how many positions): stopped or failing."""
        return {p.name: p.behind for p in self.projections if p.behind}

    def json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "head": self.head,
            "differences": self.differences,
            "behind": self.behind,
            "seconds": round(self.seconds, 3),
            "projections": [p.json() for p in self.projections],
        }


async def verify(
    projector: Projector,
    projections: Sequence[Projection],
    *,
    wait: float = WAIT,
    shown: int = SHOWN_KEYS,
    on_progress: AuditProgress | None = None,
) -> AuditReport:
    """Replay the log into scratch copies of `projections` and compare them with the live
    views, each at its live checkpoint; see the module's docstring. `shown`: how many
    differing rows to describe per table."""
    started = time.monotonic()
    head = await projector.log.max_position()
    deadline = asyncio.get_running_loop().time() + wait
    audits: list[ProjectionAudit] = []
    async with projector.pool.acquire() as conn:
        saved = str(await conn.fetchval("SELECT current_setting('search_path')"))
        try:
            await _enter_scratch(conn, saved)
            for projection in projections:
                audits.append(
                    await _audit(projector, conn, projection, head, deadline, shown, on_progress)
                )
        finally:
            await _leave_scratch(conn, saved)
    report = AuditReport(head=head, projections=audits, seconds=time.monotonic() - started)
    log.info(
        "audit finished",
        head=head,
        clean=report.clean,
        differences=report.differences,
        seconds=round(report.seconds, 3),
    )
    return report


def scratch_tables(projection: Projection) -> Tables:
    """The names of a projection's scratch tables (temporary: in `pg_temp` while auditing)."""
    return Tables(
        {
            logical: f"{logical[: 63 - len(SCRATCH_SUFFIX)]}{SCRATCH_SUFFIX}"
            for logical in projection.table_names
        }
    )


async def _enter_scratch(conn: PoolConnectionProxy, saved: str) -> None:
    """Put the session's temporary schema first: unqualified new tables are temporary."""
    await conn.execute("SELECT set_config('search_path', $1, false)", f"pg_temp, {saved}")


async def _leave_scratch(conn: PoolConnectionProxy, saved: str) -> None:
    """Drop every temporary table and restore the search path before the connection goes
    back to the pool; if that fails, close it (PostgreSQL then drops them)."""
    try:
        await _rollback_open(conn)
        await conn.execute("DISCARD TEMP")
        await conn.execute("SELECT set_config('search_path', $1, false)", saved)
    except BaseException:
        conn.terminate()
        raise


async def _rollback_open(conn: PoolConnectionProxy) -> None:
    """Leave a transaction left open by a cancellation that landed while it began (asyncpg
    rolls it back only when the connection goes back to the pool, undoing any cleanup done
    inside it)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _drop(conn: PoolConnectionProxy, scratch: Tables) -> None:
    for table in scratch.values():
        await conn.execute(f"DROP TABLE IF EXISTS pg_temp.{table}")


async def _create(conn: PoolConnectionProxy, projection: Projection, scratch: Tables) -> None:
    """Create the scratch tables afresh with the projection's own DDL, and make sure they
    are temporary ones (the DDL names no schema; `pg_temp` comes first in the path)."""
    await _drop(conn, scratch)
    async with conn.transaction():
        await conn.execute(projection.create_sql(scratch))
        temporary = await conn.fetchval(
            """
            SELECT count(*) FROM pg_class
             WHERE relpersistence = 't'
               AND oid = ANY(SELECT t::regclass FROM unnest($1::text[]) t)
            """,
            [f"pg_temp.{table}" for table in scratch.values()],
        )
        if temporary != len(scratch):
            raise RuntimeError(f"the scratch tables {dict(scratch)} are not all temporary")


async def _registered(conn: PoolConnectionProxy, name: str) -> tuple[int, Tables] | None:
    row = await conn.fetchrow(
        "SELECT live_version, live_tables FROM projection_versions WHERE name = $1", name
    )
    if row is None:
        return None
    return int(row["live_version"]), Tables(json.loads(row["live_tables"]))


async def _checkpoint(conn: PoolConnectionProxy, consumer: str) -> int:
    value = await conn.fetchval("SELECT position FROM tracking WHERE consumer = $1", consumer)
    return int(value or 0)


def _not_comparable(projection: Projection, registered: tuple[int, Tables] | None) -> str | None:
    if registered is None:
        return f"not compared: {projection.name} is not registered yet (start leadlog once)"
    live_version, _ = registered
    if live_version != projection.version:
        return (
            f"not compared: the live tables were built by version {live_version} of "
            f"{projection.name}, this is version {projection.version} (rebuild it first)"
        )
    return None


async def _audit(
    projector: Projector,
    conn: PoolConnectionProxy,
    projection: Projection,
    head: int,
    deadline: float,
    shown: int,
    on_progress: AuditProgress | None,
) -> ProjectionAudit:
    started = time.monotonic()
    audit = ProjectionAudit(name=projection.name, version=projection.version, head=head)
    scratch = scratch_tables(projection)
    audit.scratch_tables = {logical: f"pg_temp.{t}" for logical, t in scratch.items()}

    def progress(position: int) -> None:
        if on_progress is not None:
            on_progress(projection.name, position, max(head, position))

    try:
        audit.note = _not_comparable(projection, await _registered(conn, projection.name))
        if audit.note is None:
            await _create(conn, projection, scratch)
            progress(0)
            reached = await _catch_up(
                projector, conn, projection, scratch, head, deadline, audit, progress
            )
            await _settle(projector, conn, projection, scratch, reached, audit, shown, progress)
    except _Backwards:
        audit.note = (
            "not compared: the live checkpoint moved back while the audit ran; run it again"
        )
    except Exception as error:
        if not connection_alive(conn) or is_unavailable(error):
            raise
        audit.note = f"not compared: the replay failed: {type(error).__name__}: {error}"
        log.exception("audit of a projection failed", projection=projection.name)
    finally:
        if connection_alive(conn):
            # Best effort: `_leave_scratch` drops whatever is left, or closes the session.
            with contextlib.suppress(Exception):
                await _rollback_open(conn)
                await _drop(conn, scratch)
    audit.seconds = time.monotonic() - started
    return audit


async def _catch_up(
    projector: Projector,
    conn: PoolConnectionProxy,
    projection: Projection,
    scratch: Tables,
    head: int,
    deadline: float,
    audit: ProjectionAudit,
    progress: Callable[[int], None],
) -> int:
    """Replay into `scratch` up to the live checkpoint as it moves, until it has reached
    `head` (or the deadline passed) and the rest is short; returns the position reached."""
    consumer = live_consumer(projection.name)
    loop = asyncio.get_running_loop()
    reached = rounds = 0
    while True:
        live_at = await _checkpoint(conn, consumer)
        if live_at < reached:
            raise _Backwards
        caught_up = live_at >= head or loop.time() >= deadline
        if caught_up and (live_at - reached <= TAIL or rounds >= CATCH_UP_ROUNDS):
            return reached
        if live_at > reached:
            audit.events += await apply_range(
                projector,
                conn,
                projection,
                scratch,
                reached,
                live_at,
                transaction_per_batch=True,
                on_progress=progress,
            )
            reached = live_at
            progress(reached)
            rounds += 1
        else:
            await asyncio.sleep(POLL)


async def _settle(
    projector: Projector,
    conn: PoolConnectionProxy,
    projection: Projection,
    scratch: Tables,
    reached: int,
    audit: ProjectionAudit,
    shown: int,
    progress: Callable[[int], None],
) -> None:
    """In one snapshot: bring `scratch` to the live checkpoint, then compare every table."""
    name = projection.name
    for _ in range(SETTLE_ATTEMPTS):
        registered = await _registered(conn, name)
        audit.note = _not_comparable(projection, registered)
        if registered is None or audit.note is not None:
            return
        _, live = registered
        try:
            async with conn.transaction(isolation="repeatable_read"):
                # Before the first query, which fixes the snapshot.
                for concrete in live.values():
                    await conn.execute(f"LOCK TABLE {concrete} IN ACCESS SHARE MODE")
                row = await conn.fetchrow(
                    """
                    SELECT v.live_version, v.live_tables,
                           (SELECT position FROM tracking WHERE consumer = $2) AS position
                      FROM projection_versions v
                     WHERE v.name = $1
                    """,
                    name,
                    live_consumer(name),
                )
                if (
                    row is None
                    or row["live_version"] != projection.version
                    or Tables(json.loads(row["live_tables"])) != live
                ):
                    continue  # a rebuild swapped the tables in between: look again
                live_at = int(row["position"] or 0)
                if live_at < reached:
                    raise _Backwards
                audit.events += await apply_range(
                    projector, conn, projection, scratch, reached, live_at, on_progress=progress
                )
                progress(live_at)
                audit.tables = [
                    await compare_tables(
                        conn, logical, live[logical], f"pg_temp.{scratch[logical]}", shown=shown
                    )
                    for logical in scratch
                ]
        except asyncpg.UndefinedTableError:
            continue  # dropped by a rebuild between the look and the lock: look again
        audit.position = live_at
        audit.live_tables = dict(live)
        audit.compared = True
        if audit.behind:
            audit.note = (
                f"the live view was at position {live_at}, {audit.behind} behind the log "
                "head when the audit started (is its runner stopped or failing? see "
                "`leadlog status`); compared there"
            )
        return
    audit.note = "not compared: rebuilds kept swapping the live tables; run it again"
