"""Leads received in batches (`LeadIntake.receive_many`) keep every guarantee of `receive`."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.utils import get_topic

from domain.customers import Customer
from domain.leads import Lead, LeadDetails, MissingName, Source
from gateways.postgres.event_store import PostgresEventStore
from handlers.intake import (
    LEAD_TOPIC,
    Intake,
    LeadIntake,
    Receipt,
    UnknownCustomer,
    new_lead_events,
    register_customer,
    request_counter,
)
from handlers.workspaces import WorkspaceNotFound, create_workspace

pytestmark = pytest.mark.timeout(240)


def lead(workspace_id: UUID, key: str | None = None, **fields: Any) -> Intake:
    return Intake(
        workspace_id=workspace_id,
        details=LeadDetails.model_validate(fields),
        source=Source.NATS,
        actor="nats:test",
        channel="nats:test",
        idempotency_key=key,
    )


async def received(store: PostgresEventStore, workspace_id: UUID) -> list[Lead.Received]:
    events: list[Lead.Received] = []
    after = 0
    while page := await store.read(after, 1000, ["lead.received"], workspace_id=workspace_id):
        events.extend(e.event for e in page if isinstance(e.event, Lead.Received))
        after = page[-1].position
    return events


def receipts(answers: list[Receipt | Exception]) -> list[Receipt]:
    found = [a for a in answers if isinstance(a, Receipt)]
    assert len(found) == len(answers), [a for a in answers if not isinstance(a, Receipt)]
    return found


async def test_batches_and_single_leads_at_once_keep_numbers_and_originals_exact(
    store: PostgresEventStore,
) -> None:
    """Batches and single receives racing in one workspace: request numbers stay unique and
    gap-free, and each address has exactly one original, which every duplicate names."""
    workspace_id = (await create_workspace(store, "Racing", "US")).id
    intake = LeadIntake(store)
    rng = random.Random(7)
    addresses = [f"person{i}@example.com" for i in range(40)]

    def someone(n: int) -> Intake:
        # the same address written differently now and then: the normal form is the key
        email = rng.choice(addresses)
        if n % 3 == 0:
            email = f"  {email.upper()} "
        return lead(workspace_id, key=f"k-{n}", name=f"P{n}", email=email)

    batches = [[someone(b * 1000 + i) for i in range(120)] for b in range(8)]
    singles = [someone(10_000 + i) for i in range(150)]
    many, one_by_one = await asyncio.gather(
        asyncio.gather(*(intake.receive_many(batch) for batch in batches)),
        asyncio.gather(*(intake.receive(one) for one in singles)),
    )
    answers = [*(r for result in many for r in receipts(result)), *one_by_one]
    total = 8 * 120 + 150
    assert len(answers) == total and not any(a.replayed for a in answers)
    assert sorted(a.request_id for a in answers) == list(range(1, total + 1))
    assert await store.log.counter(request_counter(workspace_id)) == total

    leads = await received(store, workspace_id)
    assert len(leads) == total
    originals = {e.email_normal or "": e.originator_id for e in leads if not e.is_duplicate}
    assert sorted(originals) == sorted(addresses)  # exactly one original per address
    for event in leads:
        if event.is_duplicate:
            assert event.duplicate_of == originals[event.email_normal or ""]
    # what each caller was told is what the log holds
    by_id = {e.originator_id: e for e in leads}
    for answer in answers:
        event = by_id[answer.lead_id]
        assert (answer.request_id, answer.is_duplicate, answer.duplicate_of) == (
            event.request_id,
            event.is_duplicate,
            event.duplicate_of,
        )


async def test_a_refused_lead_fails_alone_and_spends_no_number(
    store: PostgresEventStore,
) -> None:
    workspace_id = (await create_workspace(store, "Mixed", "US")).id
    other = (await create_workspace(store, "Other", "US")).id
    foreign, _ = await register_customer(store, other, "Theirs", None, True)
    intake = LeadIntake(store)
    answers = await intake.receive_many(
        [
            lead(workspace_id, key="a", name="Ann"),
            lead(workspace_id, key="b", company="No name at all"),
            lead(workspace_id, key="c", name="Bo", customerId=str(uuid.uuid4())),
            lead(workspace_id, key="d", name="Cy", customerId=str(foreign)),
            lead(uuid.uuid4(), key="e", name="Nowhere"),
            lead(workspace_id, key="f", name="Di"),
        ]
    )
    assert isinstance(answers[1], MissingName)
    assert isinstance(answers[2], UnknownCustomer)
    assert isinstance(answers[3], UnknownCustomer)  # another workspace's customer
    assert isinstance(answers[4], WorkspaceNotFound)
    ann, di = answers[0], answers[5]
    assert isinstance(ann, Receipt) and isinstance(di, Receipt)
    assert sorted((ann.request_id, di.request_id)) == [1, 2]  # the refused took no number
    leads = await received(store, workspace_id)
    assert sorted(e.name for e in leads) == ["Ann", "Di"]
    assert sorted(e.idempotency_key or "" for e in leads) == ["a", "f"]


async def test_replays_inside_and_across_batches_write_nothing_twice(
    store: PostgresEventStore,
) -> None:
    workspace_id = (await create_workspace(store, "Retry", "US")).id
    intake = LeadIntake(store)
    first = await intake.receive(lead(workspace_id, key="m-1", name="Ann", email="a@example.com"))
    answers = receipts(
        await intake.receive_many(
            [
                lead(workspace_id, key="m-1", name="Ann", email="a@example.com"),  # committed
                lead(workspace_id, key="m-2", name="Bo", email="a@example.com"),
                lead(workspace_id, key="m-2", name="Bo", email="a@example.com"),  # same batch
                lead(workspace_id, key="m-3", name="Cy"),
            ]
        )
    )
    assert answers[0].replayed and answers[0].lead_id == first.lead_id
    assert answers[0].request_id == first.request_id == 1
    bo, bo_again = answers[1], answers[2]
    assert not bo.replayed and bo.is_duplicate and bo.duplicate_of == first.lead_id
    assert bo_again.replayed and bo_again.lead_id == bo.lead_id
    assert bo_again.request_id == bo.request_id
    assert answers[3].request_id == 3  # the replays spent no request number
    again = receipts(await intake.receive_many([lead(workspace_id, key="m-3", name="Cy")]))
    assert again[0].replayed and again[0].lead_id == answers[3].lead_id
    leads = await received(store, workspace_id)
    assert sorted(e.idempotency_key or "" for e in leads) == ["m-1", "m-2", "m-3"]
    assert await store.log.counter(request_counter(workspace_id)) == 3


async def test_a_batch_writes_the_same_events_as_single_receives(
    store: PostgresEventStore,
) -> None:
    workspace_id = (await create_workspace(store, "Same", "GB")).id
    customer, _ = await register_customer(store, workspace_id, "Pending Co", None, False)
    intake = LeadIntake(store)
    shapes: list[dict[str, Any]] = [
        {"name": "Ann", "email": " Ann@Example.com ", "phone": "020 7946 0018", "tags": ["x"]},
        {"email": "bo@example.com", "customFields": {"roof": "flat"}},
        {"phone": "+44 20 7946 0019"},
        {"name": "Cy", "email": "ann@example.com"},  # a duplicate of the first
        {"name": "Di", "customerId": str(customer)},  # an inactive customer: an invitation
    ]
    singles = [await intake.receive(lead(workspace_id, None, **shape)) for shape in shapes]
    batch = receipts(await intake.receive_many([lead(workspace_id, None, **s) for s in shapes]))

    async def events_of(lead_id: UUID) -> list[tuple[str, dict[str, Any]]]:
        history = await store.history(lead_id)
        return [
            (
                e.event_type,
                e.event.model_dump(
                    exclude={
                        "originator_id",
                        "timestamp",
                        "request_id",
                        "duplicate_of",
                        "is_duplicate",
                    }
                ),
            )
            for e in history
        ]

    for one, many in zip(singles, batch, strict=True):
        assert await events_of(one.lead_id) == await events_of(many.lead_id)
        assert many.status == one.status
    # in the batch every lead after the first of the shapes is a duplicate of a single one
    assert [r.is_duplicate for r in singles] == [False, False, False, True, False]
    assert [r.is_duplicate for r in batch] == [True, True, True, True, False]
    assert batch[3].duplicate_of == singles[0].lead_id
    loaded = await store.load(Customer, customer)
    assert loaded is not None and not loaded.active
    assert [e.event_type for e in await store.history(batch[4].lead_id)] == [
        "lead.received",
        "lead.invitation_requested",
    ]


async def test_a_store_failure_answers_every_lead_of_the_batch(
    store: PostgresEventStore,
) -> None:
    workspace_id = (await create_workspace(store, "Closing", "US")).id
    intake = LeadIntake(store)
    await store.log.close()
    with pytest.raises(RuntimeError, match="closed"):
        await intake.receive_many([lead(workspace_id, key="x", name="Ann")])


def test_the_received_event_is_the_one_the_aggregate_records() -> None:
    """Intake makes `Lead.Received` without the aggregate: it must be the very event
    `Lead(...)` records (class, topic, version, every field), and replay into the same lead."""
    fields: dict[str, Any] = {
        "workspace_id": uuid.uuid4(),
        "request_id": 12,
        "source": Source.NATS,
        "channel": "nats:crm",
        "actor": "nats:crm",
        "by_user": False,
        "name": "Ann",
        "details": LeadDetails.model_validate({"name": "Ann", "email": "a@example.com"}),
        "email_normal": "a@example.com",
        "email_valid": True,
        "phone_normal": None,
        "phone_valid": None,
        "is_duplicate": True,
        "duplicate_of": uuid.uuid4(),
        "status": "new",
        "idempotency_key": "nats:1",
        "pipeline_id": uuid.uuid4(),
        "stage_id": uuid.uuid4(),
        "lead_type_id": None,
    }
    lead_id = uuid.uuid4()
    (made,) = new_lead_events(lead_id, None, **fields)
    (recorded,) = Lead(id=lead_id, **fields).collect_events()  # type: ignore[call-arg]
    assert type(made) is type(recorded) is Lead.Received
    assert made.model_dump(exclude={"timestamp"}) == recorded.model_dump(exclude={"timestamp"})
    assert made.originator_topic == get_topic(Lead) == LEAD_TOPIC
    assert abs((made.timestamp - recorded.timestamp).total_seconds()) < 5
    assert made.timestamp.tzinfo is not None
    replayed = made.mutate(None)
    assert isinstance(replayed, Lead)
    assert (replayed.id, replayed.version, replayed.request_id) == (lead_id, 1, 12)

    customer = uuid.uuid4()
    invited = new_lead_events(lead_id, customer, **fields)
    assert [type(e) for e in invited] == [Lead.Received, Lead.InvitationRequested]
    assert [e.originator_version for e in invited] == [1, 2]
