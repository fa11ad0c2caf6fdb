"""Runs lead-type actions: sharded consumers of the lead events that fire triggers.

Leads are spread over `SHARDS` consumers by lead id. Each shard reads the log in order and
handles its leads' events one after another, so a lead's triggers fire in log order and
never in parallel; different leads run in parallel on different shards. A shard appends
what `ActionRunner` decides together with its checkpoint (`actions:<i>/<n>`), so each
trigger is decided exactly once; events that decide nothing only move the checkpoint,
once per batch. The shard count is fixed: changing it would start new consumers at 0.

Each shard is a partition of its own (`gateways.consumers.leases`): worker processes divide
the shards between them (`start_shard` / `stop_shard`). Should two processes briefly run
the same shard, whichever appends a trigger's decision first wins, the other's append fails
on the checkpoint and it moves on from there.

A failing event is recorded in `consumer_errors` and tried again with a growing pause; the
shard never skips it on its own. While the database is away a shard backs off and resumes
from its checkpoint on a fresh connection (nothing is recorded: there is nowhere to). Past
events no trigger reads, the checkpoint moves lazily, so an idle shard shows no lag.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from domain.triggers import TRIGGERING_EVENT_TYPES
from gateways.consumers.reactor import (
    first_open_error,
    record_consumer_error,
    resolve_consumer_errors,
)
from gateways.postgres.errors import after_failure, describe, is_unavailable
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog, Record
from gateways.postgres.log_tail import LogTail, TailEntry
from handlers.actions import ActionRunner
from handlers.ports import Append, Checkpoint, ConcurrencyConflict, TrackingConflict

log = structlog.get_logger(__name__)

SHARDS = 4
BATCH = 200
MAX_CONFLICT_RETRIES = 20
IDLE_FLUSH = 1.0
MIN_BACKOFF = 0.1
MAX_BACKOFF = 30.0


def shard_of(record: Record, shards: int = SHARDS) -> int:
    return record.originator_id.int % shards


def consumer_name(shard: int, shards: int = SHARDS) -> str:
    return f"actions:{shard}/{shards}"


class ActionWorkers:
    """`gateways.workers.Worker`: the action runner's shards."""

    def __init__(
        self,
        log_store: PostgresLog,
        store: PostgresEventStore,
        runner: ActionRunner,
        *,
        tail: LogTail | None = None,
    ) -> None:
        self.log = log_store
        self.store = store
        self.tail = tail if tail is not None else LogTail.direct(log_store, store)
        self.runner = runner
        self.positions = [0] * SHARDS
        self.errors: list[str | None] = [None] * SHARDS
        self.idle_flush = IDLE_FLUSH
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # Checked by each shard's loop as well as cancelled: a cancellation swallowed on the
        # way (asyncio.wait_for can, before Python 3.12) must not keep a shard running.
        self._stopping: set[int] = set()

    async def start(self) -> None:
        """Run every shard in this process."""
        for shard in range(SHARDS):
            await self.start_shard(shard)

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_shard(shard) for shard in list(self._tasks)))

    async def start_shard(self, shard: int) -> None:
        """Run one shard here, from its checkpoint (nothing if it runs already)."""
        if not 0 <= shard < SHARDS:
            raise ValueError(f"there are {SHARDS} shards; no shard {shard}")
        task = self._tasks.get(shard)
        if task is None or task.done():
            self._stopping.discard(shard)
            self._tasks[shard] = asyncio.create_task(self._run(shard), name=consumer_name(shard))

    async def stop_shard(self, shard: int) -> None:
        """Stop one shard: a decision being appended is either committed with its
        checkpoint or not at all, and the next runner of the shard resumes from there."""
        task = self._tasks.pop(shard, None)
        if task is None:
            return
        self._stopping.add(shard)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.errors[shard] = None

    async def _run(self, shard: int) -> None:
        consumer = consumer_name(shard)
        types = TRIGGERING_EVENT_TYPES
        loop = asyncio.get_running_loop()
        pause = MIN_BACKOFF
        loaded = False
        position = persisted = 0
        failing_at: int | None = None
        last_commit = loop.time()
        while shard not in self._stopping:
            generation = self.log.generation
            try:
                if not loaded:
                    position = persisted = await self.log.max_tracking_id(consumer) or 0
                    # Recorded here or by the process that ran the shard before.
                    failing_at = await first_open_error(self.log.pool, consumer)
                    last_commit = loop.time()
                    loaded = True
                head = await self.tail.head()
                read = await self.tail.entries(position, BATCH, stop=head, event_types=types)
                if read.entries:
                    position = persisted = await self._handle_batch(
                        shard, consumer, position, read.entries
                    )
                    last_commit = loop.time()
                    if failing_at is not None and position >= failing_at:
                        await self._resolve_errors(consumer, position)
                        failing_at = None
                if not read.full:
                    # Positions become visible in order (the append lock): no triggering
                    # event can still appear at or below what the read covered.
                    position = max(position, read.upto)
                self.positions[shard] = position
                self.errors[shard] = None
                pause = MIN_BACKOFF
                if read.entries or position < head:
                    continue
                if position > persisted and loop.time() - last_commit >= self.idle_flush:
                    # Lazily, past events this shard does not act on: no lag while idle.
                    await self.store.append(Append(None, checkpoint=Checkpoint(consumer, position)))
                    persisted = position
                    last_commit = loop.time()
                    continue
                await self.log.wait_for_commit(
                    generation, min(self.log.poll_interval, self.idle_flush)
                )
            except asyncio.CancelledError:
                raise
            except TrackingConflict:
                loaded = False  # another process runs this shard too: carry on from its place
            except Exception as error:
                transient = await after_failure(self.log.pool, error)
                self.errors[shard] = f"after {position}: {describe(error)}"
                log.error(
                    "action shard retrying",
                    consumer=consumer,
                    error=self.errors[shard],
                    database_unavailable=transient,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_BACKOFF)
                # Resume from what was committed: part of the batch may have been.
                loaded = False

    async def _handle_batch(
        self, shard: int, consumer: str, position: int, entries: list[TailEntry]
    ) -> int:
        """Decide the shard's events of `entries`; the position reached (checkpointed)."""
        checkpointed = position
        for entry in entries:
            record = entry.record
            if shard_of(record) != shard:
                continue
            try:
                wrote = await self._handle(consumer, entry)
            except TrackingConflict:
                # Another process runs this shard too and got here first: what it decided
                # stands; the loop carries on from where it has got to.
                raise
            except Exception as error:
                if not is_unavailable(error):
                    await self._record_error(consumer, record, error)
                if checkpointed < position:
                    with contextlib.suppress(TrackingConflict):
                        await self._checkpoint(record, consumer, position)
                raise
            position = record.position
            if wrote:
                checkpointed = position
            self.positions[shard] = position
        last = entries[-1].record
        if last.position > checkpointed:
            await self._checkpoint(last, consumer, last.position)
        self.positions[shard] = last.position
        return last.position

    async def _handle(self, consumer: str, entry: TailEntry) -> bool:
        """Decide one event and append it with the checkpoint; False when nothing to do."""
        record = entry.record
        logged = entry.logged()
        for _ in range(MAX_CONFLICT_RETRIES):
            append = await self.runner.decide(logged)
            if append is None:
                return False
            append.checkpoint = Checkpoint(consumer, record.position)
            try:
                await self.store.append(append)
                return True
            except ConcurrencyConflict:
                continue  # the lead changed meanwhile: decide again on what it is now
        raise RuntimeError(f"gave up after {MAX_CONFLICT_RETRIES} conflicting attempts")

    async def _checkpoint(self, record: Record, consumer: str, position: int) -> None:
        await self.store.append(
            Append(record.workspace_id, checkpoint=Checkpoint(consumer, position))
        )

    async def _resolve_errors(self, consumer: str, position: int) -> None:
        await resolve_consumer_errors(self.log.pool, consumer, position)

    async def _record_error(self, consumer: str, record: Record, error: Exception) -> None:
        await record_consumer_error(
            self.log.pool, consumer, record.position, record.event_id, record.event_type, error
        )
