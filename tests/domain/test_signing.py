"""Standard Webhooks signing, form bodies, Retry-After and target checks: pure, no servers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qsl

import orjson
import pytest
from standardwebhooks import Webhook as ReferenceWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from domain.lead_types import new_secret
from domain.signing import (
    SigningError,
    encode_form,
    flatten_form,
    sign,
    signature_header,
    webhook_headers,
)
from gateways.outbound.webhook_sender import blocked_address, encode_body, parse_retry_after

MSG_ID = "msg_0123456789abcdef0123456789abcdef"


def test_signature_matches_the_reference_implementation() -> None:
    secret = new_secret()
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = b'{"name":"Ada","note":"caf\xc3\xa9"}'
    expected = ReferenceWebhook(secret).sign(MSG_ID, stamp, body.decode())
    assert sign(secret, MSG_ID, int(stamp.timestamp()), body) == expected
    # a known vector, so a change in either implementation shows
    fixed = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert sign(fixed, "msg_1", 1700000000, b"hello") == ReferenceWebhook(fixed).sign(
        "msg_1", datetime.fromtimestamp(1700000000, UTC), "hello"
    )


def test_headers_verify_with_the_reference_package_and_either_secret() -> None:
    current, previous = new_secret(), new_secret()
    body = encode_form({"name": "Ada", "customFields": {"budget": 5000}})
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers(
        msg_id=MSG_ID,
        timestamp=now,
        body=body,
        secrets=[current, previous],
        content_type="application/x-www-form-urlencoded",
        custom={"X-Partner-Key": "abc", "Webhook-Id": "forged", "Content-Type": "text/evil"},
    )
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["X-Partner-Key"] == "abc"
    assert "Webhook-Id" not in headers and "Content-Type" not in headers
    assert headers["user-agent"] == "leadlog-webhooks/1"
    theirs = webhook_headers(
        msg_id=MSG_ID,
        timestamp=now,
        body=body,
        secrets=[],
        content_type="application/json",
        custom={"User-Agent": "partner-x"},
    )
    assert theirs["User-Agent"] == "partner-x" and "user-agent" not in theirs
    assert "webhook-signature" not in theirs
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (current, previous):
        ReferenceWebhook(secret).verify(body, headers, json_parse=False)  # raises unless it does
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(new_secret()).verify(body, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        ReferenceWebhook(current).verify(body + b"&x=1", headers, json_parse=False)


def test_one_secret_one_signature_and_unpadded_secrets() -> None:
    secret = new_secret()
    header = signature_header([secret], MSG_ID, 1, b"{}")
    assert " " not in header
    unpadded = secret.rstrip("=")
    assert sign(unpadded, MSG_ID, 1, b"{}") == sign(secret, MSG_ID, 1, b"{}")
    with pytest.raises(SigningError):
        sign("whsec_not base64!", MSG_ID, 1, b"{}")


def test_form_flattening() -> None:
    payload = {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "tags": ["vip", "spring sale"],
        "isDuplicate": False,
        "assignedTo": None,
        "requestId": 42,
        "customFields": {"budget": 5000, "plan": "pro & more", "nested": {"deep": "x"}},
        "items": [{"sku": "A"}, 3],
    }
    assert flatten_form(payload) == [
        ("name", "Ada Lovelace"),
        ("email", "ada@example.com"),
        ("tags", "vip,spring sale"),
        ("isDuplicate", "false"),
        ("assignedTo", ""),
        ("requestId", "42"),
        ("customFields[budget]", "5000"),
        ("customFields[plan]", "pro & more"),
        ("customFields[nested][deep]", "x"),
        ("items", '{"sku":"A"},3'),
    ]
    body = encode_form(payload)
    assert b"customFields%5Bbudget%5D=5000" in body
    assert dict(parse_qsl(body.decode(), keep_blank_values=True)) == dict(flatten_form(payload))


def test_bodies_by_format() -> None:
    content_type, body = encode_body("json", {"name": "Ada", "customFields": {"a": 1}})
    assert content_type == "application/json"
    assert orjson.loads(body) == {"name": "Ada", "customFields": {"a": 1}}
    content_type, body = encode_body("form", {"name": "Ada"})
    assert (content_type, body) == ("application/x-www-form-urlencoded", b"name=Ada")
    with pytest.raises(ValueError, match="unknown webhook format"):
        encode_body("xml", {})


def test_retry_after() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    for bad in (None, "", "soon", "-5", "inf", "nan"):
        assert parse_retry_after(bad, now) is None


@pytest.mark.parametrize(
    ("address", "blocked"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("fc00::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("not an address", True),
        ("8.8.8.8", False),
        ("93.184.216.34", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_blocked_addresses(address: str, blocked: bool) -> None:
    assert blocked_address(address) is blocked
