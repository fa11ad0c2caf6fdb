"""Rebuilds, in the background, every view whose code is newer than its live tables.

After an upgrade that changes a view's tables (its `version`), the new code cannot write
to the old tables, so the view waits (`needs_rebuild`) and its reads answer 503
`view_rebuild_needed`. Rather than leave that to an operator, a worker process rebuilds
such a view blue/green from the log as soon as it starts: the swap makes the waiting
projection take over in every process. Only upgrades are rebuilt: a view whose live
tables are newer than this process's code belongs to newer processes, and an old process
must not rebuild it backwards. Two processes starting together do not both rebuild (the
rebuild's advisory lock); the loser waits for the winner's swap.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from gateways.consumers.consumer_state import describe_error
from gateways.consumers.projector import Projector
from gateways.consumers.rebuild import RebuildError, rebuild
from gateways.postgres.errors import after_failure, is_unavailable

log = structlog.get_logger(__name__)

_MAX_BACKOFF = 30.0


class UpgradeRebuilds:
    """The worker: looks for views waiting on an upgrade every `interval` seconds."""

    def __init__(self, projector: Projector, *, interval: float = 5.0) -> None:
        self.projector = projector
        self.interval = interval
        self.rebuilt: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="leadlog-upgrade-rebuilds")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            # An interrupted rebuild resumes where it stopped, in the next process to start.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        pause = self.interval
        while not self._stopping.is_set():
            try:
                await self.rebuild_upgraded()
                pause = self.interval
            except Exception as error:
                if is_unavailable(error):
                    await after_failure(self.projector.pool, error)
                log.warning("upgrade rebuild failed; retrying", error=describe_error(error))
                pause = min(pause * 2, _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)

    async def rebuild_upgraded(self) -> None:
        """Rebuild each waiting view whose live tables are of an older version."""
        waiting = self.projector.waiting_for_rebuild()
        if not waiting:
            return
        async with self.projector.pool.acquire() as conn:
            live = {
                row["name"]: int(row["live_version"])
                for row in await conn.fetch(
                    "SELECT name, live_version FROM projection_versions WHERE name = ANY($1)",
                    [p.name for p in waiting],
                )
            }
        for projection in waiting:
            version = live.get(projection.name)
            if version is None or version >= projection.version:
                continue
            log.info(
                "rebuilding a view after an upgrade",
                projection=projection.name,
                live_version=version,
                code_version=projection.version,
            )
            try:
                result = await rebuild(self.projector, projection)
            except RebuildError as error:  # another process is at it: wait for its swap
                log.info("upgrade rebuild left to another process", detail=str(error))
                continue
            self.rebuilt.append(projection.name)
            log.info(
                "view rebuilt after an upgrade",
                projection=projection.name,
                events=result.events,
                tables=dict(result.new_tables),
            )
