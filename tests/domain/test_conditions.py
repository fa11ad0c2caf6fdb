"""Conditions on a lead's context: every op, type mixing, missing values, descriptions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from domain.campaigns import Condition
from domain.conditions import (
    MAX_REGEX_INPUT,
    all_hold,
    describe,
    first_holding,
    holds,
    reason_of,
)
from domain.lead_context import lead_context

NOW = datetime(2024, 3, 9, 14, 5, tzinfo=UTC)  # a Saturday


def condition(field: str, op: str, value: Any = None, reason: str | None = None) -> Condition:
    return Condition.model_validate({"field": field, "op": op, "value": value, "reason": reason})


@pytest.fixture
def context() -> dict[str, Any]:
    lead = {
        "name": "Ada Lovelace",
        "email": "Ada@Example.com",
        "phone": None,
        "company": "",
        "tags": ["VIP", "returning"],
        "customFields": {
            "state": "NY",
            "age": "42",
            "income": 55000.5,
            "score": 7,
            "optIn": True,
            "dob": "1990-05-17",
            "seen": "2024-03-01T10:00:00+00:00",
            "notes": "Call after 5pm please",
            "empty": [],
            "meta": {"kind": "Web"},
        },
        "answers": {"q1": "Yes", "zip": "02108"},
        "attribution": {"utm_source": "Google"},
    }
    return lead_context(lead, source="api", keys={"age": 42, "tier": None}, now=NOW)


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        # equality: text case-insensitively and trimmed, numbers as numbers
        ("lead.state", "eq", "ny", True),
        ("lead.state", "eq", " NY ", True),
        ("lead.state", "eq", "NJ", False),
        ("lead.state", "ne", "NJ", True),
        ("lead.state", "ne", "Ny", False),
        ("lead.email", "eq", "ada@example.COM", True),
        ("lead.age", "eq", 42, True),
        ("lead.age", "eq", "42.0", True),
        ("lead.age", "eq", 42.5, False),
        ("key.age", "eq", "42", True),
        ("lead.income", "eq", "55000.50", True),
        ("lead.optIn", "eq", True, True),
        ("lead.optIn", "eq", "TRUE", True),
        ("lead.optIn", "eq", 1, False),
        ("lead.zip", "eq", "02108", True),
        ("lead.q1", "eq", "yes", True),
        ("lead.meta", "eq", {"kind": "Web"}, True),
        ("lead.meta", "eq", "Web", False),
        # membership
        ("lead.state", "in", ["nj", "ny"], True),
        ("lead.state", "in", ["NJ", "CT"], False),
        ("lead.state", "not_in", ["NJ", "CT"], True),
        ("lead.state", "not_in", ["ny"], False),
        ("lead.age", "in", [40, 41, 42], True),
        ("lead.age", "in", ["42"], True),
        ("lead.age", "in", [], False),
        ("lead.age", "not_in", [], True),
        # ordering: numbers when both sides are numbers
        ("lead.age", "gt", 40, True),
        ("lead.age", "gt", "40", True),
        ("lead.age", "gt", 42, False),
        ("lead.age", "gte", 42, True),
        ("lead.age", "lt", 100, True),  # "42" < "100" as text would be False
        ("lead.age", "lte", "41.99", False),
        ("lead.score", "lt", "10", True),
        ("lead.income", "gt", 55000, True),
        ("lead.age", "gt", "forty", False),  # a number against text does not compare
        ("lead.state", "gt", 5, False),
        ("lead.state", "lt", "nz", True),  # text against text: alphabetical, any case
        # ordering: dates when both sides are ISO dates
        ("lead.dob", "lt", "2000-01-01", True),
        ("lead.dob", "gt", "1990-05-16", True),
        ("lead.dob", "gte", "1990-05-17", True),
        ("lead.dob", "eq", "1990-05-17T00:00:00", True),  # a date against a time: the day
        ("lead.seen", "gt", "2024-03-01T09:59:59Z", True),
        ("lead.seen", "lt", "2024-03-01T11:00:00+02:00", False),  # 09:00 UTC
        ("lead.seen", "eq", "2024-03-01", True),
        ("lead.seen", "between", ["2024-02-01", "2024-03-31"], True),
        ("lead.dob", "gt", "not a date", False),
        ("lead.dob", "gt", 1990, False),
        ("lead.dob", "lt", "1990-13-45", False),  # no such day: no date
        # ranges, inclusive
        ("lead.age", "between", [18, 65], True),
        ("lead.age", "between", [42, 42], True),
        ("lead.age", "between", ["43", "65"], False),
        ("lead.age", "between", [65, 18], False),
        ("lead.age", "not_between", [18, 40], True),
        ("lead.age", "not_between", [18, 65], False),
        ("key.age", "between", [18.5, 42.0], True),
        ("time.hour", "between", [9, 17], True),
        # text
        ("lead.notes", "contains", "AFTER 5", True),
        ("lead.notes", "contains", "before", False),
        ("lead.notes", "not_contains", "before", True),
        ("lead.notes", "not_contains", "call", False),
        ("lead.notes", "starts_with", "call", True),
        ("lead.notes", "starts_with", "after", False),
        ("lead.score", "starts_with", 7, True),
        ("lead.email", "regex", r"@Example\.com$", True),
        ("lead.email", "regex", r"^ada@", False),  # regex is as written: case-sensitive
        ("lead.email", "regex", r"(?i)^ada@", True),
        ("lead.score", "regex", r"^\d+$", True),
        ("lead.optIn", "regex", "^true$", True),
        # lists: an item holds
        ("lead.tags", "contains", "vip", True),
        ("lead.tags", "contains", "vi", False),  # items are compared whole
        ("lead.tags", "not_contains", "new", True),
        ("lead.tags", "eq", "Returning", True),
        ("lead.tags", "eq", ["vip", "RETURNING"], True),
        ("lead.tags", "eq", ["returning", "vip"], False),
        ("lead.tags", "ne", "new", True),
        ("lead.tags", "in", ["new", "vip"], True),
        ("lead.tags", "not_in", ["new", "vip"], False),
        ("lead.tags", "starts_with", "ret", True),
        ("lead.tags", "regex", "^VIP$", True),
        # objects
        ("lead.meta", "contains", "KIND", True),
        ("lead.meta", "gt", 1, False),
        # source and time
        ("source", "eq", "API", True),
        ("time.weekday", "in", ["saturday", "sunday"], True),
        ("time.weekday", "eq", "Monday", False),
    ],
)
def test_ops(context: dict[str, Any], field: str, op: str, value: Any, expected: bool) -> None:
    assert holds(condition(field, op, value), context) is expected


@pytest.mark.parametrize(
    "field", ["lead.nope", "lead.phone", "lead.company", "key.tier", "lead.empty"]
)
@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "x", False),
        ("ne", "x", True),
        ("in", ["x", ""], False),
        ("not_in", ["x"], True),
        ("lt", 5, False),
        ("lte", 5, False),
        ("gt", 5, False),
        ("gte", 5, False),
        ("between", [0, 100], False),
        ("not_between", [0, 100], True),
        ("contains", "x", False),
        ("not_contains", "x", True),
        ("starts_with", "x", False),
        ("regex", ".*", False),
        ("exists", None, False),
        ("missing", None, True),
    ],
)
def test_a_missing_value_only_passes_the_negative_ops(
    context: dict[str, Any], field: str, op: str, value: Any, expected: bool
) -> None:
    assert holds(condition(field, op, value), context) is expected


def test_exists_and_missing(context: dict[str, Any]) -> None:
    assert holds(condition("lead.email", "exists"), context)
    assert not holds(condition("lead.email", "missing"), context)
    # zero and false are values, not missing
    zero = lead_context({"customFields": {"n": 0, "b": False}})
    assert holds(condition("lead.n", "exists"), zero)
    assert holds(condition("lead.b", "exists"), zero)
    assert holds(condition("lead.n", "eq", 0), zero)
    assert holds(condition("lead.b", "eq", False), zero)


def test_a_regex_reads_at_most_the_first_ten_thousand_characters() -> None:
    long = lead_context({"description": "a" * MAX_REGEX_INPUT + "NEEDLE"})
    assert not holds(condition("lead.description", "regex", "NEEDLE"), long)
    assert holds(condition("lead.description", "contains", "needle"), long)
    # The pattern sees the first 10,000 characters, never the rest of a megabyte.
    huge = lead_context({"description": "a" * 1_000_000 + "b"})
    assert holds(condition("lead.description", "regex", "^a*$"), huge)
    assert not holds(condition("lead.description", "regex", "b"), huge)


def test_odd_numbers_do_not_crash() -> None:
    odd = lead_context(
        {"customFields": {"nan": float("nan"), "inf": float("inf"), "big": "1e999999", "e": "1e3"}}
    )
    assert not holds(condition("lead.nan", "eq", 1), odd)
    assert not holds(condition("lead.inf", "gt", 1), odd)
    assert holds(condition("lead.big", "gt", 10**100), odd)
    assert holds(condition("lead.e", "eq", 1000), odd)


def test_all_hold_and_first_holding(context: dict[str, Any]) -> None:
    ny = condition("lead.state", "eq", "NY", reason="New York is excluded")
    young = condition("key.age", "lt", 18)
    old = condition("key.age", "gt", 40)
    assert all_hold([], context)
    assert all_hold([ny, old], context)
    assert not all_hold([ny, young], context)
    assert first_holding([young, old, ny], context) is old
    assert first_holding([young], context) is None
    assert first_holding([], context) is None


def test_descriptions_and_reasons() -> None:
    states = condition("lead.state", "in", ["NY", "NJ"])
    assert describe(states) == 'lead.state in ["NY", "NJ"]'
    assert describe(condition("key.age", "between", [18, 65])) == "key.age between [18, 65]"
    assert describe(condition("lead.email", "missing")) == "lead.email missing"
    assert describe(condition("lead.q1", "eq", "Sí")) == 'lead.q1 eq "Sí"'
    assert describe(condition("lead.optIn", "eq", True)) == "lead.optIn eq true"
    assert reason_of(states) == 'lead.state in ["NY", "NJ"]'
    assert reason_of(condition("lead.state", "eq", "NY", reason="no NY")) == "no NY"


def test_conditions_that_cannot_be_evaluated_are_refused_when_configured() -> None:
    with pytest.raises(ValidationError, match="list"):
        condition("lead.state", "in", "NY")
    with pytest.raises(ValidationError, match="low, high"):
        condition("lead.age", "between", [1])
    with pytest.raises(ValidationError, match="compile"):
        condition("lead.email", "regex", "(")
    with pytest.raises(ValidationError, match="needs a value"):
        condition("lead.email", "eq")
