"""Webhook URLs carry no credentials; a pipeline's stage ids are its own or new."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from domain.pipelines import Pipeline, Stage
from gateways.bootstrap import Engine
from handlers.ports import Append
from tests.conftest import make_workspace

pytestmark = pytest.mark.timeout(120)

WITH_CREDENTIALS = "https://user:s3cret@hooks.example.com/lead"


def webhook(url: str) -> dict[str, Any]:
    return {"type": "webhook", "trigger": "received", "url": url}


async def test_credentials_in_a_lead_type_webhook_url_are_refused(
    client: httpx.AsyncClient,
) -> None:
    ws = await make_workspace(client)
    created = await client.post(
        "/v1/lead-types",
        json={"name": "Solar", "actions": [webhook(WITH_CREDENTIALS)]},
        headers=ws["h"],
    )
    assert created.status_code == 422, created.text
    error = created.json()["error"]
    assert "lead type" in error["message"] and "url" in error["message"]
    assert "credentials" in error["message"]
    assert "s3cret" not in created.text  # the input is not echoed back
    fine = await client.post(
        "/v1/lead-types",
        json={"name": "Solar", "actions": [webhook("https://hooks.example.com/lead")]},
        headers=ws["h"],
    )
    assert fine.status_code == 201, fine.text
    actions = fine.json()["actions"]
    changed = await client.patch(
        f"/v1/lead-types/{fine.json()['id']}",
        json={"actions": [*actions[:0], webhook("http://token@hooks.example.com/")]},
        headers=ws["h"],
    )
    assert changed.status_code == 422 and "credentials" in changed.json()["error"]["message"]


async def test_credentials_in_a_partner_webhook_url_are_refused(client: httpx.AsyncClient) -> None:
    ws = await make_workspace(client)
    created = await client.post(
        "/v1/partners", json={"name": "P", "webhookUrl": WITH_CREDENTIALS}, headers=ws["h"]
    )
    assert created.status_code == 422, created.text
    message = created.json()["error"]["message"]
    assert "partner" in message and "webhookUrl" in message and "credentials" in message
    assert "s3cret" not in created.text
    bad_scheme = await client.post(
        "/v1/partners", json={"name": "P", "webhookUrl": "javascript:alert(1)"}, headers=ws["h"]
    )
    assert bad_scheme.status_code == 422 and "webhookUrl" in bad_scheme.text
    partner = await client.post(
        "/v1/partners", json={"name": "P", "webhookUrl": "https://p.test/hook"}, headers=ws["h"]
    )
    assert partner.status_code == 201, partner.text
    changed = await client.patch(
        f"/v1/partners/{partner.json()['id']}",
        json={"webhookUrl": "https://a:b@p.test/hook"},
        headers=ws["h"],
    )
    assert changed.status_code == 422 and "webhookUrl" in changed.json()["error"]["message"]
    kept = await client.get(f"/v1/partners/{partner.json()['id']}", headers=ws["h"])
    assert kept.json()["webhookUrl"] == "https://p.test/hook"


async def test_credentials_in_a_form_redirect_url_are_refused(client: httpx.AsyncClient) -> None:
    ws = await make_workspace(client)
    created = await client.post(
        "/v1/lead-forms",
        json={
            "name": "Quote",
            "fields": [{"key": "name", "required": True}],
            "redirectUrl": "https://user:pw@example.com/thanks",
        },
        headers=ws["h"],
    )
    assert created.status_code == 422, created.text
    assert "redirectUrl must not contain credentials" in created.text


async def test_a_stage_id_of_another_workspace_is_refused(
    client: httpx.AsyncClient, running: None
) -> None:
    a = await make_workspace(client, "A")
    b = await make_workspace(client, "B")
    theirs = a["pipeline"]["stages"][0]["id"]
    mine = b["pipeline"]
    stages = [{"id": s["id"], "name": s["name"]} for s in mine["stages"]]
    patched = await client.patch(
        f"/v1/lead-pipelines/{mine['id']}",
        json={"stages": [*stages, {"id": theirs, "name": "Stolen"}]},
        headers=b["h"],
    )
    assert patched.status_code == 422, patched.text
    assert theirs in patched.json()["error"]["message"]
    created = await client.post(
        "/v1/lead-pipelines",
        json={"name": "Second", "stages": [{"id": theirs, "name": "X"}, {"name": "Y"}]},
        headers=b["h"],
    )
    assert created.status_code == 422, created.text
    # B's own ids and new ones are fine; nothing of A's changed
    fine = await client.patch(
        f"/v1/lead-pipelines/{mine['id']}",
        json={"stages": [*stages, {"id": str(uuid.uuid4()), "name": "New"}, {"name": "Newer"}]},
        headers=b["h"],
    )
    assert fine.status_code == 200, fine.text
    again = await client.patch(
        f"/v1/lead-pipelines/{mine['id']}",
        json={"stages": [{"id": s["id"], "name": s["name"]} for s in fine.json()["stages"]]},
        headers=b["h"],
    )
    assert again.status_code == 200, again.text
    listed = await client.get("/v1/lead-pipelines", headers=a["h"])
    assert listed.json()["items"][0]["stages"] == a["pipeline"]["stages"]


async def test_two_workspaces_racing_for_a_new_stage_id_get_it_once(
    client: httpx.AsyncClient,
) -> None:
    a = await make_workspace(client, "A")
    b = await make_workspace(client, "B")
    shared = str(uuid.uuid4())

    async def add(ws: dict[str, Any]) -> httpx.Response:
        stages = [{"id": s["id"], "name": s["name"]} for s in ws["pipeline"]["stages"]]
        return await client.patch(
            f"/v1/lead-pipelines/{ws['pipeline']['id']}",
            json={"stages": [*stages, {"id": shared, "name": "Mine"}]},
            headers=ws["h"],
        )

    answers = await asyncio.gather(add(a), add(b))
    assert sorted(r.status_code for r in answers) == [200, 422], [r.text for r in answers]


async def test_a_stage_id_used_before_claims_existed_is_refused(
    engine: Engine, client: httpx.AsyncClient, running: None
) -> None:
    a = await make_workspace(client, "A")
    b = await make_workspace(client, "B")
    # A pipeline written without stage claims, as every pipeline was before them.
    legacy_stage = uuid.uuid4()
    legacy = Pipeline(
        workspace_id=uuid.UUID(a["id"]),
        name="Old",
        stages=[Stage(id=legacy_stage, name="One", color="#000000"), *_two()],
        is_default=False,
    )
    await engine.store.append(Append(uuid.UUID(a["id"]), events=legacy.collect_events()))
    stages = [{"id": s["id"], "name": s["name"]} for s in b["pipeline"]["stages"]]
    patched = await client.patch(
        f"/v1/lead-pipelines/{b['pipeline']['id']}",
        json={"stages": [*stages, {"id": str(legacy_stage), "name": "Stolen"}]},
        headers=b["h"],
    )
    assert patched.status_code == 422, patched.text
    # its own pipeline may still be reconfigured, its stage ids kept
    own = await client.patch(
        f"/v1/lead-pipelines/{legacy.id}",
        json={"stages": [{"id": str(legacy_stage), "name": "Renamed"}, {"name": "Two"}]},
        headers=a["h"],
    )
    assert own.status_code == 200, own.text


def _two() -> list[Stage]:
    return [Stage(id=uuid.uuid4(), name="Two", color="#111111")]
