"""Routes for a lead's timeline (`/v1/leads/{id}/timeline`) and the helpers view reads share."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

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
from projections.timeline import (
    ACTION,
    LEAD,
    SUBMISSION,
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
_INCLUDE = {
    "action": ACTION,
    "actions": ACTION,
    "webhook": WEBHOOK,
    "webhooks": WEBHOOK,
    "submission": SUBMISSION,
    "submissions": SUBMISSION,
}


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
