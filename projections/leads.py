"""The lead list and the Kanban board: one row per lead with what lists filter and sort on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from domain.base import LoggedEvent
from domain.leads import Lead
from projections.base import Projection, ProjectionDb, Tables


def _search_text(*parts: str | None) -> str:
    return " ".join(p.lower() for p in parts if p)


async def _set(db: ProjectionDb, table: str, logged: LoggedEvent, **columns: object) -> None:
    """Set `columns` on the event's lead, unless a later event already updated its row (so a
    re-applied batch is a no-op, never a step back)."""
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=2))
    n = len(columns) + 2
    await db.execute(
        f"""UPDATE {table} SET {assignments}, updated_at = ${n}, updated_position = ${n + 1}
             WHERE id = $1 AND updated_position < ${n + 1}""",
        logged.event.originator_id,
        *columns.values(),
        logged.event.timestamp,
        logged.position,
    )


class LeadList(Projection):
    name = "leads"
    version = 1
    table_names = ("leads",)
    event_types = frozenset(
        {
            "lead.received",
            "lead.status_changed",
            "lead.stage_changed",
            "lead.assigned",
            "lead.updated",
            "lead.deleted",
            "lead.restored",
        }
    )

    def create_sql(self, tables: Tables) -> str:
        t = tables["leads"]
        return f"""
            CREATE TABLE IF NOT EXISTS {t} (
                id               uuid        PRIMARY KEY,
                workspace_id     uuid        NOT NULL,
                request_id       bigint      NOT NULL,
                name             text        NOT NULL,
                email            text,
                phone            text,
                company          text,
                title            text,
                tags             text[]      NOT NULL DEFAULT '{{}}',
                source           text        NOT NULL,
                status           text        NOT NULL,
                pipeline_id      uuid,
                stage_id         uuid,
                assigned_to      text,
                is_duplicate     boolean     NOT NULL,
                duplicate_of     uuid,
                customer_id      uuid,
                campaign_id      uuid,
                custom_fields    jsonb       NOT NULL DEFAULT '{{}}',
                display_names    jsonb       NOT NULL DEFAULT '{{}}',
                search           text        NOT NULL,
                deleted          boolean     NOT NULL DEFAULT false,
                created_at       timestamptz NOT NULL,
                updated_at       timestamptz NOT NULL,
                updated_position bigint      NOT NULL
            );
            CREATE INDEX IF NOT EXISTS {t}_workspace_created
                ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_board
                ON {t} (workspace_id, pipeline_id, stage_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_request ON {t} (workspace_id, request_id);
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["leads"]
        received: list[tuple[object, ...]] = []
        for logged in events:
            event = logged.event
            if isinstance(event, Lead.Received):
                d = event.details
                received.append(
                    (
                        event.originator_id,
                        event.workspace_id,
                        event.request_id,
                        event.name,
                        d.email,
                        d.phone,
                        d.company,
                        d.title,
                        list(d.tags),
                        str(event.source),
                        str(event.status),
                        event.pipeline_id,
                        event.stage_id,
                        event.is_duplicate,
                        event.duplicate_of,
                        d.customer_id,
                        d.campaign_id,
                        json.dumps(d.custom_fields),
                        json.dumps(d.display_names),
                        _search_text(event.name, d.email, event.phone_normal or d.phone, d.company),
                        event.timestamp,
                        logged.position,
                    )
                )
            else:
                if received:
                    await self._insert(db, t, received)
                    received = []
                if isinstance(event, Lead.StageChanged):
                    await _set(
                        db, t, logged, pipeline_id=event.pipeline_id, stage_id=event.new_stage_id
                    )
                if isinstance(event, Lead.StatusChanged):
                    await _set(db, t, logged, status=event.new)
                if isinstance(event, Lead.Assigned):
                    await _set(db, t, logged, assigned_to=event.new)
                if isinstance(event, Lead.Deleted | Lead.Restored):
                    await _set(db, t, logged, deleted=isinstance(event, Lead.Deleted))
                if isinstance(event, Lead.Updated):
                    await self._update(db, t, event, logged.position)
        if received:
            await self._insert(db, t, received)

    async def _update(
        self, db: ProjectionDb, table: str, event: Lead.Updated, position: int
    ) -> None:
        rows = await db.fetch(
            f"""SELECT name, email, phone, company, title, tags, custom_fields, updated_position
                  FROM {table} WHERE id = $1""",
            event.originator_id,
        )
        if not rows or rows[0]["updated_position"] >= position:
            return
        row = rows[0]
        values: dict[str, Any] = {k: row[k] for k in ("name", "email", "phone", "company", "title")}
        tags = list(row["tags"])
        custom = row["custom_fields"]
        custom = dict(json.loads(custom) if isinstance(custom, str) else custom)
        for change in event.changes:
            if change.field in values:
                values[change.field] = change.new
            elif change.field == "tags":
                tags = list(change.new)
            elif change.field.startswith("customFields."):
                key = change.field.partition(".")[2]
                if change.new is None:
                    custom.pop(key, None)
                else:
                    custom[key] = change.new
        search = _search_text(
            values["name"],
            values["email"],
            event.phone_normal or values["phone"],
            values["company"],
        )
        await db.execute(
            f"""UPDATE {table} SET name = $2, email = $3, phone = $4, company = $5, title = $6,
                                   tags = $7, custom_fields = $8::jsonb, search = $9,
                                   updated_at = $10, updated_position = $11
                 WHERE id = $1""",
            event.originator_id,
            values["name"],
            values["email"],
            values["phone"],
            values["company"],
            values["title"],
            tags,
            json.dumps(custom),
            search,
            event.timestamp,
            position,
        )

    async def _insert(self, db: ProjectionDb, table: str, rows: list[tuple[object, ...]]) -> None:
        await db.executemany(
            f"""
            INSERT INTO {table} (id, workspace_id, request_id, name, email, phone, company, title,
                                 tags, source, status, pipeline_id, stage_id, is_duplicate,
                                 duplicate_of, customer_id, campaign_id, custom_fields,
                                 display_names, search, created_at, updated_at, updated_position)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18::jsonb, $19::jsonb, $20, $21, $21, $22)
            ON CONFLICT (id) DO NOTHING
            """,
            rows,
        )
