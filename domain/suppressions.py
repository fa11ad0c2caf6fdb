"""Consent: a workspace's suppression list of addresses that must not be messaged.

An address (an E.164 phone number or a lowercased email) is suppressed when its owner
replies STOP, follows an unsubscribe link, or reports spam, or a person adds it by hand;
every send checks the list first. One aggregate per workspace and address, so adding and
lifting are events like everything else.
"""

from __future__ import annotations

import uuid
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate

NAMESPACE = uuid.UUID("c2b7f0d3-5e1a-4a8e-9f61-2d3b8c4e7a90")
# Replies that opt out, as carriers and WhatsApp understand them.
STOP_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "opt-out", "revoke"}
)
START_WORDS = frozenset({"start", "unstop", "yes", "subscribe"})


def suppression_id(workspace_id: UUID, address: str) -> UUID:
    return uuid.uuid5(NAMESPACE, f"{workspace_id}:{address.strip().lower()}")


def is_stop(text: str) -> bool:
    return text.strip().strip(".!").lower() in STOP_WORDS


def is_start(text: str) -> bool:
    return text.strip().strip(".!").lower() in START_WORDS


class Suppression(Aggregate):
    """Whether one address may be messaged in one workspace."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        address: str

    class Added(Aggregate.Event):
        reason: str
        channel: str
        lead_id: UUID | None = None
        actor: str

    class Lifted(Aggregate.Event):
        reason: str
        lead_id: UUID | None = None
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, address: str) -> None:
        self.workspace_id = workspace_id
        self.address = address.strip().lower()
        self.active = False
        self.reason: str | None = None

    @classmethod
    def create_id(cls, workspace_id: UUID, address: str) -> UUID:
        return suppression_id(workspace_id, address)

    def add(self, reason: str, channel: str, lead_id: UUID | None, actor: str) -> bool:
        if self.active:
            return False
        self._added(reason=reason, channel=channel, lead_id=lead_id, actor=actor)
        return True

    @event(Added)
    def _added(self, reason: str, channel: str, lead_id: UUID | None, actor: str) -> None:
        self.active = True
        self.reason = reason

    def lift(self, reason: str, lead_id: UUID | None, actor: str) -> bool:
        if not self.active:
            return False
        self._lifted(reason=reason, lead_id=lead_id, actor=actor)
        return True

    @event(Lifted)
    def _lifted(self, reason: str, lead_id: UUID | None, actor: str) -> None:
        self.active = False
        self.reason = None
