"""Fixtures of the browser tests: per test module one `leadlog up` process and one Chromium."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Servers
from tests.engine_process import EngineProcess, engine_process
from tests.gateways.web.browsing import ARGS, CHROMIUM, create_user, operator

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def engine(servers: Servers) -> Iterator[EngineProcess]:
    with engine_process(servers) as running:
        yield running


@pytest.fixture(scope="module")
def acme(engine: EngineProcess) -> dict[str, Any]:
    """A workspace with a user, and three leads received by an inbound webhook: two stay in
    the first stage, one is moved to the second."""
    http = httpx.Client(base_url=engine.base_url, timeout=30)
    workspace = http.post("/v1/workspaces", json={"name": "Acme"}, headers=operator(engine))
    assert workspace.status_code == 201, workspace.text
    ws = workspace.json()["id"]
    email = f"mia-{uuid.uuid4().hex[:6]}@acme.example"
    created = create_user(engine, ws, email)
    assert created.returncode == 0, created.stderr
    hook = http.post("/v1/lead-webhooks", json={"name": "Site"}, headers=operator(engine, ws))
    assert hook.status_code == 201, hook.text
    key = hook.json()["apiKey"]
    leads = []
    for name, company in (("Ann Able", "Able Ltd"), ("Bob Baker", "Baker Co"), ("Cy Cole", "")):
        body = {"name": name, "email": f"{name.split()[0].lower()}@leads.example"}
        if company:
            body["company"] = company
        sent = http.post(f"/webhooks/leads/{key}", json=body)
        assert sent.status_code == 201, sent.text
        leads.append(sent.json()["id"])
    pipelines = http.get("/v1/lead-pipelines", headers=operator(engine, ws)).json()["items"]
    pipeline = next(p for p in pipelines if p.get("isActive", True))
    stages = [s["id"] for s in pipeline["stages"]]
    moved = http.patch(
        f"/v1/leads/{leads[2]}/stage", json={"stageId": stages[1]}, headers=operator(engine, ws)
    )
    assert moved.status_code == 200, moved.text
    board_url = f"/v1/lead-pipelines/{pipeline['id']}/board"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        board = http.get(board_url, headers=operator(engine, ws)).json()
        counts = [c["count"] for c in board["columns"]]
        if counts[:2] == [2, 1]:
            break
        time.sleep(0.1)
    assert counts[:2] == [2, 1], counts
    return {"id": ws, "email": email, "leads": leads, "stages": stages, "http": http}


@pytest.fixture(scope="module")
def browser(engine: EngineProcess) -> Iterator[Any]:
    """One Chromium for the module (started after the engine, so stopped before it)."""
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, engine: EngineProcess) -> Iterator[Any]:
    """A fresh browser context (no cookies) whose requests never leave this machine."""
    context = browser.new_context(base_url=engine.base_url)
    outside: list[str] = []

    def only_local(route: Any) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    context.route("**/*", only_local)
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    try:
        yield opened
        assert not outside, f"requests left the machine: {outside}"
    finally:
        context.close()
