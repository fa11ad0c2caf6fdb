"""Pending leads are abandoned when their customer does not respond in time: a durable timer
(a projection's rows plus a polling worker), exactly once, across engine restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import httpx
import pytest

from domain.leads import Lead, LeadDetails, Source, Status
from domain.workspaces import DEFAULT_ABANDON_AFTER_HOURS, Workspace
from gateways.bootstrap import Engine, start_engine
from gateways.consumers.projector import Projector
from gateways.consumers.timers import AbandonmentTimers
from gateways.settings import Settings
from gateways.workers import Worker, build_workers, find_workers
from handlers.abandonment import ABANDONED_BY
from handlers.intake import Intake, activate_customer, register_customer
from handlers.workspaces import create_workspace, set_abandon_after
from projections.base import Tables
from projections.lead_timers import LeadTimers
from tests.conftest import ADMIN_TOKEN, OPERATOR, Servers, bearer, delete_streams

TICK = 0.1  # the timer worker's poll interval in these tests


@dataclass
class Running:
    """An engine's workers plus the abandonment wiring (its projection and worker)."""

    projector: Projector
    timers: AbandonmentTimers
    workers: list[Worker]

    async def stop(self) -> None:
        for worker in reversed(self.workers):
            await worker.stop()


async def start_all(engine: Engine, timer_workers: int = 1) -> Running:
    """What `leadlog up` runs (`build_workers`: the projections, `lead_timers` among them,
    and one timer worker polling every TICK), plus more timer workers when asked for."""
    assert engine.settings.timer_interval == TICK
    workers: list[Worker] = build_workers(engine)
    timers = find_workers(workers, AbandonmentTimers)
    extra = [
        AbandonmentTimers(engine.projector, engine.store, interval=TICK)
        for _ in range(timer_workers - 1)
    ]
    workers.extend(extra)
    for worker in workers:
        await worker.start()
    return Running(engine.projector, timers[0], workers)


@pytest.fixture
async def running(engine: Engine) -> AsyncIterator[Running]:
    started = await start_all(engine)
    yield started
    await started.stop()


async def status_of(engine: Engine, lead_id: UUID) -> str:
    lead = await engine.store.load(Lead, lead_id)
    assert lead is not None
    return lead.status


async def eventually(
    engine: Engine, lead_ids: Sequence[UUID], status: str, timeout: float = 10
) -> None:
    async with asyncio.timeout(timeout):
        while [await status_of(engine, i) for i in lead_ids] != [status] * len(lead_ids):
            await asyncio.sleep(0.05)


async def pending_lead(
    engine: Engine,
    workspace_id: UUID,
    customer_id: UUID,
    name: str,
    expires_at: datetime | None = None,
) -> UUID:
    receipt = await engine.intake.receive(
        Intake(
            workspace_id=workspace_id,
            details=LeadDetails(name=name, customer_id=customer_id, expires_at=expires_at),
            source=Source.MANUAL,
            actor="test",
        )
    )
    assert receipt.status == Status.PENDING
    return receipt.lead_id


async def setup(engine: Engine) -> tuple[UUID, UUID]:
    workspace = (await create_workspace(engine.store, "Acme")).id
    customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
    return workspace, customer


def soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def abandonments(engine: Engine, lead_id: UUID) -> list[Lead.StatusChanged]:
    return [
        h.event
        for h in await engine.store.history(lead_id)
        if isinstance(h.event, Lead.StatusChanged) and h.event.new == Status.ABANDONED
    ]


async def timer_rows(engine: Engine, projector: Projector) -> dict[UUID, datetime]:
    await projector.wait_for("lead_timers", await engine.log.max_position())
    table = projector.tables("lead_timers")["lead_timers"]
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT lead_id, due_at FROM {table}")
    return {row["lead_id"]: row["due_at"] for row in rows}


async def test_an_expired_pending_lead_is_abandoned(engine: Engine, running: Running) -> None:
    workspace, customer = await setup(engine)
    due = soon(-60)
    lead = await pending_lead(engine, workspace, customer, "Late", expires_at=due)

    await eventually(engine, [lead], Status.ABANDONED)
    [changed] = await abandonments(engine, lead)
    assert (changed.old, changed.new, changed.actor) == ("pending", "abandoned", ABANDONED_BY)
    assert changed.reason == f"the customer did not respond by {due.isoformat()}"
    # the timer row goes once the lead has left pending
    async with asyncio.timeout(5):
        while lead in await timer_rows(engine, running.projector):
            await asyncio.sleep(0.05)


async def test_a_lead_is_not_abandoned_before_it_is_due(engine: Engine, running: Running) -> None:
    workspace, customer = await setup(engine)
    due = soon(1.5)
    lead = await pending_lead(engine, workspace, customer, "Soon", expires_at=due)
    later = await pending_lead(engine, workspace, customer, "Later", expires_at=soon(3600))

    rows = await timer_rows(engine, running.projector)
    assert rows[lead] == due
    await asyncio.sleep(0.5)
    assert await status_of(engine, lead) == Status.PENDING
    await eventually(engine, [lead], Status.ABANDONED)
    assert datetime.now(UTC) >= due
    assert await status_of(engine, later) == Status.PENDING


async def test_a_customer_registering_in_time_stops_the_timer(
    engine: Engine, running: Running
) -> None:
    workspace, customer = await setup(engine)
    due = soon(1.0)
    lead = await pending_lead(engine, workspace, customer, "Saved", expires_at=due)

    await activate_customer(engine.store, workspace, customer)
    await eventually(engine, [lead], Status.BACKLOG)
    await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0) + 5 * TICK)
    assert await status_of(engine, lead) == Status.BACKLOG
    assert await abandonments(engine, lead) == []
    assert lead not in await timer_rows(engine, running.projector)


