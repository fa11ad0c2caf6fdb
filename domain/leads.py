"""The lead: the person who came in, and the rules for receiving one (names, dedup, status)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from domain.base import Aggregate
from domain.normalize import Normalised
from domain.text import clean_json, clean_text

SHORT_TEXT = 500
LONG_TEXT = 10_000
MAX_TAGS = 100
MAX_CUSTOM_FIELDS = 500


class Source(StrEnum):
    MANUAL = "manual"
    WEBHOOK = "webhook"
    FORM = "form"
    API = "api"
    IMPORT = "import"
    NATS = "nats"


class Status(StrEnum):
    """The statuses intake assigns; a workspace may define more for later changes."""

    NEW = "new"
    PENDING = "pending"
    BACKLOG = "backlog"
    ABANDONED = "abandoned"


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; frozen; unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class Attachment(WireModel):
    url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(default=None, max_length=SHORT_TEXT)
    file_type: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, ge=0)


STORED = "stored"


def stored(info: ValidationInfo) -> bool:
    """True while decoding an event from the log: it was cleaned when it came in, and
    cleaning it again on every read would only cost time."""
    return bool(info.context and info.context.get(STORED))


def _short(value: Any) -> Any:
    return clean_text(value, max_length=SHORT_TEXT) or None if isinstance(value, str) else value


class LeadDetails(WireModel):
    """What a submission says about the person, cleaned; every channel produces one."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    company: str | None = None
    title: str | None = None
    tags: tuple[str, ...] = ()
    category: str | None = None
    product: str | None = None
    description: str | None = None
    customer_id: UUID | None = None
    vendor_id: UUID | None = None
    attachments: tuple[Attachment, ...] = Field(default=(), max_length=50)
    expires_at: datetime | None = None
    created_by: str | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    display_names: dict[str, str] = Field(default_factory=dict)
    attribution: dict[str, str] = Field(default_factory=dict)
    answers: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, Any] = Field(default_factory=dict)
    campaign_id: UUID | None = None

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any, info: ValidationInfo) -> Any:
        # One pass over the raw input; skipped for events read back from the log.
        if stored(info) or not isinstance(data, dict):
            return data
        data = _split_display_names(data)
        for field, clean in _CLEANERS.items():
            for key in (field, to_camel(field)):
                if key in data:
                    data[key] = clean(data[key])
        return data


def _split_display_names(data: dict[str, Any]) -> dict[str, Any]:
    """On the wire the display names travel inside customFields as `_displayNames`."""
    data = dict(data)
    fields = data.get("customFields", data.get("custom_fields"))
    if isinstance(fields, dict) and "_displayNames" in fields:
        fields = dict(fields)
        names = fields.pop("_displayNames")
        data.pop("custom_fields", None)
        data["customFields"] = fields
        if isinstance(names, dict):
            data.setdefault("displayNames", names)
    return data


def _long(value: Any) -> Any:
    return clean_text(value, max_length=LONG_TEXT) or None if isinstance(value, str) else value


def _tags(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        seen: dict[str, None] = {}
        for tag in value:
            cleaned = clean_text(str(tag), max_length=100)
            if cleaned:
                seen.setdefault(cleaned, None)
        if len(seen) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        return tuple(seen)
    return value


def _json_fields(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"at most {MAX_CUSTOM_FIELDS} fields")
        return clean_json(value)
    return value


def _string_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            clean_text(str(k), max_length=SHORT_TEXT): clean_text(str(v), max_length=LONG_TEXT)
            for k, v in value.items()
            if v is not None
        }
    return value


_CLEANERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(
        ("name", "email", "phone", "company", "title", "category", "product", "created_by"),
        _short,
    ),
    "description": _long,
    "tags": _tags,
    **dict.fromkeys(("custom_fields", "answers", "consent"), _json_fields),
    **dict.fromkeys(("display_names", "attribution"), _string_map),
}


class MissingName(ValueError):
    """A lead needs something to call it by: a name, an email, a phone or a fallback."""


def resolve_name(details: LeadDetails, fallback: str | None = None) -> str:
    """The name, else the email, else the phone, else the channel's own name."""
    for candidate in (details.name, details.email, details.phone, fallback):
        if candidate:
            return candidate
    raise MissingName("a lead needs a name, an email or a phone")


