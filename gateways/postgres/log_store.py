"""The durable log on asyncpg: group-committed appends, reservations, counters, tracking, reads.

Two guarantees shape this module:

* **No consumer ever skips an event.** Every appending transaction takes the schema's
  append lock (a transaction-level advisory lock) before it draws positions and holds it
  until commit, so positions become visible in the order they were drawn: once a reader
  sees position N, every lower position is either visible too or rolled back for good.
  Readers take no lock. An advisory lock rather than a table lock, so that autovacuum
  (whose SHARE UPDATE EXCLUSIVE conflicts with EXCLUSIVE) can never stall appends.
* **Throughput from batching.** Commands waiting for the lock are gathered into one
  transaction (group commit). The checks (versions, exclusive keys, tracking) are made
  for each command in turn against the state left by the commands before it, so a
  failing command fails alone and takes none of the batch's counter values with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from gateways.postgres.errors import (
    connection_alive,
    describe,
    expire_connections,
    is_unavailable,
)
from gateways.postgres.schema import check_schema_name
from handlers.ports import (
    Allocation,
    Checkpoint,
    Claim,
    ConcurrencyConflict,
    Limit,
    ReservationTaken,
    TrackingConflict,
)

log = structlog.get_logger(__name__)

# A connection of our own or one borrowed from the pool: both run the same queries.
Connection = asyncpg.Connection | PoolConnectionProxy

EVENT_ID_NAMESPACE = UUID("6f1c1d1e-5b7a-4c36-9a0e-6c0c7f5e2a11")


def event_id_for(originator_id: UUID, version: int) -> UUID:
    """An event's id, the same every time it is computed (NATS and webhook dedupe rely on it)."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{originator_id}:{version}")


@dataclass(frozen=True)
class NewRecord:
    """An event to append, already serialised."""

    originator_id: UUID
    originator_version: int
    topic: str
    event_type: str
    state: bytes


@dataclass(frozen=True)
class Record:
    """A committed event as stored."""

    position: int
    event_id: UUID
    originator_id: UUID
    originator_version: int
    topic: str
    event_type: str
    workspace_id: UUID | None
    state: bytes
    recorded_at: datetime


@dataclass
class RecordAppend:
    """One command's writes at the record level (see `handlers.ports.Append`)."""

    workspace_id: UUID | None
    records: Sequence[NewRecord] = ()
    build: Callable[[Allocation], Sequence[NewRecord]] | None = None
    expect: Mapping[UUID, int] = field(default_factory=dict)
    claims: Sequence[Claim] = ()
    releases: Sequence[str] = ()
    counters: Sequence[str] = ()
    limits: Sequence[Limit] = ()
    checkpoint: Checkpoint | None = None
    idempotency: Claim | None = None


@dataclass(frozen=True)
class RecordAppended:
    records: Sequence[NewRecord]
    positions: Sequence[int]
    allocation: Allocation
    # True when the idempotency key was already held: nothing was written this time.
    replayed: bool = False


@dataclass
class _Pending:
    request: RecordAppend
    future: asyncio.Future[RecordAppended]


@dataclass
class _BatchState:
    """What the batch's transaction sees, updated as each command is accepted."""

    versions: dict[UUID, int]
    holders: dict[str, UUID | None]
    counters: dict[str, int]
    tracking: dict[str, int]


_Accepted = tuple[_Pending, Sequence[NewRecord], Allocation]


@dataclass(frozen=True)
class _Changes:
    """The net effect of a batch on reservations (None = released), counters and tracking."""

    holders: dict[str, UUID | None]
    counters: dict[str, int]
    tracking: dict[str, int]


_INSERT = """ins AS (
    INSERT INTO events (event_id, originator_id, originator_version, topic, event_type,
                        workspace_id, state, recorded_at)
    SELECT *, (SELECT clock_timestamp())
    FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::uuid[],
                $7::bytea[])
    RETURNING position, event_id)"""
_RELEASE = """released AS (
    DELETE FROM reservations r USING unnest(${0}::text[]) AS k(key) WHERE r.key = k.key)"""
_CLAIM = """claimed AS (
    INSERT INTO reservations (key, owner) SELECT * FROM unnest(${0}::text[], ${1}::uuid[])
    ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, claimed_at = now())"""
