"""The dashboard in a real browser against `leadlog up`: the figures it shows are the ones the
test caused (leads per source, funnel and conversion, duplicates, delivery success)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import Servers
from tests.engine_process import EngineProcess, engine_process
from tests.gateways.web.browsing import ARTIFACTS, create_user, needs_chromium, operator, sign_in

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def engine(servers: Servers) -> Iterator[EngineProcess]:
    # The webhook receiver below listens on 127.0.0.1.
    with engine_process(servers, LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS="1") as running:
        yield running


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _ok(answer: httpx.Response, status: int = 201) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def _until(check: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scene(engine: EngineProcess, receiver: str) -> dict[str, Any]:
    """Four leads by an inbound webhook (one a duplicate) and one by the API; two moved to
    the second stage, one of them on to the third; one webhook delivery that succeeds and
    one that fails."""
    http = httpx.Client(base_url=engine.base_url, timeout=30)
    ws = _ok(http.post("/v1/workspaces", json={"name": "Dash"}, headers=operator(engine)))["id"]
    admin = operator(engine, ws)
    email = f"dee-{uuid.uuid4().hex[:6]}@dash.example"
    assert create_user(engine, ws, email).returncode == 0
    actions = [
        {
            "type": "webhook",
            "trigger": "received",
            "url": f"{receiver}/{path}",
            "maxRetries": 0,
            "conditions": [{"field": "company", "op": "eq", "value": company}],
        }
        for path, company in (("ok", "OkCo"), ("fail", "FailCo"))
    ]
    _ok(http.post("/v1/lead-types", json={"name": "Default", "actions": actions}, headers=admin))
    key = _ok(http.post("/v1/lead-webhooks", json={"name": "Site"}, headers=admin))["apiKey"]
    leads = []
    for name, mail, company in (
        ("Ann", "ann@d.example", "OkCo"),
        ("Bob", "bob@d.example", "FailCo"),
        ("Cy", "cy@d.example", "Cy Ltd"),
        ("Ann Again", "ann@d.example", "Other"),
    ):
        body = {"name": name, "email": mail, "company": company}
        leads.append(_ok(http.post(f"/webhooks/leads/{key}", json=body)))
    assert [lead["isDuplicate"] for lead in leads] == [False, False, False, True]
    api_lead = _ok(
        http.post("/v1/leads", json={"name": "Dot", "email": "dot@d.example"}, headers=admin)
    )
    api_source = _ok(http.get(f"/v1/leads/{api_lead['id']}", headers=admin), 200)["source"]
    assert api_source != "webhook"
    pipelines = _ok(http.get("/v1/lead-pipelines", headers=admin), 200)["items"]
    pipeline = next(p for p in pipelines if p.get("isActive", True))
    stages = [s["id"] for s in pipeline["stages"]]
    for lead_id, stage in ((leads[0]["id"], 1), (leads[2]["id"], 1), (leads[2]["id"], 2)):
        _ok(
            http.patch(
                f"/v1/leads/{lead_id}/stage", json={"stageId": stages[stage]}, headers=admin
            ),
            200,
        )

    def finished() -> list[str] | None:
        items = _ok(http.get("/v1/deliveries", headers=admin), 200)["items"]
        states = sorted(d["state"] for d in items)
        return states if states == ["failed", "succeeded"] else None

    _until(finished, "one delivery to succeed and one to fail")
    return {"id": ws, "email": email, "stages": stages, "api_source": api_source}


def test_the_dashboard_shows_what_happened(page: Any, scene: dict[str, Any]) -> None:
    sign_in(page, scene["email"])
    page.wait_for_url("**/")
    page.click("nav >> text=Dashboard")
    page.wait_for_url("**/dashboard")

    def rate(chart: str) -> str | None:
        value: str | None = page.locator(f"[data-chart={chart}] [data-rate]").get_attribute(
            "data-rate"
        )
        return value

    # The projections follow the log; the page waits briefly for them, a reload settles it.
    def settled() -> bool:
        if rate("deliveries") == "50.0":
            return True
        page.reload()
        return False

    _until(settled, "the delivery figures")
    sources = page.locator("[data-chart=sources]")
    assert sources.locator("[data-total]").get_attribute("data-total") == "5"
    assert sources.locator("[data-source=webhook]").get_attribute("data-leads") == "4"
    other = sources.locator(f"[data-source='{scene['api_source']}']")
    assert other.get_attribute("data-leads") == "1"
    # One colour per source, drawn as SVG with a text alternative.
    assert sources.locator("svg.chart rect").count() >= 2
    assert "webhook: 4" in (sources.locator("svg.chart desc").text_content() or "")

    funnel = page.locator("[data-chart=funnel] tbody tr")
    shown = funnel.evaluate_all(
        "rows => rows.map(r => [r.dataset.stageId, r.dataset.reached, r.dataset.conversion])"
    )
    new, contacted, qualified, proposal, won, lost = scene["stages"]
    assert shown == [
        [new, "5", ""],
        [contacted, "2", "40.0"],
        [qualified, "1", "50.0"],
        [proposal, "0", "0.0"],
        [won, "0", ""],
        [lost, "0", ""],
    ]
    assert "40%" in page.locator("[data-chart=funnel] svg").inner_html()

    times = page.locator("[data-chart=stage-times] tbody tr")
    stays = times.evaluate_all("rows => rows.map(r => r.dataset.stays)")
    assert stays[:3] == ["2", "1", "0"]  # two left New, one left Contacted

    assert rate("duplicates") == "20.0"
    dupes = page.locator("[data-chart=duplicates] [data-rate]")
    assert (dupes.get_attribute("data-part"), dupes.get_attribute("data-whole")) == ("1", "5")
    assert "20%" in dupes.inner_text()
    delivered = page.locator("[data-chart=deliveries] [data-rate]")
    assert (delivered.get_attribute("data-part"), delivered.get_attribute("data-whole")) == (
        "1",
        "2",
    )
    # Every chart is an image with a name and a description for screen readers.
    for svg in page.locator("svg.chart").all():
        assert svg.get_attribute("role") == "img"
        assert svg.get_attribute("aria-labelledby")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_the_dashboard_needs_a_session(engine: EngineProcess) -> None:
    answer = httpx.get(f"{engine.base_url}/dashboard", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")
