"""The projection runtime: one async consumer of the log per projection, exactly once per event.

Each batch is one transaction: the projection's writes plus its checkpoint. The transaction
first takes the consumer's advisory lock and checks that the checkpoint is still where this
instance left it, so two processes running the same projection never both apply a batch:
`record_checkpoint` alone only refuses to move backwards, and a loser whose batch reaches
further than the winner's would otherwise pass it.

A failing event stops its projection (only that one) with the event's position recorded in
`consumer_errors`; everything before it is committed. An operator restarts it once the
cause is fixed, or skips the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from domain.base import LoggedEvent
from gateways.postgres.codec import EventDecodeError
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import Connection, PostgresLog, Record
from handlers.ports import Checkpoint, TrackingConflict
from projections.base import Projection, Tables, check_identifier

log = structlog.get_logger(__name__)

# Errors of the database or the network, not of an event: retried with backoff, never
# reported against the event that happened to be in flight.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
_MAX_BACKOFF = 5.0


def live_consumer(name: str) -> str:
    """The checkpoint name of a projection's live tables (nothing version-specific in it)."""
    return f"projection:{name}"


def consumer_lock_key(schema: str, consumer: str) -> str:
    """The advisory lock (by `hashtext`) every batch transaction of `consumer` takes first."""
    return f"leadlog.consumer.{schema}.{consumer}"


class State(StrEnum):
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"
    STOPPED = "stopped"
    NEEDS_REBUILD = "needs_rebuild"


@dataclass(frozen=True)
class ConsumerError:
    """Why a consumer stopped: the event it could not process, or the runtime's own error."""

    consumer: str
    position: int
    event_id: UUID | None
    event_type: str | None
    error: str
    occurred_at: datetime
    attempts: int = 1


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    consumer: str
    version: int
    tables: Mapping[str, str]
    state: State
    position: int
    head: int
    lag: int
    error: ConsumerError | None
    retrying: str | None
    conflicts: int
    """Batches this instance lost to another one running the same projection."""


class ProjectionFailed(Exception):
    """A `build` stopped at an event it could not process."""

    def __init__(self, error: ConsumerError) -> None:
        super().__init__(
            f"{error.consumer} stopped at position {error.position} "
            f"({error.event_type}): {error.error}"
        )
        self.error = error


class _Moved(Exception):
    """Another instance moved the checkpoint since this one read it."""


class _ApplyFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Failed(Exception):
    """The consumer stopped at a failing event (already recorded and logged)."""


class _Superseded(Exception):
    """A rebuild by another version of the code replaced the live tables: this copy of the
    projection must not write to them."""


