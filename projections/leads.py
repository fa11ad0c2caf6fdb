"""The lead list and the Kanban board: one row per lead with what lists filter and sort on."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson

from domain.base import LoggedEvent
from domain.leads import Lead, ReturnStatus, tag_key
from domain.normalize import phone_digits
from projections.base import Projection, ProjectionDb, Tables, trigram_index


def _search_text(*parts: str | None) -> str:
    return " ".join(p.lower() for p in parts if p)


def _tag_keys(tags: list[str] | tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(tag_key(t) for t in tags))


GIN = "gin_pending_list_limit = 256"
"""New entries wait in a GIN index's pending list until a vacuum merges them, and every
search reads the whole list: at the default 4 MB a phone search over 100,000 leads took
23 ms, 0.3 ms once merged. A short list keeps searches fast and inserts still batched."""

NO_ID = UUID(int=0)
"""Where `lead_counts` files a lead with no pipeline or stage (a key column cannot be null)."""

CountKey = tuple[UUID, UUID, UUID, bool]
"""A `lead_counts` row: workspace, pipeline, stage (`NO_ID` for none), deleted."""


def _count_key(row: Mapping[str, Any], prefix: str = "") -> CountKey:
    return (
        row[f"{prefix}workspace_id"],
        row[f"{prefix}pipeline_id"] or NO_ID,
        row[f"{prefix}stage_id"] or NO_ID,
        row[f"{prefix}deleted"],
    )


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


async def _move(
    db: ProjectionDb,
    table: str,
    logged: LoggedEvent,
    counts: Counter[CountKey],
    **columns: object,
) -> None:
    """`_set` for a change that may move the lead between `lead_counts` rows (its pipeline,
    stage or deletion): the row's key before and after are read in the same statement, so
    a count moves only when the row really changed."""
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=2))
    n = len(columns) + 2
    rows = await db.fetch(
        f"""WITH old AS (
                SELECT id, workspace_id, pipeline_id, stage_id, deleted FROM {table}
                 WHERE id = $1 AND updated_position < ${n + 1} FOR UPDATE)
            UPDATE {table} AS t
               SET {assignments}, updated_at = ${n}, updated_position = ${n + 1}
              FROM old WHERE t.id = old.id
            RETURNING t.workspace_id, t.pipeline_id, t.stage_id, t.deleted,
                      old.workspace_id AS old_workspace_id, old.pipeline_id AS old_pipeline_id,
                      old.stage_id AS old_stage_id, old.deleted AS old_deleted""",
        logged.event.originator_id,
        *columns.values(),
        logged.event.timestamp,
        logged.position,
    )
    for row in rows:
        counts[_count_key(row, "old_")] -= 1
        counts[_count_key(row)] += 1


class LeadList(Projection):
    """Version 2 added referral, return, lead type, conversion and deletion times, the
    case-insensitive tag keys and the phone digits search matches. Version 3 added the
    per-stage counts (`lead_counts`), the trigram indexes searches use and keyset-ready
    indexes (`leadlog rebuild leads`, or any worker at start, fills them from the log)."""

    name = "leads"
    version = 3
    table_names = ("leads", "lead_counts")
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
        counts = tables["lead_counts"]
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
            CREATE TABLE IF NOT EXISTS {counts} (
                workspace_id uuid    NOT NULL,
                pipeline_id  uuid    NOT NULL,
                stage_id     uuid    NOT NULL,
                deleted      boolean NOT NULL,
                leads        bigint  NOT NULL,
                PRIMARY KEY (workspace_id, pipeline_id, stage_id, deleted)
            );
        """

    def index_sql(self, tables: Tables) -> Sequence[str]:
        t = tables["leads"]
        return (
            # The trigram index on the search text takes most of the time (3 s of 5 at
            # 200,000 leads): first, so the others are built beside it.
            trigram_index(f"{t}_search", t, "search", GIN),
            f"""CREATE INDEX IF NOT EXISTS {t}_phone_forms
                ON {t} USING gin (string_to_array(phone_digits, ' ')) WITH ({GIN})""",
            trigram_index(f"{t}_phone_digits", t, "phone_digits", GIN),
            f"CREATE INDEX IF NOT EXISTS {t}_email ON {t} (workspace_id, lower(email))",
            f"""CREATE INDEX IF NOT EXISTS {t}_board
                ON {t} (workspace_id, pipeline_id, stage_id, created_at DESC, id DESC)""",
            f"""CREATE INDEX IF NOT EXISTS {t}_workspace_created
                ON {t} (workspace_id, created_at DESC, id DESC)""",
            f"""CREATE INDEX IF NOT EXISTS {t}_workspace_updated
                ON {t} (workspace_id, updated_at DESC, id DESC)""",
            f"CREATE INDEX IF NOT EXISTS {t}_request ON {t} (workspace_id, request_id)",
            f"CREATE INDEX IF NOT EXISTS {t}_tag_keys ON {t} USING gin (tag_keys) WITH ({GIN})",
            f"""CREATE INDEX IF NOT EXISTS {t}_open_returns
                ON {t} (workspace_id, created_at DESC) WHERE return_status = 'open'""",
            f"""CREATE INDEX IF NOT EXISTS {t}_contacts
                ON {t} (workspace_id, contact_id) WHERE contact_id IS NOT NULL""",
            f"""CREATE INDEX IF NOT EXISTS {t}_trash
                ON {t} (workspace_id, deleted_at DESC, id DESC) WHERE deleted""",
        )

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        t = tables["leads"]
        counts: Counter[CountKey] = Counter()
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
                        _json(list(d.tags)),
                        str(event.source),
                        str(event.status),
                        event.pipeline_id,
                        event.stage_id,
                        event.is_duplicate,
                        event.duplicate_of,
                        d.customer_id,
                        d.campaign_id,
                        _json(d.custom_fields),
                        _json(d.display_names),
                        _search_text(event.name, d.email, event.phone_normal or d.phone, d.company),
                        event.timestamp,
                        logged.position,
                        _json(_tag_keys(d.tags)),
                        phone_digits(event.phone_normal, d.phone),
                        event.lead_type_id,
                    )
                )
            else:
                if received:
                    await self._insert(db, t, received, counts)
                    received = []
                if isinstance(event, Lead.StageChanged):
                    await _move(
                        db,
                        t,
                        logged,
                        counts,
                        pipeline_id=event.pipeline_id,
                        stage_id=event.new_stage_id,
                    )
                if isinstance(event, Lead.StatusChanged):
                    await _set(db, t, logged, status=event.new)
                if isinstance(event, Lead.Assigned):
                    await _set(db, t, logged, assigned_to=event.new)
                if isinstance(event, Lead.Deleted):
                    await _move(db, t, logged, counts, deleted=True, deleted_at=event.timestamp)
                if isinstance(event, Lead.Restored):
                    await _move(db, t, logged, counts, deleted=False, deleted_at=None)
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
            await self._insert(db, t, received, counts)
        await _count(db, tables["lead_counts"], counts)

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
            _json(custom),
            search,
            event.timestamp,
            position,
            _tag_keys(tags),
            phone_digits(event.phone_normal, values["phone"]),
        )

    async def _insert(
        self,
        db: ProjectionDb,
        table: str,
        rows: list[tuple[object, ...]],
        counts: Counter[CountKey],
    ) -> None:
        """One statement for a run of new leads; the ones already there (a re-applied
        batch) are skipped, and only the rows really inserted are counted."""
        columns = list(zip(*rows, strict=True))
        inserted = await db.fetch(
            f"""
            INSERT INTO {table} (id, workspace_id, request_id, name, email, phone, company, title,
                                 tags, source, status, pipeline_id, stage_id, is_duplicate,
                                 duplicate_of, customer_id, campaign_id, custom_fields,
                                 display_names, search, created_at, updated_at, updated_position,
                                 tag_keys, phone_digits, lead_type_id)
            SELECT id, workspace_id, request_id, name, email, phone, company, title,
                   ARRAY(SELECT jsonb_array_elements_text(tags)), source, status, pipeline_id,
                   stage_id, is_duplicate, duplicate_of, customer_id, campaign_id, custom_fields,
                   display_names, search, created_at, created_at, updated_position,
                   ARRAY(SELECT jsonb_array_elements_text(tag_keys)), phone_digits, lead_type_id
              FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                          $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[],
                          $11::text[], $12::uuid[], $13::uuid[], $14::boolean[], $15::uuid[],
                          $16::uuid[], $17::uuid[], $18::jsonb[], $19::jsonb[], $20::text[],
                          $21::timestamptz[], $22::bigint[], $23::jsonb[], $24::text[],
                          $25::uuid[])
                AS n(id, workspace_id, request_id, name, email, phone, company, title, tags,
                     source, status, pipeline_id, stage_id, is_duplicate, duplicate_of,
                     customer_id, campaign_id, custom_fields, display_names, search, created_at,
                     updated_position, tag_keys, phone_digits, lead_type_id)
            ON CONFLICT (id) DO NOTHING
            RETURNING workspace_id, pipeline_id, stage_id, deleted
            """,
            *(list(column) for column in columns),
        )
        for row in inserted:
            counts[_count_key(row)] += 1


