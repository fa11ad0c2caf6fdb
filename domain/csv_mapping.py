"""CSV columns to lead fields: header synonyms, explicit mappings, and one row to lead data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from domain.attribution import ATTRIBUTION_KEYS
from domain.leads import MAX_CUSTOM_FIELDS
from domain.text import clean_text

MAX_COLUMNS = MAX_CUSTOM_FIELDS
MAX_HEADER_LENGTH = 200


class MappingError(ValueError):
    """A mapping or header that cannot be used; the import is refused before any row."""


class RowError(ValueError):
    """One row that cannot become a lead; the import goes on without it."""


class Kind(StrEnum):
    FIELD = "field"  # a core LeadDetails field, by its wire name
    FIRST_NAME = "firstName"
    LAST_NAME = "lastName"
    ATTRIBUTION = "attribution"
    CUSTOM = "custom"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Target:
    """Where one column's values go."""

    kind: Kind
    key: str = ""
    display_name: str = ""


_CORE = ("name", "email", "phone", "company", "title", "description", "tags", "category", "product")

# Header spellings (lower-cased, without spaces or punctuation) and the field they fill.
_SYNONYMS: dict[str, Target] = {}


def _synonyms(target: Target, *spellings: str) -> None:
    for spelling in spellings:
        _SYNONYMS[_normal(spelling)] = target