class _Signal:
    """A generation counter with a wake-up: waiters never miss a fire that happened before."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def fire(self, *_: Any) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_past(self, generation: int, timeout: float) -> bool:
        """Wait until fired after `generation` was read; False on timeout."""
        if self.generation != generation:
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


class ConnectionDb:
    """`projections.base.ProjectionDb` over the batch transaction's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: object) -> None:
        await self._conn.execute(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None:
        await self._conn.executemany(sql, args)

    async def fetch(self, sql: str, *args: object) -> list[Mapping[str, Any]]:
        return [dict(row.items()) for row in await self._conn.fetch(sql, *args)]

    async def fetchval(self, sql: str, *args: object) -> Any:
        return await self._conn.fetchval(sql, *args)


@dataclass
class _Batch:
    """Events read and decoded, up to the first one that does not decode."""

    upto: int
    full: bool
    events: list[LoggedEvent] = field(default_factory=list)
    undecodable: tuple[Record, EventDecodeError] | None = None


def _discard(prefetch: tuple[int, asyncio.Task[_Batch | None]] | None) -> None:
    if prefetch is None:
        return
    task = prefetch[1]
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn about it
    else:
        task.cancel()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _Runner:
    """One projection feeding one set of tables under one checkpoint name."""

    def __init__(
        self,
        projector: Projector,
        projection: Projection,
        consumer: str,
        tables: Tables,
        *,
        until: int | None = None,
        live: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.projector = projector
        self.projection = projection
        self.consumer = consumer
        self.tables = tables
        self.until = until
        # A live runner follows the registry: when a rebuild swaps its tables (in any
        # process), its next batch sees it under the lock and switches to them.
        self.live = live
        self.on_progress = on_progress
        self.state = State.STOPPED
        # `position`: everything up to here is reflected in the tables. `persisted`: what the
        # tracking row holds. They differ only after a stretch of events this projection
        # does not read, which is committed lazily (see `Projector.idle_flush`).
        self.position = 0
        self.persisted = 0
        self.open_error: int | None = None
        self.error: ConsumerError | None = None
        self.retrying: str | None = None
        self.conflicts = 0
        self.progress = _Signal()
        self.task: asyncio.Task[None] | None = None
        self._prefetch: tuple[int, asyncio.Task[_Batch | None]] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._last_commit = 0.0
        types = projection.event_types
        self._types = sorted(types) if types is not None else None
        self.lock_key = consumer_lock_key(projector.log.schema, consumer)

    # ---- control ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._stop_event = asyncio.Event()
        self.error = None
        self.retrying = None
        self.state = State.RUNNING
        self.task = asyncio.create_task(
            self.run(), name=f"leadlog-projection-{self.projection.name}"
        )

    def request_stop(self) -> None:
        self._stopping = True
        self._stop_event.set()

    async def stop(self) -> None:
        self.request_stop()
        self.projector.wakeup.fire()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    # ---- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        loaded = False
        backoff = 0.1
        finished = False
        try:
            while not self._stopping:
                generation = self.projector.wakeup.generation
                try:
                    if not loaded:
                        await self._load()
                        loaded = True
                    progressed = await self._step()
                    if self.until is not None and self.position >= self.until:
                        break
                    if not progressed:
                        await self._idle(generation)
                except _Failed:
                    self.state = State.FAILED
                    return
                except _Superseded as superseded:
                    self.state = State.NEEDS_REBUILD
                    log.warning(
                        "live tables rebuilt by another version; projection stopped",
                        consumer=self.consumer,
                        detail=str(superseded),
                    )
                    return
                except (_Moved, TrackingConflict) as moved:
                    self.conflicts += 1
                    log.debug(
                        "checkpoint moved by another instance",
                        consumer=self.consumer,
                        detail=str(moved),
                    )
                    loaded = False
                    continue
                except Exception as error:
                    if not isinstance(error, (*_TRANSIENT, asyncpg.InterfaceError)):
                        self._crash(error)
                        return
                    self.state = State.RETRYING
                    self.retrying = _describe(error)
                    log.warning(
                        "projection retrying",
                        consumer=self.consumer,
                        error=self.retrying,
                        backoff=backoff,
                    )
                    loaded = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop_event.wait(), backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                if self.state is State.RETRYING:
                    log.info("projection recovered", consumer=self.consumer)
                self.state = State.RUNNING
                self.retrying = None
                backoff = 0.1
            finished = True
        finally:
            _discard(self._prefetch)
            self._prefetch = None
            if finished and self.position > self.persisted:
                try:
                    await self._commit([], self.position)
                except Exception as error:  # only the lazy checkpoint is lost; it is re-read
                    log.warning(
                        "final checkpoint not written",
                        consumer=self.consumer,
                        error=_describe(error),
                    )
            if self.state not in (State.FAILED, State.NEEDS_REBUILD):
                self.state = State.STOPPED
            self.progress.fire()

    async def _load(self) -> None:
        async with self.projector.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                SELECT (SELECT position FROM tracking WHERE consumer = $1),
                       (SELECT min(position) FROM consumer_errors
                         WHERE consumer = $1 AND resolved_at IS NULL)
                """,
                self.consumer,
            )
        assert row is not None
        self.position = self.persisted = int(row[0] or 0)
        self.open_error = row[1]
        self._last_commit = asyncio.get_running_loop().time()

    async def _step(self) -> bool:
        """Process the next batch; False when there is nothing new."""
        after = self.position
        prefetched, self._prefetch = self._prefetch, None
        if prefetched is not None and prefetched[0] == after:
            batch = await prefetched[1]
        else:
            _discard(prefetched)
            batch = await self._fetch(after)
        if batch is None:
            return False
        if batch.full:
            # Catching up: read and decode the next batch while this one is written.
            self._prefetch = (batch.upto, asyncio.create_task(self._fetch(batch.upto)))
        if batch.events or batch.undecodable is not None:
            await self._process(batch)
        else:
            self._advance(batch.upto)
        return True

    async def _fetch(self, after: int) -> _Batch | None:
        projector = self.projector
        head = await projector.log.max_position()
        if self.until is not None:
            head = min(head, self.until)
        if head <= after:
            return None
        records: list[Record] = []
        if self._types is None or self._types:
            records = await projector.log.read(
                after, projector.batch_size, stop=head, event_types=self._types
            )
        full = len(records) >= projector.batch_size
        # Positions become visible in order (the append lock), so once `head` is visible
        # nothing at or below it can still appear: a filtered read that came back short has
        # seen every event this projection cares about up to `head`.
        batch = _Batch(upto=records[-1].position if full else head, full=full)
        for record in records:
            try:
                batch.events.append(projector.store.logged(record))
            except EventDecodeError as error:
                batch.undecodable = (record, error)
                break
        return batch

    async def _idle(self, generation: int) -> None:
        projector = self.projector
        timeout = projector.poll_interval
        if self.position > self.persisted:
            due = self._last_commit + projector.idle_flush - asyncio.get_running_loop().time()
            if due <= 0:
                await self._commit([], self.position)
                return
            timeout = min(timeout, due)
        await projector.wait_for_commit(generation, timeout)

    # ---- one batch ----------------------------------------------------------------------

    async def _process(self, batch: _Batch) -> None:
        events, upto = batch.events, batch.upto
        if batch.undecodable is None:
            try:
                await self._commit(events, upto)
                return
            except _ApplyFailed:
                pass
            await self._locate(events)
            log.warning(
                "batch failed but each of its events applied alone",
                consumer=self.consumer,
                first=events[0].position,
                upto=upto,
            )
            if upto > self.persisted:
                await self._commit([], upto)
            return
        record, decode_error = batch.undecodable
        if events:
            try:
                await self._commit(events, record.position - 1)
            except _ApplyFailed:
                await self._locate(events)
        await self._fail(record.position, record.event_id, record.event_type, decode_error)

    async def _locate(self, events: Sequence[LoggedEvent]) -> None:
        """Apply one event per transaction, so everything before a failing one is kept."""
        for event in events:
            try:
                await self._commit([event], event.position)
            except _ApplyFailed as failed:
                await self._fail(event.position, event.event_id, event.event_type, failed.error)

    async def _commit(self, events: Sequence[LoggedEvent], upto: int) -> None:
        projector = self.projector
        resolves = self.open_error is not None and upto >= self.open_error
        async with projector.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.lock_key)
            # A statement of its own, after the lock: its snapshot sees the other instance's
            # commit that the lock waited for.
            row = await conn.fetchrow(
                """
                SELECT t.position, v.live_version, v.live_tables
                  FROM (SELECT 1) AS one
                  LEFT JOIN tracking t ON t.consumer = $1
                  LEFT JOIN projection_versions v ON $3 AND v.name = $2
                """,
                self.consumer,
                self.projection.name,
                self.live,
            )
            assert row is not None
            current = row["position"]
            if row["live_tables"] is not None:
                self._follow_swap(row["live_version"], Tables(json.loads(row["live_tables"])))
            if (current or 0) != self.persisted:
                raise _Moved(f"expected {self.persisted}, found {current}")
            if events:
                try:
                    await self.projection.apply(ConnectionDb(conn), self.tables, events)
                except Exception as error:
                    if conn.is_closed() or isinstance(error, _TRANSIENT):
                        raise
                    raise _ApplyFailed(error) from error
            await projector.log.record_checkpoint(conn, Checkpoint(self.consumer, upto))
            if resolves:
                await conn.execute(
                    """
                    UPDATE consumer_errors SET resolved_at = now(), resolution = 'retried'
                     WHERE consumer = $1 AND resolved_at IS NULL AND position <= $2
                    """,
                    self.consumer,
                    upto,
                )
        if resolves:
            log.info(
                "failing event went through on retry",
                consumer=self.consumer,
                position=self.open_error,
            )
            self.open_error = None
        self.persisted = upto
        self._last_commit = asyncio.get_running_loop().time()
        self._advance(upto)

    def _follow_swap(self, live_version: int, tables: Tables) -> None:
        """Under the consumer lock: switch to the tables a rebuild swapped in."""
        if tables == self.tables:
            return
        if live_version != self.projection.version:
            raise _Superseded(
                f"{self.projection.name} is now served by version {live_version} ({tables}); "
                f"this process runs version {self.projection.version}"
            )
        log.info(
            "live tables swapped by a rebuild",
            consumer=self.consumer,
            old=dict(self.tables),
            new=dict(tables),
        )
        self.tables = tables
        raise _Moved("the live tables were swapped")

    def _advance(self, position: int) -> None:
        if position > self.position:
            self.position = position
            self.progress.fire()
            if self.on_progress is not None:
                self.on_progress(position)

    async def _fail(
        self, position: int, event_id: UUID, event_type: str, error: BaseException
    ) -> NoReturn:
        if position - 1 > self.persisted:
            await self._commit([], position - 1)
        text = _describe(error)
        async with self.projector.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO consumer_errors AS e (consumer, position, event_id, event_type, error)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (consumer, position) WHERE resolved_at IS NULL DO UPDATE
                   SET error = EXCLUDED.error, attempts = e.attempts + 1, last_seen_at = now()
                RETURNING occurred_at, attempts
                """,
                self.consumer,
                position,
                event_id,
                event_type,
                text,
            )
        assert row is not None
        self.open_error = position
        self.error = ConsumerError(
            self.consumer, position, event_id, event_type, text, row[0], row[1]
        )
        log.error(
            "projection stopped at a failing event",
            projection=self.projection.name,
            consumer=self.consumer,
            position=position,
            event_id=str(event_id),
            event_type=event_type,
            error=text,
            attempts=row[1],
            exc_info=error,
        )
        self.state = State.FAILED
        self.progress.fire()  # wakes `wait_for` callers: they will not get there now
        raise _Failed

    def _crash(self, error: Exception) -> None:
        """An error of the runtime itself, outside any one event: stop, say so, keep running
        the other projections."""
        self.state = State.FAILED
        self.error = ConsumerError(
            self.consumer, self.position + 1, None, None, _describe(error), datetime.now(UTC)
        )
        log.error(
            "projection crashed",
            consumer=self.consumer,
            position=self.position,
            error=_describe(error),
            exc_info=error,
        )
        self.progress.fire()


class Projector:
    """Runs projections against the log: catch up, then follow; one asyncio task each."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        log: PostgresLog,
        store: PostgresEventStore,
        projections: Sequence[Projection],
        batch_size: int = 500,
        *,
        poll_interval: float | None = None,
        idle_flush: float = 1.0,
    ) -> None:
        """`idle_flush`: how long a checkpoint advanced only past events a projection does
        not read may stay uncommitted (in-process `wait_for` sees it at once; other
        processes at most this late). Saves a commit per projection per log commit."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.pool = pool
        self.log = log
        self.store = store
        self.batch_size = batch_size
        self.poll_interval = log.poll_interval if poll_interval is None else poll_interval
        self.idle_flush = idle_flush
        # Our own LISTEN rather than the log's: waiting here must be cancellable at any point.
        self.wakeup = _Signal()
        self._listener: PoolConnectionProxy | None = None
        self._listener_lock = asyncio.Lock()
        self._runners: dict[str, _Runner] = {}
        self._watcher: asyncio.Task[None] | None = None
        for projection in projections:
            check_identifier(projection.name, "projection name")
            if projection.name in self._runners:
                raise ValueError(f"two projections are named {projection.name!r}")
            tables = Tables.versioned(projection.table_names, projection.version)
            self._runners[projection.name] = _Runner(
                self, projection, live_consumer(projection.name), tables, live=True
            )
        self._started = False

    # ---- lifecycle ----------------------------------------------------------------------

    async def register(self) -> None:
        """Create every projection's tables (and registry rows) without running it, so a
        process that only serves reads can query the views from its first request."""
        await self._register()

    async def start(self) -> None:
        """Create what is missing (tables, registry rows), then start every projection."""
        if self._started:
            return
        await self._register()
        self._started = True
        await self._ensure_listener()
        for runner in self._runners.values():
            if runner.state is not State.NEEDS_REBUILD:
                runner.start()
        self._watcher = asyncio.create_task(
            self._await_rebuilds(), name="leadlog-projection-rebuilds"
        )

    async def _await_rebuilds(self) -> None:
        """Start a projection waiting for a rebuild once one (in any process) swapped in
        tables of its version; checks the registry about once a second while any waits."""
        while True:
            await asyncio.sleep(min(max(self.poll_interval, 0.1), 1.0))
            waiting = [
                r.projection.name for r in self._runners.values() if r.state is State.NEEDS_REBUILD
            ]
            if not waiting:
                continue
            try:
                async with self.pool.acquire() as conn:
                    rows = await conn.fetch(
                        """SELECT name, live_version, live_tables FROM projection_versions
                            WHERE name = ANY($1::text[])""",
                        waiting,
                    )
            except Exception as error:  # the next round retries
                log.warning("registry check failed", error=_describe(error))
                continue
            for row in rows:
                runner = self._runners[row["name"]]
                if row["live_version"] == runner.projection.version:
                    self.adopt(row["name"], Tables(json.loads(row["live_tables"])), row[1])

    async def stop(self, timeout: float | None = None) -> None:
        """Stop every projection once its current batch is committed; after `timeout`
        seconds, cancel the rest (their open batches roll back)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        runners = list(self._runners.values())
        for runner in runners:
            runner.request_stop()
        self.wakeup.fire()
        tasks = [r.task for r in runners if r.task is not None and not r.task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False
        await self._release_listener()

    async def restart(self, name: str) -> None:
        """Start a stopped or failed projection again from its checkpoint."""
        runner = self._runner(name)
        if not self._started:
            raise RuntimeError("the projector is not started")
        if runner.state is State.NEEDS_REBUILD:
            raise RuntimeError(f"{name} needs a rebuild before it can run")
        await runner.stop()
        runner.start()

    async def skip(self, name: str, position: int, *, by: str = "operator") -> None:
        """An operator's decision: pass over the failing event at `position` for good.

        Allowed only where the projection has an unresolved error; recorded in
        `consumer_errors` (`skipped_by`) together with the checkpoint moving past it.
        The projection is then restarted if this projector is running.
        """
        runner = self._runner(name)
        resume = runner.task is not None and not runner.task.done()
        await runner.stop()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", runner.lock_key)
                current = await conn.fetchval(
                    "SELECT position FROM tracking WHERE consumer = $1", runner.consumer
                )
                event_type = await conn.fetchval(
                    """
                    UPDATE consumer_errors
                       SET resolved_at = now(), resolution = 'skipped', skipped_by = $3
                     WHERE consumer = $1 AND position = $2 AND resolved_at IS NULL
                    RETURNING event_type
                    """,
                    runner.consumer,
                    position,
                    by,
                )
                if event_type is None:
                    raise LookupError(f"{runner.consumer} has no unresolved error at {position}")
                if (current or 0) < position:
                    await self.log.record_checkpoint(conn, Checkpoint(runner.consumer, position))
            log.warning(
                "event skipped",
                consumer=runner.consumer,
                position=position,
                event_type=event_type,
                skipped_by=by,
            )
            resume = True
        finally:
            if resume and self._started and runner.state is not State.NEEDS_REBUILD:
                runner.start()

    async def build(
        self,
        projection: Projection,
        tables: Tables,
        consumer: str,
        *,
        until: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Fill `tables` from `consumer`'s checkpoint (0 for a new name) up to `until` (the
        head now, by default) in the calling task; returns the position reached.

        The building block of a blue/green rebuild: the next version's tables are filled
        beside the live ones under their own checkpoint name, then swapped in
        (`gateways.consumers.rebuild`). `on_progress` is called with each position reached.
        """
        for runner in self._runners.values():
            if consumer == runner.consumer or (
                runner.projection.name == projection.name and tables == runner.tables
            ):
                raise ValueError(f"{consumer} / {tables} is the live copy of {runner.consumer}")
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.registry_key)
            await conn.execute(projection.create_sql(tables))
        if until is None:
            until = await self.log.max_position()
        runner = _Runner(self, projection, consumer, tables, until=until, on_progress=on_progress)
        runner.state = State.RUNNING
        await runner.run()
        if runner.state is State.FAILED:
            assert runner.error is not None
            raise ProjectionFailed(runner.error)
        return runner.position

    # ---- read-your-writes and status ----------------------------------------------------

    async def wait_for(self, name: str, position: int, timeout: float = 5.0) -> bool:
        """True once the projection reflects every event up to `position`; False on timeout
        (at once if it is stopped at a failing event at or before `position`)."""
        runner = self._runners.get(name)
        consumer = runner.consumer if runner is not None else live_consumer(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        check_database = True
        while True:
            generation = runner.progress.generation if runner is not None else 0
            if runner is not None and runner.position >= position:
                return True
            if check_database:
                # Another process may be the one running it.
                recorded = await self.log.max_tracking_id(consumer)
                if recorded is not None and recorded >= position:
                    return True
            if (
                runner is not None
                and runner.state is State.FAILED
                and runner.error is not None
                and runner.error.position <= position
            ):
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            wait = min(remaining, max(self.poll_interval, 0.05))
            if runner is not None and runner.state in (State.RUNNING, State.RETRYING):
                check_database = not await runner.progress.wait_past(generation, wait)
            else:
                await asyncio.sleep(min(wait, 0.05))
                check_database = True

    async def status(self) -> list[ProjectionStatus]:
        runners = list(self._runners.values())
        consumers = [r.consumer for r in runners]
        async with self.pool.acquire() as conn:
            head = int(await conn.fetchval("SELECT max(position) FROM events") or 0)
            positions = {
                row[0]: row[1]
                for row in await conn.fetch(
                    "SELECT consumer, position FROM tracking WHERE consumer = ANY($1::text[])",
                    consumers,
                )
            }
            errors = {
                row["consumer"]: ConsumerError(
                    row["consumer"],
                    row["position"],
                    row["event_id"],
                    row["event_type"],
                    row["error"],
                    row["occurred_at"],
                    row["attempts"],
                )
                for row in await conn.fetch(
                    """
                    SELECT DISTINCT ON (consumer) consumer, position, event_id, event_type,
                           error, occurred_at, attempts
                      FROM consumer_errors
                     WHERE consumer = ANY($1::text[]) AND resolved_at IS NULL
                     ORDER BY consumer, position
                    """,
                    consumers,
                )
            }
        statuses = []
        for runner in runners:
            position = max(int(positions.get(runner.consumer) or 0), runner.position)
            statuses.append(
                ProjectionStatus(
                    name=runner.projection.name,
                    consumer=runner.consumer,
                    version=runner.projection.version,
                    tables=dict(runner.tables),
                    state=runner.state,
                    position=position,
                    head=head,
                    lag=max(head - position, 0),
                    error=runner.error or errors.get(runner.consumer),
                    retrying=runner.retrying,
                    conflicts=runner.conflicts,
                )
            )
        return statuses

    def tables(self, name: str) -> Tables:
        """The live tables of a projection (read from the registry once started).

        A rebuild swaps them: in this process at once (`adopt`), in another process at its
        runner's next batch. Readers that do not run the projection should query the view
        named after each logical table instead, which the swap re-points atomically.
        """
        return self._runner(name).tables

    def runs(self, name: str) -> bool:
        return name in self._runners

    def adopt(self, name: str, tables: Tables, live_version: int) -> None:
        """A rebuild in this process swapped `name`'s live tables: serve and feed those.

        A running projection notices by itself at its next batch (the registry is checked
        under its lock); this makes `tables()` answer at once, and starts a projection
        that was waiting for the rebuild of its new version.
        """
        runner = self._runners.get(name)
        if runner is None:
            return
        if live_version != runner.projection.version:
            runner.state = State.NEEDS_REBUILD
            return
        runner.tables = tables
        if runner.state is State.NEEDS_REBUILD:
            runner.state = State.STOPPED
            if self._started:
                runner.start()

    # ---- internals ----------------------------------------------------------------------

    @property
    def registry_key(self) -> str:
        """The advisory lock (by `hashtext`) that serialises registry changes."""
        return f"leadlog.projections.{self.log.schema}"

    def _runner(self, name: str) -> _Runner:
        try:
            return self._runners[name]
        except KeyError:
            raise LookupError(f"no projection named {name!r} here") from None

    async def _register(self) -> None:
        """Record each projection's live version and create its tables, once, even when
        several processes start together (they take turns on an advisory lock)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.registry_key)
            for runner in self._runners.values():
                projection = runner.projection
                row = await conn.fetchrow(
                    "SELECT live_version, live_tables FROM projection_versions WHERE name = $1",
                    projection.name,
                )
                if row is None:
                    tables = Tables.versioned(projection.table_names, projection.version)
                    await conn.execute(projection.create_sql(tables))
                    # Readers use the logical name; a rebuild's swap re-points the view.
                    for logical, concrete in tables.items():
                        await conn.execute(
                            f"CREATE OR REPLACE VIEW {logical} AS SELECT * FROM {concrete}"
                        )
                    await conn.execute(
                        """
                        INSERT INTO projection_versions (name, live_version, live_tables)
                        VALUES ($1, $2, $3::jsonb)
                        """,
                        projection.name,
                        projection.version,
                        json.dumps(dict(tables)),
                    )
                    runner.tables = tables
                    continue
                runner.tables = Tables(json.loads(row["live_tables"]))
                if row["live_version"] != projection.version:
                    runner.state = State.NEEDS_REBUILD
                    log.warning(
                        "projection needs a rebuild; not started",
                        projection=projection.name,
                        live_version=row["live_version"],
                        code_version=projection.version,
                    )
                    continue
                await conn.execute(projection.create_sql(runner.tables))

    async def wait_for_commit(self, generation: int, timeout: float) -> None:
        await self._ensure_listener()
        await self.wakeup.wait_past(generation, timeout)

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        async with self._listener_lock:
            if self._listener is not None:
                if not self._listener.is_closed():
                    return
                await self._release_listener()
            try:
                listener = await self.pool.acquire()
            except Exception as error:  # projections still poll; a lost wake-up only slows them
                log.warning("LISTEN failed; projections will poll", error=_describe(error))
                return
            try:
                await listener.add_listener(self.log.channel, self.wakeup.fire)
            except BaseException as error:
                await asyncio.shield(self.pool.release(listener))
                if not isinstance(error, Exception):
                    raise
                log.warning("LISTEN failed; projections will poll", error=_describe(error))
                return
            self._listener = listener
            # Commits made while nobody listened are found by the re-read this causes.
            self.wakeup.fire()

    async def _release_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        with contextlib.suppress(Exception):
            if not listener.is_closed():
                await listener.remove_listener(self.log.channel, self.wakeup.fire)
        with contextlib.suppress(Exception):
            await self.pool.release(listener)
