"""The projection runtime on a real Postgres: exactly once, stops at failures, rebuilds agree."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import pytest

from domain.base import LoggedEvent
from domain.workspaces import Role, Workspace
from gateways.consumers.consumer_state import ProjectionFailed, State, live_consumer
from gateways.consumers.projector import Projector
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from handlers.ports import Append
from handlers.workspaces import create_workspace, issue_token
from projections.base import Projection, ProjectionDb, Tables
from projections.workspaces import WorkspaceDirectory
from tests.conftest import Servers


@dataclass
class Hold:
    """Parks the `on_call`-th apply mid-batch, its rows written but not committed."""

    on_call: int
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    backend_pid: int = 0


class Counting(Projection):
    """One row per event applied: an event applied twice shows up twice (no unique key)."""

    version = 1
    table_names = ("applied",)

    def __init__(
        self,
        *,
        fail_on: frozenset[str] = frozenset(),
        hold: Hold | None = None,
        delay: float = 0.0,
    ) -> None:
        self.name = "counting"
        self.fail_on = fail_on
        self.hold = hold
        self.delay = delay
        self.calls = 0

    def create_sql(self, tables: Tables) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {tables['applied']} "
            "(position bigint NOT NULL, event_type text NOT NULL)"
        )

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        self.calls += 1
        await db.executemany(
            f"INSERT INTO {tables['applied']} (position, event_type) VALUES ($1, $2)",
            [(e.position, e.event_type) for e in events],
        )
        for logged in events:
            if isinstance(logged.event, Workspace.Created) and logged.event.name in self.fail_on:
                raise ValueError(f"cannot take {logged.event.name}")
        if self.hold is not None and self.calls == self.hold.on_call:
            self.hold.backend_pid = await db.fetchval("SELECT pg_backend_pid()")
            self.hold.entered.set()
            await self.hold.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)


async def applied(pool: asyncpg.Pool) -> list[int]:
    return [r[0] for r in await pool.fetch("SELECT position FROM applied_v1 ORDER BY position")]


async def create_many(store: PostgresEventStore, prefix: str, count: int) -> None:
    """Concurrent creations, so group commit batches them."""
    await asyncio.gather(*(create_workspace(store, f"{prefix}{i}") for i in range(count)))


async def log_positions(store: PostgresEventStore) -> list[int]:
    """Every position in the log (a command may write several events)."""
    return [e.position for e in await store.read(0, 100_000)]


async def created_at(store: PostgresEventStore, workspace_id: UUID) -> int:
    """The position of a workspace's `workspace.created` event."""
    first, *_ = await store.history(workspace_id)
    assert first.event_type == "workspace.created"
    return first.position


async def rename(store: PostgresEventStore, workspace_id: UUID, name: str) -> int:
    workspace = await store.load(Workspace, workspace_id)
    assert workspace is not None
    workspace.rename(name)
    appended = await store.append(Append(workspace_id, events=workspace.collect_events()))
    return appended.position


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s")


