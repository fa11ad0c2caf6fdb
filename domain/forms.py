"""Hosted lead forms: what a form shows, where it sends people, and reading a submission."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from eventsourcing.domain import event
from pydantic import Field, ValidationInfo, field_validator, model_validator

from domain.attribution import ATTRIBUTION_KEYS
from domain.base import Aggregate
from domain.leads import LONG_TEXT, SHORT_TEXT, WireModel, stored
from domain.text import clean_text
from domain.workspaces import clean_name

MAX_FIELDS = 50
MAX_LABEL = 200
MAX_MESSAGE = 2000
MAX_URL = 2048
DEFAULT_THANKS = "Thank you! We have received your details."
# The trap field a person never sees; a bot that fills every input fills it too.
HONEYPOT = "homepage"
# Carries a random token per rendered page so a re-sent POST creates nothing new.
SUBMISSION_TOKEN = "_submission"
# Attribution a host page may pass in the form's URL; kept as hidden inputs.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class InputType(StrEnum):
    TEXT = "text"
    TEXTAREA = "textarea"
    EMAIL = "email"
    TEL = "tel"
    URL = "url"
    NUMBER = "number"
    DATE = "date"


@dataclass(frozen=True)
class CoreSpec:
    """How a core field is shown and which lead field it fills."""

    label: str
    input_type: InputType
    autocomplete: str
    target: str
    max_length: int


CORE_FIELDS: dict[str, CoreSpec] = {
    "name": CoreSpec("Name", InputType.TEXT, "name", "name", SHORT_TEXT),
    "email": CoreSpec("Email", InputType.EMAIL, "email", "email", SHORT_TEXT),
    "phone": CoreSpec("Phone", InputType.TEL, "tel", "phone", SHORT_TEXT),
    "company": CoreSpec("Company", InputType.TEXT, "organization", "company", SHORT_TEXT),
    "title": CoreSpec("Job title", InputType.TEXT, "organization-title", "title", SHORT_TEXT),
    "message": CoreSpec("Message", InputType.TEXTAREA, "off", "description", LONG_TEXT),
}

# Autofill tokens a custom field may declare (WCAG 1.3.5 asks for them on personal data).
AUTOCOMPLETE_TOKENS = frozenset(
    {
        "off",
        "on",
        "honorific-prefix",
        "given-name",
        "additional-name",
        "family-name",
        "honorific-suffix",
        "nickname",
        "street-address",
        "address-line1",
        "address-line2",
        "address-level1",
        "address-level2",
        "country",
        "country-name",
        "postal-code",
        "bday",
        "sex",
        "url",
        "language",
        "tel-national",
    }
)

_RESERVED = frozenset({HONEYPOT, SUBMISSION_TOKEN, *ATTRIBUTION_KEYS})


def _clean_label(value: Any) -> Any:
    return clean_text(value, max_length=MAX_LABEL + 1) if isinstance(value, str) else value


class FormField(WireModel):
    """One input: a core field by its key, or a custom field with a label of its own."""

    key: str
    label: str | None = Field(default=None, min_length=1, max_length=MAX_LABEL)
    required: bool = False
    type: InputType | None = None
    autocomplete: str | None = None

    @field_validator("label", mode="before")
    @classmethod
    def _clean(cls, value: Any) -> Any:
        return _clean_label(value)

    @model_validator(mode="after")
    def _check(self) -> FormField:
        core = CORE_FIELDS.get(self.key)
        if core is not None:
            if self.type is not None and self.type is not core.input_type:
                raise ValueError(f"{self.key} is always shown as {core.input_type}")
            if self.autocomplete is not None and self.autocomplete != core.autocomplete:
                raise ValueError(f"{self.key} always autocompletes as {core.autocomplete}")
            return self
        if not _KEY.fullmatch(self.key) or self.key in _RESERVED:
            raise ValueError(
                f"custom field key {self.key!r} must be a letter then up to 63 letters, digits"
                f" or _, and not one of {', '.join(sorted(_RESERVED))}"
            )
        if not self.label:
            raise ValueError(f"custom field {self.key!r} needs a label")
        if self.autocomplete is not None and self.autocomplete not in AUTOCOMPLETE_TOKENS:
            raise ValueError(f"autocomplete {self.autocomplete!r} is not a known token")
        return self

    @property
    def is_core(self) -> bool:
        return self.key in CORE_FIELDS

    @property
    def shown_label(self) -> str:
        return self.label or CORE_FIELDS[self.key].label

    @property
    def input_type(self) -> InputType:
        core = CORE_FIELDS.get(self.key)
        return core.input_type if core else (self.type or InputType.TEXT)

    @property
    def autofill(self) -> str | None:
        core = CORE_FIELDS.get(self.key)
        return core.autocomplete if core else self.autocomplete

    @property
    def max_length(self) -> int:
        core = CORE_FIELDS.get(self.key)
        if core:
            return core.max_length
        return LONG_TEXT if self.input_type is InputType.TEXTAREA else SHORT_TEXT


def check_redirect_url(value: str) -> str:
    """Only an absolute http(s) URL: never `javascript:` or a scheme-relative `//host`."""
    url = value.strip()
    if len(url) > MAX_URL:
        raise ValueError(f"redirectUrl must be at most {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("redirectUrl must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise ValueError("redirectUrl must be an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        # The page sends people there (and a URL ends up in logs and browser history).
        raise ValueError("redirectUrl must not contain credentials (user:password@)")
    return url


class FormSettings(WireModel):
    """Everything a form's owner decides; replaced whole on every update."""

    name: str
    fields: tuple[FormField, ...] = Field(min_length=1, max_length=MAX_FIELDS)
    thank_you_message: str = DEFAULT_THANKS
    redirect_url: str | None = None
    campaign_id: UUID | None = None
    submit_label: str = "Send"
    active: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return clean_name(value, "form name")

    @field_validator("submit_label")
    @classmethod
    def _submit_label(cls, value: str) -> str:
        return clean_name(value, "submitLabel")[:100]

    @field_validator("thank_you_message")
    @classmethod
    def _thanks(cls, value: str) -> str:
        cleaned = clean_text(value)
        if not cleaned:
            raise ValueError("thankYouMessage must not be empty")
        if len(cleaned) > MAX_MESSAGE:
            raise ValueError(f"thankYouMessage must be at most {MAX_MESSAGE} characters")
        return cleaned

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and stored(info):
            return value  # checked when it was configured (by the rules of that day)
        return check_redirect_url(value) if value is not None and value.strip() else None

    @field_validator("fields")
    @classmethod
    def _unique(cls, value: tuple[FormField, ...]) -> tuple[FormField, ...]:
        keys = [f.key for f in value]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"each field may appear once; repeated: {', '.join(repeated)}")
        return value


