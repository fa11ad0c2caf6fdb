"""Reading a buyer's answer: values by JSON path, XPath or regex, and the verdict they give."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from xml.etree import ElementTree

from domain.campaigns import ResponseRules

MAX_BODY = 1024 * 1024
MAX_REASON = 500
TRUTHY = frozenset({"true", "1", "yes", "ok", "success", "accepted"})

_JSON_STEP = re.compile(r"\.?([^.\[\]]+)|\[\s*(-?\d+)\s*\]|\[\s*(['\"])(.*?)\3\s*\]")
_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Verdict:
    """What a buyer's answer means for the delivery."""

    outcome: str  # accepted | rejected | duplicate | error
    reason: str | None
    price: Decimal | None


def value_at(body: str, path: str, content_type: str | None = None) -> str | None:
    """The text at `path` in `body`, or None. Never raises.

    `regex:<pattern>`: the first group (else the whole match) of the first match. Otherwise
    a JSON body is read by a dotted path (`status`, `$.result.code`, `errors[0].message`)
    and an XML body (one starting with `<`; no DTDs or entities) by a small XPath:
    `/response/status`, `//status`, `status`, `/response/@code`, `/a/b/text()`. Scalars
    come back as text (JSON `true` → `"true"`); objects and arrays as compact JSON. The
    body itself says how it reads; `content_type` is accepted but not trusted over it.
    """
    try:
        if len(body) > MAX_BODY:
            body = body[:MAX_BODY]
        if path.startswith("regex:"):
            return _by_regex(body, path[len("regex:") :])
        text = body.lstrip("\ufeff \t\r\n")
        if text.startswith("<"):
            return _by_xpath(text, path)
        try:
            document = json.loads(text, parse_float=Decimal)
        except ValueError:
            return None
        return _json_text(_by_json_path(document, path))
    except Exception:
        return None


@lru_cache(maxsize=256)
def _pattern(pattern: str, flags: int = 0) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None


def _by_regex(body: str, pattern: str) -> str | None:
    compiled = _pattern(pattern)
    match = compiled.search(body) if compiled is not None else None
    if match is None:
        return None
    return match.group(1) if compiled is not None and compiled.groups else match.group(0)


def _by_json_path(document: Any, path: str) -> Any:
    path = path.strip()
    if path.startswith("$"):
        path = path[1:]
    position = 0
    value = document
    while position < len(path):
        match = _JSON_STEP.match(path, position)
        if match is None or match.end() == position:
            return None
        position = match.end()
        name, index, quoted = match[1], match[2], match[4]
        if index is not None:
            if not isinstance(value, list):
                return None
            number = int(index)
            if not -len(value) <= number < len(value):
                return None
            value = value[number]
        else:
            key = quoted if quoted is not None else name.strip()
            if isinstance(value, dict):
                if key not in value:
                    return None
                value = value[key]
            elif isinstance(value, list) and key.isdecimal() and int(key) < len(value):
                value = value[int(key)]
            else:
                return None
    return value


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | Decimal):
        return str(value)
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _by_xpath(body: str, path: str) -> str | None:
    if _DTD.search(body):
        return None
    root = ElementTree.fromstring(body)
    for element in root.iter():
        element.tag = _local_name(element.tag)
        for name in [name for name in element.attrib if name.startswith("{")]:
            element.attrib[_local_name(name)] = element.attrib.pop(name)
    path = path.strip()
    attribute = None
    if path.endswith("/text()"):
        path = path[: -len("/text()")]
    head, _, last = path.rpartition("/")
    if last.startswith("@"):
        attribute, path = last[1:], head
    # A document node above the root, so that absolute paths can name the root element.
    document = ElementTree.Element("document")
    document.append(root)
    if path in ("", "/", "."):
        found: ElementTree.Element | None = root
    elif path.startswith("//"):
        found = document.find("." + path)
    elif path.startswith("/"):
        found = document.find(path[1:])
    else:
        found = root.find(path)
        if found is None:
            found = document.find(path)
    if found is None:
        return None
    if attribute is not None:
        return found.get(attribute)
    return "".join(found.itertext()).strip()


def _local_name(tag: Any) -> Any:
    return tag.rpartition("}")[2] if isinstance(tag, str) and tag.startswith("{") else tag


def parse_price(text: str | None) -> Decimal | None:
    """A price from text such as `12.5`, `$1,234.50`, `USD 99`, `1.5e2`; None when it is
    not one (`1.234,50` is ambiguous, so None)."""
    if text is None:
        return None
    cleaned = text.strip()
    if not cleaned or len(cleaned) > 64:
        return None
    sign = ""
    if cleaned[0] in "+-":
        sign, cleaned = cleaned[0], cleaned[1:].strip()
    cleaned = _strip_currency(cleaned)
    if cleaned[:1] in ("+", "-"):
        if sign:
            return None
        sign, cleaned = cleaned[0], cleaned[1:]
    if _GROUPED.fullmatch(cleaned):
        cleaned = cleaned.replace(",", "")
    elif not _PLAIN.fullmatch(cleaned):
        return None
    try:
        price = Decimal(sign + cleaned)
    except InvalidOperation:
        return None
    return price if price.is_finite() else None


