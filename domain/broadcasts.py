"""Audiences (a saved snapshot of leads) and broadcasts (one template sent to an audience)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.automations import Template
from domain.base import Aggregate
from domain.channels import ChannelType

MAX_AUDIENCE = 100_000
CHUNK = 250


class Audience(Aggregate):
    """Leads chosen once (by id or by a filter at that moment): later changes to the leads
    do not change who is in it."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        lead_ids: list[UUID]
        filter: dict[str, Any] | None = None
        actor: str

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        name: str,
        lead_ids: list[UUID],
        filter: dict[str, Any] | None,
        actor: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.lead_ids = lead_ids
        self.filter = filter


class Broadcast(Aggregate):
    """A template sent to every lead of an audience on one channel. Messages are queued a
    chunk at a time (`ChunkQueued` records how far), so an interrupted broadcast resumes
    where it stopped; the channel's pace and the provider's 429s govern the sending."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        audience_id: UUID
        lead_ids: list[UUID]
        channel: ChannelType
        channel_id: UUID
        template: Template
        actor: str

    class ChunkQueued(Aggregate.Event):
        upto: int
        queued: int
        skipped: dict[str, int]

    class Finished(Aggregate.Event):
        pass

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        name: str,
        audience_id: UUID,
        lead_ids: list[UUID],
        channel: ChannelType,
        channel_id: UUID,
        template: Template,
        actor: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.audience_id = audience_id
        self.lead_ids = lead_ids
        self.channel = channel
        self.channel_id = channel_id
        self.template = template
        self.upto = 0
        self.queued = 0
        self.skipped: dict[str, int] = {}
        self.finished = False

    def next_chunk(self) -> list[UUID]:
        return self.lead_ids[self.upto : self.upto + CHUNK]

    def chunk_queued(self, count: int, queued: int, skipped: dict[str, int]) -> None:
        self._chunk_queued(upto=self.upto + count, queued=queued, skipped=skipped)
        if self.upto >= len(self.lead_ids):
            self._finished()

    @event(ChunkQueued)
    def _chunk_queued(self, upto: int, queued: int, skipped: dict[str, int]) -> None:
        self.upto = upto
        self.queued += queued
        for reason, count in skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    @event(Finished)
    def _finished(self) -> None:
        self.finished = True
