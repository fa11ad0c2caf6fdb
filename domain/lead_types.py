"""Lead types: the actions a workspace binds to triggers, their conditions and order.

A lead belongs to one lead type. The type holds a list of actions; each names a trigger,
optional conditions on the lead, and what to do. The list's order is the configured order;
within one trigger, Assign to User actions run first and the rest follow in that order
(`actions_for`).

An action is a tagged model (`type`): adding one of the guide's other actions (a text
message, a task, an appointment, a journey, a workflow) is a new model in `Action` and an
executor for it in the action runner; nothing else changes.

Webhook actions sign with a `whsec_` secret. The secret is shown once, when it is issued;
rotating it keeps the previous one valid for an overlap, during which deliveries carry both
signatures so receivers can switch over. Secrets live in `SecretIssued` events, which the
NATS relay redacts (`redacted_fields`).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from domain.base import Aggregate
from domain.leads import stored
from domain.text import clean_text
from domain.triggers import Trigger

MAX_ACTIONS = 200
MAX_CONDITIONS = 20
SECRET_PREFIX = "whsec_"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class ReferralMethod(StrEnum):
    """How leads of a type reach a partner: referred on receipt, by hand, or never."""

    IMMEDIATELY = "immediately"
    MANUALLY = "manually"
    NEVER = "never"


class Referral(Model):
    method: ReferralMethod = ReferralMethod.MANUALLY
    # The partner an `immediately` type refers every new lead to.
    partner_id: UUID | None = None

    @model_validator(mode="after")
    def _partner_when_immediate(self) -> Referral:
        if self.method is ReferralMethod.IMMEDIATELY and self.partner_id is None:
            raise ValueError("an immediate referral needs a partnerId")
        return self


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


# The lead facts a condition may test, besides `customFields.<key>`.
CONDITION_FIELDS = frozenset(
    {
        "status",
        "source",
        "channel",
        "tags",
        "isDuplicate",
        "assignedTo",
        "stageId",
        "pipelineId",
        "referredTo",
        "email",
        "phone",
        "company",
        "category",
        "product",
    }
)


class Condition(Model):
    """`{field, op, value}`: e.g. status is `qualified`, source is `webhook`, tags contain X."""

    field: str = Field(min_length=1, max_length=200)
    op: Op = Op.EQ
    value: Any = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if value not in CONDITION_FIELDS and not value.startswith("customFields."):
            known = ", ".join(sorted(CONDITION_FIELDS))
            raise ValueError(f"unknown field {value!r}: one of {known}, or customFields.<key>")
        return value

    @model_validator(mode="after")
    def _value_fits(self) -> Condition:
        if self.op in (Op.IN, Op.NOT_IN) and not isinstance(self.value, list):
            raise ValueError(f"{self.op} needs a list value")
        return self

    def holds(self, facts: dict[str, Any]) -> bool:
        actual = facts.get(self.field)
        expected = _comparable(self.value)
        if self.op is Op.EXISTS:
            return actual not in (None, "", [], ())
        if self.op is Op.NOT_EXISTS:
            return actual in (None, "", [], ())
        if self.op is Op.CONTAINS:
            if isinstance(actual, list | tuple):
                return expected in [_comparable(a) for a in actual]
            return isinstance(actual, str) and str(expected).lower() in actual.lower()
        if isinstance(actual, list | tuple):
            values = [_comparable(a) for a in actual]
            found = any(v in expected for v in values) if isinstance(expected, list) else False
            match self.op:
                case Op.EQ:
                    return bool(values == expected)
                case Op.NE:
                    return bool(values != expected)
                case Op.IN:
                    return found
                case _:
                    return not found
        actual = _comparable(actual)
        match self.op:
            case Op.EQ:
                return bool(actual == expected)
            case Op.NE:
                return bool(actual != expected)
            case Op.IN:
                return actual in expected
            case _:
                return actual not in expected


def _comparable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


class ActionBase(Model):
    # Each action names its kind with a literal (the union's discriminator).
    type: str
    id: UUID = Field(default_factory=uuid.uuid4)
    trigger: Trigger
    conditions: tuple[Condition, ...] = Field(default=(), max_length=MAX_CONDITIONS)
    enabled: bool = True
    name: str | None = Field(default=None, max_length=200)

    def applies(self, facts: dict[str, Any]) -> bool:
        return self.enabled and all(c.holds(facts) for c in self.conditions)


class AssignMode(StrEnum):
    USER = "user"
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"


class AssignUser(ActionBase):
    type: Literal["assign_user"] = "assign_user"
    mode: AssignMode = AssignMode.USER
    user_id: UUID | None = None
    group_id: UUID | None = None

    @model_validator(mode="after")
    def _target(self) -> AssignUser:
        if self.mode is AssignMode.USER and self.user_id is None:
            raise ValueError("assigning to a user needs a userId")
        if self.mode is not AssignMode.USER and self.group_id is None:
            raise ValueError(f"{self.mode} assignment needs a groupId")
        return self


class ChangeStatus(ActionBase):
    type: Literal["change_status"] = "change_status"
    status: str = Field(min_length=1, max_length=100)

    @field_validator("status", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=100).lower() if isinstance(value, str) else value


class ChangeLeadType(ActionBase):
    type: Literal["change_lead_type"] = "change_lead_type"
    lead_type_id: UUID


class Refer(ActionBase):
    type: Literal["refer"] = "refer"
    partner_id: UUID


class PayloadFormat(StrEnum):
    FORM = "form"
    JSON = "json"


class Webhook(ActionBase):
    type: Literal["webhook"] = "webhook"
    url: str = Field(min_length=1, max_length=2048)
    format: PayloadFormat = PayloadFormat.FORM
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    max_retries: int = Field(default=5, ge=0, le=5)
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if stored(info):
            return value  # checked when it was configured (by the rules of that day)
        return check_webhook_url(value, "url")

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = {"content-type", "content-length", "host"} | {
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
        }
        for name, header in value.items():
            if name.lower() in reserved:
                raise ValueError(f"header {name!r} is set by leadlog")
            if not _HEADER_NAME.fullmatch(name) or any(c in header for c in "\r\n\0"):
                raise ValueError(f"header {name!r} is not a valid HTTP header")
        return value


class EmailAction(ActionBase):
    """An email through the SMTP channel; `subject` and `body` may use `{field}`
    placeholders of the lead (`{name}`, `{email}`, `{phone}`, `{status}`, `{requestId}`,
    `{customFields.key}`...)."""

    subject: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=20_000)


class ContactCustomer(EmailAction):
    """Email the lead (the person who came in) at the lead's email."""

    type: Literal["contact_customer"] = "contact_customer"


