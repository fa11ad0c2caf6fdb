"""Routes reading submissions: a lead's, the workspace's (filtered), and one with its journey."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request

from domain.campaigns import redact_headers
from domain.submissions import Submission, journey_entry
from domain.workspaces import Permission
from gateways.http.auth import engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from gateways.http.timeline import await_view, lead_in_workspace, table_of
from gateways.http.views import After
from handlers.workspaces import Principal
from projections.submissions import SubmissionsView

router = APIRouter(prefix="/v1", tags=["submissions"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

SUBMISSIONS = SubmissionsView.name
COLUMNS = (
    "id, lead_id, campaign_id, source, origin, parent_id, actor, status, reason, endpoint_id,"
    " price, action_due_at, post_started_at, accepted_at, return_pending, snapshot,"
    " created_at, updated_at"
)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def submission_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "leadId": str(row["lead_id"]),
        "campaignId": str(row["campaign_id"]),
        "source": row["source"],
        "origin": row["origin"],
        "status": row["status"],
        "reason": row["reason"],
        "parentId": str(row["parent_id"]) if row["parent_id"] else None,
        "endpointId": row["endpoint_id"],
        "price": str(row["price"]) if row["price"] is not None else None,
        "actor": row["actor"],
        "actionDueAt": _iso(row["action_due_at"]),
        "acceptedAt": _iso(row["accepted_at"]),
        "returnPending": row["return_pending"],
        "snapshot": _json(row["snapshot"]),
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


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
            f"""SELECT {COLUMNS} FROM {table}
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
    origin: Annotated[str | None, Query(max_length=100)] = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's submissions, newest first, by campaign, status, lead and origin
    (`api`, `manual`, `repost`, `fallback`, `routed`, ...)."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    await await_view(request, SUBMISSIONS, after)
    table = table_of(engine, SUBMISSIONS, "submissions")
    args: list[Any] = [workspace_id]
    conditions = ["workspace_id = $1"]
    filters = (
        ("campaign_id", campaign_id),
        ("status", status),
        ("lead_id", lead_id),
        ("origin", origin),
    )
    for column, value in filters:
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = " AND ".join(conditions)
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM {table} WHERE {where}
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


@router.get("/submissions/{submission_id}", dependencies=[StrictQuery])
async def get_submission(
    submission_id: UUID, request: Request, caller: Viewer, after: After = None
) -> dict[str, Any]:
    """One submission with its `journey`: every step from the log, in order (`{step,
    outcome, at, ...}`: routing, first-submission action, disqualification, dynamic keys,
    required fields, qualification, caps, pings, posts and the buyers' answers, fallback,
    returns), and the `campaign` configuration it ran under."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    history = await engine.store.history(submission_id)
    first = history[0].event if history else None
    if not isinstance(first, Submission.Created) or first.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"submission {submission_id} does not exist")
    table = table_of(engine, SUBMISSIONS, "submissions")
    row: asyncpg.Record | None = None
    for _ in range(5):
        # The row is read once the view has every event the journey shows; a step that
        # committed in between makes the row newer than the journey: read both again.
        await await_view(request, SUBMISSIONS, max(after or 0, history[-1].position))
        async with engine.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {COLUMNS}, updated_position FROM {table}"
                " WHERE id = $1 AND workspace_id = $2",
                submission_id,
                workspace_id,
            )
        if row is None:
            raise ApiError(404, "not_found", f"submission {submission_id} does not exist")
        if row["updated_position"] <= history[-1].position:
            break
        history = await engine.store.history(submission_id)
    assert row is not None
    campaign = next(
        (
            logged.event.campaign
            for logged in reversed(history)
            if isinstance(logged.event, Submission.ProcessingStarted)
        ),
        None,
    )
    return {
        **submission_json(row),
        "campaign": redact_headers(campaign),
        "journey": [journey_entry(logged.event, logged.recorded_at) for logged in history],
    }
