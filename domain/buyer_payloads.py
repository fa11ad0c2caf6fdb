"""Requests to buyers' endpoints: a field mapping rendered into a JSON, form or XML body."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID
from xml.sax.saxutils import escape

from domain.campaigns import Endpoint, Ping
from domain.lead_context import is_blank, missing_values, placeholders, render, resolve

MIME_TYPES = {
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
    "xml": "application/xml",
}
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# An XML element name without a namespace prefix: a letter or `_`, then letters, digits,
# `_`, `-` and `.` (Unicode letters included).
_XML_NAME = re.compile(r"[^\W\d][\w.-]*")
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Query parameters that usually carry a credential; their values are hidden in summaries.
_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential", re.IGNORECASE)


class PayloadError(ValueError):
    """The endpoint's mapping cannot make a request (a bad element name, a header that
    renders to something unsendable)."""


@dataclass(frozen=True)
class BuyerRequest:
    """What is sent to a buyer. `fields` is each target path with the value sent."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    fields: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """For the journey: never the headers (they carry buyers' API keys), and the URL
        with credential-like query values hidden."""
        return {
            "method": self.method,
            "url": redact_url(self.url),
            "contentType": self.content_type,
            "fields": dict(self.fields),
        }


def redact_url(url: str) -> str:
    """The URL with the values of credential-like query parameters (`apiKey`, `token`, ...)
    and any user info replaced by `***`."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    if not any(_SECRET_PARAM.search(name) for name, _ in query) and netloc == parts.netloc:
        return url
    hidden = [(name, "***" if _SECRET_PARAM.search(name) else value) for name, value in query]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(hidden, safe="*")))


def check_targets(fields: Mapping[str, str], content_type: str, xml_root: str = "lead") -> None:
    """Raise PayloadError when the target paths cannot be laid out: an empty segment, a
    path that is both a value and a parent of others, or (XML) a segment that is no
    element name. Independent of any lead, so configuration can be checked up front."""
    if content_type not in MIME_TYPES:
        raise PayloadError(f"unknown content type {content_type!r}")
    if content_type == "xml" and not _XML_NAME.fullmatch(xml_root):
        raise PayloadError(f"the XML root {xml_root!r} is not an element name")
    for target in fields:
        if not target.strip():
            raise PayloadError("a target path is empty")
    if content_type == "form":
        return
    leaves: set[tuple[str, ...]] = set()
    parents: dict[tuple[str, ...], str] = {}
    for target in fields:
        steps = tuple(target.split("."))
        if any(not step for step in steps):
            raise PayloadError(f"target {target!r} has an empty part")
        if content_type == "xml":
            for step in steps:
                if not _XML_NAME.fullmatch(step):
                    raise PayloadError(f"target {target!r}: {step!r} is not an XML element name")
        for depth in range(1, len(steps)):
            parents.setdefault(steps[:depth], target)
        leaves.add(steps)
    for steps in leaves:
        if steps in parents:
            raise PayloadError(
                f"target {'.'.join(steps)!r} is both a value and the parent of {parents[steps]!r}"
            )


