"""Runs lead-type actions: sharded consumers of the lead events that fire triggers.

Leads are spread over `SHARDS` consumers by lead id. Each shard reads the log in order and
handles its leads' events one after another, so a lead's triggers fire in log order and
never in parallel; different leads run in parallel on different shards. A shard appends
what `ActionRunner` decides together with its checkpoint (`actions:<i>/<n>`), so each
trigger is decided exactly once; events that decide nothing only move the checkpoint,
once per batch. The shard count is fixed: changing it would start new consumers at 0.

Two processes may run the same shard (`serve workers` twice): whichever appends a trigger's
decision first wins, the other's append fails on the checkpoint and it moves on from there.

A failing event is recorded in `consumer_errors` and tried again with a growing pause
(the database may be away); the shard never skips it on its own.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from domain.triggers import TRIGGERING_EVENT_TYPES
from gateways.consumers.reactor import record_consumer_error
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog, Record
from handlers.actions import ActionRunner
from handlers.ports import Append, Checkpoint, ConcurrencyConflict, TrackingConflict

log = structlog.get_logger(__name__)

SHARDS = 4
BATCH = 200
MAX_CONFLICT_RETRIES = 20


def shard_of(record: Record, shards: int = SHARDS) -> int:
    return record.originator_id.int % shards


def consumer_name(shard: int, shards: int = SHARDS) -> str:
    return f"actions:{shard}/{shards}"


class ActionWorkers:
    """`gateways.workers.Worker`: the action runner's shards."""

    def __init__(
        self, log_store: PostgresLog, store: PostgresEventStore, runner: ActionRunner
    ) -> None:
        self.log = log_store
        self.store = store
        self.runner = runner
        self.positions = [0] * SHARDS
        self.errors: list[str | None] = [None] * SHARDS
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(shard), name=consumer_name(shard))
            for shard in range(SHARDS)
        ]

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(self, shard: int) -> None:
        consumer = consumer_name(shard)
        position = await self.log.max_tracking_id(consumer) or 0
        types = sorted(TRIGGERING_EVENT_TYPES)
        pause = 0.5
        while not self._stopping:
            generation = self.log.generation
            try:
                records = await self.log.read(position, BATCH, event_types=types)
                if not records:
                    await self.log.wait_for_commit(generation, self.log.poll_interval)
                    continue
                recovering = self.errors[shard] is not None
                position = await self._handle_batch(shard, consumer, position, records)
                if recovering:
                    await self._resolve_errors(consumer, position)
                self.errors[shard] = None
                pause = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.errors[shard] = f"after {position}: {error!r}"
                log.error("action shard retrying", consumer=consumer, error=self.errors[shard])
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
                with contextlib.suppress(Exception):
                    # Resume from what was committed: part of the batch may have been.
                    position = await self.log.max_tracking_id(consumer) or 0

    async def _handle_batch(
        self, shard: int, consumer: str, position: int, records: list[Record]
    ) -> int:
        """Decide the shard's events of `records`; the position reached (checkpointed)."""
        checkpointed = position
        for record in records:
            if shard_of(record) != shard:
                continue
            try:
                wrote = await self._handle(consumer, record)
            except TrackingConflict:
                # Another process runs this shard too and got here first: what it decided
                # stands; carry on from where it has got to.
                return await self.log.max_tracking_id(consumer) or 0
            except Exception as error:
                await self._record_error(consumer, record, error)
                if checkpointed < position:
                    with contextlib.suppress(TrackingConflict):
                        await self._checkpoint(record, consumer, position)
                raise
            position = record.position
            if wrote:
                checkpointed = position
            self.positions[shard] = position
        last = records[-1].position
        if last > checkpointed:
            try:
                await self._checkpoint(records[-1], consumer, last)
            except TrackingConflict:
                return await self.log.max_tracking_id(consumer) or 0
        self.positions[shard] = last
        return last

    async def _handle(self, consumer: str, record: Record) -> bool:
        """Decide one event and append it with the checkpoint; False when nothing to do."""
        logged = self.store.logged(record)
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
        async with self.log.pool.acquire() as conn:
            await conn.execute(
                """
                UPDATE consumer_errors SET resolved_at = now(), resolution = 'retried'
                 WHERE consumer = $1 AND resolved_at IS NULL AND position <= $2
                """,
                consumer,
                position,
            )

    async def _record_error(self, consumer: str, record: Record, error: Exception) -> None:
        await record_consumer_error(
            self.log.pool, consumer, record.position, record.event_id, record.event_type, error
        )