class ContactUser(EmailAction):
    """Email the user the lead is assigned to (skipped while it is unassigned)."""

    type: Literal["contact_user"] = "contact_user"


class NotifyUser(EmailAction):
    """Email a given user about the lead."""

    type: Literal["notify_user"] = "notify_user"
    user_id: UUID


class MessageAction(ActionBase):
    """A message through one of the workspace's messaging channels (`/v1/channels`): SMS
    (`body`), WhatsApp (`templateName`, `language`, `parameters`) or email (`subject`,
    `body`), with `{{lead.name}}` placeholders; `channelId` picks the channel, else the
    workspace's first of that kind. It is queued by the automation reaction right after the
    decision and tracked like every other message (`GET /v1/messages`)."""

    channel: Literal["sms", "whatsapp", "email"] = "sms"
    channel_id: UUID | None = None
    body: str | None = Field(default=None, max_length=5000)
    subject: str | None = Field(default=None, max_length=500)
    template_name: str | None = Field(default=None, max_length=512)
    language: str | None = Field(default=None, max_length=20)
    parameters: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _content(self) -> MessageAction:
        if self.channel == "whatsapp":
            if not self.template_name or not self.language:
                raise ValueError("a WhatsApp message needs templateName and language")
        elif not self.body:
            raise ValueError(f"a {self.channel} message needs a body")
        if self.channel == "email" and not self.subject:
            raise ValueError("an email needs a subject")
        return self

    def template(self) -> dict[str, Any]:
        if self.channel == "whatsapp":
            return {
                "name": self.template_name,
                "language": self.language,
                "parameters": list(self.parameters),
            }
        return {"body": self.body, "subject": self.subject}


