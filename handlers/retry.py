"""Running a command again while it loses an optimistic-concurrency race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from handlers.ports import ConcurrencyConflict

T = TypeVar("T")

ATTEMPTS = 10


async def retrying(attempt: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """Run `attempt` again (it reloads and re-decides) while it loses a race."""
    for tried in range(1, attempts + 1):
        try:
            return await attempt()
        except ConcurrencyConflict:
            if tried == attempts:
                raise
            await asyncio.sleep(random.uniform(0, 0.004 * tried))
    raise AssertionError("unreachable")
