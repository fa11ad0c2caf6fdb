"""The ingest fast path answers exactly as the FastAPI route behind the router does.

Each request is sent twice, as raw ASGI: once to the app (where `POST /webhooks/leads/<key>`
takes the fast path) and once to the app's FastAPI stack alone (router, route, dependency
machinery: the way every request went before). Status, headers, body, the exception let out
and the access log line must be the same; a spy on that stack proves the fast path served
the first and the stack was never reached.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from gateways.bootstrap import Engine
from gateways.http.app import create_app
from gateways.http.fast_path import FastPath, ingest_key
from gateways.http.inbound_webhooks import receive_lead
from tests.conftest import OPERATOR, bearer
from tests.domain.test_mapping import GOOGLE_LEAD, TYPEFORM

JSON = ("content-type", "application/json")
FORM = ("content-type", "application/x-www-form-urlencoded")
LIMIT = 64 * 1024  # the test settings' max_body_bytes


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    error: BaseException | None
    logged: list[dict[str, Any]]

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k == name.encode()]
        return found[0].decode("latin-1") if found else None

    def json(self) -> Any:
        return orjson.loads(self.body)

    def same_as(self, other: Answer) -> None:
        assert (self.status, self.headers, self.body) == (other.status, other.headers, other.body)
        assert type(self.error) is type(other.error)
        assert [_timeless(line) for line in self.logged] == [
            _timeless(line) for line in other.logged
        ]


def _timeless(line: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != "duration_ms"}


ASGI = Any


@dataclass
class Paths:
    app: ASGI
    stack: ASGI
    reached: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def paths(engine: Engine) -> Paths:
    app = create_app(engine)
    built = app.build_middleware_stack()
    assert isinstance(built, FastPath)
    app.middleware_stack = built
    full = built.app
    found = Paths(app=app, stack=None)

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        found.reached.append((scope["method"], scope["path"]))
        await full(scope, receive, send)

    async def stack_alone(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app  # what Starlette's entry sets before its middleware stack
        await full(scope, receive, send)

    built.app = spy
    found.stack = stack_alone
    return found


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO):
        yield caplog


async def call(
    app: ASGI,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Sequence[bytes] = b"",
    *,
    caplog: pytest.LogCaptureFixture,
    extra: Scope | None = None,
) -> Answer:
    """One request as a server hands it over: chunks of body, then a disconnect."""
    chunks = [body] if isinstance(body, bytes) else list(body)
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("leadlog.test", 80),
        **(extra or {}),
    }

    async def receive() -> Message:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    caplog.clear()
    error: BaseException | None = None
    try:
        await app(scope, receive, send)
    except Exception as raised:
        error = raised
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    logged = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "leadlog.http" and '"request"' in r.getMessage()
    ]
    return Answer(start["status"], list(start["headers"]), body_out, error, logged)


async def both(
    paths: Paths,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Sequence[bytes] = b"",
    *,
    fast: bool = True,
) -> Answer:
    """The app's answer, checked against the FastAPI stack's; `fast`: whether the app must
    have served it without reaching that stack."""
    if not any(name == "x-request-id" for name, _ in headers):
        headers = [*headers, ("x-request-id", "same-id")]
    before = len(paths.reached)
    served = await call(paths.app, method, path, headers, body, caplog=caplog)
    assert (len(paths.reached) == before) is fast, paths.reached[before:]
    routed = await call(paths.stack, method, path, headers, body, caplog=caplog)
    served.same_as(routed)
    assert len(served.logged) == 1
    return served


@pytest.fixture
async def hooks(client: httpx.AsyncClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
    workspace = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    auth = bearer(token.json()["token"])
    keys = {"token": token.json()["token"]}
    for name, body in (
        ("open", {}),
        ("typeform", {"sourceFormat": "typeform"}),
        ("off", {"active": False}),
    ):
        made = await client.post("/v1/lead-webhooks", json={"name": name, **body}, headers=auth)
        assert made.status_code == 201
        keys[name] = made.json()["apiKey"]
    return keys


# ---- refusals: the same answer, from the fast path ------------------------------------------


def _nested(depth: int) -> bytes:
    root: dict[str, Any] = {"name": "deep"}
    node = root
    for _ in range(depth):
        node["n"] = {}
        node = node["n"]
    return orjson.dumps(root)


async def test_refusals_are_the_routes_own(
    paths: Paths, hooks: dict[str, str], access_log: pytest.LogCaptureFixture, engine: Engine
) -> None:
    url = f"/webhooks/leads/{hooks['open']}"
    before = await engine.store.max_position()
    cases: list[tuple[str, list[tuple[str, str]], bytes | list[bytes], int, str]] = [
        ("/webhooks/leads/whk_" + "x" * 43, [JSON], b'{"name": "x"}', 401, "unauthorized"),
        ("/webhooks/leads/nonsense", [JSON], b'{"name": "x"}', 401, "unauthorized"),
        ("/webhooks/leads/whk_x", [("content-type", "text/plain")], b"{nope", 401, "unauthorized"),
        (f"/webhooks/leads/{hooks['off']}", [JSON], b'{"name": "x"}', 401, "unauthorized"),
        (url, [("content-type", "text/plain")], b'{"name": "x"}', 415, "unsupported_media_type"),
        (url, [], b'{"name": "x"}', 415, "unsupported_media_type"),
        (url, [JSON], b'{"name": "caf\xe9"}', 400, "invalid_utf8"),
        (url, [FORM], b"name=%ff%fe", 400, "invalid_utf8"),
        (url, [JSON], b"{nope", 400, "malformed_json"),
        (url, [JSON], b"", 400, "empty_body"),
        (url, [JSON], b"[1, 2]", 422, "not_an_object"),
        (url, [JSON], _nested(40), 422, "too_deep"),
        (url, [FORM], b"page_id=p&data.json=%7Bnope", 400, "malformed_json"),
        (url, [JSON, ("idempotency-key", " ")], b'{"name": "x"}', 400, "bad_idempotency_key"),
        (url, [JSON], b'{"tags": ' + orjson.dumps([*range(150)]) + b"}", 422, "validation_failed"),
        (f"/webhooks/leads/{hooks['typeform']}", [JSON], b'{"a": "b"}', 422, "format_mismatch"),
        # the body limit: declared, streamed without a length, or a length that is no number
        (url, [JSON, ("content-length", str(LIMIT + 1))], b"{}", 413, "payload_too_large"),
        (url, [JSON], [b" " * 40_000, b" " * 40_000], 413, "payload_too_large"),
        (url, [JSON, ("content-length", "many")], b"{}", 400, "bad_request"),
    ]  # fmt: skip
    for path, headers, body, status, code in cases:
        answer = await both(paths, access_log, "POST", path, headers, body)
        assert answer.status == status, (path, headers, answer.body[:200])
        assert answer.json()["error"]["code"] == code, (path, headers)
        assert set(answer.json()["error"]) == {"code", "message", "details"}
        assert answer.header("content-type") == "application/json"
        assert answer.logged[0]["path"] == "/webhooks/leads/[redacted]"
        assert answer.logged[0]["status"] == status
        assert not any(key in json.dumps(answer.logged) for key in hooks.values())
    too_big = await both(paths, access_log, "POST", url, [JSON], [b" " * 40_000] * 2)
    assert too_big.json()["error"]["details"] == {"maxBytes": LIMIT}
    assert await engine.store.max_position() == before


async def test_request_ids_are_echoed_or_made(
    paths: Paths, hooks: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    url = f"/webhooks/leads/{hooks['open']}"
    given = await both(paths, access_log, "POST", url, [JSON, ("x-request-id", "abc-123")], b"[]")
    assert given.header("x-request-id") == "abc-123"
    assert given.logged[0]["request_id"] == "abc-123"
    for unusable in ("x" * 129, "tab\there"):
        served = await call(
            paths.app, "POST", url, [JSON, ("x-request-id", unusable)], b"[]", caplog=access_log
        )
        made = served.header("x-request-id")
        assert made is not None and re.fullmatch(r"[0-9a-f]{32}", made)
        assert served.logged[0]["request_id"] == made
    assert len(paths.reached) == 0


async def test_leads_and_idempotent_replays(
    paths: Paths,
    hooks: dict[str, str],
    access_log: pytest.LogCaptureFixture,
    client: httpx.AsyncClient,
    engine: Engine,
) -> None:
    url = f"/webhooks/leads/{hooks['open']}"
    key = [JSON, ("idempotency-key", "retry-1"), ("x-request-id", "r1")]
    first = await call(paths.app, "POST", url, key, b'{"name": "Once"}', caplog=access_log)
    assert first.status == 201 and first.json()["replayed"] is False
    assert first.header("x-request-id") == "r1"
    replay = await both(paths, access_log, "POST", url, key, b'{"name": "Once"}')
    assert replay.status == 201
    assert {**replay.json(), "replayed": False} == first.json()
    assert replay.json()["replayed"] is True
    assert 'leadlog_leads_replayed_total{source="webhook"} 2.0' in engine.metrics.render().decode()

    # a new lead each way: the same shape, format detection and mapping
    form = [FORM, ("x-request-id", "r2")]
    for body, headers, fmt in (
        (orjson.dumps(TYPEFORM), [JSON, ("x-request-id", "r2")], "typeform"),
        (orjson.dumps(GOOGLE_LEAD), [JSON, ("x-request-id", "r2")], "google_ads"),
        (b"your-name=Bo+Chen&your-email=bo%40chen.test", form, "generic"),
    ):
        served = await call(paths.app, "POST", url, headers, body, caplog=access_log)
        assert served.status == 201, served.body
        assert served.json()["format"] == fmt
        lead = await client.get(f"/v1/leads/{served.json()['id']}", headers=bearer(hooks["token"]))
        assert lead.json()["source"] == "webhook"
        routed = await call(paths.stack, "POST", url, headers, body, caplog=access_log)
        assert routed.status == 201  # (a provider's lead id makes it a replay)
        assert served.json().keys() == routed.json().keys()
        assert [h for h in served.headers if h[0] != b"content-length"] == [
            h for h in routed.headers if h[0] != b"content-length"
        ]
        assert _timeless(served.logged[0]) == _timeless(routed.logged[0])
    assert all(path == url for _, path in paths.reached) and len(paths.reached) == 0


async def test_unexpected_and_database_errors_are_answered_alike(
    paths: Paths,
    hooks: dict[str, str],
    access_log: pytest.LogCaptureFixture,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"/webhooks/leads/{hooks['open']}"
    body = b'{"name": "x"}'

    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine.intake, "receive", broken)
    crashed = await both(paths, access_log, "POST", url, [JSON, ("x-request-id", "c1")], body)
    assert crashed.status == 500 and crashed.json()["error"]["code"] == "internal_error"
    assert isinstance(crashed.error, RuntimeError)  # let out to the server, as before
    assert crashed.logged[0]["status"] == 500

    async def unavailable(*_: Any) -> Any:
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(engine.intake, "receive", unavailable)
    down = await both(paths, access_log, "POST", url, [JSON, ("x-request-id", "d1")], body)
    assert down.status == 503 and down.json()["error"]["code"] == "database_unavailable"
    assert down.header("retry-after") == "2" and down.error is None
    assert down.header("x-request-id") == "d1"


# ---- what the fast path leaves to the app ---------------------------------------------------


async def test_other_methods_and_paths_go_to_the_app_unchanged(
    paths: Paths, hooks: dict[str, str], access_log: pytest.LogCaptureFixture
) -> None:
    key = hooks["open"]
    for method, path, status in (
        ("GET", f"/webhooks/leads/{key}", 405),
        ("PUT", f"/webhooks/leads/{key}", 405),
        ("HEAD", f"/webhooks/leads/{key}", 405),
        ("POST", f"/webhooks/leads/{key}/", 307),
        ("POST", "/webhooks/leads/", 404),
        ("POST", f"/webhooks/leads/{key}/more", 404),
    ):
        answer = await both(
            paths, access_log, method, path, [JSON, ("x-request-id", "o")], b"{}", fast=False
        )
        assert answer.status == status, (method, path, answer.body)
        if status == 405:
            assert answer.json()["error"]["code"] == "method_not_allowed"
    assert len(paths.reached) == 6
    # A request FastAPI's own OpenTelemetry observes (when a provider is configured) keeps
    # the full stack, whose exception hook reports to it.
    observed = await call(
        paths.app,
        "POST",
        f"/webhooks/leads/{key}",
        [JSON],
        b"[]",
        caplog=access_log,
        extra={"fastapi.telemetry": object()},
    )
    assert observed.status == 422 and paths.reached[-1] == ("POST", f"/webhooks/leads/{key}")


def _first_full_match(routes: Sequence[BaseRoute], scope: Scope) -> Any:
    """The endpoint the router would run for `scope` (descending into included routers)."""
    for route in routes:
        match, child = route.matches(scope)
        if match == Match.FULL:
            included = getattr(route, "original_router", None)
            if included is not None:
                return _first_full_match(included.routes, scope)
            return child.get("endpoint")
    return None


def test_exactly_the_ingest_routes_paths_take_the_fast_path(engine: Engine) -> None:
    """The fast path takes a request exactly when the router would give it to the ingest
    route: no other route may shadow that path, and no path of it is left out."""
    app = create_app(engine)
    samples = [
        "/webhooks/leads/whk_abc",
        "/webhooks/leads/x",
        "/webhooks/leads/..",
        "/webhooks/leads/%2F",
        "/webhooks/leads/a b",
        "/webhooks/leads/ünïcødé",
        "/webhooks/leads/a\n",
        "/webhooks/leads/\u202e",
        "/webhooks/leads/",
        "/webhooks/leads",
        "/webhooks/leads//a",
        "/webhooks/leads/a/",
        "/webhooks/leads/a/b",
        "/webhooks/leadsx/a",
        "/webhooks/lead/a",
        "/v1/lead-webhooks",
    ]
    for path in samples:
        for method in ("POST", "GET"):
            scope: Scope = {
                "type": "http",
                "method": method,
                "path": path,
                "root_path": "",
                "headers": [],
            }
            endpoint = _first_full_match(app.router.routes, scope)
            assert (ingest_key(scope) is not None) == (endpoint is receive_lead), (method, path)
    assert ingest_key({"type": "http", "method": "POST", "path": "/webhooks/leads/k"}) == "k"
    mounted = {"type": "http", "method": "POST", "path": "/webhooks/leads/k", "root_path": "/api"}
    assert ingest_key(mounted) is None  # served under a prefix: left to the router


async def test_openapi_still_documents_the_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/webhooks/leads/{api_key}"]["post"]
    assert set(operation["requestBody"]["content"]) == {
        "application/json",
        "application/x-www-form-urlencoded",
    }
    assert "201" in operation["responses"]
