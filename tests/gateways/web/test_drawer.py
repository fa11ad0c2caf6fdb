"""The lead drawer in a real browser against `leadlog up` as a process: details, custom
fields, the timeline, notes, assign, status, convert, delete and restore (issue 13)."""

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

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def shop(engine: EngineProcess) -> dict[str, Any]:
    """A workspace with a manager, a viewer, and leads received by an inbound webhook (one
    with a custom field whose display name is "Roof Type")."""
    http = httpx.Client(base_url=engine.base_url, timeout=30)
    made = http.post("/v1/workspaces", json={"name": "Drawer Co"}, headers=operator(engine))
    assert made.status_code == 201, made.text
    ws = made.json()["id"]
    manager = f"mia-{uuid.uuid4().hex[:6]}@drawer.example"
    viewer = f"vic-{uuid.uuid4().hex[:6]}@drawer.example"
    created = create_user(engine, ws, manager)
    assert created.returncode == 0, created.stderr
    assert create_user(engine, ws, viewer, role="viewer").returncode == 0
    manager_id = orjson.loads(created.stdout)["id"]
    hook = http.post("/v1/lead-webhooks", json={"name": "Site"}, headers=operator(engine, ws))
    assert hook.status_code == 201, hook.text
    key = hook.json()["apiKey"]
    leads = []
    for first in ("Rita", "Sam", "Tess", "Uma"):
        sent = http.post(
            f"/webhooks/leads/{key}",
            json={
                "first_name": first,
                "last_name": "Roofer",
                "Email Address": f"{first.lower()}@roof.example",
                "company_name": f"{first} Roofs",
                "Roof Type": "flat",
            },
        )
        assert sent.status_code == 201, sent.text
        leads.append(sent.json()["id"])
    board_ready = until(
        lambda: (
            http.get("/v1/leads", headers=operator(engine, ws)).json().get("total") == len(leads)
        )
    )
    assert board_ready
    return {
        "id": ws,
        "manager": manager,
        "manager_id": manager_id,
        "viewer": viewer,
        "leads": leads,
        "http": http,
        "headers": operator(engine, ws),
    }


def lead_api(shop: dict[str, Any], lead_id: str) -> dict[str, Any]:
    got = shop["http"].get(f"/v1/leads/{lead_id}", headers=shop["headers"])
    assert got.status_code == 200, got.text
    data: dict[str, Any] = got.json()
    return data


def open_drawer(page: Any, lead_id: str) -> Any:
    card = page.locator(f"article.card[data-lead-id='{lead_id}']")
    card.click()
    drawer = page.locator("aside#lead-drawer[role=dialog]")
    expect(drawer.locator(f"[data-drawer-lead='{lead_id}']")).to_be_visible()
    return drawer


def test_open_the_drawer_see_the_lead_add_a_note(page: Any, shop: dict[str, Any]) -> None:
    lead_id = shop["leads"][0]
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    drawer = open_drawer(page, lead_id)
    assert drawer.get_attribute("aria-modal") == "false"
    assert drawer.get_attribute("aria-labelledby") == "drawer-title"
    assert page.evaluate("document.activeElement.id") == "drawer-title"
    assert f"lead={lead_id}" in page.url
    assert drawer.locator("#drawer-title").inner_text() == "Rita Roofer"
    assert "rita@roof.example" in drawer.locator("[data-field=email]").inner_text()
    assert "Rita Roofs" in drawer.locator("[data-field=company]").inner_text()
    assert drawer.locator("[data-field=source]").inner_text().startswith("webhook")
    assert drawer.locator("[data-field=request]").inner_text().startswith("#")
    assert "Unassigned" in drawer.locator("[data-field=assignee]").inner_text()
    # Custom fields under their display names.
    custom = drawer.locator(".custom-fields")
    assert "Roof Type" in custom.locator("dt").all_inner_texts()
    assert custom.locator("[data-custom-field=roofType]").inner_text() == "flat"
    assert drawer.locator("[data-timeline-entry]").count() >= 1

    drawer.locator("textarea[name=value]").fill("Called, wants a quote")
    drawer.locator("[data-command=note]").click()
    expect(drawer.locator("[role=status]").first).to_have_text("Note added.")
    entries = drawer.locator("[data-timeline-entry]")
    newest = entries.first
    assert newest.get_attribute("data-event-type") == "lead.note_added"
    assert "Mia Manager" in newest.inner_text(), "the actor shows as the person's name"
    positions = [int(p) for p in entries.evaluate_all("els => els.map(e => e.dataset.position)")]
    assert positions == sorted(positions, reverse=True), "newest first"
    assert "Called, wants a quote" in drawer.locator(".notes").inner_text()
    notes = lead_api(shop, lead_id)["notes"]
    assert [n["value"] for n in notes] == ["Called, wants a quote"]
    assert notes[0]["author"] == f"user:{shop['manager_id']}"
    drawer.evaluate("el => { el.scrollTop = 0; }")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "drawer.png"))

    # Escape closes it and gives the focus back to the card; the URL forgets the lead.
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    assert page.evaluate("document.activeElement.dataset.leadId") == lead_id
    assert "lead=" not in page.url
    # Enter on the focused card opens it again; the close button closes it.
    page.keyboard.press("Enter")
    expect(drawer.locator(f"[data-drawer-lead='{lead_id}']")).to_be_visible()
    drawer.locator("[data-drawer-close]").click()
    expect(drawer).to_be_hidden()
    assert page.evaluate("document.activeElement.dataset.leadId") == lead_id
    # The drawer's address opens the board with it open.
    page.goto(f"/?lead={lead_id}")
    expect(drawer.locator("#drawer-title")).to_have_text("Rita Roofer")


