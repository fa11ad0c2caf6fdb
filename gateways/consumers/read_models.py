"""Queries over the projections' live tables, for handlers that need a read model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from domain.pipelines import Pipeline
from gateways.consumers.projector import Projector
from handlers.ports import EventStore
from projections.timeline import Names


class ViewBehind(RuntimeError):
    """A view did not reach the position a caller needed in time."""


class PendingLeadsTable:
    """`handlers.customers.PendingLeadsQuery` over the `pending_leads` projection."""

    def __init__(self, projector: Projector, timeout: float = 30.0) -> None:
        self.projector = projector
        self.timeout = timeout

    async def of_customer(self, customer_id: UUID, as_of: int) -> Sequence[UUID]:
        if not await self.projector.wait_for("pending_leads", as_of, self.timeout):
            raise ViewBehind(f"pending_leads has not reached position {as_of}")
        table = "pending_leads"  # the view the projector keeps on the live copy
        async with self.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT lead_id FROM {table} WHERE customer_id = $1 ORDER BY lead_id", customer_id
            )
        return [row[0] for row in rows]


SORTABLE = {
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "name": "lower(name)",
    "requestId": "request_id",
    "status": "status",
    "deletedAt": "deleted_at",
}


class ViewNeedsRebuild(ViewBehind):
    """The live tables predate the projection's code version (`leadlog rebuild <name>`)."""


