"""Deliveries: one row per webhook or email delivery; the listing and the queue of due work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.base import LoggedEvent
from domain.deliveries import Delivery, DeliveryState, Outcome
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of

_STATE_OF = {
    Outcome.SUCCEEDED: DeliveryState.SUCCEEDED,
    Outcome.RETRYING: DeliveryState.PENDING,
    Outcome.FAILED: DeliveryState.FAILED,
    Outcome.DISABLED: DeliveryState.DISABLED,
}

COLUMNS = (
    "id",
    "workspace_id",
    "lead_id",
    "lead_type_id",
    "action_id",
    "kind",
    "target",
    "event_code",
    "state",
    "attempts",
    "last_status",
    "last_error",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "updated_position",
)


@dataclass
class _Row:
    id: UUID
    workspace_id: UUID
    lead_id: UUID
    lead_type_id: UUID
    action_id: UUID
    kind: str
    target: str
    event_code: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    updated_position: int

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Row:
        return cls(**{name: row[name] for name in COLUMNS})

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)


class DeliveriesView(Projection):
    """`state` is the delivery's (`pending`, `succeeded`, `failed`, `disabled`); a pending
    row with `next_attempt_at` waits out a backoff, one without is due at once. The delivery
    worker reads due rows from here (`gateways/deliveries.py`), so due work survives restarts."""

    name = "deliveries"
    version = 1
    table_names = ("deliveries",)
    event_types = event_types_of(Delivery)

    def create_sql(self, tables: Tables) -> str:
        t = tables["deliveries"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                lead_id          uuid        NOT NULL,
                lead_type_id     uuid        NOT NULL,
                action_id        uuid        NOT NULL,
                kind             text        NOT NULL,
                target           text        NOT NULL,
                event_code       text        NOT NULL,
                state            text        NOT NULL,
                attempts         int         NOT NULL DEFAULT 0,
                last_status      int,
                last_error       text,
                next_attempt_at  timestamptz,
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_due
                ON {t} ((coalesce(next_attempt_at, updated_at)), id) WHERE state = 'pending';
            CREATE INDEX IF NOT EXISTS {t}_workspace ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_lead ON {t} (lead_id, created_at DESC, id);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["deliveries"]
        # Folded in memory from the stored rows, then one upsert for the batch.
        later = {
            e.event.originator_id for e in events if not isinstance(e.event, Delivery.Scheduled)
        }
        rows: dict[UUID, _Row] = {}
        if later:
            for stored in await db.fetch(
                f"SELECT {', '.join(COLUMNS)} FROM {t} WHERE id = ANY($1::uuid[])", list(later)
            ):
                rows[stored["id"]] = _Row.of(stored)
        changed: set[UUID] = set()
        for logged in events:
            event = logged.event
            delivery_id = event.originator_id
            row = rows.get(delivery_id)
            if row is not None and row.updated_position >= logged.position:
                continue  # applied before
            if isinstance(event, Delivery.Scheduled):
                rows[delivery_id] = _Row(
                    id=delivery_id,
                    workspace_id=event.workspace_id,
                    lead_id=event.lead_id,
                    lead_type_id=event.lead_type_id,
                    action_id=event.action_id,
                    kind=str(event.kind),
                    target=event.target,
                    event_code=event.event_code,
                    state=str(DeliveryState.PENDING),
                    attempts=0,
                    last_status=None,
                    last_error=None,
                    next_attempt_at=None,
                    created_at=event.timestamp,
                    updated_at=event.timestamp,
                    updated_position=logged.position,
                )
            elif row is None:
                raise ValueError(f"{logged.event_type} of delivery {delivery_id} before it")
            elif isinstance(event, Delivery.Attempted):
                row.state = str(_STATE_OF[event.outcome])
                row.attempts += 1
                row.last_status = event.status_code
                row.last_error = event.error
                row.next_attempt_at = event.next_attempt_at
            elif isinstance(event, Delivery.RedeliveryRequested):
                row.state = str(DeliveryState.PENDING)
                row.next_attempt_at = None
            else:
                continue
            row = rows[delivery_id]
            row.updated_at = event.timestamp
            row.updated_position = logged.position
            changed.add(delivery_id)
        if not changed:
            return
        values = [rows[i].values() for i in changed]
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
        await db.execute(
            f"""
            INSERT INTO {t} AS d ({", ".join(COLUMNS)})
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[],
                                 $6::text[], $7::text[], $8::text[], $9::text[], $10::int[],
                                 $11::int[], $12::text[], $13::timestamptz[],
                                 $14::timestamptz[], $15::timestamptz[], $16::bigint[])
            ON CONFLICT (id) DO UPDATE SET {updates}
             WHERE d.updated_position < EXCLUDED.updated_position
            """,
            *(list(column) for column in zip(*values, strict=True)),
        )
