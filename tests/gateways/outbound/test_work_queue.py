"""The work queue: each id by one task at a time, asked again runs once more, stop waits."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

from gateways.outbound.work_queue import WorkQueue


async def test_an_id_is_worked_on_by_one_task_at_a_time_and_again_when_asked() -> None:
    busy: set[UUID] = set()
    overlaps = 0
    done: list[UUID] = []
    release = asyncio.Event()

    async def handle(item: UUID) -> None:
        nonlocal overlaps
        if item in busy:
            overlaps += 1
        busy.add(item)
        await release.wait()
        busy.discard(item)
        done.append(item)

    queue = WorkQueue(handle, workers=4)
    queue.start("test")
    one, two = uuid.uuid4(), uuid.uuid4()
    queue.put(one)
    queue.put(two)
    await asyncio.sleep(0.01)
    queue.put(one)  # in hand: once more afterwards, not in parallel
    queue.put(one)  # asked twice while in hand: still once more
    release.set()
    for _ in range(100):
        if len(done) == 3:
            break
        await asyncio.sleep(0.01)
    await queue.stop(1.0)
    assert overlaps == 0
    assert sorted(done, key=str) == sorted([one, one, two], key=str)


async def test_stop_lets_the_work_in_hand_finish() -> None:
    finished: list[UUID] = []

    async def handle(item: UUID) -> None:
        await asyncio.sleep(0.2)
        finished.append(item)

    queue = WorkQueue(handle, workers=2)
    queue.start("test")
    item = uuid.uuid4()
    queue.put(item)
    await asyncio.sleep(0.05)
    await queue.stop(5.0)
    assert finished == [item]