def dedup_scope(workspace_id: UUID, campaign_id: UUID | None) -> str:
    """Duplicates are looked for in the campaign a submission names, else the workspace."""
    return f"{workspace_id}:campaign:{campaign_id}" if campaign_id else f"{workspace_id}:workspace"


def dedup_keys(scope: str, email: Normalised, phone: Normalised) -> list[str]:
    """The unique keys a lead claims; the first lead to claim one is the original."""
    keys = []
    if email.normal:
        keys.append(f"lead:{scope}:email:{email.normal}")
    if phone.normal:
        keys.append(f"lead:{scope}:phone:{phone.normal}")
    return keys


def initial_status(source: Source, customer_active: bool | None) -> tuple[Status, bool]:
    """(status, whether to request an invitation) for a new lead.

    Imported leads are `new` and go no further. A lead for a customer with an active account
    is `backlog`; for a customer without one it is `pending` and the customer is invited. A
    lead with no customer has nobody to invite, so it starts in `backlog`.
    """
    if source is Source.IMPORT:
        return Status.NEW, False
    if customer_active is False:
        return Status.PENDING, True
    return Status.BACKLOG, False


class Lead(Aggregate):
    """A person who came in through some channel; every later change is one of its events."""

    # Chosen by the intake handler before the append: the lead's claims name it as owner.
    id: UUID

    class Received(Aggregate.Created):
        workspace_id: UUID
        request_id: int
        source: Source
        channel: str | None
        actor: str
        by_user: bool
        name: str
        details: LeadDetails
        email_normal: str | None
        email_valid: bool | None
        phone_normal: str | None
        phone_valid: bool | None
        is_duplicate: bool
        duplicate_of: UUID | None
        status: Status
        idempotency_key: str | None = None
        pipeline_id: UUID | None = None
        stage_id: UUID | None = None

    class InvitationRequested(Aggregate.Event):
        customer_id: UUID

    class StatusChanged(Aggregate.Event):
        old: str
        new: str
        reason: str
        actor: str

    class StageChanged(Aggregate.Event):
        pipeline_id: UUID
        old_stage_id: UUID | None
        new_stage_id: UUID
        reason: str
        actor: str

    @event(Received)
    def __init__(
        self,
        workspace_id: UUID,
        request_id: int,
        source: Source,
        channel: str | None,
        actor: str,
        by_user: bool,
        name: str,
        details: LeadDetails,
        email_normal: str | None,
        email_valid: bool | None,
        phone_normal: str | None,
        phone_valid: bool | None,
        is_duplicate: bool,
        duplicate_of: UUID | None,
        status: Status,
        idempotency_key: str | None = None,
        pipeline_id: UUID | None = None,
        stage_id: UUID | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.request_id = request_id
        self.source = source
        self.channel = channel
        self.name = name
        self.details = details
        self.email_valid = email_valid
        self.phone_valid = phone_valid
        self.is_duplicate = is_duplicate
        self.duplicate_of = duplicate_of
        self.status: str = status
        self.pipeline_id = pipeline_id
        self.stage_id = stage_id
        self.invited: UUID | None = None

    @event(InvitationRequested)
    def request_invitation(self, customer_id: UUID) -> None:
        self.invited = customer_id

    def change_status(self, new: str, reason: str, actor: str) -> bool:
        """Move to `new`; False (and no event) when the lead is already there."""
        if new == self.status:
            return False
        self._status_changed(old=self.status, new=new, reason=reason, actor=actor)
        return True

    @event(StatusChanged)
    def _status_changed(self, old: str, new: str, reason: str, actor: str) -> None:
        self.status = new

    def move_to_stage(self, pipeline_id: UUID, stage_id: UUID, reason: str, actor: str) -> bool:
        """Put the lead in `stage_id` of `pipeline_id`; False when it is there already."""
        if self.pipeline_id == pipeline_id and self.stage_id == stage_id:
            return False
        self._stage_changed(
            pipeline_id=pipeline_id,
            old_stage_id=self.stage_id,
            new_stage_id=stage_id,
            reason=reason,
            actor=actor,
        )
        return True

    @event(StageChanged)
    def _stage_changed(
        self,
        pipeline_id: UUID,
        old_stage_id: UUID | None,
        new_stage_id: UUID,
        reason: str,
        actor: str,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.stage_id = new_stage_id
