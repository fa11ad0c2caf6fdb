"""The lead list and the Kanban board: one row per lead with what lists filter and sort on."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from domain.base import LoggedEvent
from domain.leads import Lead, ReturnStatus, tag_key
from domain.normalize import phone_digits
from projections.base import Projection, ProjectionDb, Tables


def _search_text(*parts: str | None) -> str:
    return " ".join(p.lower() for p in parts if p)


def _tag_keys(tags: list[str] | tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(tag_key(t) for t in tags))


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
    """Version 2 added referral, return, lead type, conversion and deletion times, the
    case-insensitive tag keys and the phone digits search matches (`leadlog rebuild leads`
    fills them for leads received before the upgrade)."""

    name = "leads"
    version = 2
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
            "lead.referred",
            "lead.return_started",
            "lead.return_accepted",
            "lead.return_declined",
            "lead.lead_type_changed",
            "lead.converted",
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
                updated_position bigint      NOT NULL,
                tag_keys         text[]      NOT NULL DEFAULT '{{}}',
                phone_digits     text        NOT NULL DEFAULT '',
                lead_type_id     uuid,
                referred_to      uuid,
                referred_at      timestamptz,
                return_status    text,
                contact_id       uuid,
                converted_at     timestamptz,
                deleted_at       timestamptz
            );
            CREATE INDEX IF NOT EXISTS {t}_workspace_created
                ON {t} (workspace_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_tag_keys ON {t} USING gin (tag_keys);
            CREATE INDEX IF NOT EXISTS {t}_open_returns
                ON {t} (workspace_id, created_at DESC) WHERE return_status = 'open';
            CREATE INDEX IF NOT EXISTS {t}_contacts
                ON {t} (workspace_id, contact_id) WHERE contact_id IS NOT NULL;
            CREATE INDEX IF NOT EXISTS {t}_trash
                ON {t} (workspace_id, deleted_at DESC) WHERE deleted;
            CREATE INDEX IF NOT EXISTS {t}_board
                ON {t} (workspace_id, pipeline_id, stage_id, created_at DESC, id);
            CREATE INDEX IF NOT EXISTS {t}_request ON {t} (workspace_id, request_id);
            CREATE INDEX IF NOT EXISTS {t}_phone_forms
                ON {t} USING gin (string_to_array(phone_digits, ' '));
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
                        _tag_keys(d.tags),
                        phone_digits(event.phone_normal, d.phone),
                        event.lead_type_id,
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
                if isinstance(event, Lead.Deleted):
                    await _set(db, t, logged, deleted=True, deleted_at=event.timestamp)
                if isinstance(event, Lead.Restored):
                    await _set(db, t, logged, deleted=False, deleted_at=None)
                if isinstance(event, Lead.Referred):
                    await _set(
                        db,
                        t,
                        logged,
                        referred_to=event.partner_id,
                        referred_at=event.timestamp,
                        return_status=None,
                    )
                if isinstance(event, Lead.ReturnStarted):
                    await _set(db, t, logged, return_status=str(ReturnStatus.OPEN))
                if isinstance(event, Lead.ReturnAccepted):
                    await _set(
                        db,
                        t,
                        logged,
                        return_status=str(ReturnStatus.ACCEPTED),
                        referred_to=None,
                        referred_at=None,
                    )
                if isinstance(event, Lead.ReturnDeclined):
                    await _set(db, t, logged, return_status=str(ReturnStatus.DECLINED))
                if isinstance(event, Lead.LeadTypeChanged):
                    await _set(db, t, logged, lead_type_id=event.new)
                if isinstance(event, Lead.Converted):
                    await _set(
                        db, t, logged, contact_id=event.contact_id, converted_at=event.timestamp
                    )
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
                                   updated_at = $10, updated_position = $11, tag_keys = $12,
                                   phone_digits = $13
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
            _tag_keys(tags),
            phone_digits(event.phone_normal, values["phone"]),
        )

    async def _insert(self, db: ProjectionDb, table: str, rows: list[tuple[object, ...]]) -> None:
        await db.executemany(
            f"""
            INSERT INTO {table} (id, workspace_id, request_id, name, email, phone, company, title,
                                 tags, source, status, pipeline_id, stage_id, is_duplicate,
                                 duplicate_of, customer_id, campaign_id, custom_fields,
                                 display_names, search, created_at, updated_at, updated_position,
                                 tag_keys, phone_digits, lead_type_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                    $18::jsonb, $19::jsonb, $20, $21, $21, $22, $23, $24, $25)
            ON CONFLICT (id) DO NOTHING
            """,
            rows,
        )
