"""Partners: who a workspace refers leads to (and who may return them)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import event
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from domain.base import Aggregate
from domain.lead_types import check_webhook_url
from domain.leads import FieldChange, stored
from domain.text import clean_text


class PartnerDetails(BaseModel):
    """What a partner is: a name, who to reach there, and where referred leads may go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=500)
    phone: str | None = Field(default=None, max_length=100)
    webhook_url: str | None = Field(default=None, max_length=2048)
    active: bool = True

    @field_validator("name", "email", "phone", "webhook_url", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=2048) or None if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or stored(info):
            return value
        return check_webhook_url(value, "webhookUrl")


class Partner(Aggregate):
    class Created(Aggregate.Created):
        workspace_id: UUID
        details: PartnerDetails
        actor: str

    class Updated(Aggregate.Event):
        details: PartnerDetails
        changes: list[FieldChange]
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, details: PartnerDetails, actor: str) -> None:
        self.workspace_id = workspace_id
        self.details = details
        self.deleted = False

    def update(self, fields: dict[str, Any], actor: str) -> bool:
        """Change the given fields (validated as PartnerDetails); False when none differ."""
        details = PartnerDetails.model_validate({**self.details.model_dump(), **fields})
        changes = [
            FieldChange(field=name, old=getattr(self.details, name), new=getattr(details, name))
            for name in PartnerDetails.model_fields
            if getattr(self.details, name) != getattr(details, name)
        ]
        if not changes:
            return False
        self._updated(details=details, changes=changes, actor=actor)
        return True

    @event(Updated)
    def _updated(self, details: PartnerDetails, changes: list[FieldChange], actor: str) -> None:
        self.details = details

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True
