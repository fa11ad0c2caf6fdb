"""Submissions: one row per submission of a lead to a campaign, with where it stands now.

Reads every event declared on the `Submission` aggregate (found from the class, so events
added there later reach this projection without touching the set here). `submission.created`
makes the row; every later step moves `updated_at`, and `status` when the step carries one.
Beside the status the row keeps what the pipeline worker polls (`action_due_at`,
`post_started_at`) and what the lists show (the latest `reason`, the endpoint last posted
to, the accepted price, a pending return).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from domain.base import LoggedEvent
from domain.submissions import Submission, SubmissionStatus
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of

# What the earliest events wrote before statuses had these names.
_LEGACY = {"received": SubmissionStatus.PENDING.value}
MAX_REASON = 1000

COLUMNS = (
    "id",
    "workspace_id",
    "lead_id",
    "campaign_id",
    "source",
    "origin",
    "parent_id",
    "actor",
    "status",
    "reason",
    "endpoint_id",
    "price",
    "action_due_at",
    "post_started_at",
    "accepted_at",
    "return_pending",
    "created_at",
    "updated_at",
    "updated_position",
)
# Columns a later step may change (the rest are set once, by `submission.created`).
MUTABLE = (
    "status",
    "reason",
    "endpoint_id",
    "price",
    "action_due_at",
    "post_started_at",
    "accepted_at",
    "return_pending",
    "updated_at",
    "updated_position",
)
_TYPES = {
    "id": "uuid",
    "workspace_id": "uuid",
    "lead_id": "uuid",
    "campaign_id": "uuid",
    "source": "text",
    "origin": "text",
    "parent_id": "uuid",
    "actor": "text",
    "status": "text",
    "reason": "text",
    "endpoint_id": "text",
    "price": "numeric",
    "action_due_at": "timestamptz",
    "post_started_at": "timestamptz",
    "accepted_at": "timestamptz",
    "return_pending": "boolean",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "updated_position": "bigint",
}


def status_of(status: str) -> str:
    return _LEGACY.get(status, status)


def reason_of(event: object) -> str | None:
    """The reason a step gives, as lists and reports show it (None when it gives none)."""
    reason: str | None
    if isinstance(event, Submission.Disqualified):
        reason = event.reason
    elif isinstance(event, Submission.RequiredFieldsMissing):
        reason = "missing " + ", ".join(event.missing)
        if event.endpoint_id:
            reason = f"{event.endpoint_id}: {reason}"
    elif isinstance(event, Submission.Capped):
        reason = "capped: " + ", ".join(event.limits)
        if event.endpoint_id:
            reason = f"{event.endpoint_id}: {reason}"
    elif isinstance(event, Submission.ActionRequested):
        reason = event.error
    elif isinstance(event, Submission.ActionCompleted):
        proceeds = event.decision in ("approve", "continue")
        reason = event.reason or (None if proceeds else event.decision)
    elif isinstance(event, Submission.BuyerAnswered):
        reason = event.reason or (None if event.outcome == "accepted" else event.outcome)
    elif isinstance(event, Submission.EndpointSkipped):
        reason = f"{event.endpoint_id}: {event.reason}"
    elif isinstance(event, Submission.ReturnRequested | Submission.ReturnDecided):
        reason = event.reason
    else:
        return None
    return reason[:MAX_REASON] if reason else None


# Steps that give a reason replace the previous one, even with none of their own.
_GIVES_REASON = (
    Submission.Disqualified,
    Submission.RequiredFieldsMissing,
    Submission.Capped,
    Submission.EndpointSkipped,
    Submission.ActionCompleted,
    Submission.BuyerAnswered,
    Submission.ReturnRequested,
    Submission.ReturnDecided,
)


@dataclass
class _Row:
    id: UUID
    workspace_id: UUID
    lead_id: UUID
    campaign_id: UUID
    source: str
    origin: str
    parent_id: UUID | None
    actor: str | None
    status: str
    reason: str | None
    endpoint_id: str | None
    price: Decimal | None
    action_due_at: datetime | None
    post_started_at: datetime | None
    accepted_at: datetime | None
    return_pending: bool
    created_at: datetime
    updated_at: datetime
    updated_position: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Row:
        return cls(**{name: row[name] for name in COLUMNS})

    def step(self, event: Submission.Step, position: int) -> None:
        if event.status:
            self.status = status_of(event.status)
        failed_action = isinstance(event, Submission.ActionRequested) and bool(event.error)
        if failed_action or isinstance(event, _GIVES_REASON):
            self.reason = reason_of(event)
        if isinstance(event, Submission.ActionRequested):
            self.action_due_at = event.due_at
        elif isinstance(event, Submission.ActionCompleted):
            self.action_due_at = None
        elif isinstance(event, Submission.PostStarted):
            self.endpoint_id = event.endpoint_id
            self.post_started_at = event.timestamp
        elif isinstance(event, Submission.BuyerAnswered):
            self.post_started_at = None
            # As the aggregate counts it: every buyer that accepts adds its price (a shared
            # lead has several); the closing answer naming no endpoint adds nothing.
            if event.outcome == "accepted" and event.endpoint_id:
                self.accepted_at = self.accepted_at or event.timestamp
                if event.price is not None:
                    self.price = (self.price or Decimal(0)) + event.price
        elif isinstance(event, Submission.ReturnRequested):
            self.return_pending = True
        elif isinstance(event, Submission.ReturnDecided):
            self.return_pending = False
        self.updated_at = event.timestamp
        self.updated_position = position


def _unnest(columns: Sequence[str]) -> str:
    return ", ".join(f"${i}::{_TYPES[c]}[]" for i, c in enumerate(columns, start=1))


class SubmissionsView(Projection):
    name = "submissions"
    version = 2
    table_names = ("submissions",)
    event_types = event_types_of(Submission)

    def create_sql(self, tables: Tables) -> str:
        t = tables["submissions"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                lead_id          uuid        NOT NULL,
                campaign_id      uuid        NOT NULL,
                source           text        NOT NULL,
                origin           text        NOT NULL,
                parent_id        uuid,
                actor            text,
                status           text        NOT NULL,
                reason           text,
                endpoint_id      text,
                price            numeric,
                action_due_at    timestamptz,
                post_started_at  timestamptz,
                accepted_at      timestamptz,
                return_pending   boolean     NOT NULL DEFAULT false,
                snapshot         jsonb       NOT NULL DEFAULT '{{}}',
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_lead ON {t} (lead_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_workspace
                ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_campaign
                ON {t} (workspace_id, campaign_id, status, created_at DESC);
            CREATE INDEX IF NOT EXISTS {t}_action_due
                ON {t} (action_due_at) WHERE action_due_at IS NOT NULL;
            CREATE INDEX IF NOT EXISTS {t}_open
                ON {t} (status)
                WHERE status IN ('pending', 'processing', 'qualified', 'delivered');
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["submissions"]
        # Folded in memory from the stored rows: one read, then at most one insert (rows
        # made in this batch, with their snapshot) and one update (rows made before it).
        created_here = {
            e.event.originator_id for e in events if isinstance(e.event, Submission.Created)
        }
        earlier = {e.event.originator_id for e in events} - created_here
        rows: dict[UUID, _Row] = {}
        if earlier:
            for stored in await db.fetch(
                f"SELECT {', '.join(COLUMNS)} FROM {t} WHERE id = ANY($1::uuid[])", list(earlier)
            ):
                rows[stored["id"]] = _Row.of(stored)
        snapshots: dict[UUID, str] = {}
        changed: set[UUID] = set()
        for logged in events:
            event = logged.event
            submission_id = event.originator_id
            row = rows.get(submission_id)
            if row is not None and row.updated_position >= logged.position:
                continue  # applied before
            if isinstance(event, Submission.Created):
                rows[submission_id] = _Row(
                    id=submission_id,
                    workspace_id=event.workspace_id,
                    lead_id=event.lead_id,
                    campaign_id=event.campaign_id,
                    source=str(event.source),
                    origin=str(event.origin),
                    parent_id=event.parent_id,
                    actor=event.actor,
                    status=status_of(event.status),
                    reason=None,
                    endpoint_id=None,
                    price=None,
                    action_due_at=None,
                    post_started_at=None,
                    accepted_at=None,
                    return_pending=False,
                    created_at=event.timestamp,
                    updated_at=event.timestamp,
                    updated_position=logged.position,
                )
                snapshots[submission_id] = json.dumps(event.snapshot)
            elif row is None:
                raise ValueError(f"{logged.event_type} of submission {submission_id} before it")
            elif isinstance(event, Submission.Step):
                row.step(event, logged.position)
            else:
                continue
            changed.add(submission_id)
        new = [rows[i] for i in changed if i in snapshots]
        if new:
            await db.execute(
                f"""
                INSERT INTO {t} ({", ".join(COLUMNS)}, snapshot)
                SELECT {", ".join(COLUMNS)}, s::jsonb
                  FROM unnest({_unnest(COLUMNS)}, ${len(COLUMNS) + 1}::text[])
                       AS r({", ".join(COLUMNS)}, s)
                ON CONFLICT (id) DO NOTHING
                """,
                *(list(column) for column in zip(*map(astuple, new), strict=True)),
                [snapshots[row.id] for row in new],
            )
        old = [rows[i] for i in changed if i not in snapshots]
        if old:
            keyed = ("id", *MUTABLE)
            await db.execute(
                f"""
                UPDATE {t} AS t SET {", ".join(f"{c} = r.{c}" for c in MUTABLE)}
                  FROM unnest({_unnest(keyed)}) AS r({", ".join(keyed)})
                 WHERE t.id = r.id AND t.updated_position < r.updated_position
                """,
                *([getattr(row, c) for row in old] for c in keyed),
            )
