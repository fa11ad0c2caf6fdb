"""A campaign's dynamic keys: values computed from a lead by a small set of declared operations."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import phonenumbers

from domain.campaigns import DynamicKey
from domain.lead_context import is_blank, render, resolve
from domain.postal_states import state_of_zip

# Oldest age a date of birth may give; anything older is a typo, not a person.
MAX_AGE = 130

_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ].*)?")
_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_YMD_SLASH = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")
_NOT_DIGIT = re.compile(r"[^0-9]")


class Unconvertible(ValueError):
    """A value that the key's operation cannot convert; its message says why."""


def compute_keys(
    keys: Sequence[DynamicKey], context: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The keys' values, computed in order, and an error message per key that failed.

    A key reads `from` (a lead field, or `key.NAME` of an earlier key). A missing source
    value gives None without an error (`default` and `lookup` give their `default`); a value
    the operation cannot convert (a bad date, an invalid phone number) gives None and an
    error naming why. Never raises.
    """
    scope = dict(context)
    given = scope.get("key")
    computed: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
    scope["key"] = computed
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in keys:
        try:
            value = _compute(key, scope)
        except Unconvertible as error:
            value = None
            errors[key.name] = str(error)
        except Exception as error:  # a safety net: one bad key never stops the others
            value = None
            errors[key.name] = f"{key.op} failed: {type(error).__name__}"
        values[key.name] = value
        computed[key.name] = value
    return values, errors


def _compute(key: DynamicKey, scope: Mapping[str, Any]) -> Any:
    if key.op == "constant":
        return key.value
    if key.op == "concat":
        return _concat(key, scope)
    source = resolve(scope, key.from_ or "")
    if is_blank(source):
        return key.default if key.op in ("default", "lookup") else None
    if key.op in ("copy", "default"):
        return source
    if key.op == "lookup":
        return _lookup(key, source)
    if key.op == "age":
        return _age(source, scope)
    return _CONVERSIONS[key.op](key, source)


def _concat(key: DynamicKey, scope: Mapping[str, Any]) -> str | None:
    parts = [render(part, scope) for part in key.parts]
    texts = [_scalar(key, part) for part in parts if not is_blank(part)]
    return key.separator.join(texts) or None


def _scalar(key: DynamicKey, value: Any) -> str:
    """A value as text; a list or an object is no text to transform."""
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        raise Unconvertible(f"{key.from_ or key.name} is a {type(value).__name__}, not text")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(key: DynamicKey, source: Any) -> str | None:
    text = _scalar(key, source)
    if text in key.table:
        return key.table[text]
    folded = text.strip().casefold()
    for entry, value in key.table.items():
        if entry.strip().casefold() == folded:
            return value
    if key.default is None:
        raise Unconvertible(f"{text!r} is not in the table and there is no default")
    return key.default


def _digits(key: DynamicKey, source: Any) -> str:
    digits = _NOT_DIGIT.sub("", _scalar(key, source))
    if not digits:
        raise Unconvertible(f"{key.from_} has no digits")
    return digits


def _phone(number_format: int) -> Callable[[DynamicKey, Any], str]:
    def convert(key: DynamicKey, source: Any) -> str:
        text = _scalar(key, source)
        region = key.region.upper()
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            raise Unconvertible(f"{text!r} is not a phone number") from None
        if not phonenumbers.is_valid_number(number):
            raise Unconvertible(f"{text!r} is not a valid phone number (region {region})")
        return phonenumbers.format_number(number, number_format)

    return convert


def _age(source: Any, scope: Mapping[str, Any]) -> int:
    born = birth_date(source)
    if born is None:
        raise Unconvertible(
            f"{source!r} is not a date of birth (YYYY-MM-DD, MM/DD/YYYY or YYYY/MM/DD)"
        )
    today = _today(scope)
    if born > today:
        raise Unconvertible(f"the date of birth {born.isoformat()} is in the future")
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    if age > MAX_AGE:
        raise Unconvertible(f"the date of birth {born.isoformat()} is over {MAX_AGE} years ago")
    return age


def birth_date(value: Any) -> date | None:
    """A date read as ISO `YYYY-MM-DD` (a time after it is ignored), `MM/DD/YYYY` or
    `YYYY/MM/DD`; None when it is none of them or no real day."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    for pattern, order in ((_ISO_DATE, (0, 1, 2)), (_US_DATE, (2, 0, 1)), (_YMD_SLASH, (0, 1, 2))):
        match = pattern.fullmatch(text)
        if match is not None:
            year, month, day = (int(match[index + 1]) for index in order)
            try:
                return date(year, month, day)
            except ValueError:
                return None
    return None


def _today(scope: Mapping[str, Any]) -> date:
    """The decision's day, as the context's `time` says (in the campaign's time zone)."""
    time = scope.get("time")
    text = time.get("date") if isinstance(time, Mapping) else None
    if isinstance(text, str):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    return datetime.now(UTC).date()


def _state(key: DynamicKey, source: Any) -> str:
    # A ZIP stored as a number has lost its leading zeros (02108 → 2108).
    text = f"{source:05d}" if isinstance(source, int) and not isinstance(source, bool) else None
    text = text or _scalar(key, source)
    state = state_of_zip(text)
    if state is None:
        raise Unconvertible(f"{text!r} is not a US ZIP code")
    return state


_CONVERSIONS: dict[str, Callable[[DynamicKey, Any], Any]] = {
    "upper": lambda key, source: _scalar(key, source).upper(),
    "lower": lambda key, source: _scalar(key, source).lower(),
    "trim": lambda key, source: _scalar(key, source).strip(),
    "digits": _digits,
    "phone_e164": _phone(phonenumbers.PhoneNumberFormat.E164),
    "phone_national": _phone(phonenumbers.PhoneNumberFormat.NATIONAL),
    "state_from_postal": _state,
}
