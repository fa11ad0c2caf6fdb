"""Abandoning a pending lead whose customer did not respond in time.

The decision is made against the lead itself, loaded from the log, never against a view: a
lead that left `pending` meanwhile (its customer registered, someone moved it) is skipped, so
running it twice, or in two processes at once, abandons a lead exactly once. A concurrent
change to the lead makes it decide again on the new state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain.leads import Lead, Status
from handlers.ports import Append, ConcurrencyConflict, EventStore

ABANDONED_BY = "system:abandonment"
MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True)
class DueTimer:
    """A pending lead's abandonment timer that has come due."""

    lead_id: UUID
    workspace_id: UUID
    due_at: datetime


def abandon_reason(due_at: datetime) -> str:
    return f"the customer did not respond by {due_at.isoformat()}"


async def abandon_if_pending(store: EventStore, timer: DueTimer) -> int | None:
    """Move the lead from `pending` to `abandoned`; the log position of the change, or None
    when the lead is gone or no longer pending (nothing written)."""
    for _ in range(MAX_CONFLICT_RETRIES):
        lead = await store.load(Lead, timer.lead_id)
        if lead is None or lead.status != Status.PENDING:
            return None
        lead.change_status(Status.ABANDONED, abandon_reason(timer.due_at), ABANDONED_BY)
        try:
            appended = await store.append(Append(lead.workspace_id, events=lead.collect_events()))
        except ConcurrencyConflict:
            continue
        return appended.position
    raise RuntimeError(
        f"gave up abandoning lead {timer.lead_id} after {MAX_CONFLICT_RETRIES} conflicts"
    )
