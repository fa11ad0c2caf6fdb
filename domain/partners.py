"""Partners: who a workspace refers leads to (and who may return them).

A partner with a `webhook_url` is sent each referral as a Standard Webhooks request signed
with its own `whsec_` secret. The secret is issued when the partner gets its first URL and
shown once; rotating it keeps the previous one signing for an overlap. Secrets live in
`SecretIssued` events, which the NATS relay redacts (`redacted_fields`). A 410 Gone from the
URL switches the partner's webhook off until its `webhook_url` is set again.

What a partner may know of a lead referred to it is `PartnerLeadView`: the partner reads it
(`GET /v1/leads` with its token) and receives it in the referral webhook.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic.alias_generators import to_camel

from domain.base import Aggregate
from domain.lead_types import SigningSecret, check_webhook_url, new_secret
from domain.leads import FieldChange, Lead, ReturnStatus, Source, stored
from domain.text import clean_text

REFERRAL_EVENT_TYPE = "lead.referred"
"""The `type` of the referral webhook's payload (and its delivery's event code)."""


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

    class SecretIssued(Aggregate.Event):
        """A new signing secret for the partner's webhook (never published: the relay
        redacts `secret`)."""

        redacted_fields: ClassVar[frozenset[str]] = frozenset({"secret"})

        secret: str
        # How long the secret it replaces stays valid (0: not a rotation, or no overlap).
        overlap_seconds: float
        actor: str

        def apply(self, aggregate: Any) -> None:
            until = self.timestamp + timedelta(seconds=self.overlap_seconds)
            older = [
                s if s.valid_until is not None else s.model_copy(update={"valid_until": until})
                for s in aggregate.secrets
            ]
            aggregate.secrets = [SigningSecret(secret=self.secret, issued_at=self.timestamp)]
            aggregate.secrets += older

    class WebhookDisabled(Aggregate.Event):
        """The partner's URL answered 410 Gone: nothing more is sent until it is set again."""

        reason: str

    class WebhookEnabled(Aggregate.Event):
        """The partner's `webhook_url` was set again after a 410 Gone."""

        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, details: PartnerDetails, actor: str) -> None:
        self.workspace_id = workspace_id
        self.details = details
        self.deleted = False
        self.secrets: list[SigningSecret] = []
        self.webhook_disabled: str | None = None

    def update(self, fields: dict[str, Any], actor: str) -> bool:
        """Change the given fields (validated as PartnerDetails); False when none differ."""
        details = PartnerDetails.model_validate({**self.details.model_dump(), **fields})
        changes = [
            FieldChange(field=name, old=getattr(self.details, name), new=getattr(details, name))
            for name in PartnerDetails.model_fields
            if getattr(self.details, name) != getattr(details, name)
        ]
        enable = (
            self.webhook_disabled is not None
            and fields.get("webhook_url") is not None
            and details.webhook_url is not None
        )
        if changes:
            self._updated(details=details, changes=changes, actor=actor)
        if enable:
            self._webhook_enabled(actor=actor)
        return bool(changes) or enable

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

    # ---- the referral webhook -------------------------------------------------------------

    def issue_secret(self, overlap: timedelta, actor: str) -> str:
        """A new signing secret; the previous one keeps signing for `overlap`."""
        secret = new_secret()
        self.trigger_event(
            Partner.SecretIssued,
            secret=secret,
            overlap_seconds=overlap.total_seconds(),
            actor=actor,
        )
        return secret

    def issue_first_secret(self, actor: str) -> str | None:
        """The partner's first secret, once it has a webhook URL and no secret yet."""
        if self.details.webhook_url is None or self.secrets:
            return None
        return self.issue_secret(timedelta(0), actor)

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery is signed with now: the current one first, then any
        previous one still inside its overlap."""
        return [s.secret for s in self.secrets if s.valid_until is None or s.valid_until > now]

    @property
    def sends_referrals(self) -> bool:
        """Whether a referral to the partner is sent to its URL."""
        return (
            not self.deleted
            and self.details.active
            and self.details.webhook_url is not None
            and self.webhook_disabled is None
        )

    def disable_webhook(self, reason: str) -> bool:
        if self.webhook_disabled is not None:
            return False
        self._webhook_disabled(reason=reason)
        return True

    @event(WebhookDisabled)
    def _webhook_disabled(self, reason: str) -> None:
        self.webhook_disabled = reason

    @event(WebhookEnabled)
    def _webhook_enabled(self, actor: str) -> None:
        self.webhook_disabled = None


class PartnerLeadView(BaseModel):
    """A lead as the partner it is referred to sees it: who the person is and what they
    asked for, and where the referral stands. Nothing internal: not its status, stage,
    pipeline, assignee, notes, tags, milestones, lead type, duplicates, attribution,
    customer, campaign, conversion, other partners or other referrals."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    id: UUID
    request_id: int
    name: str
    email: str | None
    phone: str | None
    company: str | None
    title: str | None
    category: str | None
    product: str | None
    description: str | None
    # With `_displayNames` inside, as everywhere on the wire.
    custom_fields: dict[str, Any]
    source: Source
    created_at: datetime
    referred_at: datetime | None
    # `open` while a return the partner started is undecided, `declined` when it was
    # declined, null otherwise (an accepted return ends the referral).
    return_status: ReturnStatus | None

    @field_serializer("created_at", "referred_at")
    def _iso(self, moment: datetime | None) -> str | None:
        # As every other time on the wire (`+00:00`, not pydantic's `Z`).
        return moment.isoformat() if moment is not None else None

    @classmethod
    def of(cls, lead: Lead) -> PartnerLeadView:
        d = lead.details
        return cls(
            id=lead.id,
            request_id=lead.request_id,
            name=lead.name,
            email=d.email,
            phone=d.phone,
            company=d.company,
            title=d.title,
            category=d.category,
            product=d.product,
            description=d.description,
            custom_fields={**d.custom_fields, "_displayNames": dict(d.display_names)},
            source=lead.source,
            created_at=lead.created_on,
            referred_at=lead.referred_at,
            return_status=lead.return_status,
        )

    def wire(self) -> dict[str, Any]:
        """As JSON: camelCase, ids and times as strings."""
        return self.model_dump(mode="json", by_alias=True)


def referred_to(lead: Lead, partner_id: UUID) -> bool:
    """Whether the partner may see the lead: live, and referred to it now."""
    return not lead.deleted and lead.referred_to == partner_id


def referral_payload(lead: Lead, referred_at: datetime) -> dict[str, Any]:
    """The referral webhook's body (Standard Webhooks shape): the lead as the partner sees
    it, right after the referral."""
    return {
        "type": REFERRAL_EVENT_TYPE,
        "timestamp": referred_at.isoformat(),
        "data": PartnerLeadView.of(lead).wire(),
    }
