"""Runs reactions: follow chosen events, append what a reaction decides with its checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import structlog

from domain.base import DomainEvent, LoggedEvent
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from handlers.ports import Append, Checkpoint, ConcurrencyConflict

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 20


class Reaction(Protocol):
    name: str
    event_types: frozenset[str]

    async def react(self, logged: LoggedEvent) -> Sequence[DomainEvent]: ...


class Reactor:
    """One reaction's consumer. Its events and its checkpoint are appended together, so a
    reaction takes effect exactly once; a conflicting concurrent change makes it decide
    again. A failing event stops it there (recorded in `consumer_errors`), never skipped."""

    def __init__(
        self, log_store: PostgresLog, store: PostgresEventStore, reaction: Reaction
    ) -> None:
        self.log = log_store
        self.store = store
        self.reaction = reaction
        self.consumer = f"reaction:{reaction.name}"
        self.position = 0
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
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
        self.position = await self.log.max_tracking_id(self.consumer) or 0
        types = sorted(self.reaction.event_types)
        while not self._stopping:
            generation = self.log.generation
            records = await self.log.read(self.position, 100, event_types=types)
            if not records:
                await self.log.wait_for_commit(generation, self.log.poll_interval)
                continue
            for record in records:
                try:
                    await self._handle(self.store.logged(record))
                except Exception as error:
                    self.error = f"{record.event_type} at {record.position}: {error!r}"
                    log.error("reaction stopped", consumer=self.consumer, error=self.error)
                    await self._record_error(
                        record.position, record.event_id, record.event_type, error
                    )
                    return
                self.position = record.position

    async def _handle(self, logged: LoggedEvent) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            events = await self.reaction.react(logged)
            try:
                await self.store.append(
                    Append(
                        logged.workspace_id,
                        events=events,
                        checkpoint=Checkpoint(self.consumer, logged.position),
                    )
                )
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
            repr(error),
        )