async def test_workspace_directory_follows_the_log(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    earlier = await create_workspace(store, "Earlier")
    projector = Projector(pool, log, store, [WorkspaceDirectory()], idle_flush=0.05)
    await projector.start()
    try:
        created = await create_workspace(store, "Acme", "GB")
        assert await projector.wait_for("workspaces", created.position, 5)
        row = await pool.fetchrow("SELECT * FROM workspaces_v1 WHERE id = $1", created.id)
        assert row is not None
        assert (row["name"], row["default_region"]) == ("Acme", "GB")
        assert row["updated_position"] == await created_at(store, created.id)

        renamed_at = await rename(store, created.id, "Acme Ltd")
        assert await projector.wait_for("workspaces", renamed_at, 5)
        row = await pool.fetchrow("SELECT * FROM workspaces_v1 WHERE id = $1", created.id)
        assert row is not None
        assert (row["name"], row["updated_position"]) == ("Acme Ltd", renamed_at)
        # readers may use the logical name: a view on the live version
        names = {r[0] for r in await pool.fetch("SELECT name FROM workspaces")}
        assert names == {"Earlier", "Acme Ltd"}

        # a process that does not run the projection waits on the recorded checkpoint
        elsewhere = Projector(pool, log, store, [WorkspaceDirectory()])
        assert await elsewhere.wait_for("workspaces", renamed_at, 5)

        # events it does not read still carry its checkpoint forward
        token = await issue_token(store, created.id, Role.ADMIN)
        assert await projector.wait_for("workspaces", token.position, 5)

        async def recorded() -> bool:
            return await log.max_tracking_id("projection:workspaces") == token.position

        await eventually(recorded)
        [status] = await projector.status()
        assert status.state is State.RUNNING
        assert (status.position, status.head, status.lag) == (token.position, token.position, 0)
        assert status.error is None
        assert status.tables == {"workspaces": "workspaces_v1"}
        assert not await projector.wait_for("workspaces", token.position + 1, 0.1)
    finally:
        await projector.stop()
    registry = await pool.fetchrow("SELECT * FROM projection_versions WHERE name = 'workspaces'")
    assert registry is not None
    assert registry["live_version"] == 1
    assert json.loads(registry["live_tables"]) == {"workspaces": "workspaces_v1"}
    assert earlier.position < created.position


async def test_exactly_once_when_killed_mid_batch(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    await create_many(store, "w", 10)
    positions = await log_positions(store)
    hold = Hold(on_call=2)
    first = Projector(pool, log, store, [Counting(hold=hold)], batch_size=4)
    await first.start()
    await asyncio.wait_for(hold.entered.wait(), 5)
    # The second batch's rows are written in an open transaction: cancel it right there.
    await first.stop(timeout=0)
    assert await applied(pool) == positions[:4]
    assert await log.max_tracking_id(live_consumer("counting")) == positions[3]

    second = Projector(pool, log, store, [Counting()], batch_size=4)
    await second.start()
    try:
        assert await second.wait_for("counting", positions[-1], 5)
    finally:
        await second.stop()
    assert await applied(pool) == positions


async def test_a_dropped_connection_mid_batch_is_retried_not_reported(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    await create_many(store, "w", 10)
    positions = await log_positions(store)
    hold = Hold(on_call=2)
    projector = Projector(pool, log, store, [Counting(hold=hold)], batch_size=4)
    await projector.start()
    try:
        await asyncio.wait_for(hold.entered.wait(), 5)
        await pool.execute("SELECT pg_terminate_backend($1)", hold.backend_pid)
        hold.release.set()
        assert await projector.wait_for("counting", positions[-1], 10)
        [status] = await projector.status()
        assert status.state is State.RUNNING
        assert status.error is None
    finally:
        await projector.stop()
    assert await applied(pool) == positions
    assert await pool.fetchval("SELECT count(*) FROM consumer_errors") == 0


async def test_a_failing_event_stops_its_projection_at_that_event(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    created = [await create_workspace(store, name) for name in ("a", "b", "boom", "c", "d")]
    positions = await log_positions(store)
    failing = await created_at(store, created[2].id)
    before = [p for p in positions if p < failing]
    projector = Projector(
        pool, log, store, [Counting(fail_on=frozenset({"boom"})), WorkspaceDirectory()]
    )
    await projector.start()
    try:
        # one batch holds all five: it is rolled back, then re-applied event by event
        assert not await projector.wait_for("counting", positions[-1], 5)
        assert await projector.wait_for("workspaces", positions[-1], 5)  # the others go on
        assert await applied(pool) == before
        assert await log.max_tracking_id(live_consumer("counting")) == failing - 1

        status = {s.name: s for s in await projector.status()}["counting"]
        assert status.state is State.FAILED
        assert status.error is not None
        assert status.error.position == failing
        assert status.error.event_type == "workspace.created"
        assert status.error.event_id == (await store.read(failing - 1, 1))[0].event_id
        assert "cannot take boom" in status.error.error
        assert (status.position, status.lag) == (failing - 1, positions[-1] - failing + 1)

        await projector.restart("counting")  # the cause is not fixed: it stops there again
        assert not await projector.wait_for("counting", positions[-1], 5)
        row = await pool.fetchrow("SELECT * FROM consumer_errors")
        assert row is not None
        assert (row["position"], row["attempts"], row["resolved_at"]) == (failing, 2, None)

        with pytest.raises(LookupError):
            await projector.skip("counting", failing + 1)
        await projector.skip("counting", failing, by="alice")
        assert await projector.wait_for("counting", positions[-1], 5)
        assert await applied(pool) == [p for p in positions if p != failing]
        row = await pool.fetchrow("SELECT * FROM consumer_errors")
        assert row is not None
        assert (row["resolution"], row["skipped_by"]) == ("skipped", "alice")
        status = {s.name: s for s in await projector.status()}["counting"]
        assert (status.state, status.error, status.lag) == (State.RUNNING, None, 0)
    finally:
        await projector.stop()


async def test_an_undecodable_event_stops_it_until_fixed(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    created = [await create_workspace(store, name) for name in ("a", "b", "c")]
    bad = await created_at(store, created[1].id)
    state = await pool.fetchval("SELECT state FROM events WHERE position = $1", bad)
    await pool.execute("UPDATE events SET state = 'not json' WHERE position = $1", bad)
    projector = Projector(pool, log, store, [WorkspaceDirectory()])
    await projector.start()
    try:
        assert not await projector.wait_for("workspaces", created[-1].position, 5)
        [status] = await projector.status()
        assert status.error is not None
        assert (status.state, status.error.position) == (State.FAILED, bad)
        assert status.error.error.startswith("EventDecodeError")
        ids = {r[0] for r in await pool.fetch("SELECT id FROM workspaces_v1")}
        assert ids == {created[0].id}

        await pool.execute("UPDATE events SET state = $2 WHERE position = $1", bad, state)
        await projector.restart("workspaces")
        assert await projector.wait_for("workspaces", created[-1].position, 5)
        ids = {r[0] for r in await pool.fetch("SELECT id FROM workspaces_v1")}
        assert ids == {c.id for c in created}
        resolution = await pool.fetchval("SELECT resolution FROM consumer_errors")
        assert resolution == "retried"
        [status] = await projector.status()
        assert status.error is None
    finally:
        await projector.stop()


async def test_incremental_equals_rebuilt_from_zero(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    projector = Projector(pool, log, store, [WorkspaceDirectory()], batch_size=3)
    await projector.start()
    try:
        ids: list[UUID] = []
        for wave in range(4):
            created = await asyncio.gather(
                *(create_workspace(store, f"w{wave}.{i}", "GB") for i in range(6))
            )
            ids.extend(c.id for c in created)
            last = max(c.position for c in created)
            for n, workspace_id in enumerate(ids[::4]):
                last = await rename(store, workspace_id, f"renamed {wave}.{n}")
            last = (await issue_token(store, ids[0], Role.VIEWER)).position
            assert await projector.wait_for("workspaces", last, 5)
        head = await log.max_position()
        v2 = Tables.versioned(["workspaces"], 2)
        reached = await projector.build(WorkspaceDirectory(), v2, "projection:workspaces:v2")
        assert reached == head
        with pytest.raises(ValueError):
            await projector.build(WorkspaceDirectory(), projector.tables("workspaces"), "x")
    finally:
        await projector.stop()
    live = [dict(r) for r in await pool.fetch("SELECT * FROM workspaces_v1 ORDER BY id")]
    rebuilt = [dict(r) for r in await pool.fetch("SELECT * FROM workspaces_v2 ORDER BY id")]
    assert len(live) == 24
    assert live == rebuilt
    # the live copy still serves readers; the rebuild has its own checkpoint
    assert await log.max_tracking_id("projection:workspaces:v2") == head


async def test_two_instances_never_apply_an_event_twice(
    servers: Servers,
    schema_name: str,
    pool: asyncpg.Pool,
    log: PostgresLog,
    store: PostgresEventStore,
) -> None:
    other_pool = await open_pool(servers.database_url, schema_name, min_size=1, max_size=5)
    other_log = PostgresLog(other_pool, schema_name, poll_interval=0.2)
    other_store = PostgresEventStore(other_log)
    try:
        await create_many(store, "before", 30)
        one = Projector(pool, log, store, [Counting(delay=0.002)], batch_size=5)
        two = Projector(other_pool, other_log, other_store, [Counting(delay=0.002)], batch_size=5)
        await asyncio.gather(one.start(), two.start())  # like two processes starting together
        try:
            for wave in range(4):
                await create_many(store if wave % 2 else other_store, f"{wave}.", 10)
                await asyncio.sleep(0.01)
            head = await log.max_position()
            assert await one.wait_for("counting", head, 10)
            assert await two.wait_for("counting", head, 10)
            statuses = [*await one.status(), *await two.status()]
        finally:
            await asyncio.gather(one.stop(), two.stop())
        assert await applied(pool) == await log_positions(store)
        assert sum(s.conflicts for s in statuses) > 0  # they did race for the same batches
    finally:
        await other_log.close()
        await other_pool.close()


async def test_a_changed_version_waits_for_a_rebuild(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    first = Projector(pool, log, store, [WorkspaceDirectory()])
    await first.start()
    await first.stop()

    class Newer(WorkspaceDirectory):
        version = 2

    projector = Projector(pool, log, store, [Newer()])
    await projector.start()
    try:
        [status] = await projector.status()
        assert status.state is State.NEEDS_REBUILD
        assert status.tables == {"workspaces": "workspaces_v1"}
        with pytest.raises(RuntimeError):
            await projector.restart("workspaces")
    finally:
        await projector.stop()


async def test_build_reports_a_failing_event(
    pool: asyncpg.Pool, log: PostgresLog, store: PostgresEventStore
) -> None:
    created = [await create_workspace(store, name) for name in ("a", "boom", "c")]
    projector = Projector(pool, log, store, [])
    with pytest.raises(ProjectionFailed) as failed:
        await projector.build(
            Counting(fail_on=frozenset({"boom"})),
            Tables({"applied": "applied_v1"}),
            "rebuild:counting",
        )
    failing = await created_at(store, created[1].id)
    assert failed.value.error.position == failing
    assert await applied(pool) == [p for p in await log_positions(store) if p < failing]
