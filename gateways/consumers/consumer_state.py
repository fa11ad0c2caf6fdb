"""The projection runtime's shared vocabulary: states, errors, status, checkpoint names, locks.

`projector` (the registry and the operators' verbs), `projection_runner` (one projection's
loop) and `rebuild` (blue/green) all speak in these terms; they live here so that the runner
needs nothing from `projector`, which imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from gateways.postgres.log_store import Connection


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


class Signal:
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


def describe_error(error: BaseException) -> str:
    """An error as one line for logs and `consumer_errors`: its type, then its message."""
    return f"{type(error).__name__}: {error}"
