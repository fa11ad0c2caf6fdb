"""The bad-input rules every intake channel shares: a body becomes plain data, or is refused.

A body is UTF-8, a JSON object (or a form) nested at most `MAX_DEPTH` deep with at most
`MAX_FIELDS` fields; anything else is a `BodyRefused` with the status and code the HTTP
API answers and the NATS intake records as the dead letter's reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson


class BodyRefused(ValueError):
    """A body no channel accepts: `status` and `code` say why, as the HTTP API reports it."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


MAX_DEPTH = 32
MAX_FIELDS = 500


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    media = _media_type(content_type)
    return media == "application/json" or media.endswith("+json")


def is_form(content_type: str | None) -> bool:
    return _media_type(content_type) == "application/x-www-form-urlencoded"


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyRefused(
            400, "invalid_utf8", "the body is not valid UTF-8", {"offset": error.start}
        ) from None


def check_shape(data: Any) -> None:
    """At most MAX_DEPTH levels of nesting and MAX_FIELDS object fields in all."""
    fields = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BodyRefused(422, "too_deep", f"the body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            fields += len(value)
            if fields > MAX_FIELDS:
                raise BodyRefused(
                    422, "too_many_fields", f"the body has more than {MAX_FIELDS} fields"
                )
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object within the limits, or a 4xx saying what is wrong."""
    _text(body)
    if not body.strip():
        raise BodyRefused(400, "empty_body", "the body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BodyRefused(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else "a scalar"
        raise BodyRefused(422, "not_an_object", f"the body must be a JSON object, not {kind}")
    check_shape(data)
    return data


def _undecodable(text: str) -> bool:
    """True when `text` holds bytes that percent-decoding left undecoded (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_form(body: bytes) -> dict[str, Any]:
    """An x-www-form-urlencoded body; a repeated key keeps all its values as a list.

    Percent-encoded bytes must be UTF-8 too (`name=%ff%fe` is refused, naming the field).
    """
    text = _text(body)
    try:
        # surrogateescape rather than strict: the same refusal, but it can name the field.
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            max_num_fields=MAX_FIELDS,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except ValueError:
        raise BodyRefused(
            422, "too_many_fields", f"the body has more than {MAX_FIELDS} fields"
        ) from None
    data: dict[str, Any] = {}
    for key, value in pairs:
        if _undecodable(key) or _undecodable(value):
            field = key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise BodyRefused(
                400,
                "invalid_utf8",
                f"the form field {field!r} is not valid UTF-8 once percent-decoded",
                {"field": field},
            )
        if key in data:
            existing = data[key]
            data[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            data[key] = value
    return data


def nul_at(data: Any) -> list[str | int] | None:
    """Where the first NUL character is in `data`'s keys or strings (a path of keys and
    indexes), or None. PostgreSQL's text and jsonb cannot hold one."""
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return [*path, key]
                stack.append((item, [*path, key]))
        elif isinstance(value, list):
            stack.extend((item, [*path, i]) for i, item in enumerate(value))
    return None
