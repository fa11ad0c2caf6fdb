"""One projection's consumer: read after its checkpoint, apply, commit rows and checkpoint.

Each batch is one transaction: the projection's writes plus its checkpoint. The transaction
first takes the consumer's advisory lock and checks that the checkpoint is still where this
instance left it, so two processes running the same projection never both apply a batch:
`record_checkpoint` alone only refuses to move backwards, and a loser whose batch reaches
further than the winner's would otherwise pass it.

A batch that fails is applied again one event per transaction, so that everything before
the failing event is committed; the event's position goes to `consumer_errors` and only this
projection stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn, Protocol
from uuid import UUID

import asyncpg
import structlog

from domain.base import LoggedEvent
from gateways.consumers.consumer_state import (
    ConnectionDb,
    ConsumerError,
    Signal,
    State,
    consumer_lock_key,
    describe_error,
)
from gateways.postgres.codec import EventDecodeError
from gateways.postgres.errors import after_failure, connection_alive, is_unavailable
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog, Record
from gateways.postgres.log_tail import LogTail
from handlers.ports import Checkpoint, TrackingConflict
from projections.base import Projection, Tables

log = structlog.get_logger(__name__)

_MAX_BACKOFF = 5.0


class RunnerHost(Protocol):
    """What a runner needs from the projector that runs it."""

    pool: asyncpg.Pool
    log: PostgresLog
    store: PostgresEventStore
    tail: LogTail
    """This process's decoded recent events, shared by its consumers."""
    batch_size: int
    poll_interval: float
    idle_flush: float
    wakeup: Signal
    """Fired on every commit to the log (and to stop runners waiting for one)."""

    async def wait_for_commit(self, generation: int, timeout: float) -> None:
        """Return once `wakeup` fired past `generation`, or after `timeout` seconds."""
        ...


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


class Runner:
    """One projection feeding one set of tables under one checkpoint name."""

    def __init__(
        self,
        host: RunnerHost,
        projection: Projection,
        consumer: str,
        tables: Tables,
        *,
        until: int | None = None,
        live: bool = False,
        on_progress: Callable[[int], None] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.host = host
        self.batch_size = batch_size or host.batch_size
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
        self.progress = Signal()
        self.task: asyncio.Task[None] | None = None
        self._prefetch: tuple[int, asyncio.Task[_Batch | None]] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._last_commit = 0.0
        types = projection.event_types
        self._types = sorted(types) if types is not None else None
        self._type_set = frozenset(types) if types is not None else None
        self.lock_key = consumer_lock_key(host.log.schema, consumer)

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
        self.host.wakeup.fire()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    # ---- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        loaded = False
        backoff = 0.1
        finished = False
        try:
            while not self._stopping:
                generation = self.host.wakeup.generation
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
                    if not await after_failure(self.host.pool, error):
                        await self._crash(error)
                        return
                    # The database is away (or the connection was lost mid-read): back off,
                    # then start again from the checkpoint on a fresh connection.
                    _discard(self._prefetch)
                    self._prefetch = None
                    self.state = State.RETRYING
                    self.retrying = describe_error(error)
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
                        error=describe_error(error),
                    )
            if self.state not in (State.FAILED, State.NEEDS_REBUILD):
                self.state = State.STOPPED
            self.progress.fire()

    async def _load(self) -> None:
        async with self.host.pool.acquire() as conn:
            # Started again: a crash recorded earlier (no event named) is behind us.
            await conn.execute(
                """
                UPDATE consumer_errors SET resolved_at = now(), resolution = 'retried'
                 WHERE consumer = $1 AND resolved_at IS NULL AND event_id IS NULL
                """,
                self.consumer,
            )
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
        host = self.host
        head = await host.tail.head()
        if self.until is not None:
            head = min(head, self.until)
        if head <= after:
            return None
        if self._types is not None and not self._types:
            return _Batch(upto=head, full=False)
        served = await host.tail.read(after, self.batch_size, stop=head, event_types=self._type_set)
        if served is not None:
            batch = _Batch(upto=served.upto, full=served.full)
            for entry in served.entries:
                if entry.event is None:
                    assert entry.error is not None
                    batch.undecodable = (entry.record, entry.error)
                    break
                batch.events.append(entry.event)
            return batch
        records: list[Record] = []
        if self._types is None or self._types:
            records = await host.log.read(
                after, self.batch_size, stop=head, event_types=self._types
            )
        full = len(records) >= self.batch_size
        # Positions become visible in order (the append lock), so once `head` is visible
        # nothing at or below it can still appear: a filtered read that came back short has
        # seen every event this projection cares about up to `head`.
        batch = _Batch(upto=records[-1].position if full else head, full=full)
        for record in records:
            try:
                batch.events.append(host.store.logged(record))
            except EventDecodeError as error:
                batch.undecodable = (record, error)
                break
        return batch

    async def _idle(self, generation: int) -> None:
        host = self.host
        timeout = host.poll_interval
        if self.position > self.persisted:
            due = self._last_commit + host.idle_flush - asyncio.get_running_loop().time()
            if due <= 0:
                await self._commit([], self.position)
                return
            timeout = min(timeout, due)
        await host.wait_for_commit(generation, timeout)

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
        host = self.host
        resolves = self.open_error is not None and upto >= self.open_error
        async with host.pool.acquire() as conn, conn.transaction():
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
                    if not connection_alive(conn) or is_unavailable(error):
                        raise
                    raise _ApplyFailed(error) from error
            await host.log.record_checkpoint(conn, Checkpoint(self.consumer, upto))
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
        text = describe_error(error)
        async with self.host.pool.acquire() as conn:
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

    async def _crash(self, error: Exception) -> None:
        """An error of the runtime itself, outside any one event: stop, say so (in the log,
        and in `consumer_errors` for `status`, `/healthz` and the metrics of every process),
        keep running the other projections."""
        self.state = State.FAILED
        text = f"crashed: {describe_error(error)}"
        self.error = ConsumerError(
            self.consumer, self.position + 1, None, None, text, datetime.now(UTC)
        )
        log.error(
            "projection crashed",
            consumer=self.consumer,
            position=self.position,
            error=describe_error(error),
            exc_info=error,
        )
        self.progress.fire()
        try:
            async with self.host.pool.acquire() as conn:
                await conn.execute(
                    """
                    INSERT INTO consumer_errors AS e (consumer, position, error)
                    VALUES ($1, $2, $3)
                    ON CONFLICT (consumer, position) WHERE resolved_at IS NULL DO UPDATE
                       SET error = EXCLUDED.error, attempts = e.attempts + 1,
                           last_seen_at = now()
                    """,
                    self.consumer,
                    self.position + 1,
                    text,
                )
        except Exception as again:  # still loud in this process's state and log
            log.warning("projection crash not recorded", consumer=self.consumer, error=repr(again))