_COUNT = """counted AS (
    INSERT INTO counters (name, value) SELECT * FROM unnest(${0}::text[], ${1}::bigint[])
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value)"""
_TRACK = """tracked AS (
    INSERT INTO tracking (consumer, position) SELECT * FROM unnest(${0}::text[], ${1}::bigint[])
    ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, updated_at = now())"""

_COLUMNS = (
    "position, event_id, originator_id, originator_version, topic, event_type, "
    "workspace_id, state, recorded_at"
)


def _record(row: asyncpg.Record) -> Record:
    return Record(
        position=row[0],
        event_id=row[1],
        originator_id=row[2],
        originator_version=row[3],
        topic=row[4],
        event_type=row[5],
        workspace_id=row[6],
        state=row[7],
        recorded_at=row[8],
    )


class _Waker:
    """Wakes followers when new events may be committed: LISTEN/NOTIFY across processes,
    a direct call within this one. Only a wake-up: followers always re-read the table."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.generation = 0

    def wake(self, *_: Any) -> None:
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_past(self, generation: int, timeout: float) -> None:
        if self.generation != generation:
            return
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class PostgresLog:
    """The event log in one Postgres schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        *,
        max_batch: int = 1000,
        poll_interval: float = 1.0,
        writers: int = 2,
    ) -> None:
        self.pool = pool
        self.schema = schema
        self.channel = f"{schema}.events"
        self.lock_key = f"leadlog.append.{check_schema_name(schema)}"
        self._begin_and_lock = f"BEGIN; SELECT pg_advisory_xact_lock(hashtext('{self.lock_key}'))"
        self.max_batch = max_batch
        self.poll_interval = poll_interval
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._closing = False
        self.writers = writers
        self._writer_tasks: list[asyncio.Task[None]] = []
        self._waker = _Waker()
        self._listener: PoolConnectionProxy | None = None
        self._listener_lock = asyncio.Lock()
        self.batches = 0
        self.commands = 0
        # Told (seconds, commands) after each committed batch: metrics hook in here.
        self.on_batch: Callable[[float, int], None] | None = None

    # ---- appending ----------------------------------------------------------------------

    async def append(self, request: RecordAppend) -> RecordAppended:
        """Append one command's writes; resolves when they are committed (or failed alone)."""
        if self._closing:
            raise RuntimeError("the event store is closed")
        future: asyncio.Future[RecordAppended] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, future))
        self._ensure_writers()
        return await future

    async def append_many(
        self, requests: Sequence[RecordAppend]
    ) -> list[RecordAppended | Exception]:
        """Append independent commands, queued together so that they share group commits;
        each is decided and fails on its own, exactly as through `append`."""
        if self._closing:
            raise RuntimeError("the event store is closed")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[RecordAppended]] = []
        for request in requests:
            future: asyncio.Future[RecordAppended] = loop.create_future()
            futures.append(future)
            self._queue.put_nowait(_Pending(request, future))
        self._ensure_writers()
        results: list[RecordAppended | Exception] = []
        for outcome in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            results.append(outcome)
        return results

    def _ensure_writers(self) -> None:
        """Two writers, so one batch's Python work overlaps the other's commit (the append
        lock still lets only one of them draw positions at a time). A writer that ended
        for any reason is replaced, so queued appends are never left waiting."""
        if len(self._writer_tasks) == self.writers and not any(
            task.done() for task in self._writer_tasks
        ):
            return
        for task in self._writer_tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("group-commit writer ended; replaced", error=repr(task.exception()))
        alive = [task for task in self._writer_tasks if not task.done()]
        while len(alive) < self.writers:
            alive.append(
                asyncio.create_task(self._write_loop(), name=f"leadlog-group-commit-{len(alive)}")
            )
        self._writer_tasks = alive

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch and not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is None:
                    await self._commit_isolating(batch)
                    return
                batch.append(queued)
            await self._commit_isolating(batch)

    async def _commit_isolating(self, batch: list[_Pending]) -> None:
        """Commit the batch; if the transaction fails for a reason the checks did not
        foresee, commit its halves apart, down to the single command that fails."""
        try:
            await self._commit_batch(batch)
        except Exception as error:
            if is_unavailable(error):
                # The database is away, not one command wrong: every command of the batch
                # fails alike (the caller answers 503 and may retry), and the pool replaces
                # its connections, so the next batch starts on a fresh one.
                log.warning("group commit failed: database unavailable", error=describe(error))
                await expire_connections(self.pool)
                for pending in batch:
                    _fail(pending, error)
                return
            if len(batch) == 1:
                _fail(batch[0], error)
                return
            log.warning("group commit failed; isolating the culprit", error=repr(error))
            middle = len(batch) // 2
            await self._commit_isolating(batch[:middle])
            await self._commit_isolating(batch[middle:])

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        async with self.pool.acquire() as conn:
            await conn.execute(self._begin_and_lock)
            try:
                accepted, rejected, changes = await self._decide(conn, batch)
                positions = await self._write(conn, accepted, changes)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise
        self.batches += 1
        self.commands += len(batch)
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, len(batch))
        # Rejections are final only now: had the transaction failed, the retry would have
        # decided each command again, without the commands it is retried apart from.
        for pending, error in rejected:
            _fail(pending, error)
        if any(records for _, records, _ in accepted):
            self._waker.wake()
        for (pending, records, allocation), record_positions in zip(
            accepted, positions, strict=True
        ):
            if not pending.future.done():
                claim = pending.request.idempotency
                replayed = claim is not None and allocation.holders.get(claim.key) != claim.owner
                pending.future.set_result(
                    RecordAppended(records, record_positions, allocation, replayed)
                )

    async def _load_state(self, conn: Connection, batch: list[_Pending]) -> _BatchState:
        ids: set[UUID] = set()
        keys: set[str] = set()
        counters: set[str] = set()
        consumers: set[str] = set()
        for pending in batch:
            request = pending.request
            ids.update(r.originator_id for r in request.records)
            ids.update(request.expect)
            keys.update(c.key for c in request.claims)
            keys.update(request.releases)
            if request.idempotency:
                keys.add(request.idempotency.key)
            counters.update(request.counters)
            counters.update(limit.name for limit in request.limits)
            if request.checkpoint:
                consumers.add(request.checkpoint.consumer)
        # One lookup per key, each through its index: with `= ANY($1)` a cached generic plan
        # may choose a sequential scan (it did, on a table not yet analysed), making every
        # batch slower as the log grows.
        rows = await conn.fetch(
            """
            SELECT 'v', id::text, (SELECT originator_version FROM events
                                    WHERE originator_id = id
                                    ORDER BY originator_version DESC LIMIT 1)::text
              FROM unnest($1::uuid[]) AS ids(id)
            UNION ALL
            SELECT 'r', k, (SELECT owner FROM reservations WHERE key = k)::text
              FROM unnest($2::text[]) AS keys(k)
            UNION ALL
            SELECT 'c', n, (SELECT value FROM counters WHERE name = n)::text
              FROM unnest($3::text[]) AS names(n)
            UNION ALL
            SELECT 't', c, (SELECT position FROM tracking WHERE consumer = c)::text
              FROM unnest($4::text[]) AS consumers(c)
            """,
            list(ids),
            list(keys),
            list(counters),
            list(consumers),
        )
        state = _BatchState({}, {}, {}, {})
        for kind, name, value in rows:
            if value is None:
                continue
            if kind == "v":
                state.versions[UUID(name)] = int(value)
            elif kind == "r":
                state.holders[name] = UUID(value)
            elif kind == "c":
                state.counters[name] = int(value)
            else:
                state.tracking[name] = int(value)
        return state

    async def _decide(
        self, conn: Connection, batch: list[_Pending]
    ) -> tuple[list[_Accepted], list[tuple[_Pending, Exception]], _Changes]:
        """Check each command against the state the commands before it left; accept or fail it."""
        state = await self._load_state(conn, batch)
        initial_holders = dict(state.holders)
        initial_counters = dict(state.counters)
        initial_tracking = dict(state.tracking)
        accepted: list[_Accepted] = []
        rejected: list[tuple[_Pending, Exception]] = []
        for pending in batch:
            try:
                records, allocation, decided = _decide_one(pending.request, state)
            except Exception as error:
                rejected.append((pending, error))
                continue
            versions, holders, counter_values, tracking = decided
            state.versions.update(versions)
            state.holders.update(holders)
            state.counters.update(counter_values)
            state.tracking.update(tracking)
            accepted.append((pending, records, allocation))
        changes = _Changes(
            {k: v for k, v in state.holders.items() if initial_holders.get(k) != v},
            {k: v for k, v in state.counters.items() if initial_counters.get(k) != v},
            {k: v for k, v in state.tracking.items() if initial_tracking.get(k) != v},
        )
        return accepted, rejected, changes

    async def _write(
        self,
        conn: Connection,
        accepted: list[_Accepted],
        changes: _Changes,
    ) -> list[list[int]]:
        holders, counters, tracking = changes.holders, changes.counters, changes.tracking
        event_ids: list[UUID] = []
        originators: list[UUID] = []
        versions: list[int] = []
        topics: list[str] = []
        types: list[str] = []
        workspaces: list[UUID | None] = []
        states: list[bytes] = []
        for pending, records, _ in accepted:
            for r in records:
                event_ids.append(event_id_for(r.originator_id, r.originator_version))
                originators.append(r.originator_id)
                versions.append(r.originator_version)
                topics.append(r.topic)
                types.append(r.event_type)
                workspaces.append(pending.request.workspace_id)
                states.append(r.state)
        released = [k for k, v in holders.items() if v is None]
        claimed = [(k, v) for k, v in holders.items() if v is not None]
        args: list[Any] = [event_ids, originators, versions, topics, types, workspaces, states]
        parts = []
        if released:
            args.append(released)
            parts.append(_RELEASE.format(len(args)))
        if claimed:
            args.extend(([k for k, _ in claimed], [v for _, v in claimed]))
            parts.append(_CLAIM.format(len(args) - 1, len(args)))
        if counters:
            args.extend((list(counters), list(counters.values())))
            parts.append(_COUNT.format(len(args) - 1, len(args)))
        if tracking:
            args.extend((list(tracking), list(tracking.values())))
            parts.append(_TRACK.format(len(args) - 1, len(args)))
        args.append(self.channel)
        # Only the parts this batch needs: fewer plans to go wrong, less work per batch.
        # asyncpg prepares each of the (at most 16) shapes once per connection.
        sql = (
            "WITH "
            + ", ".join([_INSERT, *parts])
            + f" SELECT position, event_id, (SELECT pg_notify(${len(args)}, '')) FROM ins"
        )
        rows = await conn.fetch(sql, *args)
        position_of = {row[1]: row[0] for row in rows}
        positions: list[list[int]] = []
        offset = 0
        for _, records, _ in accepted:
            ids = event_ids[offset : offset + len(records)]
            positions.append([position_of[event_id] for event_id in ids])
            offset += len(records)
        return positions

    # ---- reading -----------------------------------------------------------------------

    async def read(
        self,
        after: int = 0,
        limit: int = 500,
        *,
        stop: int | None = None,
        topics: Sequence[str] | None = None,
        event_types: Sequence[str] | None = None,
        workspace_id: UUID | None = None,
    ) -> list[Record]:
        """Committed events with position > `after` (and <= `stop`), in log order."""
        conditions = ["position > $1"]
        args: list[Any] = [after]
        if stop is not None:
            args.append(stop)
            conditions.append(f"position <= ${len(args)}")
        if topics:
            args.append(list(topics))
            conditions.append(f"topic = ANY(${len(args)}::text[])")
        if event_types:
            args.append(list(event_types))
            conditions.append(f"event_type = ANY(${len(args)}::text[])")
        if workspace_id is not None:
            args.append(workspace_id)
            conditions.append(f"workspace_id = ${len(args)}")
        args.append(limit)
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(conditions)} "
            f"ORDER BY position LIMIT ${len(args)}"
        )
        async with self.pool.acquire() as conn:
            if len(conditions) == 1:
                return [_record(row) for row in await conn.fetch(sql, *args)]
            # A filtered read is planned for its values: after five runs of a prepared
            # statement PostgreSQL may switch to a generic plan, and the generic plan of
            # "this workspace's pipeline.created" walks the whole log by position
            # (measured: 0.06 ms custom, 757 ms generic, over a million events).
            async with conn.transaction():
                await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                return [_record(row) for row in await conn.fetch(sql, *args)]

    async def read_stream(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
        until_time: datetime | None = None,
        until_position: int | None = None,
    ) -> list[Record]:
        """One aggregate's events, optionally as they stood at a version, time or position."""
        conditions = ["originator_id = $1"]
        args: list[Any] = [originator_id]
        for column, op, value in (
            ("originator_version", ">", gt),
            ("originator_version", "<=", lte),
            ("recorded_at", "<=", until_time),
            ("position", "<=", until_position),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} {op} ${len(args)}")
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(conditions)} "
            f"ORDER BY originator_version {'DESC' if desc else 'ASC'}"
        )
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        async with self.pool.acquire() as conn:
            return [_record(row) for row in await conn.fetch(sql, *args)]

    async def max_position(self) -> int:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT max(position) FROM events")
        return int(value or 0)

    async def holder(self, key: str) -> UUID | None:
        async with self.pool.acquire() as conn:
            owner: UUID | None = await conn.fetchval(
                "SELECT owner FROM reservations WHERE key = $1", key
            )
        return owner

    async def counter(self, name: str) -> int:
        async with self.pool.acquire() as conn:
            value = await conn.fetchval("SELECT value FROM counters WHERE name = $1", name)
        return int(value or 0)

    async def follow(self, after: int = 0, batch_size: int = 500) -> AsyncIterator[list[Record]]:
        """Catch up from `after`, then follow new commits, batch by batch, forever."""
        await self._ensure_listener()
        while True:
            generation = self._waker.generation
            records = await self.read(after, batch_size)
            if records:
                after = records[-1].position
                yield records
                continue
            await self._waker.wait_past(generation, self.poll_interval)

    @property
    def generation(self) -> int:
        """Changes whenever new events may have been committed (see `wait_for_commit`)."""
        return self._waker.generation

    async def wait_for_commit(self, generation: int, timeout: float) -> None:
        """Return once `generation` is past (a commit may have happened) or after `timeout`."""
        await self._ensure_listener()
        await self._waker.wait_past(generation, timeout)

    async def _ensure_listener(self) -> None:
        async with self._listener_lock:
            if self._listener is not None:
                if connection_alive(self._listener):
                    return
                # Lost with its connection (an outage): give the slot back to the pool.
                old, self._listener = self._listener, None
                with contextlib.suppress(Exception):
                    await self.pool.release(old)
            try:
                listener = await self.pool.acquire()
            except Exception as error:  # the database away: followers poll meanwhile
                log.warning("LISTEN failed; followers will poll", error=describe(error))
                return
            try:
                await listener.add_listener(self.channel, self._waker.wake)
            except BaseException as error:
                # Cancelled or refused: give the connection back rather than leak it.
                await self.pool.release(listener)
                if not isinstance(error, Exception):
                    raise
                log.warning("LISTEN failed; followers will poll", error=repr(error))
                return
            self._listener = listener

    # ---- tracking ----------------------------------------------------------------------

    async def max_tracking_id(self, consumer: str) -> int | None:
        async with self.pool.acquire() as conn:
            value: int | None = await conn.fetchval(
                "SELECT position FROM tracking WHERE consumer = $1", consumer
            )
        return value

    async def record_checkpoint(self, conn: Connection, checkpoint: Checkpoint) -> None:
        """Record a consumer's position on `conn`, inside the consumer's own transaction."""
        done = await conn.fetchval(
            """
            INSERT INTO tracking (consumer, position) VALUES ($1, $2)
            ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, updated_at = now()
              WHERE tracking.position < EXCLUDED.position
            RETURNING 1
            """,
            checkpoint.consumer,
            checkpoint.position,
        )
        if done is None:
            raise TrackingConflict(
                f"{checkpoint.consumer} is already at or past position {checkpoint.position}"
            )

    async def close(self) -> None:
        """Stop taking appends, let every queued one finish, then release the listener."""
        self._closing = True
        running = [task for task in self._writer_tasks if not task.done()]
        for _ in running:
            await self._queue.put(None)
        await asyncio.gather(*running)
        self._writer_tasks = []
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(self.channel, self._waker.wake)
                await self.pool.release(self._listener)
            self._listener = None


