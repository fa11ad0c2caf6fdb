"""Whether a campaign's or a routing rule's condition holds for a lead's context."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from domain.campaigns import Condition
from domain.lead_context import is_blank, resolve

# Patterns run on at most this much text: a bounded input keeps a pathological pattern's
# backtracking bounded too (`re` has no timeout).
MAX_REGEX_INPUT = 10_000

# Each negative op is the negation of its positive op, so a missing value fails the
# positive op and passes the negative one.
NEGATIONS = {
    "ne": "eq",
    "not_in": "in",
    "not_between": "between",
    "not_contains": "contains",
}

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


def holds(condition: Condition, context: Mapping[str, Any]) -> bool:
    """Whether `condition` holds for the context.

    Text compares case-insensitively (and trimmed); two values that both read as numbers
    (`"42"` and `40`) compare as numbers, two that both read as ISO dates or times as those.
    A list value (such as `tags`) holds when any of its items does (`contains`: when one
    of its items equals the value). A missing value (none, blank, empty) holds for
    `missing`, `ne`, `not_in`, `not_between` and `not_contains` only. Never raises.
    """
    actual = resolve(context, condition.field)
    if condition.op == "exists":
        return not is_blank(actual)
    if condition.op == "missing":
        return is_blank(actual)
    positive = NEGATIONS.get(condition.op)
    if positive is not None:
        return not _positive(positive, actual, condition.value)
    return _positive(condition.op, actual, condition.value)


def _positive(op: str, actual: Any, expected: Any) -> bool:
    if is_blank(actual):
        return False
    try:
        if isinstance(actual, list | tuple | set | frozenset):
            if op == "contains":
                return any(_equal(item, expected) for item in actual)
            if op == "eq" and isinstance(expected, list | tuple):
                return _equal(actual, expected)
            return any(_TESTS[op](item, expected) for item in actual if not is_blank(item))
        if isinstance(actual, Mapping):
            if op == "contains":
                return _text(expected) in {_text(key) for key in actual}
            return op == "eq" and actual == expected
        return _TESTS[op](actual, expected)
    except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError, re.error):
        return False


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return number if number.is_finite() else None
    if isinstance(value, str) and len(value) <= 100 and _NUMBER.fullmatch(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _moment(value: Any) -> date | datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not _DATE.fullmatch(value.strip()):
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().casefold()


def _compare(actual: Any, expected: Any) -> int | None:
    """-1, 0 or 1 as `actual` is below, at or above `expected`; None when they do not
    compare (a number against text, say)."""
    left_number, right_number = _number(actual), _number(expected)
    if left_number is not None and right_number is not None:
        return (left_number > right_number) - (left_number < right_number)
    if left_number is not None or right_number is not None:
        return None
    left_moment, right_moment = _moment(actual), _moment(expected)
    if left_moment is not None and right_moment is not None:
        if isinstance(left_moment, datetime) != isinstance(right_moment, datetime):
            # A date against a time: compare the days.
            left_moment = _day(left_moment)
            right_moment = _day(right_moment)
        return (left_moment > right_moment) - (left_moment < right_moment)
    if left_moment is not None or right_moment is not None:
        return None
    if isinstance(actual, Mapping | list | tuple) or isinstance(expected, Mapping | list | tuple):
        return None
    left, right = _text(actual), _text(expected)
    return (left > right) - (left < right)


def _day(moment: date | datetime) -> date:
    return moment.date() if isinstance(moment, datetime) else moment


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, list | tuple) or isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and isinstance(expected, list | tuple)
            and len(actual) == len(expected)
            and all(_equal(a, b) for a, b in zip(actual, expected, strict=True))
        )
    if isinstance(actual, Mapping) or isinstance(expected, Mapping):
        return bool(actual == expected)
    return _compare(actual, expected) == 0


def _in(actual: Any, expected: Any) -> bool:
    return isinstance(expected, list | tuple) and any(_equal(actual, item) for item in expected)


def _ordered(accept: Callable[[int], bool]) -> Callable[[Any, Any], bool]:
    def test(actual: Any, expected: Any) -> bool:
        order = _compare(actual, expected)
        return order is not None and accept(order)

    return test


def _between(actual: Any, expected: Any) -> bool:
    if not isinstance(expected, list | tuple) or len(expected) != 2:
        return False
    low, high = _compare(actual, expected[0]), _compare(actual, expected[1])
    return low is not None and high is not None and low >= 0 and high <= 0


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, Mapping | list | tuple | set | frozenset) or value is None:
        return None
    return _text(value)


def _contains(actual: Any, expected: Any) -> bool:
    haystack, needle = _scalar_text(actual), _scalar_text(expected)
    return haystack is not None and needle is not None and needle in haystack


def _starts_with(actual: Any, expected: Any) -> bool:
    haystack, needle = _scalar_text(actual), _scalar_text(expected)
    return haystack is not None and needle is not None and haystack.startswith(needle)


def _regex(actual: Any, expected: Any) -> bool:
    if not isinstance(expected, str) or isinstance(actual, Mapping | list | tuple):
        return False
    text = ("true" if actual else "false") if isinstance(actual, bool) else str(actual)
    return re.search(expected, text[:MAX_REGEX_INPUT]) is not None


_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": _equal,
    "in": _in,
    "lt": _ordered(lambda order: order < 0),
    "lte": _ordered(lambda order: order <= 0),
    "gt": _ordered(lambda order: order > 0),
    "gte": _ordered(lambda order: order >= 0),
    "between": _between,
    "contains": _contains,
    "starts_with": _starts_with,
    "regex": _regex,
}


def all_hold(conditions: Sequence[Condition], context: Mapping[str, Any]) -> bool:
    """Whether every condition holds (True for none)."""
    return all(holds(condition, context) for condition in conditions)


def first_holding(conditions: Sequence[Condition], context: Mapping[str, Any]) -> Condition | None:
    """The first condition that holds, e.g. the disqualification that applies."""
    return next((condition for condition in conditions if holds(condition, context)), None)


def describe(condition: Condition) -> str:
    """`lead.state in ["NY", "NJ"]`, `key.age between [18, 65]`, `lead.email missing`."""
    if condition.op in ("exists", "missing"):
        return f"{condition.field} {condition.op}"
    value = json.dumps(condition.value, ensure_ascii=False, default=str)
    return f"{condition.field} {condition.op} {value}"


def reason_of(condition: Condition) -> str:
    """The condition's own reason, else its description."""
    return condition.reason or describe(condition)
