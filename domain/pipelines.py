"""Pipelines: the ordered stages a lead moves through, shown as the columns of the board.

A workspace has one *active* pipeline (`Workspace.active_pipeline_id`): new leads land in its
first stage, and it cannot be deleted. "Default" is the same thing: the API's `isDefault` is
`isActive`. `Pipeline.is_default` only records that the pipeline was created as the
workspace's first one (it is what `ensure-default` re-activates when the workspace has no
live active pipeline).

A stage's type links the board to the lead's progress: moving a lead into a `won` stage
records the Converted milestone, into a `lost` stage the Closed milestone (each once per
lead, like a status's milestone; `domain.milestones`), and converting a lead moves it to its
pipeline's first `won` stage.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.base import Aggregate
from domain.milestones import Milestone
from domain.text import clean_text

MIN_STAGES = 2
MAX_STAGES = 50


class StageType(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


# The milestone a lead reaches by entering a stage of each type.
STAGE_MILESTONES: dict[StageType, Milestone] = {
    StageType.WON: Milestone.CONVERTED,
    StageType.LOST: Milestone.CLOSED,
}


class Stage(BaseModel):
    """One column of a pipeline."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    name: str = Field(min_length=1, max_length=100)
    color: str = Field(pattern=r"^#[0-9A-Fa-f]{6}$")
    type: StageType = StageType.OPEN

    @field_validator("name", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=100) if isinstance(value, str) else value

    @property
    def milestone(self) -> Milestone | None:
        """What entering this stage records (None for an open stage)."""
        return STAGE_MILESTONES.get(self.type)


# The six stages of the Leads Manager document, with the named colours as hex.
DEFAULT_STAGES: tuple[tuple[str, str, StageType], ...] = (
    ("New", "#3B82F6", StageType.OPEN),  # blue
    ("Contacted", "#F59E0B", StageType.OPEN),  # amber
    ("Qualified", "#8B5CF6", StageType.OPEN),  # purple
    ("Proposal", "#EC4899", StageType.OPEN),  # pink
    ("Won", "#22C55E", StageType.WON),  # green
    ("Lost", "#EF4444", StageType.LOST),  # red
)

DEFAULT_PIPELINE_NAME = "Sales"


class InvalidPipeline(ValueError):
    """A pipeline change that would break its rules (too few stages, unknown stage...)."""


def default_stages() -> list[Stage]:
    return [Stage(id=uuid.uuid4(), name=n, color=c, type=t) for n, c, t in DEFAULT_STAGES]


def check_stages(stages: list[Stage]) -> list[Stage]:
    if len(stages) < MIN_STAGES:
        raise InvalidPipeline(f"a pipeline needs at least {MIN_STAGES} stages")
    if len(stages) > MAX_STAGES:
        raise InvalidPipeline(f"a pipeline has at most {MAX_STAGES} stages")
    if len({s.id for s in stages}) != len(stages):
        raise InvalidPipeline("stage ids must be unique")
    return stages


class Pipeline(Aggregate):
    """A workspace's pipeline. Leads stay in their stage when the stages are reconfigured;
    removing a stage that holds leads needs a destination for them (see the handler).
    `is_default`: created as the workspace's first pipeline (see the module docstring)."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        stages: list[Stage]
        is_default: bool

    class Renamed(Aggregate.Event):
        name: str

    class StagesChanged(Aggregate.Event):
        stages: list[Stage]
        removed: list[UUID]

    class Deleted(Aggregate.Event):
        pass

    @event(Created)
    def __init__(
        self, workspace_id: UUID, name: str, stages: list[Stage], is_default: bool
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.stages = check_stages(stages)
        self.is_default = is_default
        self.deleted = False

    @property
    def first_stage(self) -> Stage:
        return self.stages[0]

    def stage(self, stage_id: UUID) -> Stage | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    @property
    def won_stage(self) -> Stage | None:
        """Where conversion puts a lead: the first stage of type `won`, if there is one."""
        return next((s for s in self.stages if s.type is StageType.WON), None)

    def rename(self, name: str) -> None:
        if name != self.name:
            self._renamed(name=name)

    @event(Renamed)
    def _renamed(self, name: str) -> None:
        self.name = name

    def change_stages(self, stages: list[Stage]) -> list[UUID]:
        """Replace the stages (order, names, colours, types, additions, removals); returns
        the ids of the removed stages."""
        check_stages(stages)
        removed = [s.id for s in self.stages if s.id not in {n.id for n in stages}]
        if stages != self.stages:
            self._stages_changed(stages=stages, removed=removed)
        return removed

    @event(StagesChanged)
    def _stages_changed(self, stages: list[Stage], removed: list[UUID]) -> None:
        self.stages = stages

    def delete(self, active_pipeline_id: UUID | None) -> None:
        """Delete the pipeline unless it is the workspace's active one (whose id is given)."""
        if self.id == active_pipeline_id:
            raise InvalidPipeline(
                "the pipeline is the workspace's active (default) pipeline: "
                "activate another one first"
            )
        if not self.deleted:
            self._deleted()

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
