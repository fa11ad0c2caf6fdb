"""A workspace's lead statuses and the progress milestones they reach.

A status is a name a lead can be given (`PATCH /v1/leads/{id}/status`); a status may carry a
*progress* milestone. The first time a lead's progress reaches a milestone (a status that
carries it, or conversion for Converted) the lead records it, once: the milestone triggers of
the lead actions (Validated, Invalidated, Contacted, Qualified, Converted, Closed) key on
that event, so each fires at most once per lead.

A milestone is recorded for the status's own progress only: moving straight to `qualified`
records Qualified, not Validated and Contacted as well (the guide's milestones are not a
ladder; Invalidated is no step on one).
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event
from pydantic import BaseModel, ConfigDict, Field, field_validator

from domain.base import Aggregate
from domain.text import clean_text

MAX_STATUSES = 100


class Milestone(StrEnum):
    VALIDATED = "validated"
    INVALIDATED = "invalidated"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    CONVERTED = "converted"
    CLOSED = "closed"


class StatusDefinition(BaseModel):
    """One status of a workspace's list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    progress: Milestone | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=100).lower() if isinstance(value, str) else value


# new/pending/backlog/abandoned are the intake's (domain.leads.Status); the rest mark progress.
DEFAULT_STATUSES: tuple[StatusDefinition, ...] = (
    StatusDefinition(name="new"),
    StatusDefinition(name="pending"),
    StatusDefinition(name="backlog"),
    StatusDefinition(name="abandoned"),
    StatusDefinition(name="validated", progress=Milestone.VALIDATED),
    StatusDefinition(name="invalid", progress=Milestone.INVALIDATED),
    StatusDefinition(name="contacted", progress=Milestone.CONTACTED),
    StatusDefinition(name="qualified", progress=Milestone.QUALIFIED),
    StatusDefinition(name="converted", progress=Milestone.CONVERTED),
    StatusDefinition(name="closed", progress=Milestone.CLOSED),
)

# The intake sets these itself, so every list keeps them.
REQUIRED_STATUSES = frozenset({"new", "pending", "backlog", "abandoned"})


class InvalidStatuses(ValueError):
    """A status list that breaks the rules (duplicates, a required status missing...)."""


def check_statuses(statuses: list[StatusDefinition]) -> list[StatusDefinition]:
    names = [s.name for s in statuses]
    if len(statuses) > MAX_STATUSES:
        raise InvalidStatuses(f"at most {MAX_STATUSES} statuses")
    if len(set(names)) != len(names):
        raise InvalidStatuses("status names must be unique")
    missing = sorted(REQUIRED_STATUSES - set(names))
    if missing:
        raise InvalidStatuses(f"the intake's statuses must stay: missing {', '.join(missing)}")
    return statuses


def find_status(
    statuses: tuple[StatusDefinition, ...] | list[StatusDefinition], name: str
) -> StatusDefinition | None:
    return next((s for s in statuses if s.name == name), None)


_NAMESPACE = UUID("6f1c0a52-64a1-4df4-9a5e-4e0b7b1f6c3d")


def status_list_id(workspace_id: UUID) -> UUID:
    """One status list per workspace, at an id derived from it."""
    return uuid.uuid5(_NAMESPACE, f"lead-statuses:{workspace_id}")


class StatusList(Aggregate):
    """A workspace's own statuses; a workspace without one uses DEFAULT_STATUSES."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        statuses: list[StatusDefinition]

    class Changed(Aggregate.Event):
        statuses: list[StatusDefinition]
        actor: str

    @staticmethod
    def create_id(workspace_id: UUID) -> UUID:
        return status_list_id(workspace_id)

    @event(Created)
    def __init__(self, workspace_id: UUID, statuses: list[StatusDefinition]) -> None:
        self.workspace_id = workspace_id
        self.statuses = check_statuses(statuses)

    def change(self, statuses: list[StatusDefinition], actor: str) -> bool:
        check_statuses(statuses)
        if statuses == self.statuses:
            return False
        self._changed(statuses=statuses, actor=actor)
        return True

    @event(Changed)
    def _changed(self, statuses: list[StatusDefinition], actor: str) -> None:
        self.statuses = statuses
