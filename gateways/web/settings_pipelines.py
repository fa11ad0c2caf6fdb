"""Pipeline settings (`/settings/pipelines`): rename, reorder, recolour, retype, add and
remove stages, create a pipeline, make one active; through `handlers.pipelines`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from domain.pipelines import InvalidPipeline, Pipeline, Stage, StageType
from domain.workspaces import Workspace
from gateways.consumers.read_models import LeadsInStagesView, ViewBehind
from gateways.web.routes import csrf_guard
from gateways.web.session import SignedIn, require_user, web_of
from gateways.web.settings_common import can_manage, form_lists, one, refused, settings_page
from handlers import pipelines as commands
from handlers.pipelines import PipelineNotFound

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
Signed = Annotated[SignedIn, Depends(require_user)]

NEW_STAGE_COLOR = "#64748B"
STAGE_TYPES = [t.value for t in StageType]
# A lead is placed by the active pipeline: what is changed here is seen by the next lead.
Edit = Callable[[Pipeline], tuple[str | None, list[Stage] | None, dict[UUID, UUID]]]


def problem(error: Exception) -> str:
    """A person-readable reason for a refused change."""
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False)[0]
        where = str(first["loc"][-1]) if first["loc"] else "value"
        if where == "color":
            return "The colour must be a #RRGGBB value."
        if where == "name":
            return "The name must be 1 to 100 characters."
        return f"{where}: {first['msg']}"
    text = str(error)
    if "holds leads" in text:
        return "This stage holds leads: choose a stage to move them to."
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


async def render(
    request: Request, signed: SignedIn, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    engine = web_of(request).engine
    pipelines = [
        p for p in await commands.list_pipelines(engine.store, signed.workspace_id) if not p.deleted
    ]
    workspace = await engine.store.load(Workspace, signed.workspace_id)
    active = workspace.active_pipeline_id if workspace is not None else None
    return settings_page(
        request,
        signed,
        "settings_pipelines.html",
        {
            "pipelines": pipelines,
            "active_id": active,
            "stage_types": STAGE_TYPES,
            "new_color": NEW_STAGE_COLOR,
            "errors": errors or {},
        },
        status_code=status,
    )


def _back(pipeline_id: UUID | str) -> RedirectResponse:
    return RedirectResponse(f"/settings/pipelines#pipeline-{pipeline_id}", status_code=303)


@router.get("/settings/pipelines")
async def pipelines_page(request: Request, signed: Signed) -> Response:
    return await render(request, signed)


async def _edit(
    request: Request, signed: SignedIn, pipeline_id: UUID, key: str, edit: Edit
) -> Response:
    """Apply one change through the pipeline handler (as `PATCH /v1/lead-pipelines/{id}`);
    a refusal shows its reason at `key`."""
    if not can_manage(signed):
        return refused(request, signed)
    engine = web_of(request).engine
    try:
        current = await commands.load_pipeline(engine.store, signed.workspace_id, pipeline_id)
        name, stages, moves = edit(current)
        await commands.update_pipeline(
            engine.store,
            LeadsInStagesView(engine.lead_views),
            signed.workspace_id,
            pipeline_id,
            name=name,
            stages=stages,
            move_leads_to=moves,
            actor=signed.actor,
        )
    except PipelineNotFound as error:
        return await render(request, signed, {"page": problem(error)}, 404)
    except (InvalidPipeline, ValidationError, ValueError) as error:
        return await render(request, signed, {key: problem(error)}, 422)
    except ViewBehind:
        # Which leads the removed stages hold is not known yet: nothing was changed.
        message = "The board is catching up; nothing was changed. Try again in a moment."
        return await render(request, signed, {key: message}, 503)
    engine.intake.forget(signed.workspace_id)
    return _back(pipeline_id)


def _stage_index(pipeline: Pipeline, stage_id: UUID) -> int:
    for i, stage in enumerate(pipeline.stages):
        if stage.id == stage_id:
            return i
    raise InvalidPipeline("that stage is no longer in the pipeline; reload the page")


def _stage_type(value: str) -> StageType:
    try:
        return StageType(value or "open")
    except ValueError:
        raise InvalidPipeline("the type must be Open, Won or Lost") from None


@router.post("/settings/pipelines/{pipeline_id}/rename")
async def rename(pipeline_id: UUID, request: Request, signed: Signed) -> Response:
    name = one(await form_lists(request), "name", 500)

    def edit(_: Pipeline) -> tuple[str | None, list[Stage] | None, dict[UUID, UUID]]:
        if not name or len(name) > 200:
            raise InvalidPipeline("the name must be 1 to 200 characters")
        return name, None, {}

    return await _edit(request, signed, pipeline_id, f"{pipeline_id}:name", edit)


@router.post("/settings/pipelines/{pipeline_id}/stages/{stage_id}")
async def save_stage(
    pipeline_id: UUID, stage_id: UUID, request: Request, signed: Signed
) -> Response:
    fields = await form_lists(request)

    def edit(pipeline: Pipeline) -> tuple[str | None, list[Stage] | None, dict[UUID, UUID]]:
        stages = list(pipeline.stages)
        i = _stage_index(pipeline, stage_id)
        stages[i] = Stage(
            id=stage_id,
            name=one(fields, "name", 500),
            color=one(fields, "color", 20) or stages[i].color,
            type=_stage_type(one(fields, "type", 20)),
        )
        return None, stages, {}

    return await _edit(request, signed, pipeline_id, f"{stage_id}:stage", edit)


@router.post("/settings/pipelines/{pipeline_id}/stages/{stage_id}/move")
async def move_stage(
    pipeline_id: UUID, stage_id: UUID, request: Request, signed: Signed
) -> Response:
    direction = one(await form_lists(request), "direction", 10)

    def edit(pipeline: Pipeline) -> tuple[str | None, list[Stage] | None, dict[UUID, UUID]]:
        stages = list(pipeline.stages)
        i = _stage_index(pipeline, stage_id)
        j = i - 1 if direction == "up" else i + 1
        if 0 <= j < len(stages):
            stages[i], stages[j] = stages[j], stages[i]
        return None, stages, {}

    return await _edit(request, signed, pipeline_id, f"{stage_id}:stage", edit)


@router.post("/settings/pipelines/{pipeline_id}/stages/{stage_id}/remove")
async def remove_stage(
    pipeline_id: UUID, stage_id: UUID, request: Request, signed: Signed
) -> Response:
    target = one(await form_lists(request), "move_to", 40)

    def edit(pipeline: Pipeline) -> tuple[str | None, list[Stage] | None, dict[UUID, UUID]]:
        _stage_index(pipeline, stage_id)
        moves = {stage_id: UUID(target)} if target else {}
        return None, [s for s in pipeline.stages if s.id != stage_id], moves

    return await _edit(request, signed, pipeline_id, f"{stage_id}:remove", edit)


@router.post("/settings/pipelines/{pipeline_id}/stages")
async def add_stage(pipeline_id: UUID, request: Request, signed: Signed) -> Response:
    fields = await form_lists(request)

    def edit(pipeline: Pipeline) -> tuple[str | None, list[Stage] | None, dict[UUID, UUID]]:
        stage = Stage(
            id=uuid.uuid4(),
            name=one(fields, "name", 500),
            color=one(fields, "color", 20) or NEW_STAGE_COLOR,
            type=_stage_type(one(fields, "type", 20)),
        )
        return None, [*pipeline.stages, stage], {}

    return await _edit(request, signed, pipeline_id, f"{pipeline_id}:add", edit)


@router.post("/settings/pipelines/{pipeline_id}/activate")
async def activate(pipeline_id: UUID, request: Request, signed: Signed) -> Response:
    """As `POST /v1/lead-pipelines/{id}/activate`: new leads land in its first stage."""
    if not can_manage(signed):
        return refused(request, signed)
    engine = web_of(request).engine
    try:
        await commands.activate_pipeline(engine.store, signed.workspace_id, pipeline_id)
    except (InvalidPipeline, PipelineNotFound) as error:
        return await render(request, signed, {f"{pipeline_id}:active": problem(error)}, 422)
    engine.intake.forget(signed.workspace_id)
    return _back(pipeline_id)


@router.post("/settings/pipelines")
async def create(request: Request, signed: Signed) -> Response:
    """A new pipeline: a name and its stages, one per line (`Won` and `Lost` get those
    types; colours and types can be changed afterwards)."""
    if not can_manage(signed):
        return refused(request, signed)
    fields = await form_lists(request)
    name = one(fields, "name", 500)
    lines = [line.strip() for line in one(fields, "stages").splitlines() if line.strip()]
    engine = web_of(request).engine
    try:
        if not name or len(name) > 200:
            raise InvalidPipeline("the name must be 1 to 200 characters")
        stages = [
            Stage(
                id=uuid.uuid4(),
                name=line,
                color=NEW_STAGE_COLOR,
                type=StageType(line.casefold())
                if line.casefold() in ("won", "lost")
                else StageType.OPEN,
            )
            for line in lines
        ]
        changed = await commands.create_pipeline(engine.store, signed.workspace_id, name, stages)
    except (InvalidPipeline, ValidationError, ValueError) as error:
        return await render(request, signed, {"create": problem(error)}, 422)
    return _back(changed.pipeline.id)
