"""Campaigns: the terms on which a submitted lead is qualified and delivered to buyers.

A campaign is configuration: its buyer endpoints (with the payload each expects and the
rules that read each answer), the lead's required fields, disqualification conditions,
dynamic keys, field qualification, an optional first-submission action, ordered fallback
campaigns, caps, a price and a return window. `mode` says how the endpoints are used:
`direct` posts to them in order until one accepts; `ping_post` auctions the lead among
them (ping each with the anonymised lead, post to the best bid).

A submission runs under the configuration it was given when processing started (the
snapshot is recorded on the submission), so editing a campaign never rewrites history.
"""

from __future__ import annotations

import re
import zoneinfo
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event
from pydantic import Field, ValidationInfo, field_validator, model_validator

from domain.base import Aggregate
from domain.lead_types import Model, check_webhook_url
from domain.leads import FieldChange, stored
from domain.text import clean_text

MAX_ENDPOINTS = 20
MAX_RULES = 50
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class UnknownCampaign(LookupError):
    """A campaign that does not exist in the workspace (or was deleted): naming one is a
    422, never a silent accept."""


ConditionOp = Literal[
    "eq",
    "ne",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "not_between",
    "contains",
    "not_contains",
    "starts_with",
    "regex",
    "exists",
    "missing",
]


class Condition(Model):
    """`field op value`, e.g. `lead.state in ["NY", "NJ"]` or `key.age between [18, 65]`.

    `field` names a lead field (`lead.email`, `lead.customFields.state`, `lead.answers.q1`,
    `lead.attribution.utm_source`, a bare custom field `lead.state`), a dynamic key
    (`key.age`), `source`, or the time of the decision (`time.hour`, `time.weekday`, in the
    campaign's time zone).
    """

    field: str = Field(min_length=1, max_length=200)
    op: ConditionOp
    value: Any = None
    reason: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _value_fits(self) -> Condition:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"`{self.op}` takes a list value")
        if self.op in ("between", "not_between") and not (
            isinstance(self.value, list) and len(self.value) == 2
        ):
            raise ValueError(f"`{self.op}` takes a [low, high] value")
        if self.op == "regex":
            if not isinstance(self.value, str):
                raise ValueError("`regex` takes a pattern string")
            try:
                re.compile(self.value)
            except re.error as error:
                raise ValueError(f"the pattern does not compile: {error}") from None
        if self.op not in ("exists", "missing") and self.value is None:
            raise ValueError(f"`{self.op}` needs a value")
        return self


DynamicKeyOp = Literal[
    "copy",
    "constant",
    "upper",
    "lower",
    "trim",
    "digits",
    "phone_e164",
    "phone_national",
    "age",
    "state_from_postal",
    "lookup",
    "concat",
    "default",
]


class DynamicKey(Model):
    """A computed value, `{{key.NAME}}` in payloads and `key.NAME` in conditions.

    `from` is the field (or earlier key) it reads; `concat` joins `parts` (templates such as
    `{{lead.firstName}}` or literal text) with `separator`; `lookup` maps through `table`
    (`default` when absent); `constant` is `value`; `phone_*` format in `region`.
    """

    name: str
    op: DynamicKeyOp
    from_: str | None = Field(default=None, alias="from", max_length=200)
    value: Any = None
    parts: list[str] = Field(default_factory=list, max_length=20)
    separator: str = Field(default="", max_length=20)
    table: dict[str, str] = Field(default_factory=dict, max_length=10_000)
    default: str | None = Field(default=None, max_length=1000)
    region: str = Field(default="US", min_length=2, max_length=2)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                "a key name is letters, digits and underscores, not starting with a digit"
            )
        return value

    @model_validator(mode="after")
    def _needs(self) -> DynamicKey:
        reads = self.op not in ("constant", "concat")
        if reads and not self.from_:
            raise ValueError(f"`{self.op}` needs `from`")
        if self.op == "concat" and not self.parts:
            raise ValueError("`concat` needs `parts`")
        if self.op == "constant" and self.value is None:
            raise ValueError("`constant` needs `value`")
        if self.op == "lookup" and not self.table:
            raise ValueError("`lookup` needs `table`")
        return self


ValidatorType = Literal["phone", "email", "regex", "allowed_values", "range", "external"]


