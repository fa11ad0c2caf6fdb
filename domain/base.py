"""Aggregate and event base classes: the eventsourcing library's Aggregate with pydantic events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import Aggregate as LibraryAggregate
from eventsourcing.domain import CanInitAggregate, CanMutateAggregate
from pydantic import BaseModel, ConfigDict


class DomainEvent(BaseModel):
    """Every event: immutable, validated by pydantic, serialisable as plain JSON."""

    model_config = ConfigDict(frozen=True)

    originator_id: UUID
    originator_version: int
    timestamp: datetime


class Aggregate(LibraryAggregate):
    """Base of every aggregate; subclasses declare events with the library's `@event`."""

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        pass

    class Created(Event, CanInitAggregate[UUID]):
        originator_topic: str

    def collect_events(self) -> Sequence[DomainEvent]:  # type: ignore[override]
        """The new events, typed as the pydantic events they are."""
        return cast(Sequence[DomainEvent], super().collect_events())


_CAMEL_BOUNDARY = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    """`ApiToken` → `api_token`: the form event types use on the wire."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def event_type(event: Any) -> str:
    """The stable wire name of an event: `<aggregate>.<event>`, e.g. `workspace.created`.

    It names NATS subjects (`leadlog.events.<workspace>.<event_type>`) and log filters, so it
    is derived from the class names the domain already uses rather than from module paths.
    """
    qualname = type(event).__qualname__.split(".")
    if len(qualname) >= 2:
        return f"{snake(qualname[-2])}.{snake(qualname[-1])}"
    return snake(qualname[-1])


@dataclass(frozen=True)
class LoggedEvent:
    """A committed event as consumers see it: the domain event plus its place in the log."""

    position: int
    event_id: UUID
    workspace_id: UUID | None
    event_type: str
    recorded_at: datetime
    event: DomainEvent
