"""The board in a real browser: drag and drop, the keyboard move, refused moves, and live
updates over server-sent events, against `leadlog up` as a process (issue 13, items 2, 4)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.engine_process import EngineProcess
from tests.gateways.web.browsing import (
    ARTIFACTS,
    create_user,
    needs_chromium,
    operator,
    sign_in,
    until,
)

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def hook(engine: EngineProcess, acme: dict[str, Any]) -> str:
    """Another inbound webhook of the workspace: its key."""
    made = acme["http"].post(
        "/v1/lead-webhooks", json={"name": "Live"}, headers=operator(engine, acme["id"])
    )
    assert made.status_code == 201, made.text
    key: str = made.json()["apiKey"]
    return key


def send_lead(http: httpx.Client, key: str, name: str) -> str:
    body = {"name": name, "email": f"{uuid.uuid4().hex[:8]}@leads.example"}
    sent = http.post(f"/webhooks/leads/{key}", json=body)
    assert sent.status_code == 201, sent.text
    lead_id: str = sent.json()["id"]
    return lead_id


def count(page: Any, stage: str) -> int:
    shown = page.locator(f"section[data-stage-id='{stage}'] [data-count]").get_attribute(
        "data-count"
    )
    return int(shown)


def drag(page: Any, card: Any, target: Any) -> None:
    box, goal = card.bounding_box(), target.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(goal["x"] + goal["width"] / 2, goal["y"] + 60, steps=20)
    page.mouse.move(goal["x"] + goal["width"] / 2, goal["y"] + 70, steps=5)
    page.mouse.up()


def open_board(page: Any, email: str) -> None:
    sign_in(page, email)
    page.wait_for_url("**/")
    until(lambda: page.locator(".board").get_attribute("data-live") == "open")


def lead_json(engine: EngineProcess, acme: dict[str, Any], lead_id: str) -> dict[str, Any]:
    got = acme["http"].get(f"/v1/leads/{lead_id}", headers=operator(engine, acme["id"]))
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def test_drag_a_card_to_another_column_saves_the_move(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
    hook: str,
) -> None:
    first, second = acme["stages"][:2]
    lead = send_lead(acme["http"], hook, "Dora Drag")
    open_board(page, acme["email"])
    page.evaluate("window.__noReload = 1")
    card = page.locator(f"section[data-stage-id='{first}'] [data-lead-id='{lead}']")
    until(lambda: card.count() == 1)
    before = count(page, first), count(page, second)
    drag(page, card, page.locator(f"section[data-stage-id='{second}'] .cards"))
    moved = page.locator(f"section[data-stage-id='{second}'] [data-lead-id='{lead}']")
    until(lambda: moved.count() == 1)
    until(lambda: lead_json(engine, acme, lead)["stageId"] == second)
    until(lambda: (count(page, first), count(page, second)) == (before[0] - 1, before[1] + 1))
    until(lambda: "Moved Dora Drag" in page.locator("#board-status").inner_text())
    timeline = acme["http"].get(f"/v1/leads/{lead}/timeline", headers=operator(engine, acme["id"]))
    assert timeline.status_code == 200, timeline.text
    entries = [e for e in timeline.json()["items"] if second in orjson.dumps(e).decode()]
    assert entries, timeline.text
    assert "Mia Manager" in orjson.dumps(entries[0]).decode() or "user:" in str(entries[0])
    # The drop opened nothing, and the page was never reloaded.
    assert page.evaluate("window.__noReload") == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "board-live.png"), full_page=True)


def test_a_move_the_server_refuses_puts_the_card_back(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
    hook: str,
) -> None:
    first, second = acme["stages"][:2]
    lead = send_lead(acme["http"], hook, "Gone Gary")
    # No live updates on this page: the card stays although the lead is deleted meanwhile.
    page.route("**/board/events**", lambda route: route.abort())
    sign_in(page, acme["email"])
    page.wait_for_url("**/")
    card = page.locator(f"section[data-stage-id='{first}'] [data-lead-id='{lead}']")
    assert card.count() == 1
    gone = acme["http"].delete(f"/v1/leads/{lead}", headers=operator(engine, acme["id"]))
    assert gone.status_code == 200, gone.text
    before = count(page, first), count(page, second)
    drag(page, card, page.locator(f"section[data-stage-id='{second}'] .cards"))
    status = page.locator("#board-status")
    until(lambda: "Could not move Gone Gary" in status.inner_text())
    assert "does not exist" in status.inner_text() or "deleted" in status.inner_text()
    assert card.count() == 1, "the card is back in its column"
    assert (count(page, first), count(page, second)) == before


def test_a_viewer_cannot_move_cards(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
) -> None:
    first, second = acme["stages"][:2]
    email = f"vic-{uuid.uuid4().hex[:6]}@acme.example"
    assert create_user(engine, acme["id"], email, role="viewer").returncode == 0
    open_board(page, email)
    assert page.locator(".board").get_attribute("data-can-move") == "false"
    assert page.locator("button.card-move").count() == 0
    card = page.locator(f"section[data-stage-id='{first}'] article.card").first
    lead = card.get_attribute("data-lead-id")
    drag(page, card, page.locator(f"section[data-stage-id='{second}'] .cards"))
    assert page.locator(f"section[data-stage-id='{first}'] [data-lead-id='{lead}']").count() == 1
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    refused = page.request.post(
        f"/board/moves/{lead}", form={"stageId": second}, headers={"X-CSRF-Token": token}
    )
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert lead_json(engine, acme, str(lead))["stageId"] == first
    # Without the CSRF token nothing is done either.
    assert page.request.post(f"/board/moves/{lead}", form={"stageId": second}).status == 403


def test_move_a_card_with_the_keyboard(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
    hook: str,
) -> None:
    third = acme["stages"][2]
    lead = send_lead(acme["http"], hook, "Kim Keys")
    open_board(page, acme["email"])
    card = page.locator(f"[data-lead-id='{lead}']")
    until(lambda: card.count() == 1)
    card.focus()
    page.keyboard.press("m")
    dialog = page.locator("#move-dialog")
    assert dialog.is_visible()
    assert page.evaluate("document.activeElement.id") == "move-stage"
    page.keyboard.press("Escape")
    until(lambda: not dialog.is_visible())
    assert page.evaluate("document.activeElement.dataset.leadId") == lead
    page.keyboard.press("m")
    page.select_option("#move-stage", third)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    moved = page.locator(f"section[data-stage-id='{third}'] [data-lead-id='{lead}']")
    until(lambda: moved.count() == 1)
    until(lambda: "Moved Kim Keys" in page.locator("#board-status").inner_text())
    until(lambda: lead_json(engine, acme, lead)["stageId"] == third)
    assert page.evaluate("document.activeElement.dataset.leadId") == lead


def test_leads_arriving_and_changing_elsewhere_show_without_a_reload(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
    hook: str,
) -> None:
    first, second = acme["stages"][:2]
    open_board(page, acme["email"])
    page.evaluate(
        "window.__noReload = 1; window.__events = [];"
        "document.addEventListener('leadlog:lead-added', e => window.__events.push(e.detail))"
    )
    before = count(page, first)
    lead = send_lead(acme["http"], hook, "Lou Live")
    card = page.locator(f"section[data-stage-id='{first}'] [data-lead-id='{lead}']")
    until(lambda: card.count() == 1, timeout=5)
    until(lambda: count(page, first) == before + 1, timeout=5)
    assert "Lou Live" in card.inner_text()
    added = page.evaluate("window.__events")
    assert any(e["leadId"] == lead and e["position"] > 0 for e in added)
    # Moved elsewhere (the API): the card follows.
    moved = acme["http"].patch(
        f"/v1/leads/{lead}/stage", json={"stageId": second}, headers=operator(engine, acme["id"])
    )
    assert moved.status_code == 200, moved.text
    there = page.locator(f"section[data-stage-id='{second}'] [data-lead-id='{lead}']")
    until(lambda: there.count() == 1, timeout=5)
    assert card.count() == 0
    # Deleted elsewhere: the card goes.
    gone = acme["http"].delete(f"/v1/leads/{lead}", headers=operator(engine, acme["id"]))
    assert gone.status_code == 200, gone.text
    until(lambda: page.locator(f"[data-lead-id='{lead}']").count() == 0, timeout=5)
    assert page.evaluate("window.__noReload") == 1


def events(response: httpx.Response, wanted: int) -> list[tuple[int, dict[str, Any]]]:
    """The first `wanted` `lead` events of an open stream: (id, data)."""
    found: list[tuple[int, dict[str, Any]]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if current.get("event") == "lead":
                found.append((int(current["id"]), orjson.loads(current["data"])))
                if len(found) == wanted:
                    return found
            current = {}
        elif not line.startswith(":") and ":" in line:
            name, _, value = line.partition(":")
            current[name] = value.strip()
    return found


def test_the_event_stream_resumes_after_last_event_id_without_gaps_or_repeats(
    page: Any,
    engine: EngineProcess,
    acme: dict[str, Any],
    hook: str,
) -> None:
    sign_in(page, acme["email"])
    page.wait_for_url("**/")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    http = httpx.Client(base_url=engine.base_url, cookies=cookies, timeout=15)
    head = int(page.locator(".board").get_attribute("data-position"))
    # Another workspace's lead must never show up in this stream.
    other = http.post("/v1/workspaces", json={"name": "Globex"}, headers=operator(engine))
    other_hook = http.post(
        "/v1/lead-webhooks", json={"name": "G"}, headers=operator(engine, other.json()["id"])
    )
    foreign = send_lead(http, other_hook.json()["apiKey"], "Foreign Fay")
    sent = [send_lead(http, hook, f"Sid Stream {n}") for n in range(3)]
    with http.stream("GET", "/board/events", headers={"Last-Event-ID": str(head)}) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        first = events(answer, 3)
    ids = [i for i, _ in first]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] > head
    assert [d["leadId"] for _, d in first] == sent
    assert all(d["type"] == "lead.received" and d["position"] == i for i, d in first)
    # Reconnect after the second: the third comes next, then what happened meanwhile.
    later = send_lead(http, hook, "Sid Stream later")
    with http.stream("GET", "/board/events", headers={"Last-Event-ID": str(ids[1])}) as answer:
        resumed = events(answer, 2)
    assert [d["leadId"] for _, d in resumed] == [sent[2], later]
    assert resumed[0][0] == ids[2]
    assert foreign not in {d["leadId"] for _, d in first + resumed}
    # Signed out: no stream.
    anonymous = httpx.get(f"{engine.base_url}/board/events", follow_redirects=False)
    assert anonymous.status_code == 303