def test_assign_status_convert_delete_restore(page: Any, shop: dict[str, Any]) -> None:
    lead_id = shop["leads"][1]
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    drawer = open_drawer(page, lead_id)

    drawer.locator("select[name=assignedTo]").select_option(label="Mia Manager")
    drawer.locator("[data-command=assign]").click()
    expect(drawer.locator("[data-field=assignee]")).to_have_text("Mia Manager")
    assert lead_api(shop, lead_id)["assignedTo"] == shop["manager_id"]
    card = page.locator(f".board article.card[data-lead-id='{lead_id}']")
    expect(card.locator(".assignee")).to_have_text("Mia Manager")

    drawer.locator("select[name=status]").select_option("contacted")
    drawer.locator("[data-command=status]").click()
    expect(drawer.locator("[data-field=status]")).to_have_text("contacted")
    assert lead_api(shop, lead_id)["status"] == "contacted"

    # Convert: a confirm step; the confirmed button goes at once; a double click sends one.
    converts: list[str] = []
    page.on(
        "request",
        lambda r: converts.append(r.url) if r.method == "POST" and "/convert" in r.url else None,
    )
    drawer.locator("[data-command=convert]").click()
    confirm = drawer.locator("[data-confirmed=convert]")
    expect(confirm).to_be_visible()
    confirm.dblclick()
    expect(drawer.locator("[data-field=conversion]")).to_contain_text("Converted")
    expect(drawer.locator("[data-command=convert]")).to_have_count(0)
    expect(drawer.locator("[data-confirmed=convert]")).to_have_count(0)
    assert len(converts) == 1, converts
    converted = lead_api(shop, lead_id)
    assert converted["convertedAt"] and converted["contactId"]
    timeline = shop["http"].get(
        f"/v1/leads/{lead_id}/timeline", params={"limit": 200}, headers=shop["headers"]
    )
    types = [e["eventType"] for e in timeline.json()["items"]]
    assert types.count("lead.converted") == 1, types
    contacts = shop["http"].get("/v1/contacts", headers=shop["headers"]).json()
    assert sum(lead_id in c["leadIds"] for c in contacts["items"]) == 1

    # Delete (with a confirm): the card leaves the board; restore brings it back.
    drawer.locator("[data-command=delete]").click()
    drawer.locator("[data-confirmed=delete]").click()
    expect(drawer.locator(".deleted-note")).to_be_visible()
    expect(card).to_have_count(0)
    assert lead_api(shop, lead_id)["deleted"] is True
    drawer.locator("[data-command=restore]").click()
    drawer.locator("[data-confirmed=restore]").click()
    expect(drawer.locator(".deleted-note")).to_have_count(0)
    expect(card).to_have_count(1)
    assert lead_api(shop, lead_id)["deleted"] is False