def _strip_currency(text: str) -> str:
    """`$1,234.50` → `1,234.50`; `USD 99` → `99`; `99 €` → `99`."""
    text = re.sub(r"^[A-Za-z]{3}\s*|^[^\w\s+\-.,]+\s*", "", text.strip())
    text = re.sub(r"\s*[A-Za-z]{3}$|\s*[^\w\s.,]+$", "", text)
    return text.strip()


def _reason(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text[:MAX_REASON] or None


def _succeeded(rules: ResponseRules, value: str | None) -> bool:
    if value is None:
        return False
    if rules.success_match is None:
        return value.strip().lower() in TRUTHY
    pattern = _pattern(rules.success_match, re.IGNORECASE)
    return pattern is not None and pattern.fullmatch(value.strip()) is not None


def _duplicate(rules: ResponseRules, *values: str | None) -> bool:
    if rules.duplicate_match is None:
        return False
    pattern = _pattern(rules.duplicate_match, re.IGNORECASE)
    return pattern is not None and any(
        value is not None and pattern.search(value) is not None for value in values
    )


def _transport_problem(status_code: int | None, error: str | None) -> str | None:
    if error is not None:
        return _reason(f"transport error: {error}") or "transport error"
    if status_code is None:
        return "no response"
    if not 200 <= status_code <= 599:
        return f"unexpected HTTP {status_code}"
    return None


def read_answer(
    rules: ResponseRules,
    status_code: int | None,
    body: str,
    content_type: str | None = None,
    error: str | None = None,
) -> Verdict:
    """The verdict on a post.

    No answer, a 5xx, 408 or 429 is an `error` (worth another try). Another 4xx is
    `rejected` with the buyer's reason (else `HTTP 4xx`). A 2xx/3xx is `accepted` when
    there is no `successPath` or the value there matches `successMatch` (whole value, case
    ignored; without a pattern: true, 1, yes, ok, success or accepted). Otherwise, or on a
    4xx, a success value or reason matching `duplicateMatch` (anywhere in it, case
    ignored) makes it a `duplicate`; else `rejected`. The price (`pricePath`) comes with
    an acceptance only.
    """
    problem = _transport_problem(status_code, error)
    if problem is not None or status_code is None:
        return Verdict("error", problem, None)
    reason = _reason(value_at(body, rules.reason_path, content_type)) if rules.reason_path else None
    if status_code >= 500 or status_code in (408, 429):
        return Verdict("error", _reason(_joined(f"HTTP {status_code}", reason)), None)
    success = value_at(body, rules.success_path, content_type) if rules.success_path else None
    if status_code >= 400:
        if _duplicate(rules, success, reason):
            return Verdict("duplicate", reason or f"HTTP {status_code}", None)
        return Verdict("rejected", reason or f"HTTP {status_code}", None)
    if rules.success_path is None:
        if _duplicate(rules, reason):
            return Verdict("duplicate", reason, None)
        return Verdict("accepted", reason, _price(rules, body, content_type))
    if _succeeded(rules, success):
        return Verdict("accepted", reason, _price(rules, body, content_type))
    outcome = "duplicate" if _duplicate(rules, success, reason) else "rejected"
    if reason is None:
        reason = (
            _reason(f"success value was {json.dumps(success, ensure_ascii=False)}")
            if success is not None
            else f"no value at {rules.success_path}"[:MAX_REASON]
        )
    return Verdict(outcome, reason, None)


def _joined(first: str, second: str | None) -> str:
    return f"{first}: {second}" if second else first


def _price(rules: ResponseRules, body: str, content_type: str | None) -> Decimal | None:
    if not rules.price_path:
        return None
    return parse_price(value_at(body, rules.price_path, content_type))


def read_bid(
    rules: ResponseRules,
    status_code: int | None,
    body: str,
    content_type: str | None = None,
    error: str | None = None,
) -> tuple[Decimal | None, str | None]:
    """(bid, reason) from a ping's answer: a bid only on a 2xx that passes the success test
    and carries a positive price at `pricePath`; otherwise (None, why not)."""
    problem = _transport_problem(status_code, error)
    if problem is not None or status_code is None:
        return None, problem
    reason = _reason(value_at(body, rules.reason_path, content_type)) if rules.reason_path else None
    if not 200 <= status_code < 300:
        return None, _reason(_joined(f"HTTP {status_code}", reason))
    if rules.success_path is not None:
        success = value_at(body, rules.success_path, content_type)
        if not _succeeded(rules, success):
            if reason is not None:
                return None, reason
            if success is None:
                return None, f"no value at {rules.success_path}"[:MAX_REASON]
            return None, _reason(f"success value was {json.dumps(success, ensure_ascii=False)}")
    if not rules.price_path:
        return None, "no pricePath to read a bid from"
    text = value_at(body, rules.price_path, content_type)
    if text is None:
        return None, reason or f"no bid at {rules.price_path}"[:MAX_REASON]
    bid = parse_price(text)
    if bid is None:
        return None, _reason(f"the bid {json.dumps(text, ensure_ascii=False)} is not a number")
    if bid <= 0:
        return None, reason or f"no bid (price {bid})"
    return bid, reason
