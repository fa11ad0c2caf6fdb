"""Leases: worker processes (here, lease managers with connections of their own) divide the
partitions fairly, never hold one twice, take over from one that leaves or dies, and give a
newcomer its share; real consumers divided across two engines stay exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from gateways.bootstrap import Engine, start_engine
from gateways.consumers.leases import (
    Leases,
    Partition,
    lease_class,
    lease_key,
    member_prefix,
)
from gateways.consumers.projector import Projector
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.status import engine_status
from gateways.workers import Worker, build_workers, partition_names
from handlers.workspaces import create_workspace
from projections.workspaces import WorkspaceDirectory
from tests.conftest import ADMIN_TOKEN, Servers, make_user, make_workspace
from tests.gateways.consumers.test_projector import Counting, applied, create_many, log_positions

FAST = {"interval": 0.2, "orphan_after": 0.6}


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class Consumers:
    """Stand-in consumers: which manager runs which partition, and any overlap seen."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.overlaps: list[tuple[str, str, str]] = []
        self.starts: dict[str, int] = {}
        self.stops: list[tuple[float, str, str]] = []
        """(when, member, partition) of every stop."""

    def partitions(
        self, member: str, names: Iterable[str], cannot_run: Iterable[str] = ()
    ) -> list[Partition]:
        refused = set(cannot_run)

        def start(name: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                other = self.running.get(name)
                if other is not None and other != member:
                    self.overlaps.append((name, other, member))
                self.running[name] = member
                self.starts[name] = self.starts.get(name, 0) + 1

            return run

        def stop(name: str) -> Callable[[], Awaitable[None]]:
            async def halt() -> None:
                await asyncio.sleep(0.01)  # a consumer finishing its batch
                self.stops.append((time.monotonic(), member, name))
                if self.running.get(name) == member:
                    del self.running[name]

            return halt

        def runnable(name: str) -> Callable[[], bool]:
            return lambda: name not in refused

        return [Partition(name, start(name), stop(name), runnable(name)) for name in names]

    def of(self, member: str) -> set[str]:
        return {name for name, runner in self.running.items() if runner == member}


NAMES = [f"projection:view{i}" for i in range(7)] + ["actions:0/2", "actions:1/2", "relay:nats"]


@pytest.fixture
def schema() -> str:
    """A schema name only: leases keep nothing in the schema itself."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def admin(servers: Servers) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(servers.database_url)
    try:
        yield conn
    finally:
        await conn.close()


class Cluster:
    def __init__(self, servers: Servers, schema: str) -> None:
        self.servers = servers
        self.schema = schema
        self.consumers = Consumers()
        self.members: dict[str, Leases] = {}

    async def join(self, label: str, names: Iterable[str] = NAMES, **options: Any) -> Leases:
        leases = Leases(
            self.servers.database_url,
            self.schema,
            self.consumers.partitions(label, names, options.pop("cannot_run", ())),
            member=label,
            **(FAST | options),
        )
        await leases.start()
        self.members[label] = leases
        return leases

    async def leave(self, label: str) -> None:
        await self.members.pop(label).stop()

    async def close(self) -> None:
        for leases in self.members.values():
            await leases.stop()

    def shares(self) -> dict[str, int]:
        return {label: len(leases.held) for label, leases in self.members.items()}

    def balanced(self, total: int = len(NAMES)) -> bool:
        held = [leases.held for leases in self.members.values()]
        everything = set().union(*held)
        sizes = sorted(len(h) for h in held)
        return (
            len(everything) == total
            and sum(sizes) == total
            and sizes[-1] - sizes[0] <= 1
            # What runs is what is held, in the process that holds it.
            and all(self.consumers.of(name) == set(m.held) for name, m in self.members.items())
        )


@pytest.fixture
async def cluster(servers: Servers, schema: str) -> AsyncIterator[Cluster]:
    found = Cluster(servers, schema)
    try:
        yield found
    finally:
        await found.close()


async def holders(admin: asyncpg.Connection, schema: str) -> list[tuple[int, int]]:
    """(lease key, backend pid) of every lease of `schema` in pg_locks."""
    rows = await admin.fetch(
        """
        SELECT objid::int8 AS key, pid FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::int8 = $1
        """,
        lease_class(schema) & 0xFFFFFFFF,
    )
    return [(row["key"], row["pid"]) for row in rows]


async def assert_held_once(admin: asyncpg.Connection, cluster: Cluster) -> None:
    """In pg_locks: every partition held by exactly one lease session, the one whose
    process believes it holds it."""
    locks = await holders(admin, cluster.schema)
    keys = [key for key, _ in locks]
    assert len(keys) == len(set(keys)), locks
    by_key = dict(locks)
    for leases in cluster.members.values():
        for name in leases.held:
            assert by_key[lease_key(cluster.schema, name) & 0xFFFFFFFF] == leases.backend_pid


async def test_alone_it_takes_every_partition_before_start_returns(cluster: Cluster) -> None:
    only = await cluster.join("a")
    assert only.held == set(NAMES)
    assert cluster.consumers.of("a") == set(NAMES)


async def test_members_divide_the_partitions_fairly_and_never_share_one(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    for label in ("a", "b", "c"):
        await cluster.join(label)
    await eventually(cluster.balanced)
    assert sorted(cluster.shares().values()) == [3, 3, 4]
    await assert_held_once(admin, cluster)
    # The members are counted from pg_stat_activity, by their application_name.
    names = await admin.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE starts_with(application_name, $1)",
        member_prefix(cluster.schema),
    )
    assert sorted(row[0].rsplit(":", 1)[1] for row in names) == ["a", "b", "c"]
    # Stable: nothing moves once balanced.
    starts = dict(cluster.consumers.starts)
    await asyncio.sleep(1.0)
    assert cluster.consumers.starts == starts
    assert cluster.consumers.overlaps == []


async def test_a_newcomer_gets_its_share_within_seconds(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    await cluster.join("a")
    await cluster.join("b")
    await eventually(cluster.balanced, timeout=5)
    assert sorted(cluster.shares().values()) == [5, 5]
    joined = time.monotonic()
    await cluster.join("c")
    await eventually(cluster.balanced, timeout=5)
    assert time.monotonic() - joined < 3
    assert sorted(cluster.shares().values()) == [3, 3, 4]
    await assert_held_once(admin, cluster)
    # A partition handed over was stopped in one process before it started in the other.
    assert cluster.consumers.overlaps == []


async def test_one_that_leaves_is_taken_over_at_once(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    for label in ("a", "b", "c"):
        await cluster.join(label)
    await eventually(cluster.balanced)
    left = time.monotonic()
    await cluster.leave("b")
    await eventually(cluster.balanced, timeout=5)
    assert time.monotonic() - left < 2
    assert sorted(cluster.shares().values()) == [5, 5]
    await assert_held_once(admin, cluster)
    assert cluster.consumers.overlaps == []


async def test_a_killed_lease_session_stops_its_consumers_and_the_others_take_over(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    for label in ("a", "b", "c"):
        await cluster.join(label)
    await eventually(cluster.balanced)
    victim = cluster.members["b"]
    had = set(victim.held)
    assert had
    # What PostgreSQL does to a process that dies: its session ends, its locks go.
    killed = time.monotonic()
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim.backend_pid)

    def stopped() -> set[str]:
        stops = cluster.consumers.stops
        return {name for when, member, name in stops if member == "b" and when >= killed}

    # It notices at once and stops everything it ran under the lost locks.
    await eventually(lambda: stopped() == had, timeout=1)
    assert victim.lost == 1
    # The others took its partitions (or it took its share back on a new session).
    await eventually(cluster.balanced, timeout=10)
    await assert_held_once(admin, cluster)
    assert victim.connected


async def test_while_the_database_is_unreachable_nothing_runs_then_it_recovers(
    servers: Servers, schema: str
) -> None:
    consumers = Consumers()
    unreachable = "postgresql://postgres@127.0.0.1:1/none"
    leases = Leases(
        unreachable,
        schema,
        consumers.partitions("a", NAMES),
        member="a",
        **FAST,
        min_backoff=0.05,
        max_backoff=0.2,
    )
    await leases.start()  # does not raise: it keeps trying
    try:
        await asyncio.sleep(0.5)
        assert leases.held == frozenset() and consumers.running == {}
        leases.database_url = servers.database_url  # the database is back
        await eventually(lambda: leases.held == set(NAMES), timeout=5)
    finally:
        await leases.stop()
    assert consumers.running == {}


async def test_a_partition_one_cannot_run_goes_to_one_that_can(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    # `a` is an older release: it has no `projection:new` and cannot run view0 (say, it
    # waits for a rebuild of its version); `b` knows and can run everything.
    old = list(NAMES)
    new = [*NAMES, "projection:new"]
    a = await cluster.join("a", old, cannot_run=["projection:view0"])
    b = await cluster.join("b", new)
    await eventually(lambda: a.held | b.held == set(new) and not a.held & b.held, timeout=10)
    assert "projection:view0" in b.held and "projection:new" in b.held
    await asyncio.sleep(1.0)
    assert abs(len(a.held) - len(b.held)) <= 2
    assert a.held | b.held == set(new)
    await assert_held_once(admin, cluster)


async def test_an_orphan_is_taken_even_over_quota(
    cluster: Cluster, admin: asyncpg.Connection
) -> None:
    # `b` counts as a member but can run nothing: what it would have is still run, by `a`.
    a = await cluster.join("a")
    await cluster.join("b", cannot_run=NAMES)
    await eventually(lambda: a.held == set(NAMES), timeout=15)
    await assert_held_once(admin, cluster)


async def test_schemas_sharing_a_database_lease_apart(servers: Servers) -> None:
    one = Cluster(servers, f"t_{uuid.uuid4().hex[:16]}")
    two = Cluster(servers, f"t_{uuid.uuid4().hex[:16]}")
    try:
        a = await one.join("a")
        b = await two.join("b")
        # Same partition names, same member ids: neither sees the other.
        await eventually(lambda: a.held == set(NAMES) and b.held == set(NAMES), timeout=5)
    finally:
        await one.close()
        await two.close()


# ---- real consumers: two engines on one schema ------------------------------------------------


@pytest.fixture
async def second(servers: Servers, engine: Engine) -> AsyncIterator[Engine]:
    other = await start_engine(engine.settings, servers.database_url, servers.nats_url, ADMIN_TOKEN)
    try:
        yield other
    finally:
        await other.close()


async def start(workers: list[Worker]) -> None:
    for worker in workers:
        await worker.start()


async def stop(workers: list[Worker]) -> None:
    for worker in reversed(workers):
        await worker.stop()


async def test_two_engines_divide_the_workers_and_decide_each_trigger_once(
    engine: Engine, second: Engine, client: httpx.AsyncClient
) -> None:
    first_workers = build_workers(engine, rebalance_interval=0.2)
    second_workers = build_workers(second, rebalance_interval=0.2)
    await start(first_workers)
    try:
        await start(second_workers)
        try:
            ws = await make_workspace(client)
            alice = await make_user(client, ws["h"], "Alice")
            created = await client.post(
                "/v1/lead-types",
                json={
                    "name": "Inbound",
                    "actions": [
                        {"type": "assign_user", "trigger": "received", "userId": alice["id"]}
                    ],
                },
                headers=ws["h"],
            )
            assert created.status_code == 201, created.text
            names = set(partition_names(engine))

            async def divided() -> bool:
                leases = (await engine_status(engine))["leases"]
                assert isinstance(leases, dict)
                workers = leases["workers"]
                return (
                    leases["free"] == []
                    and len(workers) == 2
                    and all(abs(len(w["partitions"]) - len(names) / 2) <= 1 for w in workers)
                )

            await eventually(divided, timeout=15)

            leads = []
            for batch in range(4):
                answers = await asyncio.gather(
                    *(
                        client.post("/v1/leads", json={"name": f"L{batch}-{i}"}, headers=ws["h"])
                        for i in range(10)
                    )
                )
                assert all(a.status_code == 201 for a in answers)
                leads += [UUID(a.json()["id"]) for a in answers]

            async def decided() -> bool:
                counts = await engine.pool.fetch(
                    """SELECT originator_id, count(*) FROM events
                        WHERE event_type = 'lead.action_taken' GROUP BY originator_id"""
                )
                return len(counts) == len(leads)

            await eventually(decided, timeout=30)
            await asyncio.sleep(0.5)
            counts = {
                row[0]: row[1]
                for row in await engine.pool.fetch(
                    """SELECT originator_id, count(*) FROM events
                        WHERE event_type = 'lead.action_taken' GROUP BY originator_id"""
                )
            }
            assert counts == dict.fromkeys(leads, 1)
            report = await engine_status(engine)
            consumers = report["consumers"]
            assert isinstance(consumers, list)
            board = next(c for c in consumers if c["name"] == "projection:leads")
            assert board["heldBy"] in {
                w["member"]
                for w in report["leases"]["workers"]  # type: ignore[index]
            }
        finally:
            await stop(second_workers)
        # The first takes over everything the second ran.
        await eventually(
            lambda: len(first_workers[1].held) == len(partition_names(engine)),  # type: ignore[attr-defined]
            timeout=10,
        )
    finally:
        await stop(first_workers)


# ---- a projection handed from process to process ------------------------------------------------


async def test_a_projection_handed_back_and_forth_applies_each_event_once(
    servers: Servers,
    schema_name: str,
    pool: asyncpg.Pool,
    log: PostgresLog,
    store: PostgresEventStore,
) -> None:
    other_pool = await open_pool(servers.database_url, schema_name, min_size=1, max_size=5)
    other_log = PostgresLog(other_pool, schema_name, poll_interval=0.2)
    other_store = PostgresEventStore(other_log)
    one = Projector(pool, log, store, [Counting(delay=0.002), WorkspaceDirectory()], batch_size=5)
    two = Projector(
        other_pool,
        other_log,
        other_store,
        [Counting(delay=0.002), WorkspaceDirectory()],
        batch_size=5,
    )
    try:
        await one.start_projection("counting")
        assert one.running("counting") and not one.running("workspaces")
        writing = asyncio.create_task(create_many(store, "w", 60))
        holder, other = one, two
        for _ in range(6):  # what a rebalance does: stop here first, then start there
            await asyncio.sleep(0.05)
            await holder.stop_projection("counting")
            await other.start_projection("counting")
            holder, other = other, holder
        await writing
        head = await log.max_position()
        assert await holder.wait_for("counting", head, 10)
        assert await applied(pool) == await log_positions(store)
        # Never started here: the other projection stayed stopped in both.
        assert await log.max_tracking_id("projection:workspaces") is None
        with pytest.raises(RuntimeError):
            await other.restart("counting")  # not run by this process any more
    finally:
        await asyncio.gather(one.stop(), two.stop())
        await other_log.close()
        await other_pool.close()


async def test_a_failed_projection_let_go_is_no_longer_reported_by_that_process(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    await create_workspace(store, "boom")
    projector = Projector(pool, log, store, [Counting(fail_on=frozenset({"boom"}))])
    try:
        await projector.start_projection("counting")
        await eventually(lambda: "projection:counting" in projector.stopped(), timeout=5)
        await projector.stop_projection("counting")
        # Another process will take it (and retry the event): the error stays in the log's
        # `consumer_errors` for status, not in this process's own report.
        assert projector.stopped() == {}
        row = await pool.fetchrow("SELECT resolved_at FROM consumer_errors")
        assert row is not None and row["resolved_at"] is None
    finally:
        await projector.stop()
