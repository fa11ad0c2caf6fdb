"""Routes for pipelines and the Kanban board (`/v1/lead-pipelines`).

"Default" and "active" are one concept: the workspace's active pipeline, where new leads
land (`POST /v1/lead-pipelines/{id}/activate`); `isDefault` is kept as its other name.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.leads import tag_key
from domain.normalize import PhoneSearch, phone_search
from domain.pipelines import InvalidPipeline, Pipeline, Stage, StageType
from domain.workspaces import Permission, Workspace
from gateways.consumers.read_models import Cursor, LeadFilter, LeadsInStagesView
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from gateways.http.views import After, await_position, read_view
from handlers import pipelines as commands
from handlers.pipelines import PipelineNotFound
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1/lead-pipelines", tags=["pipelines"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]


class StageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID | None = None
    name: str = Field(min_length=1, max_length=100)
    # Left out: an existing stage (by id) keeps its own; a new one gets the default.
    color: str | None = Field(default=None, pattern=r"^#[0-9A-Fa-f]{6}$")
    type: StageType | None = None


DEFAULT_COLOR = "#64748B"


class CreatePipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    stages: list[StageBody] = Field(min_length=2, max_length=50)


class UpdatePipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    stages: list[StageBody] | None = Field(default=None, min_length=2, max_length=50)
    move_leads_to: dict[UUID, UUID] = Field(default_factory=dict, alias="moveLeadsTo")


def to_stages(bodies: list[StageBody], current: list[Stage] | None = None) -> list[Stage]:
    """The stages a body describes; colour and type left out of a stage of `current` (by
    id) stay as they are (renaming one stage must not repaint the others)."""
    known = {s.id: s for s in current or ()}
    try:
        return [
            Stage(
                id=b.id or uuid.uuid4(),
                name=b.name,
                color=b.color or (known[b.id].color if b.id in known else DEFAULT_COLOR),
                type=b.type or (known[b.id].type if b.id in known else StageType.OPEN),
            )
            for b in bodies
        ]
    except ValidationError as error:
        raise ApiError(422, "validation_failed", str(error)) from None


async def pipeline_json(request: Request, pipeline: Pipeline, workspace_id: UUID) -> dict[str, Any]:
    workspace = await engine_of(request).store.load(Workspace, workspace_id)
    active = workspace is not None and workspace.active_pipeline_id == pipeline.id
    return {
        "id": str(pipeline.id),
        "name": pipeline.name,
        "isDefault": active,
        "isActive": active,
        "stages": [
            {"id": str(s.id), "name": s.name, "color": s.color, "type": s.type, "order": i}
            for i, s in enumerate(pipeline.stages)
        ],
    }


def _refused(error: Exception) -> ApiError:
    if isinstance(error, PipelineNotFound):
        return ApiError(404, "not_found", str(error))
    return ApiError(422, "invalid_pipeline", str(error))


@router.get("")
async def list_pipelines(request: Request, caller: Viewer) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    pipelines = await commands.list_pipelines(engine_of(request).store, workspace_id)
    items = [await pipeline_json(request, p, workspace_id) for p in pipelines]
    return {"items": items, "total": len(items)}


@router.post("", status_code=201)
async def create_pipeline(
    body: CreatePipeline, request: Request, caller: Manager
) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    try:
        changed = await commands.create_pipeline(
            engine_of(request).store, workspace_id, body.name.strip(), to_stages(body.stages)
        )
    except (InvalidPipeline, PipelineNotFound) as error:
        raise _refused(error) from None
    return {
        **await pipeline_json(request, changed.pipeline, workspace_id),
        "position": changed.position,
    }


@router.post("/ensure-default")
async def ensure_default(request: Request, caller: Manager) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    changed = await commands.ensure_default(engine_of(request).store, workspace_id)
    engine_of(request).intake.forget(workspace_id)
    return {
        **await pipeline_json(request, changed.pipeline, workspace_id),
        "position": changed.position,
    }


@router.post("/{pipeline_id}/activate")
async def activate_pipeline(pipeline_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Make the pipeline the workspace's active (default) one: new leads land in its first
    stage; the previously active pipeline keeps its leads. `position` is 0 when it was
    active already."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        changed = await commands.activate_pipeline(engine.store, workspace_id, pipeline_id)
    except (InvalidPipeline, PipelineNotFound) as error:
        raise _refused(error) from None
    engine.intake.forget(workspace_id)
    return {
        **await pipeline_json(request, changed.pipeline, workspace_id),
        "position": changed.position,
    }


@router.patch("/{pipeline_id}")
async def update_pipeline(
    pipeline_id: UUID, body: UpdatePipeline, request: Request, caller: Manager
) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        current = await commands.load_pipeline(engine.store, workspace_id, pipeline_id)
        changed = await commands.update_pipeline(
            engine.store,
            LeadsInStagesView(engine.lead_views),
            workspace_id,
            pipeline_id,
            name=body.name.strip() if body.name else None,
            stages=to_stages(body.stages, current.stages) if body.stages is not None else None,
            move_leads_to=body.move_leads_to,
            actor=actor_of(caller),
        )
    except (InvalidPipeline, PipelineNotFound) as error:
        raise _refused(error) from None
    engine.intake.forget(workspace_id)
    return {
        **await pipeline_json(request, changed.pipeline, workspace_id),
        "position": changed.position,
    }


@router.delete("/{pipeline_id}")
async def delete_pipeline(pipeline_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        position = await commands.delete_pipeline(
            engine.store, LeadsInStagesView(engine.lead_views), workspace_id, pipeline_id
        )
    except (InvalidPipeline, PipelineNotFound) as error:
        raise _refused(error) from None
    engine.intake.forget(workspace_id)
    return {"id": str(pipeline_id), "deleted": True, "position": position}


def _column_cursor(text: str | None) -> Cursor | None:
    if not text:
        return None
    cursor = Cursor.of_column(text)
    if cursor is None:
        raise ApiError(400, "bad_cursor", "the cursor is not one this API gave out")
    return cursor


@router.get("/{pipeline_id}/board", dependencies=[StrictQuery])
async def board(
    pipeline_id: UUID,
    request: Request,
    caller: Viewer,
    search: Annotated[str | None, Query(max_length=200)] = None,
    source: Annotated[list[str] | None, Query()] = None,
    assigned_to: Annotated[
        list[str] | None,
        Query(alias="assignedTo", description="a user id, or `none` for unassigned"),
    ] = None,
    tag: Annotated[list[str] | None, Query(description="case-insensitive")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    stage_id: Annotated[UUID | None, Query(alias="stageId")] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    after: After = None,
) -> dict[str, Any]:
    """Columns in stage order with their counts and first cards; `stageId` + `cursor` pages
    one column further. Filters as on `GET /v1/leads` (repeat one to match any value)."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        pipeline = await commands.load_pipeline(engine.store, workspace_id, pipeline_id)
    except PipelineNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    phone = PhoneSearch()
    if search and search.strip():
        phone = phone_search(search, await engine.intake.region_of(workspace_id))
    assignees = [v.strip() for v in assigned_to or () if v.strip()]
    base = LeadFilter(
        search=search,
        phone_keys=phone.keys,
        phone_whole=phone.whole,
        pipeline_id=(pipeline.id,),
        source=tuple(dict.fromkeys(v.strip().casefold() for v in source or () if v.strip())),
        assigned_to=tuple(dict.fromkeys(v for v in assignees if v.casefold() != "none")),
        unassigned=any(v.casefold() == "none" for v in assignees),
        tag=tuple(dict.fromkeys(tag_key(v.strip()) for v in tag or () if v.strip())),
    )
    await await_position(request, after)
    stages = pipeline.stages
    if stage_id is not None:
        stages = [s for s in stages if s.id == stage_id]
        if not stages:
            raise ApiError(404, "not_found", f"stage {stage_id} is not in this pipeline")
    columns = []
    for stage in stages:
        cards, count, next_cursor = await read_view(
            engine.lead_views.column(
                workspace_id,
                replace(base, stage_id=(stage.id,)),
                limit=limit,
                cursor=_column_cursor(cursor) if stage_id is not None else None,
            )
        )
        columns.append(
            {
                "stageId": str(stage.id),
                "name": stage.name,
                "color": stage.color,
                "type": stage.type,
                "count": count,
                "cards": cards,
                "nextCursor": next_cursor.encode() if next_cursor else None,
            }
        )
    return {"pipelineId": str(pipeline.id), "name": pipeline.name, "columns": columns}
