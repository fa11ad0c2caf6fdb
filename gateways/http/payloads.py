"""Request bodies and headers as the routes read them; refusals become 4xx `ApiError`s."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from gateways.http.errors import ApiError
from handlers import payloads
from handlers.payloads import BodyRefused


def _api_error(error: BodyRefused) -> ApiError:
    return ApiError(error.status, error.code, error.message, error.details)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object within the limits, or the 4xx saying what is wrong."""
    try:
        return payloads.parse_json_object(body)
    except BodyRefused as error:
        raise _api_error(error) from None


def parse_settings_object(body: bytes, resource: str) -> dict[str, Any]:
    """A JSON object that configures something (a campaign, an automation, a channel):
    as `parse_json_object`, and a 422 naming the field for a NUL character anywhere in it.
    Lead text is cleaned of control characters instead; settings are taken as given, and a
    NUL would reach the views' text and jsonb columns, which cannot hold one."""
    data = parse_json_object(body)
    path = payloads.nul_at(data)
    if path is not None:
        where = ".".join(str(p) for p in path) or "the body"
        raise ApiError(
            422,
            "validation_failed",
            f"the {resource} is not valid: {where} holds a NUL character (\\u0000)",
            [{"location": ["body", *path], "message": "NUL character", "type": "nul"}],
        )
    return data


def check_shape(data: Any) -> None:
    """At most `MAX_DEPTH` levels and `MAX_FIELDS` fields, or the 422 saying which."""
    try:
        payloads.check_shape(data)
    except BodyRefused as error:
        raise _api_error(error) from None


def parse_form(body: bytes) -> dict[str, Any]:
    """An x-www-form-urlencoded body within the limits, or the 4xx saying what is wrong."""
    try:
        return payloads.parse_form(body)
    except BodyRefused as error:
        raise _api_error(error) from None


def validation_error(error: ValidationError, resource: str = "lead") -> ApiError:
    """A pydantic error as the 422 the API gives: the message names the resource (`"the
    form is not valid"`) and the first field at fault, the details list each problem's
    location and what is wrong."""
    problems = [
        {
            # In the wire's names (`redirectUrl`), whichever names the model validated by.
            "location": [to_camel(p) if isinstance(p, str) else p for p in e["loc"]],
            "message": e["msg"],
            "type": e["type"],
        }
        for e in error.errors(include_url=False, include_input=False)
    ]
    message = f"the {resource} is not valid"
    if problems:
        where = ".".join(str(part) for part in problems[0]["location"])
        message += f": {where + ': ' if where else ''}{problems[0]['message']}"
    return ApiError(422, "validation_failed", message, problems)


MAX_IDEMPOTENCY_KEY = 255


def idempotency_key(request: Request) -> str | None:
    key: str | None = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            400,
            "bad_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters",
        )
    return key
