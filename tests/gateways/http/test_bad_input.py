"""A corpus of hostile bodies and paths against every entry point that needs no token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateways.bootstrap import Engine

# (name, content type, body): what a broken or hostile client sends.
CORPUS: list[tuple[str, str, bytes]] = [
    ("invalid UTF-8", "application/json", b'{"name": "\xff\xfe"}'),
    ("invalid UTF-8 form", "application/x-www-form-urlencoded", b"name=%ff%fe"),
    ("raw invalid UTF-8 form", "application/x-www-form-urlencoded", b"name=\xff\xfe"),
    ("NUL in a string", "application/json", b'{"name": "a\\u0000b", "email": "x\\u0000@y.z"}'),
    ("raw NUL", "application/json", b'{"name": "a\x00b"}'),
    ("NUL in a form", "application/x-www-form-urlencoded", b"name=a%00b&email=%00"),
    ("NUL in a key", "application/json", b'{"na\\u0000me": "x"}'),
    ("huge integer", "application/json", b'{"name": "x", "phone": ' + b"9" * 5000 + b"}"),
    ("huge float", "application/json", b'{"name": "x", "age": 1e400}'),
    ("negative zero and NaN", "application/json", b'{"name": "x", "a": -0.0, "b": NaN}'),
    ("deep array", "application/json", b'{"name": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("deep object", "application/json", b'{"a":' * 2000 + b"1" + b"}" * 2000),
    (
        "many fields",
        "application/json",
        b"{" + b",".join(b'"k%d": 1' % i for i in range(600)) + b"}",
    ),
    ("array", "application/json", b'[{"name": "x"}]'),
    ("scalar", "application/json", b'"x"'),
    ("null", "application/json", b"null"),
    ("empty", "application/json", b""),
    ("truncated", "application/json", b'{"name": "x'),
    ("plain text", "text/plain", b"name=x"),
    ("xml", "application/xml", b"<lead><name>x</name></lead>"),
    ("multipart", "multipart/form-data; boundary=zz", b"--zz\r\n\r\nx\r\n--zz--\r\n"),
    ("no content type", "", b'{"name": "x"}'),
    ("content type with NUL", "application/json\x00", b'{"name": "x"}'),
    ("huge body", "application/json", b'{"name": "' + b"x" * 400_000 + b'"}'),
    ("long strings", "application/json", b'{"name": "' + b"x" * 100_000 + b'", "email": "a"}'),
    ("control characters", "application/json", b'{"name": "\\u0007\\u001b[31mx\\u202e"}'),
    ("surrogates", "application/json", b'{"name": "\\ud800\\udfff\\ud800"}'),
]


def _ids(items: list[tuple[str, str, bytes]]) -> list[str]:
    return [name for name, _, _ in items]


async def _entry_points(client: httpx.AsyncClient, ws: dict[str, Any]) -> list[str]:
    hook = await client.post("/v1/lead-webhooks", json={"name": "Corpus"}, headers=ws["h"])
    form = await client.post(
        "/v1/lead-forms",
        json={"name": "Corpus", "fields": [{"key": "name"}, {"key": "email"}]},
        headers=ws["h"],
    )
    return [
        f"/webhooks/leads/{hook.json()['apiKey']}",
        f"/forms/{form.json()['formKey']}",
        "/api/v1/leads/submit",
    ]


@pytest.mark.parametrize(("name", "content_type", "body"), CORPUS, ids=_ids(CORPUS))
async def test_hostile_bodies_get_a_4xx_and_write_nothing(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    engine: Engine,
    name: str,
    content_type: str,
    body: bytes,
) -> None:
    routes = await _entry_points(client, ws)
    head = await engine.log.max_position()
    statuses = []
    for route in routes:
        headers = {"Content-Type": content_type} if content_type else {}
        if route.startswith("/api/"):
            headers |= ws["h"]
        response = await client.post(route, content=body, headers=headers)
        assert response.status_code < 500, (name, route, response.text)
        statuses.append(response.status_code)
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            error = response.json()["error"]
            assert error["code"] and error["message"], (name, route, error)
    # A body some channel accepted (a lead with a long name, say) is written; one that every
    # channel refused leaves the log as it was.
    if all(status >= 400 for status in statuses):
        assert await engine.log.max_position() == head, name


HOSTILE_SEGMENTS = [
    "%00",
    "a%00b",
    "%ff%fe",
    "x" * 5000,
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e",
    "\u202e",
    "%F0%9F%92%A9",
    "00000000-0000-0000-0000-000000000000",
    "-1",
    "9" * 40,
]


@pytest.mark.parametrize("segment", HOSTILE_SEGMENTS)
async def test_hostile_keys_in_public_paths(
    client: httpx.AsyncClient, ws: dict[str, Any], segment: str
) -> None:
    for method, route in (
        ("POST", f"/webhooks/leads/{segment}"),
        ("GET", f"/forms/{segment}"),
        ("POST", f"/forms/{segment}"),
        ("GET", f"/healthz?x={segment}"),
        ("GET", f"/metrics?x={segment}"),
        ("GET", f"/v1/leads/{segment}"),
    ):
        response = await client.request(
            method, route, content=b'{"name": "x"}', headers={"Content-Type": "application/json"}
        )
        assert response.status_code < 500, (method, route, response.text)
