"""The web app in a real browser (Debian's Chromium driven by Playwright) against `leadlog up`
as a process: sign in, the board, refusals, the offline API docs (issue 13)."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import orjson

from tests.engine_process import LEADLOG, EngineProcess
from tests.gateways.web.browsing import (
    ARTIFACTS,
    PASSWORD,
    create_user,
    needs_chromium,
    operator,
    sign_in,
)

pytestmark = needs_chromium


def test_sign_in_shows_the_board_with_the_webhook_leads(page: Any, acme: dict[str, Any]) -> None:
    sign_in(page, acme["email"])
    page.wait_for_url("**/")
    first, second = acme["stages"][:2]
    first_column = page.locator(f"section[data-stage-id='{first}']")
    second_column = page.locator(f"section[data-stage-id='{second}']")
    assert first_column.locator("[data-count]").get_attribute("data-count") == "2"
    assert second_column.locator("[data-count]").get_attribute("data-count") == "1"
    ann, bob, cy = acme["leads"]
    assert first_column.locator(f"[data-lead-id='{ann}']").count() == 1
    assert first_column.locator(f"[data-lead-id='{bob}']").count() == 1
    assert second_column.locator(f"[data-lead-id='{cy}']").count() == 1
    card = first_column.locator(f"[data-lead-id='{ann}']")
    assert "Ann Able" in card.inner_text() and "Able Ltd" in card.inner_text()
    assert "Unassigned" in card.inner_text()
    assert "Mia Manager" in page.locator("header").inner_text()
    # Every column of the active pipeline is there, in order.
    shown = page.locator("section[data-stage-id]").evaluate_all(
        "els => els.map(e => e.dataset.stageId)"
    )
    assert shown == acme["stages"]
    # The search box filters the board (a GET form).
    page.fill("input[name=q]", "baker")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url("**q=baker**")
    assert first_column.locator("[data-count]").get_attribute("data-count") == "1"
    assert page.locator(f"[data-lead-id='{bob}']").count() == 1
    page.goto("/board")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "board.png"), full_page=True)


def test_a_wrong_password_is_refused_then_rate_limited(
    page: Any, engine: EngineProcess, acme: dict[str, Any]
) -> None:
    email = f"eve-{uuid.uuid4().hex[:6]}@acme.example"
    assert create_user(engine, acme["id"], email, role="viewer").returncode == 0
    for _ in range(5):
        sign_in(page, email, "not the password at all")
        assert page.url.endswith("/login")
        assert "not right" in page.locator("[role=alert]").inner_text()
    answer = page.request.get("/")
    assert answer.url.endswith("/login"), "no session was made"
    # The sixth try is refused before the password is even checked: the right one too.
    page.goto("/login")
    with page.expect_response("**/login") as posted:
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
    assert posted.value.status == 429
    assert int(posted.value.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in page.locator("[role=alert]").inner_text()


def test_posts_without_the_csrf_token_change_nothing(page: Any, acme: dict[str, Any]) -> None:
    sign_in(page, acme["email"])
    page.wait_for_url("**/")
    # Sign-out without the token: 403, and the session still works.
    refused = page.request.post("/logout", form={"x": "1"})
    assert refused.status == 403
    wrong = page.request.post("/logout", headers={"X-CSRF-Token": "forged"})
    assert wrong.status == 403
    page.goto("/")
    assert page.url.endswith("/") and page.locator("section[data-stage-id]").count() > 0
    # Sign-in without the form's token is refused too (login CSRF).
    fresh = page.request.post(
        "/login", form={"email": acme["email"], "password": PASSWORD}, max_redirects=0
    )
    assert fresh.status == 403
    # With the token (the page's form), sign-out works and the cookie stops working.
    cookies = page.context.cookies()
    page.click("text=Sign out")
    page.wait_for_url("**/login")
    page.context.add_cookies(cookies)
    page.goto("/board")
    assert "/login" in page.url, "an ended session must not sign anyone in"


def test_signed_out_pages_redirect_to_sign_in(page: Any) -> None:
    for path in ("/", "/board", "/board?q=x"):
        answer = page.request.get(path, max_redirects=0)
        assert answer.status == 303
        assert answer.headers["location"].startswith("/login")
    page.goto("/board")
    assert "/login?next=/board" in page.url
    assert page.locator("input[name=email]").is_visible()
    assert page.locator("input[name=password]").is_visible()


def test_api_docs_render_offline(page: Any) -> None:
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "leadlog" in page.locator(".swagger-ui .info .title").inner_text()
    assert page.locator(".opblock").count() > 10
    page.goto("/redoc")
    page.wait_for_selector("redoc h1, [role=main] h1, h1")
    assert "leadlog" in page.locator("h1").first.inner_text()


def test_a_deactivated_users_session_stops_at_once(
    page: Any, engine: EngineProcess, acme: dict[str, Any]
) -> None:
    email = f"dee-{uuid.uuid4().hex[:6]}@acme.example"
    created = create_user(engine, acme["id"], email)
    assert created.returncode == 0, created.stderr
    user_id = orjson.loads(created.stdout)["id"]
    sign_in(page, email)
    page.wait_for_url("**/")
    gone = acme["http"].delete(f"/v1/users/{user_id}", headers=operator(engine, acme["id"]))
    assert gone.status_code == 200, gone.text
    page.goto("/board")
    assert "/login" in page.url


def test_the_cli_refuses_a_short_password(engine: EngineProcess, acme: dict[str, Any]) -> None:
    refused = subprocess.run(
        [LEADLOG, "users", "create", "--workspace", acme["id"], "--email", "s@acme.example",
         "--name", "S", "--password-stdin"],
        input="short\n", env=engine.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "at least 10 characters" in refused.stderr
