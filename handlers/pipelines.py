"""Command handlers for pipelines: create, reconfigure (moving leads out of removed stages),
activate (the workspace's active, or default, pipeline), delete, and making sure a workspace
has one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from domain.base import DomainEvent
from domain.leads import Lead
from domain.pipelines import (
    DEFAULT_PIPELINE_NAME,
    InvalidPipeline,
    Pipeline,
    Stage,
    default_stages,
)
from domain.workspaces import Workspace
from handlers.listing import aggregates_of
from handlers.ports import Append, Appended, Claim, EventStore, ReservationTaken
from handlers.retry import ATTEMPTS, retrying
from handlers.workspaces import WorkspaceNotFound


class PipelineNotFound(LookupError):
    pass


class LeadsInStages(Protocol):
    """Which leads sit in given stages (a read model, caught up to a position)."""

    async def in_stages(self, workspace_id: UUID, stage_ids: Sequence[UUID]) -> Sequence[UUID]: ...


@dataclass(frozen=True)
class Changed:
    pipeline: Pipeline
    position: int


STAGE_KEY = "stage:"


def stage_claims(pipeline: Pipeline) -> list[Claim]:
    """Each stage id held by its pipeline alone: an id in a body is one of the caller's own
    or new, never another pipeline's (another workspace's above all). The claim is taken
    in the same append as the stages, so two commands cannot both take an id."""
    return [Claim(f"{STAGE_KEY}{s.id}", pipeline.id, exclusive=True) for s in pipeline.stages]


async def append_with_stages(store: EventStore, append: Append) -> Appended:
    try:
        return await store.append(append)
    except ReservationTaken as error:
        raise InvalidPipeline(_not_ours(error.key.removeprefix(STAGE_KEY))) from None


async def _used_elsewhere(
    store: EventStore, pipeline_id: UUID | None, stage_ids: set[UUID], page_size: int = 1000
) -> UUID | None:
    """One of `stage_ids` that a pipeline other than `pipeline_id` already used before
    stage ids were claimed (the log's pipeline events, read only when an id is new)."""
    after = 0
    while stage_ids:
        page = await store.read(after, page_size, ["pipeline.created", "pipeline.stages_changed"])
        if not page:
            return None
        for logged in page:
            event = logged.event
            if event.originator_id == pipeline_id:
                continue
            stages = getattr(event, "stages", None) or []
            used = stage_ids & {s.id for s in stages}
            if used:
                return next(iter(used))
        after = page[-1].position
    return None


async def check_new_stages(
    store: EventStore, pipeline_id: UUID | None, stages: list[Stage], known: set[UUID]
) -> None:
    """Refuse stage ids new to a pipeline that a pipeline created before stage ids were
    claimed uses (what is claimed, the append's exclusive claims refuse atomically)."""
    new = {s.id for s in stages} - known
    used = await _used_elsewhere(store, pipeline_id, new) if new else None
    if used is not None:
        raise InvalidPipeline(_not_ours(used))


def _not_ours(stage_id: str | UUID) -> str:
    return (
        f"stage id {stage_id} is not one of this pipeline's stages: leave the id out of a new stage"
    )


async def load_pipeline(store: EventStore, workspace_id: UUID, pipeline_id: UUID) -> Pipeline:
    pipeline = await store.load(Pipeline, pipeline_id)
    if pipeline is None or pipeline.workspace_id != workspace_id or pipeline.deleted:
        raise PipelineNotFound(f"pipeline {pipeline_id} does not exist")
    return pipeline


async def list_pipelines(store: EventStore, workspace_id: UUID) -> list[Pipeline]:
    """The workspace's pipelines (a workspace has few)."""
    return await aggregates_of(store, Pipeline, "pipeline.created", workspace_id)


async def create_pipeline(
    store: EventStore, workspace_id: UUID, name: str, stages: list[Stage]
) -> Changed:
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    pipeline = Pipeline(workspace_id=workspace_id, name=name, stages=stages, is_default=False)
    await check_new_stages(store, pipeline.id, stages, set())
    appended = await append_with_stages(
        store,
        Append(workspace_id, events=pipeline.collect_events(), claims=stage_claims(pipeline)),
    )
    return Changed(pipeline, appended.position)


async def _workspace(store: EventStore, workspace_id: UUID) -> Workspace:
    workspace = await store.load(Workspace, workspace_id)
    if workspace is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    return workspace


async def activate_pipeline(store: EventStore, workspace_id: UUID, pipeline_id: UUID) -> Changed:
    """Make the pipeline the workspace's active (default) one: new leads land in its first
    stage from now on; the previous one keeps its leads. The active pipeline is one field
    of the Workspace aggregate, so there is exactly one whatever races: concurrent
    activations are ordered by the workspace's version (the loser decides again), and the
    append also expects the pipeline's version, so a concurrent delete cannot leave a
    deleted pipeline active. Position 0 when it was active already."""

    async def attempt() -> Changed:
        workspace = await _workspace(store, workspace_id)
        pipeline = await load_pipeline(store, workspace_id, pipeline_id)
        workspace.activate_pipeline(pipeline.id)
        events = workspace.collect_events()
        if not events:
            return Changed(pipeline, 0)
        appended = await store.append(
            Append(workspace_id, events=events, expect={pipeline.id: pipeline.version})
        )
        return Changed(pipeline, appended.position)

    # Every round of a race has a winner; a few more rounds than usual let a crowd of
    # concurrent activations all land without a 409.
    return await retrying(attempt, ATTEMPTS * 3)


async def ensure_default(store: EventStore, workspace_id: UUID) -> Changed:
    """The workspace's active (default) pipeline: if it has none alive, the pipeline it was
    created with is made active again, or failing that a new default is created and made
    active."""
    workspace = await _workspace(store, workspace_id)
    pipelines = await list_pipelines(store, workspace_id)
    live = [p for p in pipelines if not p.deleted]
    for pipeline in live:
        if pipeline.id == workspace.active_pipeline_id:
            return Changed(pipeline, 0)
    for pipeline in live:
        if pipeline.is_default:
            return await activate_pipeline(store, workspace_id, pipeline.id)
    pipeline = Pipeline(
        workspace_id=workspace_id,
        name=DEFAULT_PIPELINE_NAME,
        stages=default_stages(),
        is_default=True,
    )
    workspace.activate_pipeline(pipeline.id)
    appended = await store.append(
        Append(
            workspace_id,
            events=[*workspace.collect_events(), *pipeline.collect_events()],
            claims=stage_claims(pipeline),
        )
    )
    return Changed(pipeline, appended.position)


async def update_pipeline(
    store: EventStore,
    leads: LeadsInStages,
    workspace_id: UUID,
    pipeline_id: UUID,
    *,
    name: str | None,
    stages: list[Stage] | None,
    move_leads_to: Mapping[UUID, UUID],
    actor: str,
) -> Changed:
    """Rename and/or replace the stages. Leads stay where they are; a removed stage that
    holds leads must name, in `move_leads_to`, a remaining stage for them."""
    pipeline = await load_pipeline(store, workspace_id, pipeline_id)
    if name is not None:
        pipeline.rename(name)
    moves: list[DomainEvent] = []
    if stages is not None:
        remaining = {s.id for s in stages}
        for destination in move_leads_to.values():
            if destination not in remaining:
                raise InvalidPipeline(
                    f"cannot move leads to {destination}: not a stage of the pipeline"
                )
        await check_new_stages(store, pipeline.id, stages, {s.id for s in pipeline.stages})
        removed = pipeline.change_stages(stages)
        held = await leads.in_stages(workspace_id, removed)
        if held:
            for lead_id in held:
                lead = await store.load(Lead, lead_id)
                if lead is None or lead.stage_id is None or lead.stage_id not in removed:
                    continue
                target = move_leads_to.get(lead.stage_id)
                if target is None:
                    raise InvalidPipeline(
                        f"stage {lead.stage_id} holds leads: name where they go in moveLeadsTo"
                    )
                lead.enter_stage(pipeline, target, "its stage was removed", actor)
                moves.extend(lead.collect_events())
    appended = await append_with_stages(
        store,
        Append(
            workspace_id,
            events=[*pipeline.collect_events(), *moves],
            claims=stage_claims(pipeline) if stages is not None else (),
        ),
    )
    return Changed(pipeline, appended.position)


async def delete_pipeline(
    store: EventStore, leads: LeadsInStages, workspace_id: UUID, pipeline_id: UUID
) -> int:
    """Delete a pipeline that holds no leads and is not the active one. The append expects
    the workspace's version, so an activation of this pipeline racing the delete makes the
    delete decide again (and refuse)."""

    async def attempt() -> int:
        workspace = await _workspace(store, workspace_id)
        pipeline = await load_pipeline(store, workspace_id, pipeline_id)
        pipeline.delete(workspace.active_pipeline_id)
        held = await leads.in_stages(workspace_id, [s.id for s in pipeline.stages])
        if held:
            raise InvalidPipeline(
                f"the pipeline holds {len(held)} lead(s): move them to another pipeline first "
                "(PATCH /v1/leads/{id}/pipeline, or the bulk action move_pipeline)"
            )
        events = pipeline.collect_events()
        if not events:
            return 0
        appended = await store.append(
            Append(workspace_id, events=events, expect={workspace.id: workspace.version})
        )
        return appended.position

    return await retrying(attempt)