class LeadForm(Aggregate):
    """A hosted form of one workspace, reachable by its secret-ish, rotatable key."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        form_key: str
        settings: FormSettings

    class Updated(Aggregate.Event):
        settings: FormSettings

    class KeyRotated(Aggregate.Event):
        form_key: str

    class Deleted(Aggregate.Event):
        pass

    @event(Created)
    def __init__(self, workspace_id: UUID, form_key: str, settings: FormSettings) -> None:
        self.workspace_id = workspace_id
        self.form_key = form_key
        self.settings = settings
        self.deleted = False

    @event(Updated)
    def update(self, settings: FormSettings) -> None:
        self.settings = settings

    @event(KeyRotated)
    def rotate_key(self, form_key: str) -> None:
        self.form_key = form_key

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True

    @property
    def accepts_submissions(self) -> bool:
        return not self.deleted and self.settings.active


@dataclass(frozen=True)
class FormReading:
    """A submission read against the form: the lead data, the echo, and what is wrong."""

    data: dict[str, Any]
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors


def _first(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def read_submission(settings: FormSettings, submitted: Mapping[str, Any]) -> FormReading:
    """Check the submitted values against the form's fields and build the lead's data."""
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    data: dict[str, Any] = {}
    custom: dict[str, str] = {}
    display: dict[str, str] = {}
    for spec in settings.fields:
        raw = _first(submitted.get(spec.key))
        # Newlines are kept for multi-line inputs only; clean_text keeps them, so fold here.
        value = clean_text(raw if spec.input_type is InputType.TEXTAREA else " ".join(raw.split()))
        values[spec.key] = value
        label = spec.shown_label
        if not value:
            if spec.required:
                errors[spec.key] = f"{label} is required"
            continue
        if len(value) > spec.max_length:
            errors[spec.key] = f"{label} must be at most {spec.max_length} characters"
            continue
        if spec.input_type is InputType.NUMBER and not _is_number(value):
            errors[spec.key] = f"{label} must be a number"
            continue
        if spec.is_core:
            data[CORE_FIELDS[spec.key].target] = value
        else:
            custom[spec.key] = value
            display[spec.key] = label
    if custom:
        data["customFields"] = custom
        data["displayNames"] = display
    attribution = {
        k: v for k in ATTRIBUTION_KEYS if (v := clean_text(_first(submitted.get(k)))[:500])
    }
    if attribution:
        data["attribution"] = attribution
    if settings.campaign_id is not None:
        data["campaignId"] = str(settings.campaign_id)
    return FormReading(data, values, errors)


_NUMBER = re.compile(r"[+-]?(?:\d[\d,]*)?(?:\.\d+)?")


def _is_number(value: str) -> bool:
    return any(c.isdigit() for c in value) and bool(_NUMBER.fullmatch(value))


def honeypot_filled(submitted: Mapping[str, Any]) -> bool:
    return bool(_first(submitted.get(HONEYPOT)).strip())
