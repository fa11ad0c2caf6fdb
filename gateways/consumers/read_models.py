"""Queries over the projections' live tables, for handlers that need a read model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from gateways.consumers.projector import Projector


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
}


@dataclass(frozen=True)
class LeadFilter:
    """What lists and boards filter on; every field optional."""

    search: str | None = None
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    source: str | None = None
    assigned_to: str | None = None
    tag: str | None = None
    status: str | None = None
    is_duplicate: bool | None = None

    def where(self, workspace_id: UUID, args: list[Any]) -> str:
        args.append(workspace_id)
        conditions = [f"workspace_id = ${len(args)}", "NOT deleted"]
        for column, value in (
            ("pipeline_id", self.pipeline_id),
            ("stage_id", self.stage_id),
            ("source", self.source),
            ("assigned_to", self.assigned_to),
            ("status", self.status),
            ("is_duplicate", self.is_duplicate),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        if self.tag:
            args.append(self.tag)
            conditions.append(f"${len(args)} = ANY(tags)")
        if self.search:
            # Partial, case-insensitive, over name, email, phone and company; LIKE wildcards
            # typed by the user are matched literally.
            escaped = (
                self.search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            args.append(f"%{escaped}%")
            conditions.append(f"search LIKE ${len(args)}")
        return " AND ".join(conditions)


LEAD_COLUMNS = (
    "id, request_id, name, email, phone, company, title, tags, source, status, pipeline_id, "
    "stage_id, assigned_to, is_duplicate, duplicate_of, customer_id, campaign_id, custom_fields, "
    "display_names, created_at, updated_at"
)


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
        "pipelineId": str(row["pipeline_id"]) if row["pipeline_id"] else None,
        "stageId": str(row["stage_id"]) if row["stage_id"] else None,
        "assignedTo": row["assigned_to"],
        "isDuplicate": row["is_duplicate"],
        "duplicateOf": str(row["duplicate_of"]) if row["duplicate_of"] else None,
        "customerId": str(row["customer_id"]) if row["customer_id"] else None,
        "campaignId": str(row["campaign_id"]) if row["campaign_id"] else None,
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
        async with self.projector.pool.acquire() as conn:
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
        async with self.projector.pool.acquire() as conn:
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
