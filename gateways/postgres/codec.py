"""Serialises domain events with pydantic + orjson, upcasting old versions on the way back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.utils import get_topic, resolve_topic

from domain.base import DomainEvent, event_type
from domain.leads import STORED
from gateways.postgres.log_store import NewRecord

_STORED = {STORED: True}
_IDENTITY = {"originator_id", "originator_version"}


def _uuid_subclass(value: Any) -> str:
    # orjson writes UUIDs itself but not the library's UUID subclasses, nor Decimals
    # (money: kept exact as text; pydantic reads it back as a Decimal).
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class EventDecodeError(Exception):
    """A stored event could not be turned back into its domain event class."""


class EventCodec:
    """Domain events ↔ stored records, following the library's `class_version` convention."""

    def __init__(self) -> None:
        # Per event class: its topic, wire type and class_version (bulk intake encodes
        # thousands of events a second, and deriving the names was a tenth of the cost).
        self._names: dict[type[DomainEvent], tuple[str, str, int]] = {}

    def encode(self, event: DomainEvent) -> NewRecord:
        cls = type(event)
        names = self._names.get(cls)
        if names is None:
            names = get_topic(cls), event_type(event), getattr(cls, "class_version", 1)
            self._names[cls] = names
        topic, wire_type, class_version = names
        state = event.model_dump(exclude=_IDENTITY)
        if class_version > 1:
            state["class_version"] = class_version
        return NewRecord(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=topic,
            event_type=wire_type,
            state=orjson.dumps(state, default=_uuid_subclass),
        )

    def decode(
        self, topic: str, originator_id: UUID, originator_version: int, state: bytes
    ) -> DomainEvent:
        try:
            cls = cast(type[DomainEvent], resolve_topic(topic))
            data: dict[str, Any] = orjson.loads(state)
            from_version = data.pop("class_version", 1)
            class_version = getattr(cls, "class_version", 1)
            if from_version > class_version:
                raise ValueError(
                    f"stored as version {from_version}, but this code knows only up to "
                    f"{class_version}: upgrade before reading it"
                )
            while from_version < class_version:
                getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(data)
                from_version += 1
            # asyncpg's own UUID subclass must not leak into domain objects (orjson refuses it).
            data["originator_id"] = UUID(int=originator_id.int)
            data["originator_version"] = originator_version
            return cls.model_validate(data, context=_STORED)
        except Exception as error:
            raise EventDecodeError(
                f"cannot decode {topic} v{originator_version} of {originator_id}: {error}"
            ) from error