async def test_timers_that_come_due_while_the_engine_is_down_fire_after_a_restart(
    engine: Engine, servers: Servers, settings: Settings
) -> None:
    workspace, customer = await setup(engine)
    due = soon(3.0)
    leads = [
        await pending_lead(engine, workspace, customer, f"L{i}", expires_at=due) for i in range(3)
    ]
    kept = await pending_lead(engine, workspace, customer, "Kept", expires_at=soon(3600))

    first = await start_all(engine)
    assert set(await timer_rows(engine, first.projector)) == {*leads, kept}
    await first.stop()  # the shutdown: nothing runs from here on
    assert datetime.now(UTC) < due, "the machine is too slow for this test's timing"
    await engine.close()

    await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0) + 0.5)

    restarted = await start_engine(settings, servers.database_url, servers.nats_url, ADMIN_TOKEN)
    try:
        assert [await status_of(restarted, i) for i in leads] == [Status.PENDING] * 3
        second = await start_all(restarted)
        try:
            await eventually(restarted, leads, Status.ABANDONED)
            # The worker counts a lead just after its append returns; give it that moment.
            for _ in range(100):
                if second.timers.abandoned == 3:
                    break
                await asyncio.sleep(0.02)
            assert second.timers.abandoned == 3
        finally:
            await second.stop()
        for lead in leads:
            assert len(await abandonments(restarted, lead)) == 1
        assert await status_of(restarted, kept) == Status.PENDING
    finally:
        await delete_streams(restarted, settings.nats_prefix)
        await restarted.close()


async def test_the_workspace_default_applies_without_expires_at(
    engine: Engine, running: Running, client: httpx.AsyncClient
) -> None:
    workspace, customer = await setup(engine)
    before = await pending_lead(engine, workspace, customer, "Before")  # the 72 h default

    response = await client.patch(
        f"/v1/workspaces/{workspace}/settings",
        json={"abandonAfterHours": 1 / 3600},  # one second
        headers=OPERATOR,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abandonAfterHours"] == pytest.approx(1 / 3600)
    assert body["position"] > 0

    after = await pending_lead(engine, workspace, customer, "After")
    await eventually(engine, [after], Status.ABANDONED)
    assert await status_of(engine, before) == Status.PENDING

    rows = await timer_rows(engine, running.projector)
    received = (await engine.store.history(before))[0].event
    assert isinstance(received, Lead.Received)
    assert rows[before] == received.timestamp + timedelta(hours=DEFAULT_ABANDON_AFTER_HOURS)
    assert after not in rows


async def test_settings_route_validates_and_authorises(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    workspace, _ = await setup(engine)
    url = f"/v1/workspaces/{workspace}/settings"
    for bad in (0, -1, 10_000_000, "soon"):
        response = await client.patch(url, json={"abandonAfterHours": bad}, headers=OPERATOR)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == "validation_failed"
    response = await client.patch(url, json={"other": 1}, headers=OPERATOR)
    assert response.status_code == 422

    viewer = await client.post(
        f"/v1/workspaces/{workspace}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    response = await client.patch(
        url, json={"abandonAfterHours": 1}, headers=bearer(viewer.json()["token"])
    )
    assert response.status_code == 403

    other = (await create_workspace(engine.store, "Other")).id
    admin = await client.post(
        f"/v1/workspaces/{other}/tokens", json={"role": "admin"}, headers=OPERATOR
    )
    response = await client.patch(
        url, json={"abandonAfterHours": 1}, headers=bearer(admin.json()["token"])
    )
    assert response.status_code == 404

    # setting the value it already has writes nothing
    first = await set_abandon_after(engine.store, workspace, 24)
    again = await set_abandon_after(engine.store, workspace, 24)
    assert first.position > 0 and again.position == 0
    loaded = await engine.store.load(Workspace, workspace)
    assert loaded is not None and loaded.abandon_after_hours == 24


async def test_two_timer_workers_abandon_each_lead_exactly_once(engine: Engine) -> None:
    workspace, customer = await setup(engine)
    leads = [
        await pending_lead(engine, workspace, customer, f"L{i}", expires_at=soon(-1))
        for i in range(20)
    ]
    started = await start_all(engine, timer_workers=2)
    try:
        await eventually(engine, leads, Status.ABANDONED)
        await asyncio.sleep(5 * TICK)  # let both workers poll again over the stale rows
        timers = find_workers(started.workers, AbandonmentTimers)
        assert len(timers) == 2
        assert sum(t.abandoned for t in timers) == len(leads)
    finally:
        await started.stop()
    for lead in leads:
        assert len(await abandonments(engine, lead)) == 1


async def test_a_rebuild_yields_the_live_rows(engine: Engine, running: Running) -> None:
    workspace, customer = await setup(engine)
    await set_abandon_after(engine.store, workspace, 5)
    for i in range(3):
        await pending_lead(engine, workspace, customer, f"L{i}")
    await pending_lead(engine, workspace, customer, "E", expires_at=soon(600))
    live = await timer_rows(engine, running.projector)
    assert len(live) == 4

    projection = LeadTimers()
    tables = Tables.versioned(projection.table_names, 2)
    await running.projector.build(projection, tables, "rebuild:lead_timers")
    async with engine.pool.acquire() as conn:
        rebuilt = {
            row["lead_id"]: row["due_at"]
            for row in await conn.fetch(f"SELECT lead_id, due_at FROM {tables['lead_timers']}")
        }
    assert rebuilt == live
