"""Inbound webhooks through HTTP against the real app: settings, keys, every format, bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest

from gateways.bootstrap import Engine
from gateways.http.middleware import redact
from gateways.workers import build_workers
from tests.conftest import OPERATOR, bearer
from tests.domain.test_mapping import (
    GOOGLE_LEAD,
    GRAVITY_ENTRY,
    GRAVITY_WITH_FORM,
    HUBSPOT_SUBMISSION,
    MAKE,
    META_LEAD,
    META_WEBHOOK,
    TYPEFORM,
    UNBOUNCE_FORM,
    ZAPIER,
)

Workspace = dict[str, str]


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> Workspace:
    created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"]}


def auth(workspace: Workspace) -> dict[str, str]:
    return bearer(workspace["token"])


async def create(client: httpx.AsyncClient, workspace: Workspace, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/lead-webhooks", json={"name": "Landing page", **body}, headers=auth(workspace)
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def post_json(
    client: httpx.AsyncClient, api_key: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(f"/webhooks/leads/{api_key}", json=body, headers=headers)


async def post_form(
    client: httpx.AsyncClient, api_key: str, fields: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(
        f"/webhooks/leads/{api_key}",
        content=urlencode(fields, doseq=True),
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )


async def lead_of(
    client: httpx.AsyncClient, workspace: Workspace, response: httpx.Response
) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    got = await client.get(f"/v1/leads/{response.json()['id']}", headers=auth(workspace))
    assert got.status_code == 200, got.text
    lead: dict[str, Any] = got.json()
    return lead


# ---- managing webhooks ----------------------------------------------------------------------


async def test_create_list_get_update_delete(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    created = await create(
        client, workspace, fieldMapping={"Work Email": "email"}, sourceFormat="typeform"
    )
    api_key = created["apiKey"]
    assert api_key.startswith("whk_") and len(api_key) > 40
    assert created["url"] == f"http://leadlog.test/webhooks/leads/{api_key}"
    assert created["apiKeyHint"] == api_key[:8]
    assert created["name"] == "Landing page"
    assert created["fieldMapping"] == {"Work Email": "email"}
    assert created["sourceFormat"] == "typeform"
    assert created["active"] is True
    assert created["workspaceId"] == workspace["id"]
    assert created["position"] > 0

    other = await create(client, workspace, name="Partner feed")
    listed = (await client.get("/v1/lead-webhooks", headers=auth(workspace))).json()
    assert listed["total"] == 2
    assert [w["name"] for w in listed["items"]] == ["Landing page", "Partner feed"]
    assert api_key not in json.dumps(listed)  # the key is shown once, never again

    one = await client.get(f"/v1/lead-webhooks/{created['id']}", headers=auth(workspace))
    assert one.status_code == 200
    assert one.json()["apiKeyHint"] == created["apiKeyHint"] and "apiKey" not in one.json()

    patched = await client.patch(
        f"/v1/lead-webhooks/{created['id']}",
        json={"name": "Renamed", "fieldMapping": {"cell": "phone"}, "active": False},
        headers=auth(workspace),
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["fieldMapping"], body["active"]) == (
        "Renamed",
        {"cell": "phone"},
        False,
    )
    assert body["sourceFormat"] == "typeform"  # not named: kept
    assert body["position"] > created["position"]

    auto = await client.patch(
        f"/v1/lead-webhooks/{created['id']}", json={"sourceFormat": None}, headers=auth(workspace)
    )
    assert auto.json()["sourceFormat"] is None
    unchanged = await client.patch(
        f"/v1/lead-webhooks/{created['id']}", json={"name": "Renamed"}, headers=auth(workspace)
    )
    assert unchanged.json()["position"] == 0

    listed = (await client.get("/v1/lead-webhooks", headers=auth(workspace))).json()
    first = next(w for w in listed["items"] if w["id"] == created["id"])
    assert (first["name"], first["active"], first["sourceFormat"]) == ("Renamed", False, None)
    assert first["fieldMapping"] == {"cell": "phone"}

    deleted = await client.delete(f"/v1/lead-webhooks/{created['id']}", headers=auth(workspace))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    gone = await client.get(f"/v1/lead-webhooks/{created['id']}", headers=auth(workspace))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    again = await client.delete(f"/v1/lead-webhooks/{created['id']}", headers=auth(workspace))
    assert again.status_code == 404
    listed = (await client.get("/v1/lead-webhooks", headers=auth(workspace))).json()
    assert [w["id"] for w in listed["items"]] == [other["id"]]


async def test_settings_are_validated(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    before = await engine.store.max_position()
    cases: list[tuple[Any, int, str]] = [
        ({"name": ""}, 422, "validation_failed"),
        ({"name": "x" * 201}, 422, "validation_failed"),
        ({"name": "bad\u0000name"}, 422, "validation_failed"),
        ({"name": "x", "fieldMapping": {"k": "nonsense"}}, 422, "invalid_field_mapping"),
        ({"name": "x", "fieldMapping": {"k\u0001": "email"}}, 422, "invalid_field_mapping"),
        ({"name": "x", "sourceFormat": "myspace"}, 422, "validation_failed"),
        ({"name": "x", "surprise": 1}, 422, "validation_failed"),
        ([1], 422, "not_an_object"),
    ]
    for body, status, code in cases:
        response = await client.post("/v1/lead-webhooks", json=body, headers=auth(workspace))
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
    as_text = await client.post(
        "/v1/lead-webhooks",
        content=b'{"name": "x"}',
        headers={**auth(workspace), "Content-Type": "text/plain"},
    )
    assert as_text.status_code == 415
    created = await create(client, workspace)
    before = await engine.store.max_position()
    bad_patch = await client.patch(
        f"/v1/lead-webhooks/{created['id']}",
        json={"fieldMapping": {"x": "shoe size"}},
        headers=auth(workspace),
    )
    assert bad_patch.status_code == 422
    assert await engine.store.max_position() == before


async def test_permissions_and_other_workspaces(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    created = await create(client, workspace)
    viewer = await client.post(
        f"/v1/workspaces/{workspace['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    as_viewer = bearer(viewer.json()["token"])
    assert (await client.get("/v1/lead-webhooks", headers=as_viewer)).status_code == 200
    assert (
        await client.get(f"/v1/lead-webhooks/{created['id']}", headers=as_viewer)
    ).status_code == 200
    refused = await client.post("/v1/lead-webhooks", json={"name": "x"}, headers=as_viewer)
    assert refused.status_code == 403
    assert (
        await client.post(f"/v1/lead-webhooks/{created['id']}/regenerate-key", headers=as_viewer)
    ).status_code == 403
    assert (await client.get("/v1/lead-webhooks")).status_code == 401

    other = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
    token = await client.post(
        f"/v1/workspaces/{other.json()['id']}/tokens", json={"role": "admin"}, headers=OPERATOR
    )
    stranger = bearer(token.json()["token"])
    path = f"/v1/lead-webhooks/{created['id']}"
    for response in (
        await client.get(path, headers=stranger),
        await client.patch(path, json={"name": "mine"}, headers=stranger),
        await client.post(f"{path}/regenerate-key", headers=stranger),
        await client.delete(path, headers=stranger),
        await client.get(f"/v1/lead-webhooks/{uuid.uuid4()}", headers=stranger),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.get("/v1/lead-webhooks", headers=stranger)).json() == {
        "items": [],
        "total": 0,
    }
    # the operator names the workspace
    as_operator = await client.get(
        "/v1/lead-webhooks", headers={**OPERATOR, "X-Workspace-Id": workspace["id"]}
    )
    assert as_operator.json()["total"] == 1
    assert (await client.get(path, headers=auth(workspace))).json()["name"] == "Landing page"


async def test_openapi_documents_the_bodies(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    create_body = paths["/v1/lead-webhooks"]["post"]["requestBody"]["content"]
    properties = create_body["application/json"]["schema"]["properties"]
    assert {"name", "fieldMapping", "sourceFormat", "active"} <= properties.keys()
    assert "$ref" not in json.dumps(properties)
    ingest = paths["/webhooks/leads/{api_key}"]["post"]["requestBody"]["content"]
    assert set(ingest) == {"application/json", "application/x-www-form-urlencoded"}


# ---- receiving leads ------------------------------------------------------------------------


async def test_ingest_json(client: httpx.AsyncClient, workspace: Workspace) -> None:
    webhook = await create(client, workspace)
    response = await post_json(
        client,
        webhook["apiKey"],
        {
            "first_name": "Ann",
            "last_name": "Lee",
            "Email Address": "ann@example.com",
            "mobile": "(415) 555-2671",
            "company_name": "Lee & Co",
            "Roof Type": "flat",
            "utm_source": "google",
            "gclid": "abc",
        },
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["requestId"] == 1
    assert receipt["isDuplicate"] is False
    assert receipt["position"] > 0
    assert receipt["format"] == "generic"
    assert receipt["replayed"] is False
    lead = await lead_of(client, workspace, response)
    assert (lead["name"], lead["email"], lead["phone"], lead["company"]) == (
        "Ann Lee",
        "ann@example.com",
        "(415) 555-2671",
        "Lee & Co",
    )
    assert lead["source"] == "webhook"
    assert lead["customFields"] == {"roofType": "flat", "_displayNames": {"roofType": "Roof Type"}}
    assert lead["attribution"] == {"utm_source": "google", "gclid": "abc"}
    assert lead["emailValid"] is True and lead["phoneValid"] is True


async def test_ingest_form_encoded(client: httpx.AsyncClient, workspace: Workspace) -> None:
    webhook = await create(client, workspace)
    response = await post_form(
        client,
        webhook["apiKey"],
        {"your-name": "Bo Chen", "your-email": "bo@chen.test", "interests": ["solar", "wind"]},
    )
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "generic"
    lead = await lead_of(client, workspace, response)
    assert (lead["name"], lead["email"]) == ("Bo Chen", "bo@chen.test")
    assert lead["customFields"]["interests"] == ["solar", "wind"]


@pytest.mark.parametrize(
    ("payload", "form_encoded", "fmt", "expected"),
    [
        (META_LEAD, False, "meta_lead_ads", ("Joe Example", "joe@example.com", "+15555550123")),
        (META_WEBHOOK, False, "meta_lead_ads", ("Ann Lee", "ann@lee.test", None)),
        (GOOGLE_LEAD, False, "google_ads", ("FirstName LastName", "test@example.com", None)),
        (HUBSPOT_SUBMISSION, False, "hubspot", ("Jeff Example", "example@example.com", None)),
        (TYPEFORM, False, "typeform", ("Laura Diaz", "laura@example.com", "+34612345678")),
        (UNBOUNCE_FORM, True, "unbounce", ("Sam Smith", "test@test.com", "604-555-0199")),
        (GRAVITY_ENTRY, False, "gravity_forms", ("Ann Lee", "ann@example.com", "(415) 555-2671")),
        (GRAVITY_WITH_FORM, False, "gravity_forms", ("Bo Chen", "bo@example.com", None)),
        (ZAPIER, False, "generic", ("Mia Wong", "mia@wong.test", "+1 212 555 0100")),
        (ZAPIER, True, "generic", ("Mia Wong", "mia@wong.test", "+1 212 555 0100")),
        (MAKE, False, "generic", ("Leo Ruiz", "leo@ruiz.test", "+34 600 000 000")),
    ],
)
async def test_each_source_format_end_to_end(
    client: httpx.AsyncClient,
    workspace: Workspace,
    payload: dict[str, Any],
    form_encoded: bool,
    fmt: str,
    expected: tuple[str, str, str | None],
) -> None:
    webhook = await create(client, workspace)
    if form_encoded:
        response = await post_form(client, webhook["apiKey"], payload)
    else:
        response = await post_json(client, webhook["apiKey"], payload)
    assert response.status_code == 201, response.text
    assert response.json()["format"] == fmt
    lead = await lead_of(client, workspace, response)
    name, email, phone = expected
    assert (lead["name"], lead["email"]) == (name, email)
    if phone:
        assert lead["phone"] == phone
    assert lead["source"] == "webhook"
    assert lead["customFields"]["_displayNames"].keys() == (
        lead["customFields"].keys() - {"_displayNames"}
    )


async def test_provider_details_land_in_the_lead(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace)
    google = await lead_of(
        client, workspace, await post_json(client, webhook["apiKey"], GOOGLE_LEAD)
    )
    assert (google["company"], google["title"]) == ("CompanyName", "JobTitle")
    assert google["attribution"]["gclid"] == "EAIaIQobChMI-gclid"
    assert google["attribution"]["google_lead_id"] == GOOGLE_LEAD["lead_id"]
    assert google["customFields"]["city"] == "Mountain View"
    assert google["customFields"]["_displayNames"]["city"] == "City"
    assert "the-shared-secret" not in json.dumps(google)

    typeform = await lead_of(
        client, workspace, await post_json(client, webhook["apiKey"], TYPEFORM)
    )
    assert typeform["customFields"]["readableRefDropdown"] == "Barcelona"
    assert typeform["customFields"]["_displayNames"]["readableRefDropdown"] == "Which city?"
    assert typeform["attribution"]["typeform_token"] == "a3a12ec67a1365927098a606107fac15"

    meta = await lead_of(client, workspace, await post_json(client, webhook["apiKey"], META_LEAD))
    assert meta["attribution"]["meta_leadgen_id"] == "444444444444"
    assert meta["consent"] == {"marketing_optin": "1"}


async def test_field_mapping_and_pinned_format(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace, fieldMapping={"contact.alt": "phone"})
    mapped = await post_json(
        client, webhook["apiKey"], {"name": "Zed", "contact": {"alt": "+1 415 555 0199"}}
    )
    assert (await lead_of(client, workspace, mapped))["phone"] == "+1 415 555 0199"

    pinned = await create(client, workspace, name="Typeform", sourceFormat="typeform")
    before = await engine.store.max_position()
    mismatch = await post_json(client, pinned["apiKey"], {"email": "a@b.test"})
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["code"] == "format_mismatch"
    assert await engine.store.max_position() == before
    fits = await post_json(client, pinned["apiKey"], TYPEFORM)
    assert fits.status_code == 201 and fits.json()["format"] == "typeform"


async def test_webhook_name_is_the_fallback_name(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace, name="Expo scanner")
    response = await post_json(client, webhook["apiKey"], {"badge": "A-113"})
    lead = await lead_of(client, workspace, response)
    assert lead["name"] == "Expo scanner"
    assert lead["customFields"]["badge"] == "A-113"


async def test_invalid_email_and_phone_are_kept_and_flagged(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace)
    response = await post_json(
        client, webhook["apiKey"], {"name": "X", "email": "not-an-email", "phone": "12"}
    )
    lead = await lead_of(client, workspace, response)
    assert (lead["email"], lead["emailValid"]) == ("not-an-email", False)
    assert (lead["phone"], lead["phoneValid"]) == ("12", False)


async def test_duplicates_across_webhooks(client: httpx.AsyncClient, workspace: Workspace) -> None:
    one = await create(client, workspace, name="One")
    two = await create(client, workspace, name="Two")
    first = await post_json(client, one["apiKey"], {"email": "Same@Example.com"})
    second = await post_json(client, two["apiKey"], {"e-mail": " same@example.com"})
    assert first.json()["isDuplicate"] is False
    assert second.json()["isDuplicate"] is True
    assert second.json()["duplicateOf"] == first.json()["id"]
    assert second.json()["requestId"] == 2


# ---- keys: regenerate, delete, deactivate ---------------------------------------------------


async def test_regenerated_key_stops_the_old_url_at_once(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace)
    old = webhook["apiKey"]
    assert (await post_json(client, old, {"name": "before"})).status_code == 201
    regenerated = await client.post(
        f"/v1/lead-webhooks/{webhook['id']}/regenerate-key", headers=auth(workspace)
    )
    assert regenerated.status_code == 200, regenerated.text
    new = regenerated.json()["apiKey"]
    assert new != old and regenerated.json()["url"].endswith(f"/webhooks/leads/{new}")
    assert regenerated.json()["apiKeyHint"] == new[:8]
    rotated = await post_json(client, old, {"name": "after"})
    unknown = await post_json(client, "whk_" + "x" * 43, {"name": "after"})
    garbage = await post_json(client, "nonsense", {"name": "after"})
    assert rotated.status_code == unknown.status_code == garbage.status_code == 401
    assert rotated.content == unknown.content == garbage.content
    assert rotated.json()["error"]["code"] == "unauthorized"
    assert (await post_json(client, new, {"name": "after"})).status_code == 201


async def test_deleted_webhook_refuses_and_its_leads_stay(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace)
    received = await post_json(client, webhook["apiKey"], {"name": "Kept"})
    deleted = await client.delete(f"/v1/lead-webhooks/{webhook['id']}", headers=auth(workspace))
    assert deleted.status_code == 200
    refused = await post_json(client, webhook["apiKey"], {"name": "Late"})
    unknown = await post_json(client, "whk_" + "y" * 43, {"name": "Late"})
    assert refused.status_code == 401 and refused.content == unknown.content
    assert (await lead_of(client, workspace, received))["name"] == "Kept"


async def test_inactive_webhook_refuses_until_reactivated(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace, active=False)
    refused = await post_json(client, webhook["apiKey"], {"name": "x"})
    unknown = await post_json(client, "whk_" + "z" * 43, {"name": "x"})
    assert refused.status_code == 401 and refused.content == unknown.content
    await client.patch(
        f"/v1/lead-webhooks/{webhook['id']}", json={"active": True}, headers=auth(workspace)
    )
    assert (await post_json(client, webhook["apiKey"], {"name": "x"})).status_code == 201


# ---- retries --------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_first_result(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    headers = {"Idempotency-Key": "retry-1"}
    first = await post_json(client, webhook["apiKey"], {"name": "Once"}, **headers)
    before = await engine.store.max_position()
    retries = await asyncio.gather(
        *(post_json(client, webhook["apiKey"], {"name": "Once"}, **headers) for _ in range(10))
    )
    assert {r.status_code for r in retries} == {201}
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert all(r.json()["replayed"] for r in retries)
    assert await engine.store.max_position() == before


async def test_provider_lead_ids_dedupe_provider_retries(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    first = await post_json(client, webhook["apiKey"], GOOGLE_LEAD)
    before = await engine.store.max_position()
    retry = await post_json(client, webhook["apiKey"], GOOGLE_LEAD)
    assert retry.json()["id"] == first.json()["id"] and retry.json()["replayed"] is True
    assert await engine.store.max_position() == before
    other_lead = await post_json(client, webhook["apiKey"], {**GOOGLE_LEAD, "lead_id": "another"})
    assert other_lead.json()["id"] != first.json()["id"]


# ---- bad input ------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {"name": "deep"}
    node = root
    for _ in range(depth):
        node["n"] = {}
        node = node["n"]
    return root


async def test_bad_input_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    url = f"/webhooks/leads/{webhook['apiKey']}"
    json_type, form_type = "application/json", "application/x-www-form-urlencoded"
    many_json = b"{" + b",".join(f'"f{i}": {i}'.encode() for i in range(501)) + b"}"
    many_form = "&".join(f"f{i}={i}" for i in range(600)).encode()
    cases: list[tuple[bytes, str | None, int, str]] = [
        (b"{nope", json_type, 400, "malformed_json"),
        (b"", json_type, 400, "empty_body"),
        (b"[1, 2]", json_type, 422, "not_an_object"),
        (b'"just a string"', json_type, 422, "not_an_object"),
        (b"42", json_type, 422, "not_an_object"),
        (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"name": "x"}', "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
        (b'{"name": "x"}', None, 415, "unsupported_media_type"),
        (b'{"name": "' + b"x" * 70_000 + b'"}', json_type, 413, "payload_too_large"),
        (orjson.dumps(_nested(40)), json_type, 422, "too_deep"),
        (many_json, json_type, 422, "too_many_fields"),
        (many_form, form_type, 422, "too_many_fields"),
        (b'{"name": "caf\xe9"}', json_type, 400, "invalid_utf8"),
        (b"name=caf\xe9", form_type, 400, "invalid_utf8"),
        (b'{"name": "\\ud800"}', json_type, 400, "malformed_json"),
        (b"page_id=p&data.json=%7Bnope", form_type, 400, "malformed_json"),
        (b"page_id=p&data.json=%5B1%5D", form_type, 422, "not_an_object"),
    ]
    before = await engine.store.max_position()
    for body, content_type, status, code in cases:
        headers = {"Content-Type": content_type} if content_type else {}
        response = await client.post(url, content=body, headers=headers)
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["error"]["code"] == code, body[:60]
        assert await engine.store.max_position() == before, body[:60]
    batch = json.loads(json.dumps(META_WEBHOOK))
    batch["entry"].append(batch["entry"][0])
    several = await post_json(client, webhook["apiKey"], batch)
    assert several.status_code == 422 and several.json()["error"]["code"] == "multiple_leads"
    too_many_tags = await post_json(client, webhook["apiKey"], {"tags": list(range(150))})
    assert too_many_tags.status_code == 422
    assert too_many_tags.json()["error"]["code"] == "validation_failed"
    bad_key = await post_json(client, webhook["apiKey"], {"name": "x"}, **{"Idempotency-Key": " "})
    assert bad_key.status_code == 400
    assert await engine.store.max_position() == before


async def test_unauthorised_before_anything_else(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    before = await engine.store.max_position()
    response = await client.post(
        "/webhooks/leads/whk_unknown", content=b"{nope", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 401
    assert await engine.store.max_position() == before


async def test_control_characters_are_cleaned(
    client: httpx.AsyncClient, workspace: Workspace
) -> None:
    webhook = await create(client, workspace)
    response = await post_json(
        client,
        webhook["apiKey"],
        {
            "name": "An\u0000n\u0007 ",
            "company": "\u001bAcme",
            "Roof\u0000 Type": "fl\u0001at",
            "utm_source": "g\u0000oogle",
        },
    )
    lead = await lead_of(client, workspace, response)
    assert lead["name"] == "Ann"
    assert lead["company"] == "Acme"
    assert lead["customFields"] == {"roofType": "flat", "_displayNames": {"roofType": "Roof Type"}}
    assert lead["attribution"] == {"utm_source": "google"}
    form = await post_form(client, webhook["apiKey"], {"name": "Bo\u0000b", "x\u0001y": "z"})
    form_lead = await lead_of(client, workspace, form)
    assert form_lead["name"] == "Bob"
    assert form_lead["customFields"]["xY"] == "z"


async def test_the_api_key_never_reaches_the_access_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert redact("/webhooks/leads/whk_secret") == "/webhooks/leads/[redacted]"
    assert redact("/v1/leads") == "/v1/leads"
    with caplog.at_level(logging.INFO):
        await client.post("/webhooks/leads/whk_not_a_real_key_123", json={"name": "x"})
    server = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("leadlog"))
    assert "/webhooks/leads/[redacted]" in server
    assert "whk_not_a_real_key_123" not in server  # (the test's own httpx client logs it)


async def test_stats_count_what_the_webhook_received(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    workers = build_workers(engine)
    for worker in workers:
        await worker.start()
    try:
        webhook = await create(client, workspace)
        other = await create(client, workspace)
        empty = await client.get(
            f"/v1/lead-webhooks/{webhook['id']}/stats", headers=auth(workspace)
        )
        assert empty.json()["totalReceived"] == 0 and empty.json()["lastReceivedAt"] is None
        last: dict[str, Any] = {}
        for i in range(3):
            response = await post_json(
                client, webhook["apiKey"], {"name": f"L{i}", "email": "same@example.com"}
            )
            assert response.status_code == 201
            last = response.json()
        await post_json(client, other["apiKey"], {"name": "Elsewhere"})
        stats = await client.get(
            f"/v1/lead-webhooks/{webhook['id']}/stats",
            params={"after": last["position"]},
            headers=auth(workspace),
        )
        body = stats.json()
        assert (body["totalReceived"], body["duplicates"]) == (3, 2)
        assert body["lastLeadId"] == last["id"]
        assert body["lastReceivedAt"] is not None
        stranger = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
        token = await client.post(
            f"/v1/workspaces/{stranger.json()['id']}/tokens",
            json={"role": "admin"},
            headers=OPERATOR,
        )
        hidden = await client.get(
            f"/v1/lead-webhooks/{webhook['id']}/stats", headers=bearer(token.json()["token"])
        )
        assert hidden.status_code == 404
    finally:
        for worker in reversed(workers):
            await worker.stop()


async def test_percent_encoded_invalid_utf8_in_a_form_is_refused(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    before = await engine.store.max_position()
    for body, field in ((b"name=%ff%fe", "name"), (b"email=a%40b.test&company=Acme%C3", "company")):
        response = await client.post(
            f"/webhooks/leads/{webhook['apiKey']}",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_utf8" and error["details"] == {"field": field}
    assert await engine.store.max_position() == before
