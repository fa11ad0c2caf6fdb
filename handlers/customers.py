"""The reaction to a customer registering: their pending leads move to backlog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from domain.base import DomainEvent, LoggedEvent
from domain.customers import Customer
from domain.leads import Lead, Status
from handlers.ports import EventStore

RELEASED_BY = "system:customer-registration"


class PendingLeadsQuery(Protocol):
    """The leads still pending for a customer, as of (at least) a log position."""

    async def of_customer(self, customer_id: UUID, as_of: int) -> Sequence[UUID]: ...


class ReleasePendingLeads:
    """On `customer.activated`, every pending lead of that customer goes to backlog; on a
    pending `lead.received` whose customer is already active (they registered while the
    lead was on its way), that lead goes too."""

    name = "release-pending-leads"
    event_types = frozenset({"customer.activated", "lead.received"})

    def __init__(self, store: EventStore, pending: PendingLeadsQuery) -> None:
        self.store = store
        self.pending = pending

    async def react(self, logged: LoggedEvent) -> Sequence[DomainEvent]:
        event = logged.event
        lead_ids: Sequence[UUID] = ()
        if isinstance(event, Customer.Activated):
            lead_ids = await self.pending.of_customer(event.originator_id, logged.position)
        elif (
            isinstance(event, Lead.Received)
            and event.status == Status.PENDING
            and event.details.customer_id is not None
        ):
            customer = await self.store.load(Customer, event.details.customer_id)
            if customer is not None and customer.active:
                lead_ids = [event.originator_id]
        changes: list[DomainEvent] = []
        for lead_id in lead_ids:
            lead = await self.store.load(Lead, lead_id)
            if lead is not None and lead.status == Status.PENDING:
                lead.change_status(Status.BACKLOG, "the customer registered", RELEASED_BY)
                changes.extend(lead.collect_events())
        return changes
