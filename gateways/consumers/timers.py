"""The abandonment timer worker: abandons pending leads whose timer in `lead_timers` is due.

Durable by construction: the timers are rows of the `lead_timers` projection (derived from
the log), not sleeps in memory. The worker polls that table every `interval` seconds for rows
due by now, so timers that came due while no worker ran (a restart, a crash) are found on
the first poll after the start. The clock lives here, never in the projection.

Several workers (processes) may run at once: each lead is decided against its own events
with optimistic concurrency (`handlers.abandonment`), so it is abandoned exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from gateways.consumers.projector import Projector
from gateways.postgres.errors import after_failure, describe, is_unavailable
from handlers.abandonment import DueTimer, abandon_if_pending
from handlers.ports import EventStore

log = structlog.get_logger(__name__)

PROJECTION = "lead_timers"


def utc_now() -> datetime:
    return datetime.now(UTC)


class AbandonmentTimers:
    """`gateways.workers.Worker` that fires due abandonment timers."""

    def __init__(
        self,
        projector: Projector,
        store: EventStore,
        *,
        interval: float = 5.0,
        batch_size: int = 200,
        clock: Callable[[], datetime] = utc_now,
        stop_timeout: float = 10.0,
    ) -> None:
        if interval <= 0 or batch_size < 1:
            raise ValueError("interval must be above 0 and batch_size at least 1")
        self.projector = projector
        self.store = store
        self.interval = interval
        self.batch_size = batch_size
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.abandoned = 0
        """Leads this instance abandoned since it was built."""
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self.projector.tables(PROJECTION)  # fails fast when the projection is not wired in
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="leadlog-abandonment-timers")

    async def stop(self) -> None:
        """Stop after the lead in hand (cancelled after `stop_timeout` seconds)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def due(self, now: datetime) -> list[DueTimer]:
        """Timers due by `now`, the most overdue first."""
        table = "lead_timers"  # the view the projector keeps on the live copy
        async with self.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                f"""
                SELECT lead_id, workspace_id, due_at FROM {table}
                 WHERE due_at <= $1 ORDER BY due_at, lead_id LIMIT $2
                """,
                now,
                self.batch_size,
            )
        return [DueTimer(row["lead_id"], row["workspace_id"], row["due_at"]) for row in rows]

    async def run_once(self) -> int:
        """Fire every timer due now (one batch); how many leads this call abandoned.

        A row outlives its lead's abandonment until the projection has read the change; such
        a row is loaded again, found no longer pending, and skipped."""
        fired = 0
        for timer in await self.due(self.clock()):
            if self._stop.is_set():
                break
            try:
                position = await abandon_if_pending(self.store, timer)
            except Exception as error:
                if is_unavailable(error):
                    raise  # the database is away: the whole round is retried next tick
                # One lead's failure does not hold up the others.
                log.error("abandonment failed", lead_id=str(timer.lead_id), error=repr(error))
                continue
            if position is not None:
                fired += 1
                self.abandoned += 1  # counted as each lands, so a watcher never sees it lag
                log.info(
                    "lead abandoned",
                    lead_id=str(timer.lead_id),
                    due_at=timer.due_at.isoformat(),
                    position=position,
                )
        return fired

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as error:  # the database away for a while: try again next tick
                await after_failure(self.projector.pool, error)
                log.warning("abandonment timers retrying", error=describe(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