class TextCustomer(MessageAction):
    """Contact Customer by text message: the lead, at its phone number."""

    type: Literal["text_customer"] = "text_customer"


class NotifyUserByText(MessageAction):
    """Notify User by Text: a text about the lead to a person's number (`to`)."""

    type: Literal["notify_user_by_text"] = "notify_user_by_text"
    to: str = Field(min_length=3, max_length=40)


class ContactPartner(MessageAction):
    """Contact Partner: email or text the partner (its email or phone) about the lead."""

    type: Literal["contact_partner"] = "contact_partner"
    partner_id: UUID


class StartWorkflow(ActionBase):
    """Start Workflow: start an automation for the lead (a run of it already going for the
    lead is stopped first)."""

    type: Literal["start_workflow"] = "start_workflow"
    automation_id: UUID


class StopWorkflow(ActionBase):
    """Stop Workflow: stop the lead's running runs of an automation (of every one when
    `automationId` is not given)."""

    type: Literal["stop_workflow"] = "stop_workflow"
    automation_id: UUID | None = None


# Actions the automation reaction carries out after the decision records them `scheduled`.
MESSAGING_ACTIONS = frozenset(
    {"text_customer", "notify_user_by_text", "contact_partner", "start_workflow", "stop_workflow"}
)


Action = Annotated[
    AssignUser
    | ChangeStatus
    | ChangeLeadType
    | Refer
    | Webhook
    | ContactCustomer
    | ContactUser
    | NotifyUser
    | TextCustomer
    | NotifyUserByText
    | ContactPartner
    | StartWorkflow
    | StopWorkflow,
    Field(discriminator="type"),
]


class ActionList(Model):
    actions: list[Action] = Field(default_factory=list, max_length=MAX_ACTIONS)


