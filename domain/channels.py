"""Messaging channels: a workspace's SMS (Twilio), WhatsApp (Cloud API) and email senders.

A channel holds where its provider is (`base_url`, so tests and self-hosted gateways can
point elsewhere), who messages come from, and credentials. Credentials are write-only: the
API never shows a secret (only which keys are set and the non-secret identifiers), the NATS
relay redacts them (`redact_credentials`), and logs never carry them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal
from uuid import UUID

from eventsourcing.domain import event
from pydantic import Field, ValidationInfo, field_validator, model_validator

from domain.base import Aggregate
from domain.lead_types import Model, check_webhook_url
from domain.leads import stored
from domain.text import clean_text

REDACTED = "[redacted]"


class ChannelType(StrEnum):
    SMS = "sms"
    WHATSAPP = "whatsapp"
    EMAIL = "email"


DEFAULT_BASE_URLS = {
    ChannelType.SMS: "https://api.twilio.com",
    ChannelType.WHATSAPP: "https://graph.facebook.com",
}
# Credentials each type needs; the ones not listed in PUBLIC are secrets.
REQUIRED_CREDENTIALS: dict[ChannelType, tuple[str, ...]] = {
    ChannelType.SMS: ("accountSid", "authToken"),
    ChannelType.WHATSAPP: ("phoneNumberId", "accessToken", "appSecret", "verifyToken"),
    ChannelType.EMAIL: (),
}
KNOWN_CREDENTIALS: dict[ChannelType, tuple[str, ...]] = {
    ChannelType.SMS: ("accountSid", "authToken"),
    ChannelType.WHATSAPP: (
        "phoneNumberId",
        "accessToken",
        "appSecret",
        "verifyToken",
        "apiVersion",
    ),
    # Empty: the engine's SMTP settings. Given: this channel's own SMTP server.
    ChannelType.EMAIL: ("host", "port", "username", "password", "starttls"),
}
PUBLIC_CREDENTIALS = frozenset({"accountSid", "phoneNumberId", "apiVersion", "host", "port"})


class UnknownChannel(LookupError):
    """A channel that does not exist in the workspace (or was deleted)."""


class ChannelConfig(Model):
    type: ChannelType
    name: str = Field(min_length=1, max_length=200)
    base_url: str | None = Field(default=None, max_length=2048)
    # The sender: a phone number (E.164) for SMS, an email address for email; WhatsApp
    # sends from its phone number id.
    from_: str | None = Field(default=None, alias="from", max_length=320)
    credentials: dict[str, Any] = Field(default_factory=dict, max_length=20)
    active: bool = True
    # Messages per second at most (broadcasts pace themselves to it); None: unpaced.
    rate_per_second: float | None = Field(default=None, gt=0, le=10_000)

    @field_validator("name", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=200) if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or stored(info):
            return value
        return check_webhook_url(value, "baseUrl").rstrip("/")

    @model_validator(mode="after")
    def _credentials(self, info: ValidationInfo) -> ChannelConfig:
        known = KNOWN_CREDENTIALS[self.type]
        unknown = sorted(set(self.credentials) - set(known))
        if unknown:
            raise ValueError(
                f"credentials {unknown} are not {self.type} credentials (known: {list(known)})"
            )
        missing = [k for k in REQUIRED_CREDENTIALS[self.type] if not self.credentials.get(k)]
        if missing:
            raise ValueError(f"a {self.type} channel needs credentials {missing}")
        if self.type is ChannelType.SMS and not self.from_:
            raise ValueError("an SMS channel needs `from` (the sending number)")
        if self.type is ChannelType.EMAIL and self.from_ and "@" not in self.from_:
            raise ValueError("`from` of an email channel is an email address")
        return self

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.type, "")).rstrip("/")

    def credential(self, name: str, default: str = "") -> str:
        value = self.credentials.get(name)
        return default if value is None else str(value)

    def public(self) -> dict[str, Any]:
        """The configuration as the API shows it: secrets replaced by `[set]`."""
        shown = self.model_dump(mode="json", by_alias=True)
        shown["credentials"] = {
            k: (v if k in PUBLIC_CREDENTIALS else "[set]") for k, v in self.credentials.items()
        }
        shown["baseUrl"] = self.url or None
        return shown


def redact_credentials(value: Any) -> Any:
    """Any structure with every `credentials` map's secret values hidden (the NATS relay)."""
    if isinstance(value, dict):
        return {
            key: (
                {k: (v if k in PUBLIC_CREDENTIALS else REDACTED) for k, v in item.items()}
                if key == "credentials" and isinstance(item, dict)
                else redact_credentials(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_credentials(item) for item in value]
    return value


class Channel(Aggregate):
    class Created(Aggregate.Created):
        redacted_fields: ClassVar[frozenset[str]] = frozenset()
        workspace_id: UUID
        config: ChannelConfig
        actor: str

    class Updated(Aggregate.Event):
        config: ChannelConfig
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, config: ChannelConfig, actor: str) -> None:
        self.workspace_id = workspace_id
        self.config = config
        self.deleted = False

    def update(self, config: ChannelConfig, actor: str) -> bool:
        if config == self.config:
            return False
        self._updated(config=config, actor=actor)
        return True

    @event(Updated)
    def _updated(self, config: ChannelConfig, actor: str) -> None:
        self.config = config

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


ChannelName = Literal["sms", "whatsapp", "email"]
