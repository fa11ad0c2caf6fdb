"""Messages: one row per message sent to a lead, with its status and status history.

Every sender (automation step, quick send, broadcast, lead-type action) writes the same
`Message` events, so this one view tracks them all. `message.queued` makes the row;
`sent`, `send_failed` and `status_reported` move it, and the status history is derived from
them exactly as the aggregate keeps it (`[{status, at, errorCode, error}]`, `read` adding
`delivered` first when the message never reported it), so the view and a replay agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.base import DomainEvent, LoggedEvent
from domain.messages import FAILURES, Message, MessageStatus
from projections.base import Projection, ProjectionDb, Tables
from projections.timeline import event_types_of

COLUMNS = (
    "id",
    "workspace_id",
    "lead_id",
    "channel_id",
    "channel",
    "to_address",
    "status",
    "provider_id",
    "status_history",
    "origin",
    "origin_id",
    "step",
    "error_code",
    "error",
    "content",
    "created_at",
    "updated_at",
    "updated_position",
)
# Columns a later event may change (the rest are set once, by `message.queued`).
MUTABLE = (
    "status",
    "provider_id",
    "status_history",
    "error_code",
    "error",
    "updated_at",
    "updated_position",
)
_TYPES = {
    "id": "uuid",
    "workspace_id": "uuid",
    "lead_id": "uuid",
    "channel_id": "uuid",
    "channel": "text",
    "to_address": "text",
    "status": "text",
    "provider_id": "text",
    "status_history": "jsonb",
    "origin": "text",
    "origin_id": "uuid",
    "step": "integer",
    "error_code": "text",
    "error": "text",
    "content": "jsonb",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
    "updated_position": "bigint",
}
# jsonb columns travel as text and are cast in the statement.
_WIRE_TYPES = {name: ("text" if kind == "jsonb" else kind) for name, kind in _TYPES.items()}


@dataclass
class _Row:
    id: UUID
    workspace_id: UUID
    lead_id: UUID | None
    channel_id: UUID
    channel: str
    to_address: str
    status: str
    provider_id: str | None
    status_history: list[dict[str, Any]]
    origin: str
    origin_id: UUID | None
    step: int | None
    error_code: str | None
    error: str | None
    content: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    updated_position: int
    new: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _Row:
        values = {name: row[name] for name in COLUMNS}
        for name in ("status_history", "content"):
            if isinstance(values[name], str | bytes):
                values[name] = json.loads(values[name])
        return cls(**values)

    def move(
        self,
        status: MessageStatus,
        at: datetime,
        error_code: str | None = None,
        error: str | None = None,
    ) -> None:
        self.status = str(status)
        self.status_history.append(
            {"status": str(status), "at": at.isoformat(), "errorCode": error_code, "error": error}
        )

    def follow(self, event: DomainEvent, position: int) -> None:
        if isinstance(event, Message.Sent):
            self.provider_id = event.provider_id
            self.move(MessageStatus.SENT, event.timestamp)
        elif isinstance(event, Message.SendFailed):
            self.error_code = event.error_code
            self.error = event.error
            self.move(MessageStatus.FAILED, event.timestamp, event.error_code, event.error)
        elif isinstance(event, Message.StatusReported):
            seen = {entry["status"] for entry in self.status_history}
            if event.status is MessageStatus.READ and MessageStatus.DELIVERED not in seen:
                self.move(MessageStatus.DELIVERED, event.timestamp)
            if event.status in FAILURES:
                self.error_code = event.error_code
                self.error = event.error
            self.move(event.status, event.timestamp, event.error_code, event.error)
        self.updated_at = event.timestamp
        self.updated_position = position

    def values(self, columns: Sequence[str]) -> list[Any]:
        out: list[Any] = []
        for name in columns:
            value = getattr(self, name)
            out.append(json.dumps(value) if _TYPES[name] == "jsonb" else value)
        return out


def _unnest(columns: Sequence[str]) -> str:
    return ", ".join(f"${i}::{_WIRE_TYPES[c]}[]" for i, c in enumerate(columns, start=1))


def _select(columns: Sequence[str]) -> str:
    """The unnested columns, jsonb ones cast back from text."""
    return ", ".join(f"r.{c}::jsonb" if _TYPES[c] == "jsonb" else f"r.{c}" for c in columns)


def _arrays(rows: Sequence[_Row], columns: Sequence[str]) -> list[list[Any]]:
    values = [row.values(columns) for row in rows]
    return [[v[i] for v in values] for i in range(len(columns))]


class MessagesView(Projection):
    name = "messages"
    version = 1
    table_names = ("messages",)
    event_types = event_types_of(Message)

    def create_sql(self, tables: Tables) -> str:
        t = tables["messages"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                lead_id          uuid,
                channel_id       uuid        NOT NULL,
                channel          text        NOT NULL,
                to_address       text        NOT NULL,
                status           text        NOT NULL,
                provider_id      text,
                status_history   jsonb       NOT NULL DEFAULT '[]',
                origin           text        NOT NULL,
                origin_id        uuid,
                step             integer,
                error_code       text,
                error            text,
                content          jsonb       NOT NULL DEFAULT '{{}}',
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_workspace
                ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_lead
                ON {t} (workspace_id, lead_id, created_at DESC);
            CREATE INDEX IF NOT EXISTS {t}_origin ON {t} (workspace_id, origin, origin_id);
            CREATE INDEX IF NOT EXISTS {t}_pending
                ON {t} (status, created_at) WHERE status = 'pending';
            CREATE INDEX IF NOT EXISTS {t}_provider ON {t} (channel_id, provider_id);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["messages"]
        # Folded in memory from the stored rows: one read, then at most one insert (rows
        # made in this batch) and one update (rows made before it).
        created_here = {
            e.event.originator_id for e in events if isinstance(e.event, Message.Queued)
        }
        earlier = {e.event.originator_id for e in events} - created_here
        rows: dict[UUID, _Row] = {}
        if earlier:
            for stored in await db.fetch(
                f"SELECT {', '.join(COLUMNS)} FROM {t} WHERE id = ANY($1::uuid[])", list(earlier)
            ):
                rows[stored["id"]] = _Row.of(stored)
        changed: set[UUID] = set()
        for logged in events:
            event = logged.event
            message_id = event.originator_id
            row = rows.get(message_id)
            if row is not None and row.updated_position >= logged.position:
                continue  # applied before
            if isinstance(event, Message.Queued):
                rows[message_id] = _Row(
                    id=message_id,
                    workspace_id=event.workspace_id,
                    lead_id=event.lead_id,
                    channel_id=event.channel_id,
                    channel=event.channel,
                    to_address=event.to,
                    status=str(MessageStatus.PENDING),
                    provider_id=None,
                    status_history=[],
                    origin=str(event.origin),
                    origin_id=event.origin_id,
                    step=event.step,
                    error_code=None,
                    error=None,
                    content=dict(event.content),
                    created_at=event.timestamp,
                    updated_at=event.timestamp,
                    updated_position=logged.position,
                    new=True,
                )
            elif row is None:
                raise ValueError(f"{logged.event_type} of message {message_id} before it")
            else:
                row.follow(event, logged.position)
            changed.add(message_id)
        new = [rows[i] for i in changed if rows[i].new]
        if new:
            await db.execute(
                f"""
                INSERT INTO {t} ({", ".join(COLUMNS)})
                SELECT {_select(COLUMNS)}
                  FROM unnest({_unnest(COLUMNS)}) AS r({", ".join(COLUMNS)})
                ON CONFLICT (id) DO NOTHING
                """,
                *_arrays(new, COLUMNS),
            )
        old = [rows[i] for i in changed if not rows[i].new]
        if old:
            keyed = ("id", *MUTABLE)
            assignments = ", ".join(
                f"{c} = r.{c}::jsonb" if _TYPES[c] == "jsonb" else f"{c} = r.{c}" for c in MUTABLE
            )
            await db.execute(
                f"""
                UPDATE {t} AS t SET {assignments}
                  FROM unnest({_unnest(keyed)}) AS r({", ".join(keyed)})
                 WHERE t.id = r.id AND t.updated_position < r.updated_position
                """,
                *_arrays(old, keyed),
            )
