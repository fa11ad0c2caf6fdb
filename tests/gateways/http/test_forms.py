"""Hosted lead forms: CRUD over the API, the public HTML page, submissions, honeypot, escaping."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from domain.forms import HONEYPOT, SUBMISSION_TOKEN, FormSettings, read_submission
from domain.submissions import Submission
from gateways.bootstrap import Engine
from tests.conftest import OPERATOR, bearer, make_campaign

FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "Formco"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"]}


def auth(workspace: dict[str, str]) -> dict[str, str]:
    return bearer(workspace["token"])


QUOTE_FORM: dict[str, Any] = {
    "name": "Get a quote",
    "fields": [
        {"key": "name", "label": "Your name", "required": True},
        {"key": "email", "required": True},
        {"key": "phone"},
        {"key": "message"},
        {"key": "roofType", "label": "Roof type", "required": True},
    ],
    "thankYouMessage": "Thanks, we will call you.",
}


async def create_form(
    client: httpx.AsyncClient, workspace: dict[str, str], **overrides: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v1/lead-forms", json={**QUOTE_FORM, **overrides}, headers=auth(workspace)
    )
    assert response.status_code == 201, response.text
    form: dict[str, Any] = response.json()
    return form


class Tags(HTMLParser):
    """Every start tag with its attributes, to assert on structure rather than on strings."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def token_of(html: str) -> str:
    found = parse(html).find("input", name=SUBMISSION_TOKEN)
    value = found[0]["value"]
    assert value
    return value


async def test_crud(client: httpx.AsyncClient, workspace: dict[str, str]) -> None:
    form = await create_form(client, workspace)
    assert form["url"] == f"/forms/{form['formKey']}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", form["formKey"])
    assert form["embed"].startswith("<iframe ")
    assert f'src="http://leadlog.test/forms/{form["formKey"]}"' in form["embed"]
    assert 'title="Get a quote"' in form["embed"]
    assert form["position"] > 0

    listed = await client.get("/v1/lead-forms", headers=auth(workspace))
    assert [f["id"] for f in listed.json()["items"]] == [form["id"]]
    fetched = await client.get(f"/v1/lead-forms/{form['id']}", headers=auth(workspace))
    assert fetched.json()["name"] == "Get a quote"
    assert fetched.json()["fields"][4] == {
        "key": "roofType",
        "label": "Roof type",
        "required": True,
    }

    patched = await client.patch(
        f"/v1/lead-forms/{form['id']}",
        json={"name": "Quote", "redirectUrl": "https://example.com/thanks"},
        headers=auth(workspace),
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Quote"
    assert patched.json()["redirectUrl"] == "https://example.com/thanks"
    assert patched.json()["thankYouMessage"] == "Thanks, we will call you."

    rotated = await client.post(
        f"/v1/lead-forms/{form['id']}/regenerate-key", headers=auth(workspace)
    )
    assert rotated.json()["formKey"] != form["formKey"]
    assert (await client.get(form["url"])).status_code == 404
    assert (await client.get(rotated.json()["url"])).status_code == 200

    deleted = await client.delete(f"/v1/lead-forms/{form['id']}", headers=auth(workspace))
    assert deleted.status_code == 200
    assert (await client.get(rotated.json()["url"])).status_code == 404
    gone = await client.get(f"/v1/lead-forms/{form['id']}", headers=auth(workspace))
    assert gone.status_code == 404
    assert (await client.get("/v1/lead-forms", headers=auth(workspace))).json()["items"] == []


async def test_forms_are_private_to_their_workspace(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    form = await create_form(client, workspace)
    other = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
    token = await client.post(
        f"/v1/workspaces/{other.json()['id']}/tokens", json={"role": "admin"}, headers=OPERATOR
    )
    stranger = bearer(token.json()["token"])
    assert (await client.get(f"/v1/lead-forms/{form['id']}", headers=stranger)).status_code == 404
    patch = await client.patch(f"/v1/lead-forms/{form['id']}", json={"name": "x"}, headers=stranger)
    assert patch.status_code == 404
    assert (await client.get("/v1/lead-forms", headers=stranger)).json()["items"] == []
    viewer = await client.post(
        f"/v1/workspaces/{workspace['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    refused = await client.post(
        "/v1/lead-forms", json=QUOTE_FORM, headers=bearer(viewer.json()["token"])
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"redirectUrl": "javascript:alert(1)"}, "http"),
        ({"redirectUrl": "//evil.test/x"}, "http"),
        ({"redirectUrl": "ftp://x.test/"}, "http"),
        ({"fields": []}, "at least 1"),
        ({"fields": [{"key": "email"}, {"key": "email"}]}, "repeated"),
        ({"fields": [{"key": "roofType"}]}, "label"),
        ({"fields": [{"key": "homepage", "label": "Site"}]}, "homepage"),
        ({"fields": [{"key": "bad key!", "label": "x"}]}, "custom field key"),
        ({"fields": [{"key": "email", "type": "textarea"}]}, "always shown"),
        ({"name": " "}, "empty"),
        ({"surprise": 1}, "extra"),
    ],
)
async def test_invalid_settings_are_refused(
    client: httpx.AsyncClient,
    workspace: dict[str, str],
    engine: Engine,
    change: dict[str, Any],
    problem: str,
) -> None:
    before = await engine.store.max_position()
    response = await client.post(
        "/v1/lead-forms", json={**QUOTE_FORM, **change}, headers=auth(workspace)
    )
    assert response.status_code == 422, response.text
    assert problem.lower() in response.text.lower()
    assert await engine.store.max_position() == before


