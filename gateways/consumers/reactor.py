"""Runs reactions: follow chosen events, append what a reaction decides with its checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import structlog

from domain.base import DomainEvent, LoggedEvent
from gateways.postgres.errors import after_failure, describe, is_unavailable
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.postgres.log_tail import LogTail
from handlers.ports import Append, Checkpoint, ConcurrencyConflict, TrackingConflict

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 20
BATCH = 100
IDLE_FLUSH = 1.0
MIN_BACKOFF = 0.1
MAX_BACKOFF = 30.0


class Reaction(Protocol):
    name: str
    event_types: frozenset[str]

    async def react(self, logged: LoggedEvent) -> Sequence[DomainEvent]: ...


class Reactor:
    """One reaction's consumer. Its events and its checkpoint are appended together, so a
    reaction takes effect exactly once; a conflicting concurrent change makes it decide
    again.

    It never stops by itself: while the database is away it backs off and resumes from its
    checkpoint on a fresh connection; an event it cannot process is recorded in
    `consumer_errors` (loud in `status`, `/healthz` and the metrics) and tried again with a
    growing pause, never skipped. Past events of types it does not read, its checkpoint
    moves lazily (at most `idle_flush` seconds late), so an idle reaction shows no lag.
    """

    def __init__(
        self,
        log_store: PostgresLog,
        store: PostgresEventStore,
        reaction: Reaction,
        *,
        idle_flush: float = IDLE_FLUSH,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        tail: LogTail | None = None,
    ) -> None:
        self.log = log_store
        self.store = store
        self.tail = tail if tail is not None else LogTail.direct(log_store, store)
        self.reaction = reaction
        self.consumer = f"reaction:{reaction.name}"
        self.idle_flush = idle_flush
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.position = 0
        self.persisted = 0
        self.error: str | None = None
        self._failing_at: int | None = None
        self._last_commit = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.consumer)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loaded = False
        backoff = self.min_backoff
        while not self._stopping:
            try:
                if not loaded:
                    await self._load()
                    loaded = True
                await self._step()
                if self.error is not None:
                    log.info("reaction recovered", consumer=self.consumer)
                self.error = None
                backoff = self.min_backoff
            except asyncio.CancelledError:
                raise
            except TrackingConflict:
                loaded = False  # another process got there first: carry on from its place
            except Exception as error:
                if await after_failure(self.log.pool, error):
                    self.error = f"retrying: {describe(error)}"
                    log.warning("reaction retrying", consumer=self.consumer, error=self.error)
                else:
                    log.error(
                        "reaction failed; will retry", consumer=self.consumer, error=self.error
                    )
                loaded = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _load(self) -> None:
        self.position = self.persisted = await self.log.max_tracking_id(self.consumer) or 0
        # An error recorded here, or by the process that ran this reaction before.
        self._failing_at = await first_open_error(self.log.pool, self.consumer)
        self._last_commit = asyncio.get_running_loop().time()

    async def _step(self) -> None:
        generation = self.log.generation
        head = await self.tail.head()
        read = await self.tail.entries(
            self.position, BATCH, stop=head, event_types=self.reaction.event_types
        )
        for entry in read.entries:
            record = entry.record
            try:
                await self._handle(entry.logged())
            except TrackingConflict:
                raise
            except Exception as error:
                if is_unavailable(error):
                    raise
                self.error = f"{record.event_type} at {record.position}: {describe(error)}"
                await self._record_error(record.position, record.event_id, record.event_type, error)
                self._failing_at = record.position
                raise
            self.position = record.position
            if self._failing_at is not None and record.position >= self._failing_at:
                await resolve_consumer_errors(self.log.pool, self.consumer, record.position)
                self._failing_at = None
        if read.entries:
            loop_time = asyncio.get_running_loop().time()
            if self.position > self.persisted and loop_time - self._last_commit >= self.idle_flush:
                await self._checkpoint(self.position)
        # Positions become visible in order (the append lock): nothing this reaction reads
        # can still appear at or below what the read covered.
        self.position = max(self.position, read.upto)
        if read.full or read.upto < head:
            return
        idle = asyncio.get_running_loop().time() - self._last_commit
        if self.position > self.persisted and idle >= self.idle_flush:
            await self._checkpoint(self.position)
            return
        await self.log.wait_for_commit(generation, min(self.log.poll_interval, self.idle_flush))

    async def _checkpoint(self, position: int) -> None:
        await self.store.append(Append(None, checkpoint=Checkpoint(self.consumer, position)))
        self.persisted = position
        self._last_commit = asyncio.get_running_loop().time()

    async def _handle(self, logged: LoggedEvent) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            events = await self.reaction.react(logged)
            if not events:
                # Nothing decided: no append of its own; the checkpoint catches up with the
                # next decision or a lazy flush (an event re-read after a crash decides
                # nothing again).
                return
            try:
                await self.store.append(
                    Append(
                        logged.workspace_id,
                        events=events,
                        checkpoint=Checkpoint(self.consumer, logged.position),
                    )
                )
                self.persisted = logged.position
                self._last_commit = asyncio.get_running_loop().time()
                return
            except ConcurrencyConflict:
                continue
        raise RuntimeError(f"gave up after {MAX_CONFLICT_RETRIES} conflicting attempts")

    async def _record_error(
        self, position: int, event_id: object, event_type: str, error: Exception
    ) -> None:
        await record_consumer_error(
            self.log.pool, self.consumer, position, event_id, event_type, error
        )


async def record_consumer_error(
    pool: asyncpg.Pool,
    consumer: str,
    position: int,
    event_id: object,
    event_type: str,
    error: Exception,
) -> None:
    """Note in `consumer_errors` that `consumer` failed at `position` (once per position,
    counting the attempts), for `leadlog status` and the operator."""
    async with pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO consumer_errors (consumer, position, event_id, event_type, error)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (consumer, position) WHERE resolved_at IS NULL
            DO UPDATE SET attempts = consumer_errors.attempts + 1, last_seen_at = now()
            """,
            consumer,
            position,
            event_id,
            event_type,
            describe(error),
        )


async def first_open_error(pool: asyncpg.Pool, consumer: str) -> int | None:
    """The position of `consumer`'s first unresolved error, if it has one."""
    async with pool.acquire() as conn:
        position: int | None = await conn.fetchval(
            "SELECT min(position) FROM consumer_errors WHERE consumer = $1 AND resolved_at IS NULL",
            consumer,
        )
    return position


async def resolve_consumer_errors(pool: asyncpg.Pool, consumer: str, position: int) -> None:
    """Mark `consumer`'s open errors up to `position` resolved: it got past them on retry."""
    async with pool.acquire() as conn:
        await conn.execute(
            """
            UPDATE consumer_errors SET resolved_at = now(), resolution = 'retried'
             WHERE consumer = $1 AND resolved_at IS NULL AND position <= $2
            """,
            consumer,
            position,
        )
