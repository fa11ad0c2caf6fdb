"""A queue of ids worked on by a fixed number of tasks, each id by one task at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from uuid import UUID


class WorkQueue:
    """Ids to work on (deduplicated: an id queued or in hand is not queued twice; one
    asked for again while in hand runs once more after), `workers` tasks taking them in
    order. `stop` lets the ids in hand finish, for at most `timeout` seconds."""

    def __init__(self, handle: Callable[[UUID], Awaitable[None]], workers: int) -> None:
        self.handle = handle
        self.workers = workers
        self._queue: deque[UUID] = deque()
        self._queued: set[UUID] = set()
        self._again: set[UUID] = set()
        self._work = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def start(self, name: str) -> None:
        self._stopping = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{name}-{n}") for n in range(self.workers)
        ]

    def put(self, item: UUID) -> None:
        if item in self._queued:
            self._again.add(item)
            return
        self._queued.add(item)
        self._queue.append(item)
        self._work.set()

    async def stop(self, timeout: float) -> None:
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        self._stopping.set()
        self._work.set()
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._queue:
                self._work.clear()
                await self._work.wait()
                continue
            item = self._queue.popleft()
            try:
                await self.handle(item)
            finally:
                self._queued.discard(item)
                if item in self._again:
                    self._again.discard(item)
                    if not self._stopping.is_set():
                        self.put(item)
