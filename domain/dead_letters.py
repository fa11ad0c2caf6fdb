"""Dead letters: messages an intake channel could not turn into a lead, kept as evidence."""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate

# Enough to see what a publisher sent; the stream keeps the whole message for its max age.
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 50
MAX_HEADER_NAME = 200
MAX_HEADER_VALUE = 1024
MAX_DETAIL = 4000
# The log is kept forever: credentials a publisher put in a header must not land in it.
_SECRET_HEADER = re.compile(r"authorization|cookie|token|secret|password|api[-_]?key", re.I)
REDACTED = "[redacted]"


class Reason(StrEnum):
    """Why a message became a dead letter (the HTTP channel's error codes where they overlap)."""

    BAD_SUBJECT = "bad_subject"
    UNKNOWN_WORKSPACE = "unknown_workspace"
    BAD_MSG_ID = "bad_msg_id"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    EMPTY_BODY = "empty_body"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    TOO_DEEP = "too_deep"
    TOO_MANY_FIELDS = "too_many_fields"
    VALIDATION_FAILED = "validation_failed"
    NAME_REQUIRED = "name_required"
    UNKNOWN_CUSTOMER = "unknown_customer"
    UNKNOWN_CAMPAIGN = "unknown_campaign"
    # Transient failures that outlasted every retry: the message itself may be fine.
    RETRIES_EXHAUSTED = "retries_exhausted"
    MAX_DELIVERIES = "max_deliveries"


def body_excerpt(body: bytes, limit: int = MAX_BODY_BYTES) -> tuple[str, bool]:
    """The body as text (invalid UTF-8 shown as U+FFFD), cut to `limit` bytes; and whether cut.

    The cut never splits a character: an incomplete sequence at the limit is left out.
    """
    truncated = len(body) > limit
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(body[:limit], final=not truncated), truncated


def _printable(text: str, limit: int) -> str:
    cleaned = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return cleaned[:limit]


def clean_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """At most MAX_HEADERS headers, cut to size, made printable, credentials redacted."""
    if not headers:
        return {}
    return {
        _printable(str(name), MAX_HEADER_NAME): (
            REDACTED
            if _SECRET_HEADER.search(str(name))
            else _printable(str(value), MAX_HEADER_VALUE)
        )
        for name, value in list(headers.items())[:MAX_HEADERS]
    }


def clean_detail(detail: str) -> str:
    return detail[:MAX_DETAIL]


class DeadLetter(Aggregate):
    """One message refused by an intake channel, with everything needed to see why."""

    class Recorded(Aggregate.Created):
        workspace_id: UUID | None
        channel: str
        subject: str
        reason: str
        detail: str
        body: str
        body_truncated: bool
        body_size: int
        headers: dict[str, str]
        msg_id: str | None
        stream: str | None
        stream_seq: int | None
        deliveries: int
        received_at: datetime

    @event(Recorded)
    def __init__(
        self,
        workspace_id: UUID | None,
        channel: str,
        subject: str,
        reason: str,
        detail: str,
        body: str,
        body_truncated: bool,
        body_size: int,
        headers: dict[str, str],
        msg_id: str | None,
        stream: str | None,
        stream_seq: int | None,
        deliveries: int,
        received_at: datetime,
    ) -> None:
        self.workspace_id = workspace_id
        self.channel = channel
        self.subject = subject
        self.reason = reason
        self.detail = detail
        self.body = body
        self.body_truncated = body_truncated
        self.body_size = body_size
        self.headers = headers
        self.msg_id = msg_id
        self.stream = stream
        self.stream_seq = stream_seq
        self.deliveries = deliveries
        self.received_at = received_at
