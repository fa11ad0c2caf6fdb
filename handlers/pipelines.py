"""Command handlers for pipelines: create, reconfigure (moving leads out of removed stages),
delete, and making sure a workspace has its default."""

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
from handlers.ports import Append, EventStore
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
    appended = await store.append(Append(workspace_id, events=pipeline.collect_events()))
    return Changed(pipeline, appended.position)


async def ensure_default(store: EventStore, workspace_id: UUID) -> Changed:
    """The workspace's default pipeline, created (and made active) if it has none."""
    workspace = await store.load(Workspace, workspace_id)
    if workspace is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    for pipeline in await list_pipelines(store, workspace_id):
        if pipeline.is_default:
            return Changed(pipeline, 0)
    pipeline = Pipeline(
        workspace_id=workspace_id,
        name=DEFAULT_PIPELINE_NAME,
        stages=default_stages(),
        is_default=True,
    )
    workspace.activate_pipeline(pipeline.id)
    appended = await store.append(
        Append(workspace_id, events=[*workspace.collect_events(), *pipeline.collect_events()])
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
                lead.move_to_stage(pipeline.id, target, "its stage was removed", actor)
                moves.extend(lead.collect_events())
    appended = await store.append(Append(workspace_id, events=[*pipeline.collect_events(), *moves]))
    return Changed(pipeline, appended.position)


async def delete_pipeline(
    store: EventStore, leads: LeadsInStages, workspace_id: UUID, pipeline_id: UUID
) -> int:
    pipeline = await load_pipeline(store, workspace_id, pipeline_id)
    if await leads.in_stages(workspace_id, [s.id for s in pipeline.stages]):
        raise InvalidPipeline("the pipeline holds leads: move them to another pipeline first")
    pipeline.delete()
    appended = await store.append(Append(workspace_id, events=pipeline.collect_events()))
    return appended.position
