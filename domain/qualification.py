"""Field qualification: the built-in validators and the external validator's request and answer."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import PhoneNumberType

from domain.campaigns import FieldRule
from domain.disposable_domains import is_disposable
from domain.lead_context import is_blank

MAX_REGEX_INPUT = 10_000
MAX_REASON = 500
MAX_ANSWER_BYTES = 64 * 1024

LINE_TYPES: dict[int, str] = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.UNKNOWN: "unknown",
}
LINE_TYPE_NAMES = frozenset(LINE_TYPES.values())
# phonenumbers cannot tell mobile from fixed line in some regions (the US among them):
# such a number satisfies a rule asking for either, and either satisfies the combined type.
_SATISFIES: dict[str, frozenset[str]] = {
    "fixed_line_or_mobile": frozenset({"fixed_line_or_mobile", "mobile", "fixed_line"}),
    "mobile": frozenset({"mobile", "fixed_line_or_mobile"}),
    "fixed_line": frozenset({"fixed_line", "fixed_line_or_mobile"}),
}
_TRUE = frozenset({"pass", "passed", "true", "valid", "ok", "yes"})
_FALSE = frozenset({"fail", "failed", "false", "invalid", "no"})


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one field rule on one lead."""

    field: str
    type: str
    passed: bool
    reason: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "type": self.type,
            "passed": self.passed,
            "reason": self.reason,
            "detail": dict(self.detail),
        }


def check_builtin(rule: FieldRule, value: Any) -> CheckResult:
    """Run a built-in rule on the field's value; `external` rules go through
    `external_request` / `read_external` instead (ValueError here)."""
    if rule.type == "external":
        raise ValueError("an external rule is checked over HTTP, not built in")
    if is_blank(value):
        if rule.optional:
            return _result(rule, True, "absent")
        return _result(rule, False, "missing")
    if rule.type == "phone":
        return _phone(rule, value)
    if rule.type == "email":
        return _email(rule, value)
    if rule.type == "regex":
        return _regex(rule, value)
    if rule.type == "allowed_values":
        return _allowed(rule, value)
    if rule.type == "range":
        return _range(rule, value)
    raise ValueError(f"unknown rule type {rule.type!r}")


def _result(rule: FieldRule, passed: bool, reason: str | None = None, **detail: Any) -> CheckResult:
    return CheckResult(
        field=rule.field, type=rule.type, passed=passed, reason=reason, detail=detail
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _phone(rule: FieldRule, value: Any) -> CheckResult:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return _result(rule, False, "not a phone number")
    try:
        number = phonenumbers.parse(str(value), rule.region.upper())
    except phonenumbers.NumberParseException:
        return _result(rule, False, "not a phone number")
    if not phonenumbers.is_valid_number(number):
        return _result(rule, False, f"not a valid phone number for {rule.region.upper()}")
    line_type = LINE_TYPES.get(phonenumbers.number_type(number), "unknown")
    if rule.line_types:
        accepted = _SATISFIES.get(line_type, frozenset({line_type}))
        if not accepted & {name.strip().lower() for name in rule.line_types}:
            wanted = ", ".join(rule.line_types)
            return _result(
                rule, False, f"line type {line_type} is not one of {wanted}", lineType=line_type
            )
    return _result(rule, True, lineType=line_type)


def _email(rule: FieldRule, value: Any) -> CheckResult:
    if not isinstance(value, str):
        return _result(rule, False, "not an email address")
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as error:
        return _result(rule, False, f"not a valid email address: {error}"[:MAX_REASON])
    domain = checked.ascii_domain.lower()
    if not rule.allow_disposable and is_disposable(domain):
        return _result(rule, False, "disposable email domain", domain=domain)
    return _result(rule, True, domain=domain)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _regex(rule: FieldRule, value: Any) -> CheckResult:
    pattern = _compiled(rule.pattern or "")
    if pattern is None or not rule.pattern:
        return _result(rule, False, "the rule's pattern does not compile")
    text = _text(value)
    # A pattern written for a field is not run over arbitrarily long input.
    if len(text) > MAX_REGEX_INPUT:
        return _result(rule, False, f"longer than {MAX_REGEX_INPUT} characters")
    if pattern.fullmatch(text) is None:
        return _result(rule, False, "does not match the pattern")
    return _result(rule, True)


def number(value: Any) -> Decimal | None:
    """A finite number from a number or numeric text; None otherwise (booleans included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str) and 0 < len(value.strip()) <= 100:
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    return result if result.is_finite() else None


def _same(value: Any, allowed: Any) -> bool:
    left, right = number(value), number(allowed)
    if left is not None and right is not None:
        return left == right
    if isinstance(value, list | dict) or isinstance(allowed, list | dict):
        return bool(value == allowed)
    return _text(value).strip().casefold() == _text(allowed).strip().casefold()


def _allowed(rule: FieldRule, value: Any) -> CheckResult:
    # A multi-select answer qualifies when every choice in it is allowed.
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not any(_same(item, allowed) for allowed in rule.values):
            return _result(rule, False, f"{_text(item)[:100]!r} is not an allowed value")
    return _result(rule, True)


def _range(rule: FieldRule, value: Any) -> CheckResult:
    amount = number(value)
    if amount is None:
        return _result(rule, False, "not a number")
    if rule.min is not None and amount < Decimal(repr(rule.min)):
        return _result(rule, False, f"below the minimum {rule.min:g}")
    if rule.max is not None and amount > Decimal(repr(rule.max)):
        return _result(rule, False, f"above the maximum {rule.max:g}")
    return _result(rule, True)


def external_request(rule: FieldRule, value: Any, lead: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body POSTed to an external validator."""
    return {"field": rule.field, "value": value, "lead": dict(lead)}


def read_external(
    rule: FieldRule, status_code: int | None, body: bytes | str | None, error: str | None
) -> CheckResult:
    """An external validator's answer: `{"result": "pass"|"fail", "reason"}` (or
    `{"valid": bool}` / `{"passed": bool}`). When it cannot answer (transport error,
    non-2xx, an unreadable body) the rule's `onError` decides, and the reason says why."""
    if error is not None or status_code is None:
        return _undecided(rule, f"validator unreachable: {error or 'no response'}")
    if not 200 <= status_code < 300:
        return _undecided(rule, f"validator answered HTTP {status_code}")
    verdict, reason = _verdict(body)
    if verdict is None:
        return _undecided(rule, "validator answer unreadable")
    if not verdict and reason is None:
        reason = "failed the external check"
    return _result(rule, verdict, reason)


def _undecided(rule: FieldRule, why: str) -> CheckResult:
    passed = rule.on_error == "pass"
    reason = f"{why}; onError: {rule.on_error}"
    return _result(rule, passed, reason[:MAX_REASON], onError=rule.on_error)


def _verdict(body: bytes | str | None) -> tuple[bool | None, str | None]:
    if body is None or len(body) > MAX_ANSWER_BYTES:
        return None, None
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(answer, dict):
        return None, None
    verdict: bool | None = None
    for key in ("result", "valid", "passed"):
        given = answer.get(key)
        if isinstance(given, bool):
            verdict = given
        elif isinstance(given, str) and given.strip().lower() in _TRUE | _FALSE:
            verdict = given.strip().lower() in _TRUE
        if verdict is not None:
            break
    reason = answer.get("reason")
    if reason is not None and not isinstance(reason, str):
        reason = json.dumps(reason, default=str)
    return verdict, (reason.strip()[:MAX_REASON] or None) if isinstance(reason, str) else None
