"""PostgresLog on a real Postgres: ordering, group commit, counters, claims, tracking, reads."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
import pytest

from gateways.postgres.database import open_pool
from gateways.postgres.log_store import (
    NewRecord,
    PostgresLog,
    Record,
    RecordAppend,
    RecordAppended,
)
from handlers.ports import (
    Allocation,
    Checkpoint,
    Claim,
    ConcurrencyConflict,
    ReservationTaken,
    TrackingConflict,
)
from tests.conftest import Servers

WS = UUID("00000000-0000-4000-8000-000000000001")
OTHER_WS = UUID("00000000-0000-4000-8000-000000000002")


def new(
    originator_id: UUID | None = None,
    version: int = 1,
    *,
    event_type: str = "thing.happened",
    topic: str = "tests.things:Thing.Happened",
    state: dict[str, Any] | None = None,
) -> NewRecord:
    return NewRecord(
        originator_id=originator_id or uuid4(),
        originator_version=version,
        topic=topic,
        event_type=event_type,
        state=orjson.dumps(state or {}),
    )


async def read_all(log: PostgresLog) -> list[Record]:
    records: list[Record] = []
    after = 0
    while batch := await log.read(after, 1000):
        records.extend(batch)
        after = batch[-1].position
    return records


def outcome_of(results: Sequence[RecordAppended | BaseException]) -> list[RecordAppended]:
    """The successes of a gather(..., return_exceptions=True), failing on unexpected errors."""
    return [r for r in results if isinstance(r, RecordAppended)]


async def insert_raw(conn: Any, event_type: str) -> int:
    """An event inserted by hand, as a transaction that bypasses PostgresLog would."""
    position: int = await conn.fetchval(
        """
        INSERT INTO events (event_id, originator_id, originator_version, topic, event_type, state)
        VALUES ($1, $2, 1, 'tests.raw:Raw', $3, $4) RETURNING position
        """,
        uuid4(),
        uuid4(),
        event_type,
        b"{}",
    )
    return position


@pytest.fixture
async def peer_logs(
    servers: Servers, schema_name: str, pool: asyncpg.Pool
) -> AsyncIterator[list[PostgresLog]]:
    """Three more PostgresLogs on the same schema with pools of their own, like other processes.

    One PostgresLog runs one transaction at a time, so the out-of-order-commit hazard only
    exists between instances: these make appending transactions genuinely concurrent.
    (`pool` is requested so the schema outlives these pools.)
    """
    pools = [
        await open_pool(servers.database_url, schema_name, min_size=1, max_size=4) for _ in range(3)
    ]
    logs = [PostgresLog(p, schema_name, poll_interval=0.05) for p in pools]
    try:
        yield logs
    finally:
        for peer in logs:
            await peer.close()
        for p in pools:
            await p.close()


# ---- 1. no consumer skips a late-committed event ---------------------------------------------


async def _write_concurrently(
    logs: Sequence[PostgresLog], writers: int = 32, commands: int = 60
) -> list[int]:
    """Writers spread over the logs, each appending single- and multi-event commands."""
    acknowledged: list[int] = []

    async def writer(number: int) -> None:
        log = logs[number % len(logs)]
        rng = random.Random(number)
        stream, version = uuid4(), 0
        for _ in range(commands):
            if rng.random() < 0.5:
                version += 1
                records = [new(stream, version)]
            else:
                records = [new() for _ in range(rng.randint(2, 6))]
            result = await log.append(RecordAppend(WS, records=records))
            assert len(result.positions) == len(records)
            acknowledged.extend(result.positions)
            if rng.random() < 0.3:
                await asyncio.sleep(0)

    await asyncio.gather(*(writer(n) for n in range(writers)))
    return acknowledged


async def _follower(log: PostgresLog, seen: list[int]) -> None:
    async for batch in log.follow(after=0, batch_size=97):
        seen.extend(r.position for r in batch)


async def _poller(log: PostgresLog, seen: list[int]) -> None:
    """The naive consumer: read everything after the last position seen, in a tight loop."""
    last = 0
    while True:
        batch = await log.read(after=last, limit=97)
        if batch:
            seen.extend(r.position for r in batch)
            last = batch[-1].position


async def _check_no_consumer_skips(
    log: PostgresLog,
    peer_logs: list[PostgresLog],
    consumer: Callable[[PostgresLog, list[int]], Any],
) -> None:
    writer_logs = [log, *peer_logs]
    consumer_logs = [log, peer_logs[0]]
    seen: list[list[int]] = [[] for _ in consumer_logs]
    tasks = [asyncio.create_task(consumer(c, s)) for c, s in zip(consumer_logs, seen, strict=True)]
    try:
        acknowledged = await _write_concurrently(writer_logs)
        target = await log.max_position()
        async with asyncio.timeout(15):
            while any((s[-1] if s else 0) < target for s in seen):
                for task in tasks:
                    if task.done():
                        task.result()  # a consumer that crashed fails the test here
                await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    committed = [r.position for r in await read_all(log)]
    assert len(committed) > 3000
    assert committed[-1] == target
    assert sorted(acknowledged) == committed, "acknowledged positions differ from the table"
    for positions in seen:
        skipped = sorted(set(committed) - set(positions))
        assert not skipped, f"consumer skipped {len(skipped)} committed events: {skipped[:10]}"
        assert all(a < b for a, b in itertools.pairwise(positions)), (
            "positions not strictly increasing"
        )
        assert positions == committed


async def test_no_follower_skips_a_late_committed_event(
    log: PostgresLog, peer_logs: list[PostgresLog]
) -> None:
    await _check_no_consumer_skips(log, peer_logs, _follower)


async def test_no_naive_polling_reader_skips_a_late_committed_event(
    log: PostgresLog, peer_logs: list[PostgresLog]
) -> None:
    await _check_no_consumer_skips(log, peer_logs, _poller)


async def test_without_the_lock_a_reader_skips_a_late_commit(
    log: PostgresLog, pool: asyncpg.Pool
) -> None:
    """Why the lock exists: positions are drawn at insert time, not at commit time."""
    async with pool.acquire() as slow, pool.acquire() as fast:
        await slow.execute("BEGIN")
        slow_position = await insert_raw(slow, "slow.appended")
        await fast.execute("BEGIN")
        fast_position = await insert_raw(fast, "fast.appended")
        await fast.execute("COMMIT")
        assert slow_position < fast_position

        seen = [r.position for r in await log.read(after=0)]
        assert seen == [fast_position]
        await slow.execute("COMMIT")

    # The slow event is committed now, but lies behind what the reader has seen: lost to it.
    assert await log.read(after=seen[-1]) == []
    assert [r.position for r in await log.read(after=0)] == [slow_position, fast_position]


async def test_an_appender_holding_the_lock_holds_back_later_appends(
    log: PostgresLog, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as slow:
        # what every appending transaction does first: take the schema's append lock
        await slow.execute("BEGIN")
        await slow.execute("SELECT pg_advisory_xact_lock(hashtext($1))", log.lock_key)
        slow_position = await insert_raw(slow, "slow.appended")

        later = asyncio.create_task(
            log.append(RecordAppend(WS, records=[new(event_type="later.appended")]))
        )
        await asyncio.sleep(0.5)
        assert not later.done(), "an append committed while another appender held the lock"
        # readers take no lock: they are not blocked, and see neither event yet
        assert await asyncio.wait_for(log.read(after=0), 2) == []
        assert await asyncio.wait_for(log.max_position(), 2) == 0

        await slow.execute("COMMIT")

    result = await asyncio.wait_for(later, 5)
    assert result.positions[0] > slow_position
    assert [(r.position, r.event_type) for r in await log.read(after=0)] == [
        (slow_position, "slow.appended"),
        (result.positions[0], "later.appended"),
    ]


async def test_autovacuum_style_locks_do_not_stall_appends(
    log: PostgresLog, pool: asyncpg.Pool
) -> None:
    """The append lock is advisory, so SHARE UPDATE EXCLUSIVE (what autovacuum, ANALYZE and
    CREATE INDEX CONCURRENTLY take on the events table) never holds appends back."""
    async with pool.acquire() as maintenance:
        await maintenance.execute("BEGIN; LOCK TABLE events IN SHARE UPDATE EXCLUSIVE MODE")
        try:
            result = await asyncio.wait_for(
                log.append(RecordAppend(WS, records=[new(event_type="during.vacuum")])), 5
            )
        finally:
            await maintenance.execute("COMMIT")
    assert [r.position for r in await log.read(after=0)] == list(result.positions)


# ---- 2. group commit ------------------------------------------------------------------------


@pytest.mark.parametrize("max_batch", [1000, 8])
async def test_group_commit_batches_and_fails_only_the_conflicting_command(
    pool: asyncpg.Pool, schema_name: str, max_batch: int
) -> None:
    log = PostgresLog(pool, schema_name, max_batch=max_batch)
    try:
        existing = uuid4()
        await log.append(RecordAppend(WS, records=[new(existing, 1)]))
        batches_before = log.batches

        duplicated = uuid4()
        commands: list[RecordAppend] = []
        for i in range(200):
            if i == 100:  # stale: `existing` is at version 1, not 5
                command = RecordAppend(
                    WS,
                    records=[new(existing, 2)],
                    expect={existing: 5},
                    claims=[Claim("key:stale", uuid4(), exclusive=True)],
                    counters=["n"],
                )
            elif i in (60, 140):  # both append version 1 of the same aggregate
                command = RecordAppend(
                    WS,
                    records=[new(duplicated, 1, state={"i": i})],
                    claims=[Claim(f"key:{i}", uuid4())],
                    counters=["n"],
                )
            else:
                command = RecordAppend(
                    WS,
                    records=[new(state={"i": i}) for _ in range(1 + i % 3)],
                    claims=[Claim(f"key:{i}", uuid4(), exclusive=True)],
                    counters=["n"],
                )
            commands.append(command)

        results = await asyncio.gather(*(log.append(c) for c in commands), return_exceptions=True)

        failed = {i for i, r in enumerate(results) if isinstance(r, BaseException)}
        assert all(isinstance(results[i], ConcurrencyConflict) for i in failed)
        assert 100 in failed
        assert len(failed) == 2
        (loser,) = failed & {60, 140}
        (winner,) = {60, 140} - {loser}
        assert log.batches - batches_before < len(commands)

        # each success got its own positions, holding exactly its own records
        by_position = {r.position: r for r in await read_all(log)}
        all_positions: list[int] = []
        for i, result in enumerate(results):
            if not isinstance(result, RecordAppended):
                continue
            assert len(result.positions) == len(commands[i].records)
            for position, record in zip(result.positions, commands[i].records, strict=True):
                stored = by_position[position]
                assert (stored.originator_id, stored.originator_version, stored.state) == (
                    record.originator_id,
                    record.originator_version,
                    record.state,
                )
            all_positions.extend(result.positions)
        assert len(set(all_positions)) == len(all_positions)
        assert len(by_position) == len(all_positions) + 1  # + the `existing` event

        # the failed commands wrote nothing: no events, no claims, no counter values
        assert [r.originator_version for r in await log.read_stream(existing)] == [1]
        assert [orjson.loads(r.state) for r in await log.read_stream(duplicated)] == [{"i": winner}]
        assert await log.holder("key:stale") is None
        assert await log.holder(f"key:{loser}") is None
        assert await log.holder(f"key:{winner}") == commands[winner].claims[0].owner
        successes = outcome_of(results)
        assert await log.counter("n") == len(successes) == 198
        assert sorted(r.allocation.counter("n") for r in successes) == list(range(1, 199))
    finally:
        await log.close()


async def test_append_many_shares_commits_and_decides_each_command_alone(
    log: PostgresLog,
) -> None:
    """A bulk append is many commands, not one: each keeps its own checks, claims, counter
    value and idempotency, and a failing one (build, exclusive claim) takes nothing with it."""
    await log.append(RecordAppend(WS, records=[new()], claims=[Claim("taken", uuid4(), True)]))
    await log.append(RecordAppend(WS, records=[new()], idempotency=Claim("idem:done", uuid4())))
    batches_before = log.batches
    owners = [uuid4() for _ in range(300)]
    commands: list[RecordAppend] = []
    for i, owner in enumerate(owners):
        aggregate = uuid4()
        commands.append(
            RecordAppend(
                WS,
                build=_numbered(aggregate, fail=i == 7),
                claims=[
                    Claim(f"email:{i % 10}", owner),  # shared: the first of each ten holds it
                    *([Claim("taken", owner, exclusive=True)] if i == 11 else []),
                ],
                counters=["ws:requests"],
                idempotency=Claim("idem:done" if i == 13 else f"idem:{i % 250}", owner),
            )
        )
    results = await log.append_many(commands)

    assert len(results) == 300
    assert isinstance(results[7], BuildFailed)
    assert isinstance(results[11], ReservationTaken)
    replayed = {i for i, r in enumerate(results) if isinstance(r, RecordAppended) and r.replayed}
    # 13 retries a committed command; 250..299 retry 0..49 of this very batch, except those
    # whose first try failed or was itself a retry (7, 11, 13): those are first tries now
    retries = {i for i in range(250, 300) if i % 250 not in (7, 11, 13)}
    assert replayed == {13, *retries}
    written = [r for r in results if isinstance(r, RecordAppended) and not r.replayed]
    assert len(written) == 300 - 2 - len(replayed)
    assert sorted(r.allocation.counter("ws:requests") for r in written) == list(
        range(1, len(written) + 1)
    )
    assert await log.counter("ws:requests") == len(written)
    for i in range(10):
        first = next(j for j in range(300) if j % 10 == i and j not in (7, 11, 13))
        assert await log.holder(f"email:{i}") == owners[first]
    for i in retries:
        result = results[i]
        assert isinstance(result, RecordAppended) and not result.records
        assert result.allocation.holder(f"idem:{i % 250}") == owners[i % 250]
    assert await log.holder("taken") != owners[11]
    assert log.batches - batches_before <= 2  # shared commits, not one per command


# ---- 3. counters ----------------------------------------------------------------------------


class BuildFailed(Exception):
    pass


def _numbered(aggregate: UUID, fail: bool) -> Callable[[Allocation], Sequence[NewRecord]]:
    def build(allocation: Allocation) -> Sequence[NewRecord]:
        if fail:
            raise BuildFailed
        return [new(aggregate, 1, state={"number": allocation.counter("ws:requests")})]

    return build


async def test_counters_are_gapless_unique_and_in_commit_order(
    log: PostgresLog, pool: asyncpg.Pool, schema_name: str
) -> None:
    # a second PostgresLog with small batches: two writers whose transactions contend
    other = PostgresLog(pool, schema_name, max_batch=16)
    existing = uuid4()
    await log.append(RecordAppend(WS, records=[new(existing, 1)]))
    try:
        commands: list[RecordAppend] = []
        succeeding = 0
        while succeeding < 300:
            i, aggregate = len(commands), uuid4()
            if i % 11 == 5:  # build raises
                build = _numbered(aggregate, fail=True)
                expect = {aggregate: 0}
            elif i % 11 == 9:  # stale expect
                build = _numbered(aggregate, fail=False)
                expect = {existing: 0}
            else:
                build = _numbered(aggregate, fail=False)
                expect = {aggregate: 0}
                succeeding += 1
            commands.append(RecordAppend(WS, build=build, expect=expect, counters=["ws:requests"]))

        results = await asyncio.gather(
            *((log if i % 2 else other).append(c) for i, c in enumerate(commands)),
            return_exceptions=True,
        )
    finally:
        await other.close()

    for i, result in enumerate(results):
        if i % 11 == 5:
            assert isinstance(result, BuildFailed)
        elif i % 11 == 9:
            assert isinstance(result, ConcurrencyConflict)
        else:
            assert isinstance(result, RecordAppended), result
            # the number the command was told is the number stored in its event
            (record,) = result.records
            number = result.allocation.counter("ws:requests")
            assert orjson.loads(record.state) == {"number": number}

    numbered = [r for r in await read_all(log) if r.originator_id != existing]
    numbers = [orjson.loads(r.state)["number"] for r in numbered]  # in position order
    assert numbers == list(range(1, 301))
    assert await log.counter("ws:requests") == 300


# ---- 4. claims ------------------------------------------------------------------------------


async def test_concurrent_shared_claims_elect_one_holder(log: PostgresLog) -> None:
    key = "email:ws1:ada@example.com"
    owners = [uuid4() for _ in range(200)]
    results = await asyncio.gather(
        *(
            log.append(RecordAppend(WS, records=[new(owner, 1)], claims=[Claim(key, owner)]))
            for owner in owners
        )
    )
    holders = {r.allocation.holder(key) for r in results}
    assert len(holders) == 1
    (holder,) = holders
    assert holder in owners
    assert await log.holder(key) == holder
    # the holder is the claimant whose events come first in the log
    first = min(results, key=lambda r: r.positions[0])
    assert first.records[0].originator_id == holder
    # every claimant's events were written (a shared claim never fails the command)
    assert len(await read_all(log)) == 200


async def test_concurrent_exclusive_claims_admit_one(log: PostgresLog) -> None:
    key = "name:ws1:acme"
    owners = [uuid4() for _ in range(50)]
    results = await asyncio.gather(
        *(
            log.append(RecordAppend(WS, records=[new(owner, 1)], claims=[Claim(key, owner, True)]))
            for owner in owners
        ),
        return_exceptions=True,
    )
    successes = outcome_of(results)
    assert len(successes) == 1
    holder = successes[0].allocation.holder(key)
    assert await log.holder(key) == holder
    taken = [r for r in results if isinstance(r, ReservationTaken)]
    assert len(taken) == 49
    assert all(t.key == key and t.holder == holder for t in taken)
    assert [r.originator_id for r in await read_all(log)] == [holder]


async def test_exclusive_claims_releases_and_release_with_claim(log: PostgresLog) -> None:
    key = "token:abc"
    a, b, c = uuid4(), uuid4(), uuid4()
    first = await log.append(RecordAppend(WS, records=[new(a, 1)], claims=[Claim(key, a, True)]))
    assert first.allocation.holder(key) == a

    # another owner's exclusive claim fails the command, which writes nothing
    with pytest.raises(ReservationTaken) as taken:
        await log.append(RecordAppend(WS, records=[new(b, 1)], claims=[Claim(key, b, True)]))
    assert taken.value.holder == a
    assert await log.read_stream(b) == []
    # the holder claiming again is fine
    again = await log.append(RecordAppend(WS, claims=[Claim(key, a, True)]))
    assert again.allocation.holder(key) == a

    # a release frees the key; a later claim takes it
    await log.append(RecordAppend(WS, records=[new(a, 2)], releases=[key]))
    assert await log.holder(key) is None
    taken_by_b = await log.append(
        RecordAppend(WS, records=[new(b, 1)], claims=[Claim(key, b, True)])
    )
    assert taken_by_b.allocation.holder(key) == b
    assert await log.holder(key) == b

    # release and claim in one command hands the key over atomically
    handed = await log.append(
        RecordAppend(WS, records=[new(c, 1)], releases=[key], claims=[Claim(key, c, True)])
    )
    assert handed.allocation.holder(key) == c
    assert await log.holder(key) == c

    # releasing a key nobody holds is harmless
    await log.append(RecordAppend(WS, releases=["never:held"]))
    assert await log.holder("never:held") is None


async def test_claim_and_release_in_one_batch(log: PostgresLog) -> None:
    key = "phone:ws1:+15550100"
    a, b = uuid4(), uuid4()
    await log.append(RecordAppend(WS, claims=[Claim(key, a, True)]))
    # queued together: the release comes first, so the exclusive claim after it succeeds
    released, claimed = await asyncio.gather(
        log.append(RecordAppend(WS, releases=[key])),
        log.append(RecordAppend(WS, claims=[Claim(key, b, True)])),
    )
    assert released.positions == []
    assert dict(released.allocation.holders) == {}
    assert claimed.allocation.holder(key) == b
    assert await log.holder(key) == b


# ---- 5. checkpoints -------------------------------------------------------------------------


async def test_checkpoint_is_written_atomically_with_the_append(
    log: PostgresLog, pool: asyncpg.Pool
) -> None:
    first = uuid4()
    await log.append(RecordAppend(WS, records=[new(first, 1)], checkpoint=Checkpoint("c", 5)))
    assert await log.max_tracking_id("c") == 5
    assert len(await log.read_stream(first)) == 1

    for stale_position in (5, 3):
        rejected = uuid4()
        with pytest.raises(TrackingConflict):
            await log.append(
                RecordAppend(
                    WS,
                    records=[new(rejected, 1)],
                    counters=["n"],
                    checkpoint=Checkpoint("c", stale_position),
                )
            )
        assert await log.read_stream(rejected) == []
        assert await log.counter("n") == 0
    assert await log.max_tracking_id("c") == 5

    # a command failing for another reason does not move the checkpoint either
    with pytest.raises(ConcurrencyConflict):
        await log.append(
            RecordAppend(
                WS, records=[new(first, 2)], expect={first: 7}, checkpoint=Checkpoint("c", 9)
            )
        )
    assert await log.max_tracking_id("c") == 5

    # two concurrent commands recording the same position: exactly one wins
    results = await asyncio.gather(
        *(
            log.append(RecordAppend(WS, records=[new()], checkpoint=Checkpoint("c", 6)))
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    assert len(outcome_of(results)) == 1
    assert sum(isinstance(r, TrackingConflict) for r in results) == 1
    assert await log.max_tracking_id("c") == 6
    assert len(await read_all(log)) == 2


async def test_record_checkpoint_in_the_callers_transaction(
    log: PostgresLog, pool: asyncpg.Pool
) -> None:
    assert await log.max_tracking_id("projection") is None
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE view_rows (id int PRIMARY KEY)")
        with pytest.raises(RuntimeError, match="projection crashed"):
            async with conn.transaction():
                await conn.execute("INSERT INTO view_rows VALUES (1)")
                await log.record_checkpoint(conn, Checkpoint("projection", 3))
                raise RuntimeError("projection crashed")
        assert await log.max_tracking_id("projection") is None
        assert await conn.fetchval("SELECT count(*) FROM view_rows") == 0

        async with conn.transaction():
            await conn.execute("INSERT INTO view_rows VALUES (1)")
            await log.record_checkpoint(conn, Checkpoint("projection", 3))
        assert await log.max_tracking_id("projection") == 3

        for stale in (3, 2):
            with pytest.raises(TrackingConflict):
                async with conn.transaction():
                    await conn.execute("INSERT INTO view_rows VALUES (2)")
                    await log.record_checkpoint(conn, Checkpoint("projection", stale))
        assert await conn.fetchval("SELECT count(*) FROM view_rows") == 1

        async with conn.transaction():
            await log.record_checkpoint(conn, Checkpoint("projection", 4))
    assert await log.max_tracking_id("projection") == 4

    # both paths share one table: an append cannot move a checkpoint backwards either
    with pytest.raises(TrackingConflict):
        await log.append(RecordAppend(WS, records=[new()], checkpoint=Checkpoint("projection", 4)))


# ---- 6. reads -------------------------------------------------------------------------------


async def test_read_stream_filters(log: PostgresLog) -> None:
    stream, other = uuid4(), uuid4()
    for version in range(1, 7):
        await log.append(RecordAppend(WS, records=[new(stream, version)]))
        await log.append(RecordAppend(WS, records=[new(other, version)]))
    records = await log.read_stream(stream)
    assert [r.originator_version for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r.originator_id == stream for r in records)
    at = {r.originator_version: r for r in records}

    async def versions(**kwargs: Any) -> list[int]:
        return [r.originator_version for r in await log.read_stream(stream, **kwargs)]

    assert await versions(gt=2) == [3, 4, 5, 6]
    assert await versions(lte=4) == [1, 2, 3, 4]
    assert await versions(gt=2, lte=4) == [3, 4]
    assert await versions(desc=True) == [6, 5, 4, 3, 2, 1]
    assert await versions(desc=True, limit=2) == [6, 5]
    assert await versions(limit=3) == [1, 2, 3]
    assert await versions(gt=1, desc=True, limit=1) == [6]
    # positions interleave with the other stream's; the cut is on the global position
    assert await versions(until_position=at[3].position) == [1, 2, 3]
    assert await versions(until_position=at[3].position + 1) == [1, 2, 3]
    assert await versions(until_position=at[1].position - 1) == []
    # each append is its own transaction, so recorded_at strictly increases
    times = [at[v].recorded_at for v in range(1, 7)]
    assert times == sorted(set(times))
    assert await versions(until_time=at[4].recorded_at) == [1, 2, 3, 4]
    assert await versions(until_time=at[1].recorded_at, lte=3, gt=0) == [1]
    assert await log.read_stream(uuid4()) == []


async def test_read_filters(log: PostgresLog) -> None:
    created = await log.append(
        RecordAppend(
            WS,
            records=[
                new(event_type="lead.created", topic="tests.leads:Lead.Created"),
                new(event_type="lead.noted", topic="tests.leads:Lead.Noted"),
            ],
        )
    )
    elsewhere = await log.append(
        RecordAppend(OTHER_WS, records=[new(event_type="lead.created", topic="t:Lead.Created")])
    )
    global_ = await log.append(RecordAppend(None, records=[new(event_type="system.started")]))
    p1, p2 = created.positions
    (p3,) = elsewhere.positions
    (p4,) = global_.positions

    async def positions(after: int = 0, **kwargs: Any) -> list[int]:
        return [r.position for r in await log.read(after, **kwargs)]

    assert await positions() == [p1, p2, p3, p4]
    assert await positions(p1) == [p2, p3, p4]
    assert await positions(limit=2) == [p1, p2]
    assert await positions(stop=p3) == [p1, p2, p3]
    assert await positions(p1, stop=p3) == [p2, p3]
    assert await positions(p3, stop=p3) == []
    assert await positions(event_types=["lead.created"]) == [p1, p3]
    assert await positions(event_types=["lead.noted", "system.started"]) == [p2, p4]
    assert await positions(workspace_id=WS) == [p1, p2]
    assert await positions(workspace_id=OTHER_WS, event_types=["lead.created"]) == [p3]
    assert await positions(topics=["tests.leads:Lead.Noted"]) == [p2]
    assert await positions(event_types=["nothing.matches"]) == []

    records = await log.read(0)
    assert [r.workspace_id for r in records] == [WS, WS, OTHER_WS, None]
    assert len({r.event_id for r in records}) == 4
    assert await log.max_position() == p4


# ---- 7. only the culprit fails ----------------------------------------------------------------


async def test_only_the_culprit_fails_when_the_batch_transaction_fails(log: PostgresLog) -> None:
    """The checks cannot foresee a NUL byte, which Postgres text rejects: the whole batch
    transaction fails, and the store must retry so that only that command fails."""
    contested = uuid4()
    culprit_at, rival_at = 20, 40
    commands: list[RecordAppend] = []
    for i in range(60):
        if i == culprit_at:
            command = RecordAppend(
                WS,
                records=[new(contested, 1, event_type="bad\x00type")],
                claims=[Claim("key:contested", uuid4(), exclusive=True)],
                counters=["n"],
            )
        elif i == rival_at:
            # conflicts with the culprit within the batch; the culprit never commits, though
            command = RecordAppend(
                WS,
                records=[new(contested, 1, state={"by": "rival"})],
                claims=[Claim("key:contested", uuid4(), exclusive=True)],
                counters=["n"],
            )
        else:
            command = RecordAppend(WS, records=[new(), new()], counters=["n"])
        commands.append(command)

    results = await asyncio.gather(*(log.append(c) for c in commands), return_exceptions=True)
    await log.append(RecordAppend(WS))  # queued last: once it is done, so are any retries

    assert isinstance(results[culprit_at], asyncpg.PostgresError)
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [culprit_at]
    # nothing of the culprit was written; everything of the others was
    rival = results[rival_at]
    assert isinstance(rival, RecordAppended)
    assert [orjson.loads(r.state) for r in await log.read_stream(contested)] == [{"by": "rival"}]
    assert await log.holder("key:contested") == commands[rival_at].claims[0].owner
    committed = await read_all(log)
    assert len(committed) == 2 * 58 + 1
    assert all("\x00" not in r.event_type for r in committed)
    successes = outcome_of(results)
    assert sorted(r.allocation.counter("n") for r in successes) == list(range(1, 60))
    assert await log.counter("n") == 59
    # the store keeps working after the failure
    after = await log.append(RecordAppend(WS, records=[new()]))
    assert after.positions[0] > committed[-1].position


async def test_a_command_reported_as_failed_wrote_nothing(log: PostgresLog) -> None:
    """Whatever the failure path, a command whose caller got an error left no trace, and a
    command rejected only because of a culprit that then failed is decided again without it."""
    held_by = uuid4()
    await log.append(RecordAppend(WS, claims=[Claim("key:held", held_by, exclusive=True)]))
    contested = uuid4()
    commands = [
        # 0: the culprit, claiming a free key and creating `contested`
        RecordAppend(
            WS,
            records=[new(contested, 1, event_type="bad\x00", state={"by": "culprit"})],
            claims=[Claim("key:free", uuid4(), exclusive=True)],
        ),
        # 1, 2: would conflict with the culprit, which never commits
        RecordAppend(WS, records=[new()], claims=[Claim("key:free", uuid4(), exclusive=True)]),
        RecordAppend(WS, records=[new(contested, 1)]),
        # 3, 4: genuinely rejected
        RecordAppend(WS, records=[new()], claims=[Claim("key:held", uuid4(), exclusive=True)]),
        RecordAppend(WS, records=[new()], expect={uuid4(): 3}),
        # 5: unrelated
        RecordAppend(WS, records=[new()]),
    ]
    results = await asyncio.gather(*(log.append(c) for c in commands), return_exceptions=True)
    await log.append(RecordAppend(WS))  # queued last: once it is done, so are any retries

    assert isinstance(results[0], asyncpg.PostgresError)
    assert isinstance(results[1], RecordAppended)
    assert isinstance(results[2], RecordAppended)
    assert isinstance(results[3], ReservationTaken)
    assert isinstance(results[4], ConcurrencyConflict)
    assert isinstance(results[5], RecordAppended)
    committed = {(r.originator_id, r.originator_version, r.state) for r in await read_all(log)}
    for command, result in zip(commands, results, strict=True):
        written = {
            (r.originator_id, r.originator_version, r.state) in committed for r in command.records
        }
        assert written == {isinstance(result, RecordAppended)}, (command, result)
    assert len(committed) == 3
    assert await log.holder("key:held") == held_by
    assert await log.holder("key:free") == commands[1].claims[0].owner


# ---- 8. contract details -------------------------------------------------------------------


async def test_versions_must_follow_on_without_gaps(log: PostgresLog) -> None:
    aggregate = uuid4()
    await log.append(RecordAppend(WS, records=[new(aggregate, 1)]))
    with pytest.raises(ValueError, match="gap"):
        await log.append(RecordAppend(WS, records=[new(aggregate, 3)]))
    with pytest.raises(ConcurrencyConflict):
        await log.append(RecordAppend(WS, records=[new(aggregate, 1)]))
    await log.append(RecordAppend(WS, records=[new(aggregate, 2)]))
    assert [r.originator_version for r in await log.read_stream(aggregate)] == [1, 2]


async def test_build_must_name_what_it_writes_in_expect(log: PostgresLog) -> None:
    existing = uuid4()
    await log.append(RecordAppend(WS, records=[new(existing, 1)]))
    with pytest.raises(ValueError, match="expect"):
        await log.append(RecordAppend(WS, build=lambda _: [new(existing, 2)]))
    assert len(await log.read(after=0)) == 1
    result = await log.append(
        RecordAppend(WS, build=lambda _: [new(existing, 2)], expect={existing: 1})
    )
    assert len(result.positions) == 1
    created = await log.append(RecordAppend(WS, build=lambda _: [new(uuid4(), 1)]))
    assert len(created.positions) == 1


async def test_close_lets_queued_appends_finish(pool: asyncpg.Pool, schema_name: str) -> None:
    log = PostgresLog(pool, schema_name)
    pending = [
        asyncio.create_task(log.append(RecordAppend(WS, records=[new()]))) for _ in range(300)
    ]
    await asyncio.sleep(0)  # let them queue
    await log.close()
    results = await asyncio.gather(*pending)
    assert len({r.positions[0] for r in results}) == 300
    assert len(await read_all(log)) == 300
    with pytest.raises(RuntimeError, match="closed"):
        await log.append(RecordAppend(WS, records=[new()]))


async def test_versions_compare_as_numbers_past_nine(log: PostgresLog) -> None:
    """Regression: the batch's version lookup once ordered versions as text ('9' > '10')."""
    aggregate = uuid4()
    for version in range(1, 13):
        await log.append(RecordAppend(WS, records=[new(aggregate, version)]))
    with pytest.raises(ConcurrencyConflict):
        await log.append(RecordAppend(WS, records=[new(aggregate, 12)]))
    assert [r.originator_version for r in await log.read_stream(aggregate)] == list(range(1, 13))