class FieldRule(Model):
    """One field qualification check: a lead whose field fails it is disqualified.

    `phone`: valid for `region`, and of one of `lineTypes` when given (`mobile`,
    `fixed_line`, `voip`, ... where phonenumbers knows it). `email`: syntax, and not a
    disposable domain unless `allowDisposable`. `regex`: `pattern`. `allowed_values`:
    `values`. `range`: `min`/`max`. `external`: POSTs `{field, value, lead}` to `url`, which
    answers `{"result": "pass"|"fail", "reason"}`; `onError` decides when it cannot answer.
    """

    field: str = Field(min_length=1, max_length=200)
    type: ValidatorType
    region: str = Field(default="US", min_length=2, max_length=2)
    line_types: list[str] = Field(default_factory=list, max_length=12)
    allow_disposable: bool = False
    pattern: str | None = Field(default=None, max_length=1000)
    values: list[Any] = Field(default_factory=list, max_length=10_000)
    min: float | None = None
    max: float | None = None
    url: str | None = Field(default=None, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    on_error: Literal["pass", "fail"] = "fail"
    optional: bool = False

    @model_validator(mode="after")
    def _needs(self, info: ValidationInfo) -> FieldRule:
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("`regex` needs `pattern`")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ValueError(f"the pattern does not compile: {error}") from None
        if self.type == "allowed_values" and not self.values:
            raise ValueError("`allowed_values` needs `values`")
        if self.type == "range" and self.min is None and self.max is None:
            raise ValueError("`range` needs `min` or `max`")
        if self.type == "external":
            if not self.url:
                raise ValueError("`external` needs `url`")
            if not stored(info):
                check_webhook_url(self.url, "url")
        return self


class ResponseRules(Model):
    """How a buyer's answer is read. The body is read as JSON (paths such as `status` or
    `$.result.code`), XML (an XPath such as `/response/status` when the body starts with `<`)
    or, for a path of `regex:<pattern>`, by a regular expression (its first group).

    Accepted when the value at `successPath` matches `successMatch` (a regular expression,
    whole value); without a `successPath`, any 2xx is accepted. A value matching
    `duplicateMatch` is a duplicate. `reasonPath` and `pricePath` capture the buyer's reason
    and price (the bid, for a ping).
    """

    success_path: str | None = Field(default=None, max_length=500)
    success_match: str | None = Field(default=None, max_length=500)
    duplicate_match: str | None = Field(default=None, max_length=500)
    reason_path: str | None = Field(default=None, max_length=500)
    price_path: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _patterns(self) -> ResponseRules:
        for name in ("success_match", "duplicate_match"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"{name} does not compile: {error}") from None
        for name in ("success_path", "reason_path", "price_path"):
            path = getattr(self, name)
            if path is not None and path.startswith("regex:"):
                try:
                    re.compile(path[len("regex:") :])
                except re.error as error:
                    raise ValueError(f"{name} does not compile: {error}") from None
        return self


class Caps(Model):
    """Deliveries allowed per hour, day and month, and a budget (in the price's unit),
    counted in `timezone`. A delivery holds its place until the buyer answers; a rejection
    or an error gives it back."""

    hourly: int | None = Field(default=None, ge=0)
    daily: int | None = Field(default=None, ge=0)
    monthly: int | None = Field(default=None, ge=0)
    budget: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=2)
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


def _check_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break")
    return headers


class Ping(Model):
    """The ping of a ping-post endpoint: where the anonymised lead goes and what it holds."""

    url: str = Field(max_length=2048)
    method: Literal["POST", "PUT"] = "POST"
    content_type: Literal["json", "form", "xml"] = "json"
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)
    fields: dict[str, str] = Field(default_factory=dict, max_length=200)
    response_rules: ResponseRules = Field(default_factory=ResponseRules)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return value if stored(info) else check_webhook_url(value, "ping.url")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_headers(value)


class Endpoint(Model):
    """A buyer's endpoint: where the lead is posted, in what shape, and how the answer reads.

    `fields` maps a target path (`applicant.email`, or a plain name) to a template:
    `{{lead.email}}`, `{{key.NAME}}`, or constant text.
    """

    id: str = Field(default="", max_length=64)
    name: str | None = Field(default=None, max_length=200)
    url: str = Field(max_length=2048)
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: Literal["json", "form", "xml"] = "json"
    xml_root: str = Field(default="lead", pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)
    fields: dict[str, str] = Field(default_factory=dict, max_length=500)
    response_rules: ResponseRules = Field(default_factory=ResponseRules)
    required_fields: list[str] = Field(default_factory=list, max_length=200)
    caps: Caps | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    ping: Ping | None = None
    buyer_partner_id: UUID | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return value if stored(info) else check_webhook_url(value, "url")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_headers(value)


