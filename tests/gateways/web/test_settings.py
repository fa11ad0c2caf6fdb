"""The settings pages in a real browser against `leadlog up` as a process: Add Lead,
pipeline settings, inbound webhooks, lead types, and a viewer who may only look (issue 13)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
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
    """A workspace with a manager and a viewer."""
    http = httpx.Client(base_url=engine.base_url, timeout=30)
    made = http.post("/v1/workspaces", json={"name": "Shop"}, headers=operator(engine))
    assert made.status_code == 201, made.text
    ws = made.json()["id"]
    users = {}
    for role in ("manager", "viewer"):
        email = f"{role}-{uuid.uuid4().hex[:6]}@shop.example"
        created = create_user(engine, ws, email, role=role)
        assert created.returncode == 0, created.stderr
        users[role] = email
    return {"id": ws, "http": http, "headers": operator(engine, ws), **users}


def pipelines(shop: dict[str, Any]) -> list[dict[str, Any]]:
    answer = shop["http"].get("/v1/lead-pipelines", headers=shop["headers"])
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def active(shop: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in pipelines(shop) if p["isActive"])


def test_add_lead_shows_it_on_the_board(page: Any, shop: dict[str, Any]) -> None:
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    page.click("nav[aria-label=Main] >> text=Settings")
    page.click("nav[aria-label=Settings] >> text=Add lead")
    page.wait_for_url("**/leads/new")
    # A refusal shows its reason next to the field: a lead without a name.
    page.fill("input[name=email]", "nina@buyer.example")
    page.locator("input[name=name]").evaluate("el => el.removeAttribute('required')")
    page.click("form[data-add-lead] button[type=submit]")
    assert "needs a name" in page.locator("[data-error=name]").inner_text()
    page.fill("input[name=name]", "Nina North")
    page.fill("input[name=company]", "North Ltd")
    page.fill("input[name=tags]", "vip, spring")
    page.locator("input[name=custom_key]").first.fill("budget")
    page.locator("input[name=custom_value]").first.fill("5000")
    page.click("form[data-add-lead] button[type=submit]")
    page.wait_for_url("**/?lead=*")
    lead_id = page.url.rsplit("lead=", 1)[1]
    card = page.locator(f"article.card[data-lead-id='{lead_id}']")
    assert "Nina North" in card.inner_text() and "North Ltd" in card.inner_text()
    lead = shop["http"].get(f"/v1/leads/{lead_id}", headers=shop["headers"]).json()
    assert lead["source"] == "manual"
    assert lead["email"] == "nina@buyer.example"
    assert lead["customFields"]["budget"] == "5000"
    assert sorted(lead["tags"]) == ["spring", "vip"]


def test_pipeline_settings(page: Any, shop: dict[str, Any]) -> None:
    pipeline = active(shop)
    first, second, third = pipeline["stages"][:3]
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    page.goto("/settings/pipelines")
    section = page.locator(f"section[data-pipeline-id='{pipeline['id']}']")
    # Rename a stage: the board and the API show the new name.
    row = section.locator(f"li[data-stage-id='{first['id']}']")
    row.locator("input[data-stage-name]").fill("Fresh")
    with page.expect_navigation():
        row.locator("button[data-save-stage]").click()
    stages = active(shop)["stages"]
    assert stages[0]["name"] == "Fresh"
    page.goto("/board")
    assert "Fresh" in page.locator(f"section[data-stage-id='{first['id']}'] h2").inner_text()
    # Recolour and retype another.
    page.goto("/settings/pipelines")
    row = section.locator(f"li[data-stage-id='{second['id']}']")
    row.locator("input[data-stage-color]").fill("#123456")
    row.locator("select[data-stage-type]").select_option("lost")
    with page.expect_navigation():
        row.locator("button[data-save-stage]").click()
    changed = next(s for s in active(shop)["stages"] if s["id"] == second["id"])
    assert (changed["color"].lower(), changed["type"]) == ("#123456", "lost")
    # Move the third stage up (a button: keyboard-usable).
    section.locator(f"li[data-stage-id='{third['id']}'] button[data-move-up]").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    order = [s["id"] for s in active(shop)["stages"]]
    assert order[:3] == [first["id"], third["id"], second["id"]]
    # Add a stage; rename the pipeline.
    section.locator("input[data-new-stage-name]").fill("Nurture")
    with page.expect_navigation():
        section.locator("form.add-stage button[type=submit]").click()
    assert active(shop)["stages"][-1]["name"] == "Nurture"
    section.locator("input[data-pipeline-name]").fill("Retail")
    with page.expect_navigation():
        section.locator("input[data-pipeline-name]").press("Enter")
    assert active(shop)["name"] == "Retail"
    # The stage holding the lead added above cannot go without a stage for its leads.
    row = section.locator(f"li[data-stage-id='{first['id']}']")
    row.locator("button[data-remove-stage]").click()
    assert "holds leads" in page.locator(f"[data-error='{first['id']}:remove']").inner_text()
    row = section.locator(f"li[data-stage-id='{first['id']}']")
    row.locator("select[data-move-to]").select_option(third["id"])
    with page.expect_navigation():
        row.locator("button[data-remove-stage]").click()
    assert first["id"] not in [s["id"] for s in active(shop)["stages"]]

    def moved() -> list[str]:
        url = f"/v1/leads?stageId={third['id']}"
        return [
            lead["name"] for lead in shop["http"].get(url, headers=shop["headers"]).json()["items"]
        ]

    assert until(moved) == ["Nina North"]
    # A second pipeline, created with two stages: removing one is refused, with the reason.
    page.fill("form[data-create-pipeline] input[name=name]", "Two-step")
    page.fill("form[data-create-pipeline] textarea[name=stages]", "Open\nDone")
    with page.expect_navigation():
        page.click("form[data-create-pipeline] button[type=submit]")
    other = next(p for p in pipelines(shop) if p["name"] == "Two-step")
    assert [s["name"] for s in other["stages"]] == ["Open", "Done"] and not other["isActive"]
    two = page.locator(f"section[data-pipeline-id='{other['id']}']")
    stage = other["stages"][0]["id"]
    two.locator(f"li[data-stage-id='{stage}'] button[data-remove-stage]").click()
    error = page.locator(f"[data-error='{stage}:remove']")
    assert "at least 2 stages" in error.inner_text()
    assert len(next(p for p in pipelines(shop) if p["id"] == other["id"])["stages"]) == 2
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto("/settings/pipelines")
    page.screenshot(path=str(ARTIFACTS / "settings.png"), full_page=True)
    # Make it active: new leads land in it.
    with page.expect_navigation():
        page.locator(f"section[data-pipeline-id='{other['id']}'] button[data-activate]").click()
    assert active(shop)["id"] == other["id"]
    assert page.locator(f"section[data-pipeline-id='{other['id']}'] [data-active]").count() == 1


def test_inbound_webhook_settings(page: Any, shop: dict[str, Any]) -> None:
    http = shop["http"]
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    page.goto("/settings/webhooks")
    page.fill("form[data-create-webhook] input[name=name]", "Landing page")
    with page.expect_navigation():
        page.click("form[data-create-webhook] button[type=submit]")
    # The copy button works once settings.js has bound it, at DOMContentLoaded.
    page.wait_for_load_state("domcontentloaded")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("[data-copy-button]")
    playwright_sync.expect(page.locator("[data-copy-status]")).to_have_text("Copied.")
    url = page.locator("[data-copy-source]").input_value()
    assert page.evaluate("navigator.clipboard.readText()") == url
    url = page.locator("[data-copy-source]").input_value()
    assert "/webhooks/leads/whk_" in url
    sent = http.post(url, json={"name": "Walt Web", "email": "walt@web.example"})
    assert sent.status_code == 201, sent.text

    def total() -> bool:
        page.goto("/settings/webhooks")
        row = page.locator("tr[data-webhook-id]", has_text="Landing page")
        return bool(row.locator("[data-total]").inner_text() == "1")

    assert until(total), "the stats did not show the lead"
    # The field mapping: an incoming key to a core field and to a custom field.
    page.locator("tr[data-webhook-id] a", has_text="Landing page").click()
    page.locator("input[name=source]").nth(0).fill("nom")
    page.locator("input[name=target]").nth(0).fill("name")
    page.locator("input[name=source]").nth(1).fill("spend")
    page.locator("input[name=target]").nth(1).fill("nowhere")
    page.click("form[data-webhook-form] button[type=submit]")
    assert "not one of" in page.locator("[data-error=mapping]").inner_text()
    page.locator("input[name=target]").nth(1).fill("custom:budget")
    page.click("form[data-webhook-form] button[type=submit]")
    page.wait_for_url("**saved=1")
    mapped = http.post(url, json={"nom": "Mapped Mo", "spend": "9k", "email": "mo@web.example"})
    assert mapped.status_code == 201, mapped.text
    lead = http.get(f"/v1/leads/{mapped.json()['id']}", headers=shop["headers"]).json()
    assert lead["name"] == "Mapped Mo" and lead["customFields"]["budget"] == "9k"
    # Regenerate the key, after a confirm step: the old URL stops, the new one works.
    page.click("[data-regenerate]")
    page.click("[data-confirm]")
    new_url = page.locator("[data-new-key] [data-copy-source]").input_value()
    assert new_url != url
    assert http.post(url, json={"name": "Old"}).status_code == 401
    assert http.post(new_url, json={"name": "New", "email": "n@web.example"}).status_code == 201
    # Deactivate, then delete (with a confirm).
    page.goto(page.url.split("/regenerate")[0])
    page.uncheck("input[data-active]")
    page.click("form[data-webhook-form] button[type=submit]")
    page.wait_for_url("**saved=1")
    assert http.post(new_url, json={"name": "Off"}).status_code == 401
    page.click("[data-delete]")
    page.click("[data-confirm]")
    page.wait_for_url("**/settings/webhooks")
    assert page.locator("tr[data-webhook-id]", has_text="Landing page").count() == 0


def test_lead_type_with_a_webhook_action(page: Any, shop: dict[str, Any]) -> None:
    sign_in(page, shop["manager"])
    page.wait_for_url("**/")
    page.goto("/settings/lead-types")
    page.click("[data-new-lead-type]")
    page.fill("input[name=name]", "Solar")
    action = page.locator("fieldset[data-action]").first
    action.locator("select[name=a0-type]").select_option("webhook")
    # The form shows the chosen type's fields as it reacts to the change: wait for it.
    expect(action.locator("input[name=a0-url]")).to_be_visible()
    expect(action.locator("input[name=a0-subject]")).to_be_hidden()
    action.locator("select[name=a0-trigger]").select_option("received_not_duplicate")
    action.locator("input[name=a0-name]").fill("Copy to the CRM")
    action.locator("input[name=a0-url]").fill("ftp://crm.example/hook")
    action.locator("input[name=a0-c0-field]").fill("source")
    action.locator("input[name=a0-c0-value]").fill("webhook")
    page.click("[data-save-lead-type]")
    assert "http" in page.locator("[data-error=a0]").inner_text()
    page.locator("input[name=a0-url]").fill("https://crm.example/hook")
    page.click("[data-save-lead-type]")
    secret = page.locator("[data-secrets] input[data-secret]").input_value()
    assert secret.startswith("whsec_")
    found = shop["http"].get("/v1/lead-types", headers=shop["headers"]).json()["items"]
    solar = next(t for t in found if t["name"] == "Solar")
    (hook,) = solar["actions"]
    assert hook["type"] == "webhook" and hook["url"] == "https://crm.example/hook"
    assert hook["trigger"] == "received_not_duplicate" and hook["hasSecret"]
    assert hook["conditions"] == [{"field": "source", "op": "eq", "value": "webhook"}]
    assert solar["default"] is True  # the workspace's first lead type
    # Editing keeps the action (and its secret): no new secret is shown.
    page.goto(f"/settings/lead-types/{solar['id']}")
    page.fill("input[name=name]", "Solar panels")
    page.click("[data-save-lead-type]")
    assert page.locator("[data-secrets]").count() == 0
    again = shop["http"].get(f"/v1/lead-types/{solar['id']}", headers=shop["headers"]).json()
    assert again["name"] == "Solar panels" and again["actions"][0]["id"] == hook["id"]


def test_a_viewer_sees_settings_but_cannot_change_them(page: Any, shop: dict[str, Any]) -> None:
    sign_in(page, shop["viewer"])
    page.wait_for_url("**/")
    pipeline = active(shop)
    types = shop["http"].get("/v1/lead-types", headers=shop["headers"]).json()["items"]
    paths = ["/settings/pipelines", "/settings/webhooks", "/settings/lead-types", "/leads/new"]
    for path in [*paths, *(f"/settings/lead-types/{t['id']}" for t in types)]:
        page.goto(path)
        assert page.locator("[data-read-only]").count() == 1, path
        assert page.locator("main form[method=post]").count() == 0, path
    token = page.evaluate("JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRF-Token']")
    forged = {
        f"/settings/pipelines/{pipeline['id']}/rename": {"name": "Hijacked"},
        f"/settings/pipelines/{pipeline['id']}/activate": {},
        "/settings/pipelines": {"name": "Mine", "stages": "A\nB"},
        "/settings/webhooks": {"name": "Mine"},
        "/settings/lead-types": {"name": "Mine", "count": "0"},
        "/leads/new": {"name": "Sneaky"},
        **{f"/settings/lead-types/{t['id']}/delete": {} for t in types},
    }
    for path, form in forged.items():
        answer = page.request.post(path, form={**form, "csrf_token": token}, max_redirects=0)
        assert answer.status == 403, path
        assert "cannot" in answer.text() or "not change" in answer.text()
    assert active(shop)["name"] == pipeline["name"]
    assert not any(p["name"] == "Mine" for p in pipelines(shop))
