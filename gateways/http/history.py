"""A lead's complete history from the log, and its state as of a time or a log position.

`GET /v1/leads/{id}/history` (and `leadlog replay LEAD`, which shares the code below) reads
the lead's own event stream, not a projection: each event with when it was recorded, who
or which channel did it, and what changed (rendered like the timeline), and the lead
folded from those events. With `at` (ISO 8601; a time without an offset is UTC) or
`position`, only the events recorded up to then are listed and folded, so the state is the
lead as it was at that moment. The lead may be named by id or by its request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Request

from domain.base import Aggregate
from domain.leads import Lead
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.consumers.read_models import pipeline_names
from gateways.http.auth import actor_fields, actor_names, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.lead_json import lead_json
from gateways.http.query import StrictQuery
from gateways.http.views import MAX_POSITION
from handlers.workspaces import Principal
from projections.timeline import (
    LeadState,
    Names,
    describe,
    referenced_pipelines,
    render_changes,
    render_summary,
)

router = APIRouter(prefix="/v1", tags=["timeline"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]

_MAX_REQUEST_ID = 2**63 - 1


class HistoryError(Exception):
    """Bad input or a lead that is not there; `status` and `code` as the API answers them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def parse_time(text: str) -> datetime:
    """ISO 8601, e.g. `2026-01-31T12:00:00Z`; without an offset the time is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HistoryError(
            422,
            "validation_failed",
            f"{text!r} is not a time: use ISO 8601, e.g. 2026-01-31T12:00:00Z",
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Cut:
    """Up to where the history is read: a time, a log position, or (neither) all of it."""

    at: datetime | None = None
    position: int | None = None

    def __post_init__(self) -> None:
        if self.at is not None and self.position is not None:
            raise HistoryError(422, "validation_failed", "give either a time or a position")
        if self.position is not None and not 0 <= self.position <= MAX_POSITION:
            raise HistoryError(
                422,
                "validation_failed",
                f"a position is between 0 and {MAX_POSITION} (no commit can produce another)",
            )

    def includes(self, recorded_at: datetime, position: int) -> bool:
        if self.at is not None:
            return recorded_at <= self.at
        if self.position is not None:
            return position <= self.position
        return True

    def describe(self) -> str:
        if self.at is not None:
            return f"at {self.at.isoformat()}"
        if self.position is not None:
            return f"at position {self.position}"
        return "now"


async def resolve_lead(engine: Engine, ref: str, workspace_id: UUID | None) -> UUID:
    """A lead id, or a request id looked up in the `leads` view (within `workspace_id`
    when given; across workspaces it must be unambiguous)."""
    text = ref.strip()
    try:
        return UUID(text)
    except ValueError:
        pass
    if not text.isdigit() or int(text) > _MAX_REQUEST_ID:
        raise HistoryError(
            422, "validation_failed", f"{ref!r} is neither a lead id (UUID) nor a request id"
        )
    args: list[Any] = [int(text)]
    sql = "SELECT id, workspace_id FROM leads WHERE request_id = $1"
    if workspace_id is not None:
        args.append(workspace_id)
        sql += " AND workspace_id = $2"
    try:
        async with engine.pool.acquire() as conn:
            rows = await conn.fetch(sql + " ORDER BY workspace_id LIMIT 11", *args)
    except asyncpg.UndefinedTableError:
        rows = []
    if not rows:
        raise HistoryError(404, "not_found", f"no lead has request id {text}")
    if len(rows) > 1:
        workspaces = ", ".join(str(r["workspace_id"]) for r in rows[:10])
        raise HistoryError(
            409,
            "ambiguous",
            f"request id {text} is used in several workspaces ({workspaces}); name one",
        )
    lead_id: UUID = rows[0]["id"]
    return lead_id


async def lead_history(
    engine: Engine, lead_id: UUID, cut: Cut, *, workspace_id: UUID | None = None
) -> dict[str, Any]:
    """The lead's events up to `cut`, rendered, and the lead folded from them."""
    events = await engine.store.history(lead_id)
    first = events[0].event if events else None
    if not isinstance(first, Lead.Received) or (
        workspace_id is not None and first.workspace_id != workspace_id
    ):
        raise HistoryError(404, "not_found", f"lead {lead_id} does not exist")
    state: LeadState | None = None
    aggregate: Aggregate | None = None
    entries: list[tuple[Any, Any]] = []
    for logged in events:
        if not cut.includes(logged.recorded_at, logged.position):
            break
        entry = describe(logged, state)
        entries.append((logged, entry))
        aggregate = logged.event.mutate(aggregate)  # type: ignore[attr-defined]
        event = logged.event
        pipeline_id = state.pipeline_id if state else None
        if isinstance(event, Lead.Received | Lead.StageChanged):
            pipeline_id = event.pipeline_id
        state = LeadState(
            workspace_id=first.workspace_id,
            request_id=first.request_id,
            actor=entry.actor,
            pipeline_id=pipeline_id,
            position=logged.position,
        )
    if not entries or not isinstance(aggregate, Lead):
        raise HistoryError(
            404,
            "not_found",
            f"lead {lead_id} did not exist yet {cut.describe()} "
            f"(it was received at {events[0].recorded_at.isoformat()}, "
            f"position {events[0].position})",
        )
    wanted: set[UUID] = set()
    for _, entry in entries:
        wanted |= referenced_pipelines(entry.summary, entry.changes)
    names = await pipeline_names(engine.store, wanted, first.workspace_id) if wanted else Names()
    people = await actor_names(engine, (entry.actor for _, entry in entries))
    items = [
        {
            "position": logged.position,
            "version": logged.event.originator_version,
            "eventId": str(logged.event_id),
            "eventType": logged.event_type,
            "recordedAt": logged.recorded_at.isoformat(),
            "actor": entry.actor,
            **actor_fields(entry.actor, people),
            "summary": render_summary(entry.summary, names),
            "changes": render_changes(entry.changes, names),
            "category": entry.category,
        }
        for logged, entry in entries
    ]
    last = entries[-1][0]
    return {
        "leadId": str(lead_id),
        "workspaceId": str(first.workspace_id),
        "requestId": first.request_id,
        "asOf": {
            "at": cut.at.isoformat() if cut.at else None,
            "position": cut.position,
            "lastPosition": last.position,
            "lastRecordedAt": last.recorded_at.isoformat(),
        },
        "state": {
            **lead_json(aggregate),
            "version": last.event.originator_version,
        },
        "items": items,
        "total": len(items),
        "later": len(events) - len(items),
    }


@router.get("/leads/{lead}/history", dependencies=[StrictQuery])
async def lead_history_route(
    lead: str,
    request: Request,
    caller: Viewer,
    at: Annotated[str | None, Query(max_length=64)] = None,
    position: Annotated[int | None, Query(ge=0, le=MAX_POSITION)] = None,
) -> dict[str, Any]:
    """The lead's complete history from the log (oldest first: time, actor or channel, what
    changed) and its state; with `at` (ISO 8601) or `position`, as it was then. `lead` is
    the lead's id or its request id."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        cut = Cut(at=parse_time(at) if at is not None else None, position=position)
        lead_id = await resolve_lead(engine, lead, workspace_id)
        return await lead_history(engine, lead_id, cut, workspace_id=workspace_id)
    except HistoryError as error:
        raise ApiError(error.status, error.code, str(error)) from None