class FirstSubmissionAction(Model):
    """Holds a submission in `pending_action` before delivery: a person's review
    (`POST /v1/submissions/{id}/review`), or a webhook whose receiver answers later on the
    signed callback URL it is sent. After `timeoutSeconds` the submission goes on
    (`onTimeout: continue`) or fails (`fail`)."""

    type: Literal["review", "webhook"]
    url: str | None = Field(default=None, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict, max_length=30)
    timeout_seconds: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    on_timeout: Literal["continue", "fail"] = "fail"

    @model_validator(mode="after")
    def _url(self, info: ValidationInfo) -> FirstSubmissionAction:
        if self.type == "webhook":
            if not self.url:
                raise ValueError("a webhook action needs `url`")
            if not stored(info):
                check_webhook_url(self.url, "firstSubmissionAction.url")
        _check_headers(self.headers)
        return self


class CampaignConfig(Model):
    """Everything a campaign says, as created and as snapshotted onto submissions."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    active: bool = True
    mode: Literal["direct", "ping_post"] = "direct"
    endpoints: list[Endpoint] = Field(min_length=1, max_length=MAX_ENDPOINTS)
    required_fields: list[str] = Field(default_factory=list, max_length=200)
    disqualify: list[Condition] = Field(default_factory=list, max_length=MAX_RULES)
    dynamic_keys: list[DynamicKey] = Field(default_factory=list, max_length=MAX_RULES)
    qualification: list[FieldRule] = Field(default_factory=list, max_length=MAX_RULES)
    first_submission_action: FirstSubmissionAction | None = None
    fallback_campaign_ids: list[UUID] = Field(default_factory=list, max_length=20)
    caps: Caps | None = None
    price: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=2)
    dedup_scope: Literal["campaign", "workspace"] = "campaign"
    return_window_days: int = Field(default=7, ge=0, le=365)
    buyer_partner_id: UUID | None = None
    # Ping-post: how long the pings may take, and whether every bidder gets the lead.
    ping_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    shared: bool = False
    max_buyers: int = Field(default=1, ge=1, le=MAX_ENDPOINTS)

    @field_validator("name", "description", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=2000) or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        ids: set[str] = set()
        endpoints = []
        for index, endpoint in enumerate(self.endpoints):
            endpoint_id = endpoint.id or f"e{index + 1}"
            if endpoint_id in ids:
                raise ValueError(f"two endpoints have the id {endpoint_id!r}")
            ids.add(endpoint_id)
            endpoints.append(
                endpoint if endpoint.id else endpoint.model_copy(update={"id": endpoint_id})
            )
        object.__setattr__(self, "endpoints", endpoints)
        names = [key.name for key in self.dynamic_keys]
        if len(names) != len(set(names)):
            raise ValueError("two dynamic keys have the same name")
        if self.mode == "ping_post" and len(self.endpoints) < 1:
            raise ValueError("a ping-post campaign needs endpoints")
        if len(set(self.fallback_campaign_ids)) != len(self.fallback_campaign_ids):
            raise ValueError("a fallback campaign is listed twice")
        return self

    def endpoint(self, endpoint_id: str) -> Endpoint:
        for endpoint in self.endpoints:
            if endpoint.id == endpoint_id:
                return endpoint
        raise KeyError(endpoint_id)

    def snapshot(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Campaign(Aggregate):
    class Created(Aggregate.Created):
        workspace_id: UUID
        config: CampaignConfig
        actor: str

    class Updated(Aggregate.Event):
        config: CampaignConfig
        changes: list[FieldChange]
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, config: CampaignConfig, actor: str) -> None:
        self.workspace_id = workspace_id
        self.config = config
        self.deleted = False

    def update(self, config: CampaignConfig, actor: str) -> bool:
        """Replace the configuration; False when nothing differs."""
        old, new = self.config.snapshot(), config.snapshot()
        changes = [
            FieldChange(field=name, old=old.get(name), new=new.get(name))
            for name in new
            if old.get(name) != new.get(name)
        ]
        if not changes:
            return False
        self._updated(config=config, changes=changes, actor=actor)
        return True

    @event(Updated)
    def _updated(self, config: CampaignConfig, changes: list[FieldChange], actor: str) -> None:
        self.config = config

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


REDACTED = "[redacted]"


def redact_headers(value: Any) -> Any:
    """A campaign's configuration (or anything holding one) with every header value hidden:
    buyers' and validators' API keys travel in headers. For the NATS relay and for readers
    who only view."""
    if isinstance(value, dict):
        return {
            key: (
                dict.fromkeys(item, REDACTED)
                if key == "headers" and isinstance(item, dict)
                else redact_headers(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_headers(item) for item in value]
    return value
