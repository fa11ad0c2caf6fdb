"""Field qualification: each built-in validator, blank values, and reading external answers."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from domain.campaigns import FieldRule
from domain.disposable_domains import DISPOSABLE_DOMAINS, is_disposable
from domain.qualification import (
    LINE_TYPE_NAMES,
    CheckResult,
    check_builtin,
    external_request,
    read_external,
)


def rule(**fields: Any) -> FieldRule:
    return FieldRule.model_validate({"field": "lead.x", **fields})


def check(value: Any, **fields: Any) -> CheckResult:
    return check_builtin(rule(**fields), value)


def test_result_json_is_camel_case_and_complete() -> None:
    result = check("07400 123456", type="phone", region="GB")
    assert result.json() == {
        "field": "lead.x",
        "type": "phone",
        "passed": True,
        "reason": None,
        "detail": {"lineType": "mobile"},
    }
    assert json.dumps(result.json())


@pytest.mark.parametrize("blank", [None, "", "   ", [], {}])
def test_blank_value_is_missing_unless_optional(blank: Any) -> None:
    for kind in ({"type": "phone"}, {"type": "email"}, {"type": "range", "min": 1}):
        failed = check(blank, **kind)
        assert (failed.passed, failed.reason) == (False, "missing")
        absent = check(blank, optional=True, **kind)
        assert (absent.passed, absent.reason) == (True, "absent")


def test_external_is_not_built_in() -> None:
    with pytest.raises(ValueError, match="external"):
        check("x", type="external", url="https://validator.example/check")


# phone


def test_phone_valid_for_region() -> None:
    assert check("(201) 555-0123", type="phone").passed
    assert check("+1 201 555 0123", type="phone").passed
    assert check(2015550123, type="phone").passed
    assert check("07400 123456", type="phone", region="GB").passed
    # A GB mobile read as a US number is not valid.
    assert not check("07400 123456", type="phone", region="US").passed


@pytest.mark.parametrize("value", ["12", "not a phone", "+1 000 000 0000", True, 3.5, ["x"]])
def test_phone_invalid(value: Any) -> None:
    result = check(value, type="phone")
    assert not result.passed
    assert result.reason


def test_phone_line_types() -> None:
    gb_mobile, gb_fixed, gb_personal = "07400 123456", "020 7946 0018", "+44 70 3123 4567"
    mobile_only = {"type": "phone", "region": "GB", "line_types": ["mobile"]}
    assert check(gb_mobile, **mobile_only).passed
    fixed = check(gb_fixed, **mobile_only)
    assert not fixed.passed
    assert fixed.reason == "line type fixed_line is not one of mobile"
    assert fixed.detail == {"lineType": "fixed_line"}
    assert check(gb_fixed, type="phone", region="GB", line_types=["fixed_line", "voip"]).passed
    assert check(gb_personal, type="phone", region="GB", line_types=["personal_number"]).passed
    assert not check(gb_personal, type="phone", region="GB", line_types=["mobile"]).passed
    # A US toll-free number is neither mobile nor fixed line.
    toll_free = check("+1 800 555 1234", type="phone", line_types=["mobile", "fixed_line"])
    assert not toll_free.passed
    assert toll_free.detail == {"lineType": "toll_free"}
    assert check("+1 800 555 1234", type="phone", line_types=["toll_free"]).passed


def test_fixed_line_or_mobile_satisfies_both() -> None:
    # phonenumbers cannot tell US mobiles from landlines.
    us = "+1 201 555 0123"
    assert check(us, type="phone").detail == {"lineType": "fixed_line_or_mobile"}
    assert check(us, type="phone", line_types=["mobile"]).passed
    assert check(us, type="phone", line_types=["fixed_line"]).passed
    assert check(us, type="phone", line_types=["fixed_line_or_mobile"]).passed
    assert not check(us, type="phone", line_types=["voip"]).passed
    # ...and a plain mobile satisfies the combined type.
    gb_mobile = {"type": "phone", "region": "GB", "line_types": ["fixed_line_or_mobile"]}
    assert check("07400 123456", **gb_mobile).passed


def test_line_type_names() -> None:
    assert {
        "mobile",
        "fixed_line",
        "fixed_line_or_mobile",
        "toll_free",
        "premium_rate",
        "voip",
        "personal_number",
        "pager",
        "uan",
        "voicemail",
        "shared_cost",
        "unknown",
    } == LINE_TYPE_NAMES


# email


def test_email_syntax() -> None:
    good = check(" ada@example.com ", type="email")
    assert good.passed
    assert good.detail == {"domain": "example.com"}
    for bad in ("ada", "ada@", "@example.com", "ada@example", "a..b@example.com", 42):
        result = check(bad, type="email")
        assert not result.passed, bad
        assert result.reason


def test_disposable_email_domains() -> None:
    for address in ("x@mailinator.com", "x@GuerrillaMail.com", "x@inbox.yopmail.fr"):
        result = check(address, type="email")
        assert (result.passed, result.reason) == (False, "disposable email domain"), address
        assert check(address, type="email", allow_disposable=True).passed


def test_disposable_domain_list() -> None:
    assert len(DISPOSABLE_DOMAINS) >= 300
    assert all(domain == domain.lower().strip() and "." in domain for domain in DISPOSABLE_DOMAINS)
    for domain in ("mailinator.com", "guerrillamail.com", "10minutemail.com", "yopmail.com"):
        assert domain in DISPOSABLE_DOMAINS
    assert any(domain.startswith("tempmail") for domain in DISPOSABLE_DOMAINS)
    assert any(domain.startswith("trashmail") for domain in DISPOSABLE_DOMAINS)
    assert is_disposable("a.b.mailinator.com")
    assert is_disposable("MAILINATOR.COM.")
    for real in ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "aol.com"):
        assert not is_disposable(real), real
    assert not is_disposable("com")
    assert not is_disposable("")
    # Only whole labels match: `notyopmail.com` is another domain.
    assert not is_disposable("xmailinator.com")


# regex


def test_regex_matches_the_whole_value() -> None:
    zip_code = {"type": "regex", "pattern": r"\d{5}(-\d{4})?"}
    assert check("12345", **zip_code).passed
    assert check("12345-6789", **zip_code).passed
    assert check(12345, **zip_code).passed
    assert not check("123456", **zip_code).passed
    assert not check("x12345", **zip_code).passed
    assert check(True, type="regex", pattern="true").passed


def test_regex_input_is_capped() -> None:
    result = check("a" * 10_001, type="regex", pattern="a+")
    assert not result.passed
    assert "10000" in (result.reason or "")
    assert check("a" * 10_000, type="regex", pattern="a+").passed


# allowed values


def test_allowed_values_strings_ignore_case() -> None:
    states = {"type": "allowed_values", "values": ["NY", "NJ", "CT"]}
    assert check("ny", **states).passed
    assert check(" Nj ", **states).passed
    result = check("PA", **states)
    assert not result.passed
    assert result.reason == "'PA' is not an allowed value"


def test_allowed_values_numbers_compare_as_numbers() -> None:
    tiers = {"type": "allowed_values", "values": [1, "2", 3.5]}
    assert check(1, **tiers).passed
    assert check("01", **tiers).passed
    assert check(2, **tiers).passed
    assert check(Decimal("3.50"), **tiers).passed
    assert check("3.5", **tiers).passed
    assert not check(4, **tiers).passed
    assert not check("one", **tiers).passed
    # true is not 1.
    assert not check(True, **tiers).passed


def test_allowed_values_multi_select_needs_every_choice_allowed() -> None:
    colours = {"type": "allowed_values", "values": ["red", "green"]}
    assert check(["Red", "green"], **colours).passed
    assert not check(["red", "blue"], **colours).passed


# range


def test_range_inclusive() -> None:
    age = {"type": "range", "min": 18, "max": 65}
    for good in (18, 65, "40", 18.0, Decimal("64.99"), " 30 "):
        assert check(good, **age).passed, good
    below = check(17, **age)
    assert (below.passed, below.reason) == (False, "below the minimum 18")
    above = check("65.01", **age)
    assert (above.passed, above.reason) == (False, "above the maximum 65")
    assert check(10**9, type="range", min=0).passed
    assert check(-5, type="range", max=0).passed


@pytest.mark.parametrize("value", ["abc", True, "nan", "inf", "-Infinity", ["1"], "1,000"])
def test_range_non_numeric_fails(value: Any) -> None:
    result = check(value, type="range", min=0, max=100)
    assert (result.passed, result.reason) == (False, "not a number")


# external


EXTERNAL = {"type": "external", "url": "https://validator.example/check", "field": "lead.email"}


def test_external_request_body() -> None:
    lead = {"email": "ada@example.com", "customFields": {"zip": "10001"}}
    body = external_request(rule(**EXTERNAL), "ada@example.com", lead)
    assert body == {"field": "lead.email", "value": "ada@example.com", "lead": lead}
    assert body["lead"] is not lead


@pytest.mark.parametrize(
    ("answer", "passed", "reason"),
    [
        ({"result": "pass"}, True, None),
        ({"result": "PASS", "reason": "looks fine"}, True, "looks fine"),
        ({"result": "fail", "reason": "known fraud"}, False, "known fraud"),
        ({"result": "fail"}, False, "failed the external check"),
        ({"valid": True}, True, None),
        ({"valid": False, "reason": "bad"}, False, "bad"),
        ({"passed": False}, False, "failed the external check"),
        ({"passed": True}, True, None),
    ],
)
def test_external_answers(answer: dict[str, Any], passed: bool, reason: str | None) -> None:
    for body in (json.dumps(answer), json.dumps(answer).encode()):
        result = read_external(rule(**EXTERNAL), 200, body, None)
        assert (result.passed, result.reason) == (passed, reason)
        assert result.field == "lead.email"
        assert result.type == "external"


def test_external_reason_is_cut() -> None:
    answer = json.dumps({"result": "fail", "reason": "x" * 2000})
    result = read_external(rule(**EXTERNAL), 200, answer, None)
    assert result.reason == "x" * 500


@pytest.mark.parametrize(
    ("status", "body", "error", "named"),
    [
        (None, None, "connection refused", "connection refused"),
        (None, None, None, "no response"),
        (500, '{"result": "pass"}', None, "HTTP 500"),
        (404, "", None, "HTTP 404"),
        (200, "not json", None, "unreadable"),
        (200, "[1, 2]", None, "unreadable"),
        (200, '{"result": "maybe"}', None, "unreadable"),
        (200, '{"reason": "no verdict"}', None, "unreadable"),
        (200, None, None, "unreadable"),
        (200, b"\xff\xfe\x00", None, "unreadable"),
    ],
)
def test_external_cannot_answer_follows_on_error(
    status: int | None, body: str | bytes | None, error: str | None, named: str
) -> None:
    failing = read_external(rule(**EXTERNAL), status, body, error)
    assert not failing.passed
    assert named in (failing.reason or "")
    assert failing.detail == {"onError": "fail"}
    passing = read_external(rule(**EXTERNAL, on_error="pass"), status, body, error)
    assert passing.passed
    assert named in (passing.reason or "")
    assert passing.detail == {"onError": "pass"}
