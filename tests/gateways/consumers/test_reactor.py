"""A customer registering releases their pending leads to backlog, exactly once, durably."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import pytest

from domain.leads import Lead, LeadDetails, Source, Status
from gateways.bootstrap import Engine
from gateways.workers import Worker, build_workers
from handlers.intake import Intake, activate_customer, register_customer
from handlers.ports import Append
from handlers.workspaces import create_workspace


@pytest.fixture
async def workers(engine: Engine) -> AsyncIterator[list[Worker]]:
    running = build_workers(engine)
    for worker in running:
        await worker.start()
    yield running
    for worker in reversed(running):
        await worker.stop()


async def status_of(engine: Engine, lead_id: UUID) -> str:
    lead = await engine.store.load(Lead, lead_id)
    assert lead is not None
    return lead.status


async def eventually(
    engine: Engine, lead_ids: list[UUID], status: str, timeout: float = 10
) -> None:
    async with asyncio.timeout(timeout):
        while [await status_of(engine, i) for i in lead_ids] != [status] * len(lead_ids):
            await asyncio.sleep(0.05)


async def pending_lead(engine: Engine, workspace_id: UUID, customer_id: UUID, name: str) -> UUID:
    receipt = await engine.intake.receive(
        Intake(
            workspace_id=workspace_id,
            details=LeadDetails(name=name, customer_id=customer_id),
            source=Source.MANUAL,
            actor="test",
        )
    )
    assert receipt.status == Status.PENDING
    return receipt.lead_id


async def test_activation_releases_pending_leads(engine: Engine, workers: list[Worker]) -> None:
    workspace = (await create_workspace(engine.store, "Acme")).id
    customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
    other, _ = await register_customer(engine.store, workspace, "Otherco", None, active=False)
    mine = [await pending_lead(engine, workspace, customer, f"L{i}") for i in range(3)]
    theirs = await pending_lead(engine, workspace, other, "O")

    await activate_customer(engine.store, workspace, customer)
    await eventually(engine, mine, Status.BACKLOG)
    assert await status_of(engine, theirs) == Status.PENDING

    history = await engine.store.history(mine[0])
    changed = history[-1].event
    assert isinstance(changed, Lead.StatusChanged)
    assert (changed.old, changed.new, changed.actor) == (
        "pending",
        "backlog",
        "system:customer-registration",
    )
    # exactly once: a single status change per lead
    assert [h.event_type for h in history].count("lead.status_changed") == 1


async def test_a_lead_decided_before_activation_but_committed_after_is_released(
    engine: Engine, workers: list[Worker]
) -> None:
    workspace = (await create_workspace(engine.store, "Acme")).id
    customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
    await activate_customer(engine.store, workspace, customer)
    # The race: intake read the customer as inactive, the activation committed, then the lead.
    late = Lead(  # type: ignore[call-arg]
        id=uuid.uuid4(),
        workspace_id=workspace,
        request_id=99,
        source=Source.MANUAL,
        channel=None,
        actor="test",
        by_user=False,
        name="Late",
        details=LeadDetails(name="Late", customer_id=customer),
        email_normal=None,
        email_valid=None,
        phone_normal=None,
        phone_valid=None,
        is_duplicate=False,
        duplicate_of=None,
        status=Status.PENDING,
    )
    await engine.store.append(Append(workspace, events=late.collect_events()))
    await eventually(engine, [late.id], Status.BACKLOG)


async def test_activation_while_the_reactor_is_down_is_caught_up(engine: Engine) -> None:
    workspace = (await create_workspace(engine.store, "Acme")).id
    customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
    leads = [await pending_lead(engine, workspace, customer, f"L{i}") for i in range(2)]
    first = build_workers(engine)
    for worker in first:
        await worker.start()
    for worker in reversed(first):
        await worker.stop()
    await activate_customer(engine.store, workspace, customer)  # nobody is listening
    assert [await status_of(engine, i) for i in leads] == [Status.PENDING] * 2

    second = build_workers(engine)
    for worker in second:
        await worker.start()
    try:
        await eventually(engine, leads, Status.BACKLOG)
    finally:
        for worker in reversed(second):
            await worker.stop()
