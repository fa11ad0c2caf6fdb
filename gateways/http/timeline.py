"""Routes for a lead's timeline and submissions (`/v1/leads/{id}/timeline`, `/v1/submissions`)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request

from domain.leads import Lead
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.consumers.read_models import pipeline_names
from gateways.http.auth import actor_fields, actor_names, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from gateways.http.views import MAX_WAIT, After
from handlers.workspaces import Principal
from projections.submissions import SubmissionsView
from projections.timeline import (
    ACTION,
    LEAD,
    WEBHOOK,
    LeadTimeline,
    Names,
    referenced_pipelines,
    render_changes,
    render_summary,
)

router = APIRouter(prefix="/v1", tags=["timeline"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

TIMELINE = LeadTimeline.name
SUBMISSIONS = SubmissionsView.name
_INCLUDE = {"action": ACTION, "actions": ACTION, "webhook": WEBHOOK, "webhooks": WEBHOOK}


async def await_view(request: Request, name: str, after: int | None) -> None:
    """Read-your-writes on one view: wait until projection `name` reflects log position
    `after`; 503 `view_behind` if it does not within MAX_WAIT seconds."""
    if after is None or after <= 0:
        return
    if not await engine_of(request).projector.wait_for(name, after, MAX_WAIT):
        raise ApiError(
            503,
            "view_behind",
            f"the {name} view has not caught up with position {after} yet; retry shortly",
            {"position": after, "view": name},
        )


def table_of(engine: Engine, projection: str, logical: str) -> str:
    """The view of that name the projector keeps pointing at the live copy: a rebuild
    swapped in by any process is read from at once."""
    return logical


async def lead_in_workspace(engine: Engine, lead_id: UUID, workspace_id: UUID) -> None:
    """404 for a missing lead and for another workspace's, alike (only its first event is
    read: the workspace never changes)."""
    lead = await engine.store.load(Lead, lead_id, version=1)
    if lead is None or lead.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"lead {lead_id} does not exist")


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def categories(include: str | None) -> list[str]:
    shown = {LEAD}
    for part in (include or "").split(","):
        key = part.strip().lower()
        if not key:
            continue
        if key not in _INCLUDE:
            raise ApiError(
                422,
                "validation_failed",
                f"include takes a comma-separated list of {sorted(set(_INCLUDE))}",
                {"include": include},
            )
        shown.add(_INCLUDE[key])
    return sorted(shown)


def submission_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "leadId": str(row["lead_id"]),
        "campaignId": str(row["campaign_id"]),
        "source": row["source"],
        "status": row["status"],
        "snapshot": _json(row["snapshot"]),
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


_SUBMISSION_COLUMNS = "id, lead_id, campaign_id, source, status, snapshot, created_at, updated_at"


@router.get("/leads/{lead_id}/timeline", dependencies=[StrictQuery])
async def lead_timeline(
    lead_id: UUID,
    request: Request,
    caller: Viewer,
    page: Page = 1,
    limit: Limit = 50,
    include: Annotated[str | None, Query(max_length=100)] = None,
    after: After = None,
) -> dict[str, Any]:
    """Every event on the lead, newest first: what happened, who or which channel did it,
    when, old → new values. Action and webhook entries only with `include=actions,webhooks`."""
    workspace_id = workspace_of(caller, request)
    shown = categories(include)
    engine = engine_of(request)
    await lead_in_workspace(engine, lead_id, workspace_id)
    await await_view(request, TIMELINE, after)
    table = table_of(engine, TIMELINE, "timeline_entries")
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE lead_id = $1 AND category = ANY($2::text[])",
            lead_id,
            shown,
        )
        rows = await conn.fetch(
            f"""SELECT position, event_id, event_type, occurred_at, actor, summary, changes,
                       category
                  FROM {table} WHERE lead_id = $1 AND category = ANY($2::text[])
                 ORDER BY position DESC LIMIT $3 OFFSET $4""",
            lead_id,
            shown,
            limit,
            (page - 1) * limit,
        )
    entries = [(row, _json(row["changes"])) for row in rows]
    wanted: set[UUID] = set()
    for row, changes in entries:
        wanted |= referenced_pipelines(row["summary"], changes)
    names = await pipeline_names(engine.store, wanted, workspace_id) if wanted else Names()
    people = await actor_names(engine, (row["actor"] for row, _ in entries))
    items = [
        {
            "position": row["position"],
            "eventId": str(row["event_id"]),
            "eventType": row["event_type"],
            "occurredAt": row["occurred_at"].isoformat(),
            "actor": row["actor"],
            **actor_fields(row["actor"], people),
            "summary": render_summary(row["summary"], names),
            "changes": render_changes(changes, names),
            "category": row["category"],
        }
        for row, changes in entries
    ]
    return {"items": items, "total": int(total), "page": page, "limit": limit}


@router.get("/leads/{lead_id}/submissions", dependencies=[StrictQuery])
async def lead_submissions(
    lead_id: UUID, request: Request, caller: Viewer, after: After = None
) -> dict[str, Any]:
    """The lead's submissions to campaigns, newest first, with the snapshot each was sent."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    await lead_in_workspace(engine, lead_id, workspace_id)
    await await_view(request, SUBMISSIONS, after)
    table = table_of(engine, SUBMISSIONS, "submissions")
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(
            f"""SELECT {_SUBMISSION_COLUMNS} FROM {table}
                 WHERE lead_id = $1 AND workspace_id = $2
                 ORDER BY created_at DESC, id DESC""",
            lead_id,
            workspace_id,
        )
    return {"items": [submission_json(r) for r in rows], "total": len(rows)}


@router.get("/submissions", dependencies=[StrictQuery])
async def list_submissions(
    request: Request,
    caller: Viewer,
    campaign_id: Annotated[UUID | None, Query(alias="campaignId")] = None,
    status: Annotated[str | None, Query(max_length=100)] = None,
    lead_id: Annotated[UUID | None, Query(alias="leadId")] = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's submissions, newest first, by campaign and status."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    await await_view(request, SUBMISSIONS, after)
    table = table_of(engine, SUBMISSIONS, "submissions")
    args: list[Any] = [workspace_id]
    conditions = ["workspace_id = $1"]
    for column, value in (("campaign_id", campaign_id), ("status", status), ("lead_id", lead_id)):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = " AND ".join(conditions)
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        rows = await conn.fetch(
            f"""SELECT {_SUBMISSION_COLUMNS} FROM {table} WHERE {where}
                 ORDER BY created_at DESC, id DESC
                 LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
        )
    return {
        "items": [submission_json(r) for r in rows],
        "total": int(total),
        "page": page,
        "limit": limit,
    }
