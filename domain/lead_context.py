"""What campaign rules read: a lead, its dynamic keys, its source and the time, by path."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Where `lead.NAME` looks when NAME is not a field of the lead itself, in this order.
LEAD_FALLBACKS = ("customFields", "answers", "attribution")

MAX_PATH = 1000
_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
_STEP = re.compile(r"([^\[\]]+)((?:\[\s*\d+\s*\])*)")
_INDEX = re.compile(r"\[\s*(\d+)\s*\]")


def lead_context(
    lead: Mapping[str, Any],
    *,
    source: str | None = None,
    keys: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    timezone: str = "UTC",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context conditions, dynamic keys and templates read.

    `lead` is the lead as the API shows it (camelCase). `firstName`/`lastName` are added
    when the lead has none: from a custom field, answer or attribution of that name, else
    split from `name` (`Ada King Lovelace` → `Ada` / `King Lovelace`, `Lovelace, Ada` →
    `Ada` / `Lovelace`). `time` is `now` in `timezone` (an unknown zone is a ValueError).
    """
    data = dict(lead)
    first, last = _split_name(data.get("name"))
    for field, derived in (("firstName", first), ("lastName", last)):
        if is_blank(data.get(field)):
            found, value = _lead_field(data, field, fallbacks_only=True)
            data[field] = value if found and not is_blank(value) else derived
    context: dict[str, Any] = {
        "lead": data,
        "key": dict(keys or {}),
        "source": source,
        "time": time_context(now, timezone),
    }
    context.update(extra or {})
    return context


def time_context(now: datetime | None, timezone: str = "UTC") -> dict[str, Any]:
    """`now` (default: the current time; naive means UTC) as seen in `timezone`."""
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(zone)
    return {
        "hour": local.hour,
        "minute": local.minute,
        "weekday": WEEKDAYS[local.weekday()],
        "date": local.date().isoformat(),
        "iso": local.isoformat(),
        "timezone": timezone,
    }


def _split_name(name: Any) -> tuple[str | None, str | None]:
    if not isinstance(name, str) or not name.strip():
        return None, None
    if "," in name:
        last, _, first = name.partition(",")
        if last.strip() and first.strip():
            return " ".join(first.split()), " ".join(last.split())
    words = name.replace(",", " ").split()
    return words[0], " ".join(words[1:]) or None


def is_blank(value: Any) -> bool:
    """None, an empty or whitespace string, an empty list, tuple, set or dict."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | set | frozenset | dict):
        return not value
    return False


def _steps(path: str) -> list[str | int] | None:
    """`lead.answers.q1[0]` → `["lead", "answers", "q1", 0]`; None when it is no path."""
    if len(path) > MAX_PATH:
        return None
    steps: list[str | int] = []
    for part in path.strip().split("."):
        match = _STEP.fullmatch(part)
        if match is None or not match[1].strip():
            return None
        steps.append(match[1].strip())
        steps.extend(int(index) for index in _INDEX.findall(match[2]))
    return steps


def _step(container: Any, step: str | int) -> tuple[bool, Any]:
    """One step down: a mapping key (exact, else the first case-insensitive match) or a
    list index."""
    if isinstance(container, Mapping):
        name = str(step)
        if name in container:
            return True, container[name]
        folded = name.casefold()
        for key, value in container.items():
            if isinstance(key, str) and key.casefold() == folded:
                return True, value
        return False, None
    if isinstance(container, Sequence) and not isinstance(container, str | bytes):
        if isinstance(step, str):
            if not step.isdecimal():
                return False, None
            step = int(step)
        if 0 <= step < len(container):
            return True, container[step]
    return False, None


def _lead_field(
    lead: Mapping[str, Any], name: str, *, fallbacks_only: bool = False
) -> tuple[bool, Any]:
    """A field of the lead; else a custom field, answer or attribution of that name. Exact
    names win over case-insensitive ones."""
    places = [lead.get(place) for place in LEAD_FALLBACKS]
    if not fallbacks_only:
        places.insert(0, lead)
    mappings = [place for place in places if isinstance(place, Mapping)]
    for mapping in mappings:
        if name in mapping:
            return True, mapping[name]
    for mapping in mappings:
        found, value = _step(mapping, name)
        if found:
            return True, value
    return False, None


def resolve(context: Mapping[str, Any], path: str) -> Any:
    """The value at `path` in a context made by `lead_context`, or None when there is none.

    `lead.email`; a bare `email` (a path whose first step is not in the context is read
    under `lead`); `lead.state`, where `state` is not a lead field, looks in
    `customFields`, `answers`, then `attribution`; `key.age`; `source`; `time.hour`;
    `a.b[0]` or `a.b.0` for list items. Never raises.
    """
    if not isinstance(path, str):
        return None
    steps = _steps(path)
    if not steps:
        return None
    head, rest = steps[0], steps[1:]
    if isinstance(head, str) and head != "lead" and head in context:
        value: Any = context[head]
    else:
        value = context.get("lead")
        if head != "lead":
            rest = steps
        if not rest:
            return value
        if not isinstance(value, Mapping) or not isinstance(rest[0], str):
            return None
        found, value = _lead_field(value, rest[0])
        if not found:
            return None
        rest = rest[1:]
    for step in rest:
        found, value = _step(value, step)
        if not found:
            return None
    return value


def placeholders(template: str) -> list[str]:
    """The paths in a template's `{{ path }}` placeholders, each once, in order."""
    if not isinstance(template, str):
        return []
    return list(dict.fromkeys(match.strip() for match in _PLACEHOLDER.findall(template)))


def render(template: str, context: Mapping[str, Any]) -> Any:
    """A template filled from the context.

    Exactly one placeholder (`{{lead.age}}`): the value itself, with its type (None when
    missing). Text with placeholders: the text with each replaced by its value as text (""
    when missing). Text without placeholders: itself.
    """
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole is not None:
        return resolve(context, whole[1])
    return _PLACEHOLDER.sub(lambda match: _text(resolve(context, match[1])), template)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def missing_values(template: str, context: Mapping[str, Any]) -> list[str]:
    """The template's paths whose value is blank (None, empty or whitespace text, an empty
    list or object)."""
    return [path for path in placeholders(template) if is_blank(resolve(context, path))]
