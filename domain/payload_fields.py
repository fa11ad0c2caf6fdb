"""The shared vocabulary of payload mapping: lead fields, answers found, errors, key forms."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_CUSTOM_KEY = 100


class Target(StrEnum):
    """The lead fields an incoming key can be mapped to (first and last name are joined)."""

    NAME = "name"
    FIRST_NAME = "firstName"
    LAST_NAME = "lastName"
    EMAIL = "email"
    PHONE = "phone"
    COMPANY = "company"
    TITLE = "title"
    DESCRIPTION = "description"
    TAGS = "tags"
    CATEGORY = "category"
    PRODUCT = "product"


class UnusablePayload(ValueError):
    """The payload cannot be read as one lead: wrong shape for a pinned format, or a batch."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_NON_WORD = re.compile(r"[\W_]+")


def normalise_key(key: str) -> str:
    """Case- and separator-insensitive form of a key: `E-mail Address` → `emailaddress`."""
    return _NON_WORD.sub("", key.lower())


def camel_case(key: str) -> str:
    """`Roof Type`, `roof_type`, `ROOF_TYPE` → `roofType`; `contact.city` → `contactCity`."""
    words = [w.lower() if w.isupper() else w for w in _NON_WORD.split(key) if w]
    parts: list[str] = []
    for index, word in enumerate(words):
        parts.append(word[0].lower() + word[1:] if index == 0 else word[0].upper() + word[1:])
    return "".join(parts)[:MAX_CUSTOM_KEY]


def scalar_text(value: Any) -> str | None:
    """A single answer as text (booleans as `true`/`false`); None for None, lists and objects."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    return None


@dataclass(frozen=True)
class Entry:
    """One answer found in a payload, before it is given a place in the lead."""

    path: tuple[str, ...]
    value: Any
    display: str
    # Other names a mapping or the detection may know it by (a field id, a question title).
    aliases: tuple[str, ...] = ()
    # A field the source itself declares (a Typeform email answer, a Gravity Forms name input).
    hint: Target | None = None
    custom_key: str | None = None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass
class Extracted:
    """What a format adapter read out of a payload."""

    entries: list[Entry] = field(default_factory=list)
    attribution: dict[str, str] = field(default_factory=dict)
    consent: dict[str, Any] = field(default_factory=dict)
    provider_id: str | None = None