def _json(value: object) -> str:
    """A `jsonb` parameter; orjson, as the stdlib encoder was a twentieth of a rebuild. A
    number orjson cannot write (an integer past 64 bits: `1e29` comes back from `jsonb` as
    one) goes through the stdlib encoder, which writes it as PostgreSQL stored it."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


async def _count(db: ProjectionDb, table: str, counts: Counter[CountKey]) -> None:
    """Add a batch's moves to `lead_counts`, one statement for all of them."""
    moved = [(*key, n) for key, n in counts.items() if n]
    if not moved:
        return
    workspaces, pipelines, stages, deleted, leads = zip(*moved, strict=True)
    await db.execute(
        f"""INSERT INTO {table} AS c (workspace_id, pipeline_id, stage_id, deleted, leads)
            SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::boolean[],
                                 $5::bigint[])
            ON CONFLICT (workspace_id, pipeline_id, stage_id, deleted)
            DO UPDATE SET leads = c.leads + EXCLUDED.leads""",
        list(workspaces),
        list(pipelines),
        list(stages),
        list(deleted),
        list(leads),
    )
    # A row that came down to nothing goes, as a rebuild from the log would not have it.
    await db.execute(
        f"DELETE FROM {table} WHERE leads = 0 AND workspace_id = ANY($1::uuid[])",
        list(set(workspaces)),
    )