async def test_page_is_accessible_html(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    form = await create_form(client, workspace)
    page = await client.get(form["url"] + "?utm_source=news&utm_campaign=spring&evil=1")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script" not in page.headers["content-security-policy"]
    html = page.text
    assert html.startswith("<!doctype html>")
    tags = parse(html)
    assert tags.find("html", lang="en")
    assert tags.find("meta", name="viewport")
    assert ":focus-visible" in html
    assert "<script" not in html
    for key, autocomplete in [("name", "name"), ("email", "email"), ("phone", "tel")]:
        (field,) = tags.find("input", name=key)
        assert field["id"] == f"field-{key}"
        assert field["autocomplete"] == autocomplete
        assert tags.find("label", **{"for": f"field-{key}"})
    assert tags.find("input", name="email")[0]["type"] == "email"
    assert tags.find("input", name="phone")[0]["type"] == "tel"
    (name_field,) = tags.find("input", name="name")
    assert "required" in name_field and name_field["aria-required"] == "true"
    assert "required" not in tags.find("input", name="phone")[0]
    assert tags.find("textarea", name="message", id="field-message")
    assert tags.find("label", **{"for": "field-roofType"})
    (honeypot,) = tags.find("input", name=HONEYPOT)
    assert honeypot["tabindex"] == "-1" and honeypot["autocomplete"] == "off"
    assert tags.find("div", **{"class": "hp", "aria-hidden": "true"})
    assert tags.find("input", type="hidden", name="utm_source", value="news")
    assert not tags.find("input", name="evil")
    (form_tag,) = tags.find("form")
    assert form_tag["method"] == "post" and form_tag["action"] == form["url"]
    assert tags.find("button", type="submit")
    assert 'role="alert"' not in html


async def test_submission_creates_a_lead(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    campaign = await make_campaign(client, auth(workspace))
    form = await create_form(client, workspace, campaignId=campaign)
    page = await client.get(form["url"] + "?utm_source=news")
    token = token_of(page.text)
    fields = {
        "name": "Ann Lee",
        "email": "ann@example.com",
        "phone": "(415) 555-2671",
        "message": "Call me\nafter 5",
        "roofType": "flat",
        HONEYPOT: "",
        SUBMISSION_TOKEN: token,
        "utm_source": "news",
    }
    response = await client.post(form["url"], data=fields)
    assert response.status_code == 200, response.text
    assert "Thanks, we will call you." in response.text
    assert 'role="status"' in response.text

    logged = await engine.store.read(0, 1000, ["lead.received"])
    assert len(logged) == 1
    lead_id = logged[0].event.originator_id
    lead = (await client.get(f"/v1/leads/{lead_id}", headers=auth(workspace))).json()
    assert lead["name"] == "Ann Lee"
    assert lead["email"] == "ann@example.com"
    assert lead["source"] == "form"
    assert lead["description"] == "Call me\nafter 5"
    assert lead["campaignId"] == campaign
    assert lead["customFields"] == {"roofType": "flat", "_displayNames": {"roofType": "Roof type"}}
    assert lead["attribution"] == {"utm_source": "news"}
    assert getattr(logged[0].event, "channel", None) == f"form:{form['id']}"
    (sent,) = await engine.store.read(0, 1000, ["submission.created"])
    assert isinstance(sent.event, Submission.Created)
    assert (sent.event.lead_id, str(sent.event.campaign_id)) == (lead_id, campaign)
    assert sent.event.origin == "form"

    # the browser re-sends the same page (refresh after POST): nothing new is written
    before = await engine.store.max_position()
    again = await client.post(form["url"], data=fields)
    assert again.status_code == 200
    assert await engine.store.max_position() == before


async def test_the_form_name_stands_in_for_a_missing_name(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(
        client, workspace, fields=[{"key": "company"}, {"key": "message", "required": True}]
    )
    response = await client.post(form["url"], data={"message": "hello"})
    assert response.status_code == 200, response.text
    (logged,) = await engine.store.read(0, 1000, ["lead.received"])
    lead = (
        await client.get(f"/v1/leads/{logged.event.originator_id}", headers=auth(workspace))
    ).json()
    assert lead["name"] == "Get a quote"


async def test_honeypot_records_nothing_and_says_thank_you(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(client, workspace)
    before = await engine.store.max_position()
    response = await client.post(
        form["url"],
        data={"name": "Bot", "email": "bot@spam.test", "roofType": "x", HONEYPOT: "http://spam"},
    )
    assert response.status_code == 200
    assert "Thanks, we will call you." in response.text
    assert await engine.store.max_position() == before


async def test_missing_required_fields_show_the_form_again(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(client, workspace)
    before = await engine.store.max_position()
    response = await client.post(
        form["url"], data={"name": "Ann <b>Lee</b>", "email": "", "phone": "555"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    tags = parse(html)
    assert tags.find("div", role="alert")
    assert tags.find("a", href="#field-email") and tags.find("a", href="#field-roofType")
    assert "Email is required" in html and "Roof type is required" in html
    (email,) = tags.find("input", name="email")
    assert email["aria-invalid"] == "true"
    assert email["aria-describedby"] == "field-email-error"
    assert tags.find("p", id="field-email-error")
    assert tags.find("input", name="name")[0]["value"] == "Ann <b>Lee</b>"
    assert "Ann &lt;b&gt;Lee&lt;/b&gt;" in html
    assert tags.find("input", name="phone")[0]["value"] == "555"
    assert "aria-invalid" not in tags.find("input", name="phone")[0]
    assert html.count("<title>Error: ") == 1
    assert await engine.store.max_position() == before


async def test_redirect_form_answers_303(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(client, workspace, redirectUrl="https://example.com/thanks?from=form")
    page = await client.get(form["url"])
    assert "https://example.com" in page.headers["content-security-policy"]
    response = await client.post(
        form["url"], data={"name": "A", "email": "a@x.test", "roofType": "flat"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == "https://example.com/thanks?from=form"
    assert len(await engine.store.read(0, 100, ["lead.received"])) == 1
    bot = await client.post(
        form["url"], data={"name": "B", "email": "b@x.test", "roofType": "x", HONEYPOT: "y"}
    )
    assert bot.status_code == 303


async def test_unknown_inactive_and_malformed_keys_are_404_html(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    for key in ["nope", "A" * 24, "a/b/c", "%3Cscript%3E"]:
        response = await client.get(f"/forms/{key}")
        assert response.status_code == 404, key
        assert response.headers["content-type"].startswith("text/html")
        assert "<script>" not in response.text
        posted = await client.post(f"/forms/{key}", data={"name": "x"})
        assert posted.status_code == 404
    form = await create_form(client, workspace)
    await client.patch(
        f"/v1/lead-forms/{form['id']}", json={"active": False}, headers=auth(workspace)
    )
    before = await engine.store.max_position()
    assert (await client.get(form["url"])).status_code == 404
    posted = await client.post(form["url"], data={"name": "x", "email": "e", "roofType": "r"})
    assert posted.status_code == 404
    assert await engine.store.max_position() == before


async def test_custom_labels_and_values_are_escaped(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    attack = '"><script>alert(1)</script>'
    form = await create_form(
        client,
        workspace,
        name=f"Quote {attack}",
        fields=[
            {"key": "name", "label": f"Name {attack}"},
            {"key": "notes", "label": f"Notes {attack}", "required": True, "type": "textarea"},
        ],
        thankYouMessage=f"Thanks {attack}",
        submitLabel=f"Go {attack}",
    )
    assert "<script>" not in form["embed"]
    page = await client.get(form["url"] + f"?utm_source={attack}")
    invalid = await client.post(
        form["url"], data={"name": attack, "notes": "", "utm_source": attack}
    )
    thanks = await client.post(form["url"], data={"name": attack, "notes": f"</textarea>{attack}"})
    for response in (page, invalid, thanks):
        assert "<script>" not in response.text
        assert "&lt;script&gt;" in response.text
    assert invalid.status_code == 422
    assert thanks.status_code == 200
    (logged,) = await engine.store.read(0, 100, ["lead.received"])
    lead = (
        await client.get(f"/v1/leads/{logged.event.originator_id}", headers=auth(workspace))
    ).json()
    assert lead["customFields"]["notes"] == f"</textarea>{attack}"  # stored as given


async def test_bad_submissions_get_html_errors(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(client, workspace)
    before = await engine.store.max_position()
    cases = [
        (b"name=x", "application/json", 415),
        (b"name=caf\xe9&email=a&roofType=r", "application/x-www-form-urlencoded", 400),
        (b"&".join(b"f%d=1" % i for i in range(600)), "application/x-www-form-urlencoded", 422),
        (b"name=" + b"x" * 70_000, "application/x-www-form-urlencoded", 413),
    ]
    for body, content_type, status in cases:
        response = await client.post(
            form["url"], content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == status, (body[:40], response.text)
        assert response.headers["content-type"].startswith("text/html"), body[:40]
    too_long = await client.post(
        form["url"], data={"name": "x" * 600, "email": "a@b.c", "roofType": "r"}
    )
    assert too_long.status_code == 422
    assert "at most 500 characters" in too_long.text
    assert await engine.store.max_position() == before


def test_reading_a_submission_is_pure() -> None:
    settings = FormSettings.model_validate(
        {
            "name": "F",
            "fields": [
                {"key": "email", "required": True},
                {"key": "size", "label": "Size (m²)", "type": "number"},
            ],
        }
    )
    good = read_submission(settings, {"email": " a@b.c ", "size": "1,200.5"})
    assert good.valid
    assert good.data == {
        "email": "a@b.c",
        "customFields": {"size": "1,200.5"},
        "displayNames": {"size": "Size (m²)"},
    }
    bad = read_submission(settings, {"email": ["", "x"], "size": "lots"})
    assert bad.errors == {"email": "Email is required", "size": "Size (m²) must be a number"}


async def test_percent_encoded_invalid_utf8_is_refused(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    form = await create_form(client, workspace)
    before = await engine.store.max_position()
    response = await client.post(
        form["url"], content=b"name=%ff%fe&email=a%40b.test&roofType=flat", headers=FORM_TYPE
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "not valid UTF-8" in response.text and "name" in response.text
    assert await engine.store.max_position() == before


async def test_the_campaign_must_be_one_of_the_workspace(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    other = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
    token = await client.post(
        f"/v1/workspaces/{other.json()['id']}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    theirs = await make_campaign(client, bearer(token.json()["token"]))
    form = await create_form(client, workspace)
    before = await engine.store.max_position()
    for campaign in (str(uuid.uuid4()), theirs):
        created = await client.post(
            "/v1/lead-forms", json={**QUOTE_FORM, "campaignId": campaign}, headers=auth(workspace)
        )
        changed = await client.patch(
            f"/v1/lead-forms/{form['id']}", json={"campaignId": campaign}, headers=auth(workspace)
        )
        for refused in (created, changed):
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["code"] == "unknown_campaign"
    assert await engine.store.max_position() == before
    ours = await make_campaign(client, auth(workspace))
    changed = await client.patch(
        f"/v1/lead-forms/{form['id']}", json={"campaignId": ours}, headers=auth(workspace)
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["campaignId"] == ours