def ordered(actions: list[Action], trigger: Trigger) -> list[Action]:
    """The actions bound to `trigger`: Assign to User first, then the rest as configured."""
    bound = [a for a in actions if a.trigger is trigger]
    return [a for a in bound if isinstance(a, AssignUser)] + [
        a for a in bound if not isinstance(a, AssignUser)
    ]


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_webhook_url(value: str, name: str) -> str:
    """An absolute http(s) URL without credentials, or `ValueError` naming the field: a
    `user:password@` in a URL ends up in logs, the secret belongs in a header."""
    url = value.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as error:  # an unbalanced `[` in the host
        raise ValueError(f"{name} is not a valid URL: {error}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ValueError(f"{name} must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise ValueError(
            f"{name} must not contain credentials (user:password@): a URL ends up in logs;"
            " send a secret in a header instead"
        )
    return url


# IPv6 prefixes that carry an IPv4 address, which is where the packets end up.
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible (`::127.0.0.1`)
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT IPv4-translated
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the NAT64 well-known prefix
# The local-use NAT64 prefix: the operator picks the prefix length inside it, so where the
# IPv4 address sits cannot be known; it is never a public target anyway.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def internal_address(ip: IPAddress) -> bool:
    """Whether an address is anything but a global unicast one. An IPv6 address that embeds
    an IPv4 address is judged by that address too (Python calls `::7f00:1` global): mapped,
    compatible and translated ones are the IPv4 address; NAT64 and 6to4 ones are refused
    when either is internal; Teredo (`2001::/32`, a tunnel through a relay whose client
    address is obfuscated) and local-use NAT64 are always refused."""
    if isinstance(ip, ipaddress.IPv6Address):
        low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.ipv4_mapped is not None or ip in _TRANSLATED or ip in _COMPATIBLE:
            return internal_address(low)
        if ip.teredo is not None or ip in _NAT64_LOCAL:
            return True
        if ip in _NAT64 and internal_address(low):
            return True
        if ip.sixtofour is not None and internal_address(ip.sixtofour):
            return True
    return not ip.is_global or ip.is_multicast


def private_target(url: str) -> bool:
    """Whether a URL names a loopback, private, link-local or otherwise internal host
    literally (`localhost`, `10.0.0.1`, `[::127.0.0.1]`...). Names are resolved again at
    delivery time."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return True
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return internal_address(address)


class InvalidLeadType(ValueError):
    """A lead-type change that breaks the rules (duplicate action ids, unknown action...)."""


class SigningSecret(BaseModel):
    model_config = ConfigDict(frozen=True)

    secret: str
    issued_at: datetime
    # Set when a newer secret replaced this one: valid until then, for the overlap.
    valid_until: datetime | None = None


class LeadType(Aggregate):
    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        referral: Referral
        actions: list[Action]
        actor: str

    class Changed(Aggregate.Event):
        name: str
        referral: Referral
        actor: str

    class ActionsSet(Aggregate.Event):
        """The whole action list, in its configured order."""

        actions: list[Action]
        actor: str

    class SecretIssued(Aggregate.Event):
        redacted_fields: ClassVar[frozenset[str]] = frozenset({"secret"})

        action_id: UUID
        secret: str
        # How long the secret it replaces stays valid (0: not a rotation, or no overlap).
        overlap_seconds: float
        actor: str

        def apply(self, aggregate: Any) -> None:
            issued_at = self.timestamp
            until = issued_at + timedelta(seconds=self.overlap_seconds)
            older = [
                s if s.valid_until is not None else s.model_copy(update={"valid_until": until})
                for s in aggregate.secrets.get(self.action_id, [])
            ]
            current = SigningSecret(secret=self.secret, issued_at=issued_at)
            aggregate.secrets[self.action_id] = [current, *older]

    class ActionDisabled(Aggregate.Event):
        """An action switched off by the engine (a webhook answered 410 Gone)."""

        action_id: UUID
        reason: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        name: str,
        referral: Referral,
        actions: list[Action],
        actor: str,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.referral = referral
        self.actions = _unique(actions)
        self.secrets: dict[UUID, list[SigningSecret]] = {}
        self.deleted = False

    def change(self, name: str, referral: Referral, actor: str) -> bool:
        if name == self.name and referral == self.referral:
            return False
        self._changed(name=name, referral=referral, actor=actor)
        return True

    @event(Changed)
    def _changed(self, name: str, referral: Referral, actor: str) -> None:
        self.name = name
        self.referral = referral

    def set_actions(self, actions: list[Action], actor: str) -> bool:
        _unique(actions)
        if actions == self.actions:
            return False
        self._actions_set(actions=actions, actor=actor)
        return True

    @event(ActionsSet)
    def _actions_set(self, actions: list[Action], actor: str) -> None:
        self.actions = actions

    def action(self, action_id: UUID) -> Action | None:
        return next((a for a in self.actions if a.id == action_id), None)

    def webhooks_without_secret(self) -> list[Webhook]:
        return [a for a in self.actions if isinstance(a, Webhook) and a.id not in self.secrets]

    def issue_secret(self, action_id: UUID, overlap: timedelta, actor: str) -> str:
        """A new signing secret for a webhook action; the old one stays valid `overlap`."""
        if not isinstance(self.action(action_id), Webhook):
            raise InvalidLeadType(f"action {action_id} is not a webhook of this lead type")
        secret = new_secret()
        self.trigger_event(
            LeadType.SecretIssued,
            action_id=action_id,
            secret=secret,
            overlap_seconds=overlap.total_seconds(),
            actor=actor,
        )
        return secret

    def signing_secrets(self, action_id: UUID, now: datetime) -> list[str]:
        """The secrets a delivery is signed with now: the current one first, then any
        previous one still inside its overlap."""
        return [
            s.secret
            for s in self.secrets.get(action_id, [])
            if s.valid_until is None or s.valid_until > now
        ]

    def disable_action(self, action_id: UUID, reason: str) -> bool:
        found = self.action(action_id)
        if found is None or not found.enabled:
            return False
        self._action_disabled(action_id=action_id, reason=reason)
        return True

    @event(ActionDisabled)
    def _action_disabled(self, action_id: UUID, reason: str) -> None:
        self.actions = [
            a.model_copy(update={"enabled": False}) if a.id == action_id else a
            for a in self.actions
        ]

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


def _unique(actions: list[Action]) -> list[Action]:
    ids = [a.id for a in actions]
    if len(set(ids)) != len(ids):
        raise InvalidLeadType("action ids must be unique within a lead type")
    return actions
