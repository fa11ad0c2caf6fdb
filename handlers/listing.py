"""Listing a workspace's aggregates of one kind straight from the log (kinds with few members)."""

from __future__ import annotations

from typing import TypeVar
from uuid import UUID

from domain.base import Aggregate
from handlers.ports import EventStore

A = TypeVar("A", bound=Aggregate)


async def aggregates_of(
    store: EventStore, cls: type[A], created: str, workspace_id: UUID, page_size: int = 1000
) -> list[A]:
    """Every live (not deleted) `cls` of the workspace, oldest first, found from its
    `created` events. Reads only that workspace's events of that type (an indexed scan);
    kinds a workspace holds many of deserve a projection instead."""
    ids: list[UUID] = []
    after = 0
    while page := await store.read(after, page_size, [created], workspace_id=workspace_id):
        ids.extend(logged.event.originator_id for logged in page)
        after = page[-1].position
    loaded = [await store.load(cls, aggregate_id) for aggregate_id in ids]
    return [a for a in loaded if a is not None and not getattr(a, "deleted", False)]
