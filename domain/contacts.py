"""Contacts: the people leads convert into. One contact per email or phone in a workspace."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate
from domain.leads import Note


def contact_keys(
    workspace_id: UUID, email_normal: str | None, phone_normal: str | None
) -> list[str]:
    """The unique keys a contact holds: the first contact with an email or phone owns it, and
    a lead converted later with the same one is linked to that contact instead."""
    keys = []
    if email_normal:
        keys.append(f"contact:{workspace_id}:email:{email_normal}")
    if phone_normal:
        keys.append(f"contact:{workspace_id}:phone:{phone_normal}")
    return keys


class Contact(Aggregate):
    """Created by converting a lead; later leads of the same person are linked to it."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        lead_id: UUID
        name: str
        email: str | None
        phone: str | None
        email_normal: str | None
        phone_normal: str | None
        company: str | None
        title: str | None
        custom_fields: dict[str, Any]
        notes: list[Note]
        actor: str

    class LeadLinked(Aggregate.Event):
        """Another lead of this contact converted: its fields fill what the contact lacks,
        and its notes are added."""

        lead_id: UUID
        custom_fields: dict[str, Any]
        notes: list[Note]
        actor: str

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        lead_id: UUID,
        name: str,
        email: str | None,
        phone: str | None,
        email_normal: str | None,
        phone_normal: str | None,
        company: str | None,
        title: str | None,
        custom_fields: dict[str, Any],
        notes: list[Note],
        actor: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.lead_ids = [lead_id]
        self.name = name
        self.email = email
        self.phone = phone
        self.email_normal = email_normal
        self.phone_normal = phone_normal
        self.company = company
        self.title = title
        self.custom_fields = dict(custom_fields)
        self.notes = list(notes)

    def link(
        self, lead_id: UUID, custom_fields: dict[str, Any], notes: list[Note], actor: str
    ) -> bool:
        if lead_id in self.lead_ids:
            return False
        self._lead_linked(lead_id=lead_id, custom_fields=custom_fields, notes=notes, actor=actor)
        return True

    @event(LeadLinked)
    def _lead_linked(
        self, lead_id: UUID, custom_fields: dict[str, Any], notes: list[Note], actor: str
    ) -> None:
        self.lead_ids.append(lead_id)
        self.custom_fields = {**custom_fields, **self.custom_fields}
        self.notes.extend(notes)
