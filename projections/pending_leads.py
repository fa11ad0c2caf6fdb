"""Leads waiting for their customer to register: what the release reaction looks up."""

from __future__ import annotations

from collections.abc import Sequence

from domain.base import LoggedEvent
from domain.leads import Lead, Status
from projections.base import Projection, ProjectionDb, Tables


class PendingLeads(Projection):
    name = "pending_leads"
    version = 1
    table_names = ("pending_leads",)
    event_types = frozenset({"lead.received", "lead.status_changed"})

    def create_sql(self, tables: Tables) -> str:
        table = tables["pending_leads"]
        return f"""
            CREATE TABLE IF NOT EXISTS {table} (
                lead_id      uuid PRIMARY KEY,
                workspace_id uuid NOT NULL,
                customer_id  uuid NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {table}_customer ON {table} (customer_id);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        table = tables["pending_leads"]
        for logged in events:
            event = logged.event
            if (
                isinstance(event, Lead.Received)
                and event.status == Status.PENDING
                and event.details.customer_id is not None
            ):
                await db.execute(
                    f"INSERT INTO {table} VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    event.originator_id,
                    event.workspace_id,
                    event.details.customer_id,
                )
            elif isinstance(event, Lead.StatusChanged) and event.new != Status.PENDING:
                await db.execute(f"DELETE FROM {table} WHERE lead_id = $1", event.originator_id)