def _fail(pending: _Pending, error: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def _decide_one(
    request: RecordAppend, state: _BatchState
) -> tuple[
    Sequence[NewRecord],
    Allocation,
    tuple[dict[UUID, int], dict[str, UUID | None], dict[str, int], dict[str, int]],
]:
    """Accept one command against `state` or raise; returns its records and state changes."""
    if request.idempotency is not None:
        key, owner = request.idempotency.key, request.idempotency.owner
        holder = state.holders.get(key)
        if holder is not None and holder != owner:
            # A retry of a command already committed: write nothing, spend no counter value.
            return [], Allocation({key: holder}, {}), ({}, {}, {}, {})
    for aggregate_id, expected in request.expect.items():
        current = state.versions.get(aggregate_id, 0)
        if current != expected:
            raise ConcurrencyConflict(
                f"aggregate {aggregate_id} is at version {current}, expected {expected}"
            )
    holders: dict[str, UUID | None] = {key: None for key in request.releases}
    if request.idempotency is not None:
        holders[request.idempotency.key] = request.idempotency.owner
    allocation_holders: dict[str, UUID] = {}
    if request.idempotency is not None:
        allocation_holders[request.idempotency.key] = request.idempotency.owner
    for claim in request.claims:
        current_holder = (
            holders[claim.key] if claim.key in holders else state.holders.get(claim.key)
        )
        if current_holder is None:
            holders[claim.key] = claim.owner
            allocation_holders[claim.key] = claim.owner
        elif current_holder == claim.owner:
            allocation_holders[claim.key] = claim.owner
        elif claim.exclusive:
            raise ReservationTaken(claim.key, current_holder)
        else:
            allocation_holders[claim.key] = current_holder
    counter_values: dict[str, int] = {}
    for name in request.counters:
        counter_values[name] = counter_values.get(name, state.counters.get(name, 0)) + 1
    limited: dict[str, int] = {}
    refused: list[str] = []
    for limit in request.limits:
        value = limited.get(limit.name, state.counters.get(limit.name, 0)) + limit.amount
        if limit.ceiling is not None and limit.amount > 0 and value > limit.ceiling:
            refused.append(limit.name)
        limited[limit.name] = value
    if not refused:
        counter_values.update(limited)
    allocation = Allocation(allocation_holders, counter_values, tuple(refused))
    records = list(request.records)
    if request.build is not None:
        records.extend(request.build(allocation))
    if request.build is not None:
        # Built events may create new aggregates freely (fresh ids cannot collide), but an
        # existing aggregate is only checked for concurrent change if `expect` names it.
        known = set(request.expect) | {r.originator_id for r in request.records}
        first_versions: dict[UUID, int] = {}
        for record in records:
            first_versions.setdefault(record.originator_id, record.originator_version)
        unknown = sorted(
            str(aggregate_id)
            for aggregate_id, first in first_versions.items()
            if aggregate_id not in known and first != 1
        )
        if unknown:
            raise ValueError(f"build changed existing aggregates not named in expect: {unknown}")
    versions: dict[UUID, int] = {}
    for record in records:
        previous = versions.get(record.originator_id, state.versions.get(record.originator_id))
        if previous is not None and record.originator_version != previous + 1:
            if record.originator_version <= previous:
                raise ConcurrencyConflict(
                    f"aggregate {record.originator_id} already has version "
                    f"{record.originator_version}"
                )
            raise ValueError(
                f"aggregate {record.originator_id} is at version {previous}; "
                f"version {record.originator_version} would leave a gap"
            )
        versions[record.originator_id] = record.originator_version
    tracking: dict[str, int] = {}
    if request.checkpoint is not None:
        consumer, position = request.checkpoint.consumer, request.checkpoint.position
        recorded = state.tracking.get(consumer)
        if recorded is not None and position <= recorded:
            raise TrackingConflict(f"{consumer} is already at or past position {position}")
        tracking[consumer] = position
    return records, allocation, (versions, holders, counter_values, tracking)
