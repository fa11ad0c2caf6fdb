"""Abandonment timers: one row per pending lead with the moment it is due to be abandoned.

A lead received `pending` is due at its own `expiresAt` or, failing that, at its receipt time
plus the workspace's abandon-after delay *as of that lead* (the last
`workspace.abandon_after_set` before it in the log, else `DEFAULT_ABANDON_AFTER_HOURS`). A
later change of the setting does not move the timers of leads already waiting. The row goes
when the lead leaves `pending`. Everything here comes from events (no clock): the timer worker
(`gateways/timers.py`) compares `due_at` with the time.

A lead moved back to `pending` by hand gets no new timer: nothing in that event says when it
would be due.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID

from domain.base import LoggedEvent
from domain.leads import Lead, Status
from domain.workspaces import DEFAULT_ABANDON_AFTER_HOURS, Workspace
from projections.base import Projection, ProjectionDb, Tables


def due_at(received: Lead.Received, abandon_after_hours: float) -> datetime:
    """When a pending lead is abandoned if its customer has not responded."""
    expires = received.details.expires_at
    if expires is not None:
        return expires if expires.tzinfo is not None else expires.replace(tzinfo=UTC)
    return received.timestamp + timedelta(hours=abandon_after_hours)


class LeadTimers(Projection):
    name = "lead_timers"
    version = 1
    table_names = ("lead_timers", "abandon_after")
    event_types = frozenset({"workspace.abandon_after_set", "lead.received", "lead.status_changed"})

    def create_sql(self, tables: Tables) -> str:
        timers = tables["lead_timers"]
        settings = tables["abandon_after"]
        return f"""
            CREATE TABLE IF NOT EXISTS {timers} (
                lead_id      uuid        PRIMARY KEY,
                workspace_id uuid        NOT NULL,
                due_at       timestamptz NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {timers}_due ON {timers} (due_at);
            CREATE TABLE IF NOT EXISTS {settings} (
                workspace_id uuid             PRIMARY KEY,
                hours        double precision NOT NULL
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        timers = tables["lead_timers"]
        settings = tables["abandon_after"]
        # Folded in memory, then one statement per kind of change whatever the batch size.
        hours: dict[UUID, float] = {}  # settings known so far (from the table or this batch)
        changed_settings: dict[UUID, float] = {}
        due: dict[UUID, tuple[UUID, datetime]] = {}  # lead → (workspace, due_at)
        gone: set[UUID] = set()

        async def hours_of(workspace_id: UUID) -> float:
            if workspace_id not in hours:
                stored = await db.fetchval(
                    f"SELECT hours FROM {settings} WHERE workspace_id = $1", workspace_id
                )
                hours[workspace_id] = (
                    float(stored) if stored is not None else DEFAULT_ABANDON_AFTER_HOURS
                )
            return hours[workspace_id]

        for logged in events:
            event = logged.event
            if isinstance(event, Workspace.AbandonAfterSet):
                hours[event.originator_id] = event.hours
                changed_settings[event.originator_id] = event.hours
            elif isinstance(event, Lead.Received) and event.status == Status.PENDING:
                when = due_at(event, await hours_of(event.workspace_id))
                due[event.originator_id] = (event.workspace_id, when)
                gone.discard(event.originator_id)
            elif isinstance(event, Lead.StatusChanged) and event.new != Status.PENDING:
                due.pop(event.originator_id, None)
                gone.add(event.originator_id)

        if changed_settings:
            await db.execute(
                f"""
                INSERT INTO {settings} (workspace_id, hours)
                SELECT * FROM unnest($1::uuid[], $2::float8[])
                ON CONFLICT (workspace_id) DO UPDATE SET hours = EXCLUDED.hours
                """,
                list(changed_settings),
                list(changed_settings.values()),
            )
        if gone:
            await db.execute(f"DELETE FROM {timers} WHERE lead_id = ANY($1::uuid[])", list(gone))
        if due:
            # A lead is received once; a replayed batch re-inserts the same row.
            await db.execute(
                f"""
                INSERT INTO {timers} (lead_id, workspace_id, due_at)
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
                ON CONFLICT (lead_id) DO NOTHING
                """,
                list(due),
                [w for w, _ in due.values()],
                [d for _, d in due.values()],
            )