@dataclass(frozen=True)
class LeadFilter:
    """What lists and boards filter on; every field optional. Several values of one field
    match any of them (OR); different fields must all match (AND)."""

    search: str | None = None
    phone_keys: tuple[str, ...] = ()
    """Digit strings a phone-like `search` also matches in the lead's phone (any of them)."""
    pipeline_id: tuple[UUID, ...] = ()
    stage_id: tuple[UUID, ...] = ()
    source: tuple[str, ...] = ()
    assigned_to: tuple[str, ...] = ()
    unassigned: bool = False
    """With `assigned_to`, also leads assigned to nobody; alone, only those."""
    tag: tuple[str, ...] = ()
    """Tag keys (case-folded)."""
    status: tuple[str, ...] = ()
    is_duplicate: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    referred: bool | None = None
    partner_id: tuple[UUID, ...] = ()
    return_status: tuple[str, ...] = ()
    return_open: bool | None = None
    lead_type_id: tuple[UUID, ...] = ()
    converted: bool | None = None
    deleted: bool = False
    """True: the trash (soft-deleted leads only); False: live leads only."""

    def where(self, workspace_id: UUID, args: list[Any]) -> str:
        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        conditions = [
            f"workspace_id = {arg(workspace_id)}",
            "deleted" if self.deleted else "NOT deleted",
        ]
        for column, values, kind in (
            ("pipeline_id", self.pipeline_id, "uuid"),
            ("stage_id", self.stage_id, "uuid"),
            ("source", self.source, "text"),
            ("status", self.status, "text"),
            ("referred_to", self.partner_id, "uuid"),
            ("return_status", self.return_status, "text"),
            ("lead_type_id", self.lead_type_id, "uuid"),
        ):
            if values:
                conditions.append(f"{column} = ANY({arg(list(values))}::{kind}[])")
        if self.assigned_to or self.unassigned:
            either = []
            if self.assigned_to:
                either.append(f"assigned_to = ANY({arg(list(self.assigned_to))}::text[])")
            if self.unassigned:
                either.append("assigned_to IS NULL")
            conditions.append(f"({' OR '.join(either)})")
        if self.tag:
            conditions.append(f"tag_keys && {arg(list(self.tag))}::text[]")
        if self.is_duplicate is not None:
            conditions.append(f"is_duplicate = {arg(self.is_duplicate)}")
        if self.created_after is not None:
            conditions.append(f"created_at >= {arg(self.created_after)}")
        if self.created_before is not None:
            conditions.append(f"created_at < {arg(self.created_before)}")
        for column, flag in (("referred_to", self.referred), ("contact_id", self.converted)):
            if flag is not None:
                conditions.append(f"{column} IS {'NOT ' if flag else ''}NULL")
        if self.return_open is not None:
            conditions.append(
                "return_status = 'open'"
                if self.return_open
                else "return_status IS DISTINCT FROM 'open'"
            )
        if self.search:
            # Partial, case-insensitive, over name, email, phone and company; LIKE wildcards
            # typed by the user are matched literally. A phone-like search also matches the
            # phone's digits, however the number was formatted.
            escaped = (
                self.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            matches = [f"search LIKE {arg(f'%{escaped}%')}"]
            matches += [f"phone_digits LIKE {arg(f'%{key}%')}" for key in self.phone_keys]
            conditions.append(f"({' OR '.join(matches)})")
        return " AND ".join(conditions)


LEAD_COLUMNS = (
    "id, request_id, name, email, phone, company, title, tags, source, status, pipeline_id, "
    "stage_id, assigned_to, is_duplicate, duplicate_of, customer_id, campaign_id, custom_fields, "
    "display_names, created_at, updated_at, lead_type_id, referred_to, referred_at, "
    "return_status, contact_id, converted_at, deleted, deleted_at"
)


def _uuid(value: Any) -> str | None:
    return str(value) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def lead_row_json(row: asyncpg.Record) -> dict[str, Any]:
    custom = (
        orjson.loads(row["custom_fields"])
        if isinstance(row["custom_fields"], str)
        else row["custom_fields"]
    )
    names = (
        orjson.loads(row["display_names"])
        if isinstance(row["display_names"], str)
        else row["display_names"]
    )
    return {
        "id": str(row["id"]),
        "requestId": row["request_id"],
        "name": row["name"],
        "email": row["email"],
        "phone": row["phone"],
        "company": row["company"],
        "title": row["title"],
        "tags": list(row["tags"]),
        "source": row["source"],
        "status": row["status"],
        "pipelineId": _uuid(row["pipeline_id"]),
        "stageId": _uuid(row["stage_id"]),
        "assignedTo": row["assigned_to"],
        "isDuplicate": row["is_duplicate"],
        "duplicateOf": _uuid(row["duplicate_of"]),
        "customerId": _uuid(row["customer_id"]),
        "campaignId": _uuid(row["campaign_id"]),
        "leadTypeId": _uuid(row["lead_type_id"]),
        "referredTo": _uuid(row["referred_to"]),
        "referredAt": _iso(row["referred_at"]),
        "returnStatus": row["return_status"],
        "contactId": _uuid(row["contact_id"]),
        "convertedAt": _iso(row["converted_at"]),
        "deleted": row["deleted"],
        "deletedAt": _iso(row["deleted_at"]),
        "customFields": {**custom, "_displayNames": names},
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


class LeadViews:
    """Queries over the `leads` projection's live table."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    @property
    def table(self) -> str:
        # The view the projector points at the live copy: a rebuild swapped in by another
        # process is read from at once. Postgres inlines the view, so indexes still apply.
        return "leads"

    async def wait_for(self, position: int, timeout: float) -> bool:
        return await self.projector.wait_for("leads", position, timeout)

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection to query the view; tables built by an older version of the
        projection (an upgrade not yet followed by `leadlog rebuild leads`) lack columns:
        that is `ViewNeedsRebuild`, not an error of the query."""
        async with self.projector.pool.acquire() as conn:
            try:
                yield conn
            except asyncpg.UndefinedColumnError as error:
                raise ViewNeedsRebuild(
                    f"the leads view predates this version ({error}); run `leadlog rebuild leads`"
                ) from None

    async def contacts(
        self, workspace_id: UUID, *, page: int, limit: int
    ) -> tuple[list[UUID], int]:
        """A page of the workspace's contacts (the ones its leads were converted into),
        the most recently converted into first."""
        async with self._reading() as conn:
            total = await conn.fetchval(
                f"""SELECT count(DISTINCT contact_id) FROM {self.table}
                     WHERE workspace_id = $1 AND contact_id IS NOT NULL""",
                workspace_id,
            )
            rows = await conn.fetch(
                f"""SELECT contact_id, max(converted_at) AS last_converted FROM {self.table}
                     WHERE workspace_id = $1 AND contact_id IS NOT NULL
                     GROUP BY contact_id ORDER BY last_converted DESC, contact_id
                     LIMIT $2 OFFSET $3""",
                workspace_id,
                limit,
                (page - 1) * limit,
            )
        return [row["contact_id"] for row in rows], int(total)

    async def page(
        self,
        workspace_id: UUID,
        where: LeadFilter,
        *,
        page: int,
        limit: int,
        sort_by: str,
        descending: bool,
    ) -> tuple[list[dict[str, Any]], int]:
        args: list[Any] = []
        condition = where.where(workspace_id, args)
        order = f"{SORTABLE[sort_by]} {'DESC' if descending else 'ASC'}, id"
        args_page = [*args, limit, (page - 1) * limit]
        async with self._reading() as conn:
            total = await conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE {condition}", *args
            )
            rows = await conn.fetch(
                f"SELECT {LEAD_COLUMNS} FROM {self.table} WHERE {condition} "
                f"ORDER BY {order} LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
                *args_page,
            )
        return [lead_row_json(r) for r in rows], int(total)

    async def column(
        self,
        workspace_id: UUID,
        where: LeadFilter,
        *,
        limit: int,
        cursor: tuple[datetime, UUID] | None,
    ) -> tuple[list[dict[str, Any]], int, tuple[datetime, UUID] | None]:
        """One board column: its count and a page of cards, newest first, keyset-paged."""
        args: list[Any] = []
        condition = where.where(workspace_id, args)
        page_condition = condition
        page_args = list(args)
        if cursor is not None:
            page_args.extend(cursor)
            page_condition += f" AND (created_at, id) < (${len(page_args) - 1}, ${len(page_args)})"
        page_args.append(limit + 1)
        async with self._reading() as conn:
            count = await conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE {condition}", *args
            )
            rows = await conn.fetch(
                f"SELECT {LEAD_COLUMNS} FROM {self.table} WHERE {page_condition} "
                f"ORDER BY created_at DESC, id DESC LIMIT ${len(page_args)}",
                *page_args,
            )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
        return [lead_row_json(r) for r in rows], int(count), next_cursor


