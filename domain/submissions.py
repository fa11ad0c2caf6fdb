"""A submission: one delivery attempt of a lead to a campaign, its own aggregate from day one."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate


class Submission(Aggregate):
    """Links a lead to the campaign it was submitted to, with a snapshot of what was sent."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        lead_id: UUID
        campaign_id: UUID
        source: str
        snapshot: dict[str, Any]
        status: str

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        lead_id: UUID,
        campaign_id: UUID,
        source: str,
        snapshot: dict[str, Any],
        status: str = "received",
    ) -> None:
        self.workspace_id = workspace_id
        self.lead_id = lead_id
        self.campaign_id = campaign_id
        self.status = status