def build_request(
    *,
    url: str,
    method: str,
    content_type: str,
    headers: Mapping[str, str],
    fields: Mapping[str, str],
    context: Mapping[str, Any],
    xml_root: str = "lead",
    extra_headers: Mapping[str, str] | None = None,
) -> BuyerRequest:
    """Render each target's template from `context` (blank values are left out) and lay the
    values out as `content_type` (`json`, `form` or `xml`) says.

    JSON nests dotted targets (`applicant.email`) and keeps types; form sends the dotted
    path as the field name; XML nests elements under `xml_root`. Header values are
    templates too. `Content-Type` comes from the content type unless the endpoint's headers
    set one; `extra_headers` (the engine's own) are added last.
    """
    check_targets(fields, content_type, xml_root)
    values: dict[str, Any] = {}
    for target, template in fields.items():
        value = render(template, context)
        if not is_blank(value):
            values[target] = value
    if content_type == "json":
        sent = {target: _json_value(value) for target, value in values.items()}
        body = json.dumps(_nest(sent), ensure_ascii=False, separators=(",", ":")).encode()
    elif content_type == "form":
        sent = _texts(values)
        pairs = [
            (target, item)
            for target, value in sent.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        body = urlencode(pairs).encode("ascii")
    else:
        sent = _texts(values)
        body = (XML_DECLARATION + _xml_element(xml_root, _nest(sent))).encode()
    mime = MIME_TYPES[content_type]
    merged: dict[str, str] = {}
    _set_header(merged, "Content-Type", mime)
    for name, template in headers.items():
        rendered = render(template, context)
        if not is_blank(rendered):
            _set_header(merged, name, _scalar_text(rendered))
    for name, value in (extra_headers or {}).items():
        _set_header(merged, name, value)
    return BuyerRequest(
        method=method.upper(),
        url=url,
        headers=merged,
        body=body,
        content_type=_header(merged, "Content-Type") or mime,
        fields=sent,
    )


def endpoint_request(
    endpoint: Endpoint,
    context: Mapping[str, Any],
    extra_headers: Mapping[str, str] | None = None,
) -> BuyerRequest:
    """The post of the full lead to a buyer's endpoint."""
    return build_request(
        url=endpoint.url,
        method=endpoint.method,
        content_type=endpoint.content_type,
        headers=endpoint.headers,
        fields=endpoint.fields,
        context=context,
        xml_root=endpoint.xml_root,
        extra_headers=extra_headers,
    )


def ping_request(
    ping: Ping,
    context: Mapping[str, Any],
    xml_root: str = "ping",
    extra_headers: Mapping[str, str] | None = None,
) -> BuyerRequest:
    """The ping of a ping-post endpoint: only the fields the ping maps."""
    return build_request(
        url=ping.url,
        method=ping.method,
        content_type=ping.content_type,
        headers=ping.headers,
        fields=ping.fields,
        context=context,
        xml_root=xml_root,
        extra_headers=extra_headers,
    )


def missing_required(required: Sequence[str], context: Mapping[str, Any]) -> list[str]:
    """The required entries that are blank, in order and as written. An entry is a path
    (`email`, `lead.phone`, `key.age`, `lead.customFields.zip`) or a template, which is
    missing when any of its placeholders is blank."""
    missing = []
    for entry in required:
        if placeholders(entry):
            blank = bool(missing_values(entry, context))
        else:
            blank = is_blank(resolve(context, entry))
        if blank:
            missing.append(entry)
    return missing


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise PayloadError(f"{name!r} is not a header name")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise PayloadError(f"header {name!r} renders to a value with a line break")
    if not value.isascii():
        # HTTP clients send header values as ASCII; anything else cannot go out as is.
        raise PayloadError(f"header {name!r} renders to non-ASCII text")
    for existing in [key for key in headers if key.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _json_value(value: Any) -> Any:
    """A value JSON can carry: numbers stay numbers (a Decimal too), times become ISO text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(item) for item in value]
    if isinstance(value, UUID):
        return str(value)
    return str(value)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_json_value(value), ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _form_value(value: Any) -> str | list[str]:
    """Text for a form field or an XML element; a list becomes repeated fields."""
    if isinstance(value, list | tuple):
        return [_scalar_text(item) for item in value if not is_blank(item)]
    return _scalar_text(value)


def _texts(values: Mapping[str, Any]) -> dict[str, Any]:
    texts = {target: _form_value(value) for target, value in values.items()}
    return {target: text for target, text in texts.items() if text != []}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for target, value in flat.items():
        *parents, leaf = target.split(".")
        node = tree
        for step in parents:
            node = node.setdefault(step, {})
        node[leaf] = value
    return tree


def _xml_element(name: str, value: Any) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml_element(child, item) for child, item in value.items())
    elif isinstance(value, list):
        return "".join(_xml_element(name, item) for item in value)
    else:
        inner = escape(_XML_INVALID.sub("", str(value)))
    return f"<{name}>{inner}</{name}>"
