"""Standard Webhooks signatures and form-encoded webhook bodies: pure functions, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote_plus
from uuid import UUID

from domain.lead_types import SECRET_PREFIX

FORM = "form"
JSON = "json"
CONTENT_TYPES = {FORM: "application/x-www-form-urlencoded", JSON: "application/json"}
# The headers leadlog sets itself; an action's custom headers never replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "webhook-id", "webhook-timestamp",
     "webhook-signature"}
)  # fmt: skip


class SigningError(ValueError):
    """A secret that is not a Standard Webhooks secret (`whsec_` + base64)."""


@lru_cache(maxsize=1024)
def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as in the spec)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError as error:
        raise SigningError("a signing secret is `whsec_` followed by base64") from error


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`, per Standard Webhooks."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,...` per secret, space-separated: during a rotation's overlap receivers
    verify with either the new or the old secret."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def webhook_headers(
    *,
    msg_id: str,
    timestamp: int,
    body: bytes,
    secrets: Sequence[str],
    content_type: str,
    custom: Mapping[str, str] | None = None,
    user_agent: str = "leadlog-webhooks/1",
) -> dict[str, str]:
    """The request headers of one attempt: the action's own headers first (its
    `User-Agent` replaces ours), then `content-type`, `webhook-id`, `webhook-timestamp` and
    `webhook-signature` (when there is a secret), which the action's cannot replace."""
    headers = {k: v for k, v in (custom or {}).items() if k.lower() not in RESERVED_HEADERS}
    headers["content-type"] = content_type
    if not any(k.lower() == "user-agent" for k in headers):
        headers["user-agent"] = user_agent
    headers["webhook-id"] = msg_id
    headers["webhook-timestamp"] = str(timestamp)
    if secrets:
        headers["webhook-signature"] = signature_header(secrets, msg_id, timestamp, body)
    return headers


# ---- bodies --------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict | list | tuple):
        # A structure inside a list has no form shape of its own: it goes as JSON text.
        return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def flatten_form(payload: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Form fields of a payload: nested objects as `parent[key]` (so `customFields.budget`
    is `customFields[budget]`, as PHP and Rails read it), lists comma-joined into one field
    (`tags=a,b`: one value per key, whatever the receiver's form parser keeps), `None` as
    an empty value, booleans as `true` / `false`. Receivers that need exact structure use
    the `json` format."""
    fields: list[tuple[str, str]] = []
    for key, value in payload.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, str):
            fields.append((name, value))
        elif isinstance(value, Mapping):
            fields.extend(flatten_form(value, name))
        elif isinstance(value, list | tuple):
            fields.append((name, ",".join(_scalar(v) for v in value)))
        else:
            fields.append((name, _scalar(value)))
    return fields


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")
# Field names repeat from one delivery to the next (`customFields[budget]`...).
_quote_name = lru_cache(maxsize=4096)(quote_plus)


def encode_form(payload: Mapping[str, Any]) -> bytes:
    return "&".join(
        [
            _quote_name(k) + "=" + (v if _UNRESERVED.match(v) else quote_plus(v))
            for k, v in flatten_form(payload)
        ]
    ).encode()