class LeadsInStagesView:
    """`handlers.pipelines.LeadsInStages` over the `leads` view, caught up to the log head."""

    def __init__(self, views: LeadViews, timeout: float = 30.0) -> None:
        self.views = views
        self.timeout = timeout

    async def in_stages(self, workspace_id: UUID, stage_ids: Sequence[UUID]) -> Sequence[UUID]:
        if not stage_ids:
            return []
        head = await self.views.projector.log.max_position()
        if not await self.views.wait_for(head, self.timeout):
            raise ViewBehind(f"leads has not reached position {head}")
        async with self.views.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT id FROM {self.views.table} WHERE workspace_id = $1 "
                "AND stage_id = ANY($2::uuid[]) AND NOT deleted",
                workspace_id,
                list(stage_ids),
            )
        return [row[0] for row in rows]


async def pipeline_names(store: EventStore, pipeline_ids: set[UUID], workspace_id: UUID) -> Names:
    """Current pipeline and stage names, and the last name of each stage since removed,
    folded from each pipeline's history (one read per pipeline), for the timeline's
    placeholders; a pipeline of another workspace names nothing."""
    names = Names()
    for pipeline_id in sorted(pipeline_ids):
        stages: dict[UUID, str] = {}
        name: str | None = None
        for logged in await store.history(pipeline_id):
            event = logged.event
            if isinstance(event, Pipeline.Created) and event.workspace_id == workspace_id:
                name = event.name
                stages.update((s.id, s.name) for s in event.stages)
            elif name is None:
                break  # not a pipeline of this workspace
            elif isinstance(event, Pipeline.Renamed):
                name = event.name
            elif isinstance(event, Pipeline.StagesChanged):
                stages.update((s.id, s.name) for s in event.stages)
        if name is not None:
            names.pipelines[pipeline_id] = name
            names.stages.update(stages)
    return names