def _normal(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


_synonyms(
    Target(Kind.FIELD, "name"),
    "name",
    "full name",
    "fullname",
    "contact name",
    "lead name",
    "your name",
    "customer name",
)
_synonyms(
    Target(Kind.FIRST_NAME),
    "first name",
    "firstname",
    "fname",
    "given name",
    "forename",
)
_synonyms(
    Target(Kind.LAST_NAME),
    "last name",
    "lastname",
    "lname",
    "surname",
    "family name",
)
_synonyms(
    Target(Kind.FIELD, "email"),
    "email",
    "e-mail",
    "email address",
    "e-mail address",
    "mail",
    "work email",
    "business email",
    "contact email",
    "email1",
)
_synonyms(
    Target(Kind.FIELD, "phone"),
    "phone",
    "phone number",
    "phonenumber",
    "telephone",
    "telephone number",
    "tel",
    "mobile",
    "mobile phone",
    "mobile number",
    "cell",
    "cell phone",
    "cellphone",
    "phone1",
    "contact number",
    "work phone",
)
_synonyms(
    Target(Kind.FIELD, "company"),
    "company",
    "company name",
    "organization",
    "organisation",
    "organization name",
    "organisation name",
    "business",
    "business name",
    "employer",
)
_synonyms(
    Target(Kind.FIELD, "title"),
    "title",
    "job title",
    "jobtitle",
    "position",
    "role",
    "job role",
    "designation",
)
_synonyms(
    Target(Kind.FIELD, "description"),
    "description",
    "message",
    "notes",
    "note",
    "comments",
    "comment",
    "details",
)
_synonyms(Target(Kind.FIELD, "tags"), "tags", "tag", "labels")
_synonyms(Target(Kind.FIELD, "category"), "category", "lead category")
_synonyms(Target(Kind.FIELD, "product"), "product", "product name")
for _key in ATTRIBUTION_KEYS:
    _synonyms(Target(Kind.ATTRIBUTION, _key), _key)


def auto_target(header: str) -> Target | None:
    """The field a header names by one of its common spellings, or None."""
    return _SYNONYMS.get(_normal(header))


def _explicit_target(spec: str) -> Target:
    value = spec.strip()
    lowered = value.lower()
    if lowered in {"ignore", "skip", "-"}:
        return Target(Kind.IGNORE)
    for prefix in ("custom:", "customfields.", "custom."):
        if lowered.startswith(prefix):
            key = value[len(prefix) :].strip()
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", key):
                raise MappingError(f"custom field key {key!r} must be a letter then letters/digits")
            return Target(Kind.CUSTOM, key)
    normal = _normal(value)
    for core in _CORE:
        if normal == core:
            return Target(Kind.FIELD, core)
    if normal == "message":
        return Target(Kind.FIELD, "description")
    if normal == "firstname":
        return Target(Kind.FIRST_NAME)
    if normal == "lastname":
        return Target(Kind.LAST_NAME)
    attribution = _SYNONYMS.get(normal)
    if attribution is not None and attribution.kind is Kind.ATTRIBUTION:
        return attribution
    known = ", ".join([*_CORE, "message", "firstName", "lastName", "custom:<key>", "ignore"])
    raise MappingError(f"unknown field {value!r}; use one of {known}")


def parse_mapping(text: str) -> dict[str, Target]:
    """`CSV Column=field,Other Column=email` → column → target (the last `=` splits)."""
    mapping: dict[str, Target] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        column, sep, spec = part.rpartition("=")
        column = column.strip()
        if not sep or not column or not spec.strip():
            raise MappingError(f"{part.strip()!r} is not of the form 'CSV Column=field'")
        if column in mapping:
            raise MappingError(f"column {column!r} is mapped twice")
        mapping[column] = _explicit_target(spec)
    return mapping


def camel_key(header: str) -> str:
    """`Roof type (m²)` → `roofTypeM`: the custom field key for a column header."""
    words = re.findall(r"[A-Za-z0-9]+", header)
    if not words:
        return ""
    first, *rest = words
    key = first[0].lower() + first[1:] + "".join(w[0].upper() + w[1:] for w in rest)
    return key if key[0].isalpha() else f"f{key}"


def _looks_like_data(cell: str) -> bool:
    digits = sum(c.isdigit() for c in cell)
    return "@" in cell or (len(cell) >= 6 and digits >= len(cell) * 0.6)


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    target: Target


@dataclass(frozen=True)
class ColumnPlan:
    """What each column of a file fills, decided once from its header."""

    columns: tuple[Column, ...]
    width: int

    def describe(self) -> dict[str, str]:
        """Header → where it goes, for the import report."""
        described: dict[str, str] = {}
        for column in self.columns:
            target = column.target
            name = {
                Kind.FIELD: target.key,
                Kind.FIRST_NAME: "firstName",
                Kind.LAST_NAME: "lastName",
                Kind.ATTRIBUTION: f"attribution.{target.key}",
                Kind.CUSTOM: f"customFields.{target.key}",
                Kind.IGNORE: "ignored",
            }[target.kind]
            described[column.header or f"(column {column.index + 1})"] = name
        return described


def plan_columns(
    header: Sequence[str], overrides: Mapping[str, Target] | None = None
) -> ColumnPlan:
    """Decide each column's target: explicit mapping, else a synonym, else a custom field.

    A core field is filled by its first column only; a later column of the same meaning
    is kept as a custom field rather than silently dropped.
    """
    overrides = dict(overrides or {})
    cleaned = [clean_text(h, max_length=MAX_HEADER_LENGTH) for h in header]
    if not any(cleaned):
        raise MappingError("the first row must be a header naming the columns")
    if len(cleaned) > MAX_COLUMNS:
        raise MappingError(f"the file has {len(cleaned)} columns; at most {MAX_COLUMNS}")
    if any(_looks_like_data(h) for h in cleaned if h not in overrides):
        raise MappingError("the first row looks like data; the file needs a header row first")
    by_lower = {h.lower(): h for h in reversed(cleaned) if h}
    resolved: dict[str, Target] = {}
    for column, target in overrides.items():
        actual = column if column in cleaned else by_lower.get(column.lower())
        if actual is None:
            raise MappingError(f"the mapping names column {column!r}, which the header lacks")
        resolved[actual] = target
    taken: set[tuple[Kind, str]] = set()
    custom_keys: set[str] = set()
    columns: list[Column] = []
    for index, name in enumerate(cleaned):
        target = resolved.get(name) or auto_target(name) or Target(Kind.CUSTOM)
        if target.kind is not Kind.CUSTOM and target.kind is not Kind.IGNORE:
            if (target.kind, target.key) in taken:
                target = Target(Kind.CUSTOM)
            else:
                taken.add((target.kind, target.key))
        if target.kind is Kind.CUSTOM:
            key = target.key or camel_key(name) or f"column{index + 1}"
            base, suffix = key, 2
            while key in custom_keys:
                key, suffix = f"{base}{suffix}", suffix + 1
            custom_keys.add(key)
            target = Target(Kind.CUSTOM, key, name or key)
        columns.append(Column(index, name, target))
    return ColumnPlan(tuple(columns), len(cleaned))


def row_data(plan: ColumnPlan, cells: Sequence[str]) -> dict[str, Any]:
    """One row as LeadDetails wire data; empty cells are left out."""
    if len(cells) > plan.width and any(c.strip() for c in cells[plan.width :]):
        raise RowError(f"the row has {len(cells)} cells but the header has {plan.width}")
    data: dict[str, Any] = {}
    custom: dict[str, str] = {}
    display: dict[str, str] = {}
    attribution: dict[str, str] = {}
    first = last = ""
    for column in plan.columns:
        if column.index >= len(cells):
            break
        value = cells[column.index].strip()
        if not value:
            continue
        target = column.target
        if target.kind is Kind.FIELD:
            data[target.key] = value
        elif target.kind is Kind.FIRST_NAME:
            first = value
        elif target.kind is Kind.LAST_NAME:
            last = value
        elif target.kind is Kind.ATTRIBUTION:
            attribution[target.key] = value
        elif target.kind is Kind.CUSTOM:
            custom[target.key] = value
            display[target.key] = target.display_name
    if not data.get("name") and (first or last):
        data["name"] = f"{first} {last}".strip()
    if custom:
        data["customFields"] = custom
        data["displayNames"] = display
    if attribution:
        data["attribution"] = attribution
    return data
