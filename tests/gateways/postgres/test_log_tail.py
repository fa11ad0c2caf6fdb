"""LogTail: the log's recent end, read and decoded once, served to many consumers exactly."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import event

from domain.base import Aggregate
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import NewRecord, PostgresLog, RecordAppend
from gateways.postgres.log_tail import LogTail
from handlers.ports import Append

WS = UUID("00000000-0000-4000-8000-0000000000f1")


class Counter(Aggregate):
    """The test's own aggregate: started, then bumped."""

    @event("Started")
    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0

    @event("Bumped")
    def bump(self) -> None:
        self.total += 1


async def write(store: PostgresEventStore, bumps: int) -> list[int]:
    """One counter: started and bumped `bumps` times; the positions appended."""
    counter = Counter(name="c")
    for _ in range(bumps):
        counter.bump()
    appended = await store.append(Append(WS, events=counter.collect_events()))
    return list(appended.positions)


async def everything(
    tail: LogTail, after: int, *, types: frozenset[str] | None = None
) -> list[int]:
    """Positions a consumer at `after` sees through the tail, batch by batch, to the head."""
    seen: list[int] = []
    head = await tail.log.max_position()
    while after < head:
        read = await tail.entries(after, 7, stop=head, event_types=types)
        seen.extend(entry.position for entry in read.entries)
        assert read.upto > after, "every read moves the consumer on"
        after = read.upto
    return seen


async def test_consumers_at_different_places_see_exactly_the_log(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    tail = LogTail(log, store, chunk=10, capacity=40)
    await write(store, 4)
    start = await log.max_position()
    # The first reader starts the tail at the head it saw; one behind it reads the log itself.
    assert (await tail.entries(start, 10, stop=start)).entries == []
    assert tail.start == start
    positions = await write(store, 30)
    assert await everything(tail, start) == positions
    assert tail.fetches > 0
    assert await tail.read(0, 10, stop=start) is None
    behind = [r.position for r in await log.read(0, 1000)]
    assert await everything(tail, 0) == behind
    # Only the event types asked for, each decoded once, in order.
    bumped = await everything(tail, start, types=frozenset({"counter.bumped"}))
    assert bumped == positions[1:]
    read = await tail.entries(start, 100, stop=await log.max_position())
    first = read.entries[0].logged()
    assert first.position == positions[0] and first.event_type == "counter.started"
    again = await tail.entries(start, 100, stop=await log.max_position())
    assert again.entries[0].event is first, "served from memory, not decoded again"


async def test_memory_is_bounded_and_an_evicted_reader_falls_back(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    tail = LogTail(log, store, chunk=10, capacity=20)
    start = await log.max_position()
    await tail.read(start, 1, stop=start)
    positions = []
    for _ in range(5):
        positions += await write(store, 9)
    assert await everything(tail, start) == positions
    assert len(tail) <= 20
    assert tail.start is not None and tail.start > start
    assert await tail.read(start, 10, stop=await log.max_position()) is None
    assert await everything(tail, start) == positions


async def test_many_concurrent_consumers_share_one_fetch_per_stretch(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    tail = LogTail(log, store, chunk=500, capacity=5000)
    start = await log.max_position()
    await tail.read(start, 1, stop=start)
    writes = await asyncio.gather(*(write(store, 3) for _ in range(40)))
    expected = sorted(p for positions in writes for p in positions)
    seen = await asyncio.gather(*(everything(tail, start) for _ in range(20)))
    assert all(s == expected for s in seen)
    assert tail.fetches == 1, "twenty consumers, one read of the log"


async def test_an_undecodable_record_is_handed_on_with_its_error(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    tail = LogTail(log, store, chunk=10, capacity=20)
    start = await log.max_position()
    await tail.read(start, 1, stop=start)
    bad = NewRecord(
        originator_id=uuid4(),
        originator_version=1,
        topic="tests.nowhere:Gone.Started",
        event_type="gone.started",
        state=b"{}",
    )
    appended = await log.append(RecordAppend(workspace_id=WS, records=[bad]))
    read = await tail.entries(start, 10, stop=await log.max_position())
    [entry] = read.entries
    assert entry.position == appended.positions[0] and entry.event is None
    with pytest.raises(Exception, match="Gone"):
        entry.logged()


async def test_a_direct_tail_holds_nothing_and_filters_in_the_log(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    tail = LogTail.direct(log, store)
    start = await log.max_position()
    positions = await write(store, 3)
    assert await everything(tail, start, types=frozenset({"counter.started"})) == positions[:1]
    assert len(tail) == 0 and tail.fetches == 0
    nothing = await tail.entries(start, 10, stop=await log.max_position(), event_types=())
    assert nothing.entries == [] and not nothing.full


async def test_the_head_is_read_once_per_wake_up_and_again_after_one(
    log: PostgresLog, store: PostgresEventStore
) -> None:
    heard = [0]
    tail = LogTail(log, store, wakeups=lambda: heard[0], head_ttl=60)
    first = await log.max_position()
    heads = await asyncio.gather(*(tail.head() for _ in range(20)))
    assert heads == [first] * 20 and tail.head_reads == 1
    positions = await write(store, 2)
    # Not yet heard of: the shared read stands (the announcement will wake the consumer).
    assert await tail.head() == first and tail.head_reads == 1
    heard[0] += 1
    assert await tail.head() == positions[-1] and tail.head_reads == 2
    # With nothing announcing commits, a read is shared for `head_ttl` at most.
    quiet = LogTail(log, store, wakeups=lambda: 0, head_ttl=0.05)
    assert await quiet.head() == positions[-1]
    later = await write(store, 1)
    await asyncio.sleep(0.06)
    assert await quiet.head() == later[-1] and quiet.head_reads == 2
