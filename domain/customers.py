"""Customers known to a workspace: a lead for a customer without an account waits for it."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate


class Customer(Aggregate):
    """A customer of the workspace; `active` once they have registered an account."""

    class Registered(Aggregate.Created):
        workspace_id: UUID
        name: str
        email: str | None
        active: bool

    class Activated(Aggregate.Event):
        pass

    @event(Registered)
    def __init__(self, workspace_id: UUID, name: str, email: str | None, active: bool) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.email = email
        self.active = active

    def activate(self) -> bool:
        """Record the account's registration; False when it was already active."""
        if self.active:
            return False
        self._activated()
        return True

    @event(Activated)
    def _activated(self) -> None:
        self.active = True