def test_the_timeline_toggle_and_older_entries(page: Any, shop: dict[str, Any]) -> None:
    lead_id = shop["leads"][2]
    for n in range(22):
        added = shop["http"].post(
            f"/v1/leads/{lead_id}/notes", json={"value": f"note {n}"}, headers=shop["headers"]
        )
        assert added.status_code == 201, added.text
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    page.goto(f"/?lead={lead_id}")
    drawer = page.locator("aside#lead-drawer")
    entries = drawer.locator("[data-timeline-entry]")
    expect(entries.first).to_contain_text("Note added")
    until(lambda: entries.count() == 20)
    assert entries.count() == 20
    # Caught up with the last note (the page may have opened on a timeline a note behind,
    # and refreshed itself since), and not in the middle of a refresh.
    expect(drawer.locator(".notes li").first).to_contain_text("note 21")
    expect(drawer.locator(".htmx-request")).to_have_count(0)
    drawer.locator(".older button").click()
    total = shop["http"].get(f"/v1/leads/{lead_id}/timeline", headers=shop["headers"])
    expect(entries).to_have_count(total.json()["total"])
    positions = [int(p) for p in entries.evaluate_all("els => els.map(e => e.dataset.position)")]
    assert positions == sorted(positions, reverse=True)
    expect(page.locator(".board[data-live=open]")).to_have_count(1)
    page.evaluate(
        "window.changesSeen = 0;"
        "document.addEventListener('leadlog:lead-changed', () => { window.changesSeen += 1; })"
    )
    # The toggle asks for action/webhook/message entries too (none hidden here: same list).
    # Its request is held until a change made elsewhere has reached the page over the live
    # stream, so the change arrives while the drawer is busy: once the toggle's answer is in,
    # the drawer must still show the change.
    held: list[Any] = []

    def hold(route: Any) -> None:  # Playwright cannot wrap a builtin such as `held.append`
        held.append(route)

    page.route("**/board/leads/*/timeline*", hold)
    drawer.locator("[data-timeline-toggle]").check()
    assert until(lambda: held or page.wait_for_timeout(50))
    added = shop["http"].post(
        f"/v1/leads/{lead_id}/notes", json={"value": "from the API"}, headers=shop["headers"]
    )
    assert added.status_code == 201, added.text
    # The stream is pushed, not polled: on a busy 2-core machine it may take a few seconds.
    assert until(lambda: page.evaluate("window.changesSeen") > 0, timeout=30)
    held[0].continue_()
    page.unroute("**/board/leads/*/timeline*")
    expect(drawer.locator("[data-timeline-toggle]")).to_be_checked()
    expect(drawer.locator(".notes li").first).to_contain_text("from the API", timeout=15_000)
    expect(entries.first).to_contain_text("from the API", timeout=15_000)
    # A refresh keeps the older entries that were open (the toggle opened a first page).
    drawer.locator(".older button").click()
    expect(entries).to_have_count(total.json()["total"] + 1)
    added = shop["http"].post(
        f"/v1/leads/{lead_id}/notes", json={"value": "once more"}, headers=shop["headers"]
    )
    assert added.status_code == 201, added.text
    expect(entries.first).to_contain_text("once more", timeout=15_000)
    expect(entries).to_have_count(total.json()["total"] + 2)


def test_a_viewer_sees_no_controls_and_cannot_post(page: Any, shop: dict[str, Any]) -> None:
    lead_id = shop["leads"][3]
    sign_in(page, shop["viewer"])
    page.wait_for_url("**/")
    drawer = open_drawer(page, lead_id)
    assert drawer.locator("[data-field=email]").inner_text().startswith("uma@")
    assert drawer.locator("form, [data-command], [data-confirmed]").count() == 0
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    for action, form in (
        ("notes", {"value": "sneaky"}),
        ("assign", {"assignedTo": ""}),
        ("status", {"status": "closed"}),
        ("convert", {}),
        ("delete", {}),
    ):
        forged = page.request.post(
            f"/board/leads/{lead_id}/{action}", form=form, headers={"X-CSRF-Token": token}
        )
        assert forged.status == 403, action
    # The drawer's own address, opened as a page, is the board with the drawer open;
    # a lead that is not there is a 404.
    direct = page.request.get(f"/board/leads/{lead_id}", max_redirects=0)
    assert direct.status == 303 and direct.headers["location"] == f"/?lead={lead_id}"
    missing = page.request.get(f"/board/leads/{uuid.uuid4()}", headers={"HX-Request": "true"})
    assert missing.status == 404
    # Without the CSRF token nobody gets as far as the role check.
    assert page.request.post(f"/board/leads/{lead_id}/convert", form={"x": "1"}).status == 403
    lead = lead_api(shop, lead_id)
    assert lead["notes"] == [] and lead["convertedAt"] is None and not lead["deleted"]
    assert lead["status"] != "closed"
