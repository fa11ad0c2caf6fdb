"""Lead intake through the HTTP API: request numbers, duplicates, status, idempotency, bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from domain.leads import Lead
from domain.pipelines import Pipeline
from domain.workspaces import Workspace
from gateways.bootstrap import Engine
from tests.conftest import OPERATOR, bearer, make_campaign


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"]}


def auth(workspace: dict[str, str], **extra: str) -> dict[str, str]:
    return {**bearer(workspace["token"]), **extra}


async def post_lead(
    client: httpx.AsyncClient, workspace: dict[str, str], body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/v1/leads", json=body, headers=auth(workspace, **headers))


async def test_manual_lead_round_trip(client: httpx.AsyncClient, workspace: dict[str, str]) -> None:
    response = await post_lead(
        client,
        workspace,
        {
            "name": "Ann Lee",
            "email": " Ann@Example.com ",
            "phone": "(415) 555-2671",
            "company": "Lee & Co",
            "tags": ["vip", "vip", "solar"],
            "customFields": {"roofType": "flat", "_displayNames": {"roofType": "Roof type"}},
            "attachments": [{"url": "https://x.test/a.pdf", "fileType": "pdf", "size": 12}],
        },
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["requestId"] == 1
    assert receipt["isDuplicate"] is False
    assert receipt["status"] == "backlog"
    assert receipt["position"] > 0

    lead = (await client.get(f"/v1/leads/{receipt['id']}", headers=auth(workspace))).json()
    assert lead["name"] == "Ann Lee"
    assert lead["email"] == "Ann@Example.com"
    assert lead["tags"] == ["vip", "solar"]
    assert lead["source"] == "manual"
    assert lead["customFields"] == {"roofType": "flat", "_displayNames": {"roofType": "Roof type"}}
    assert lead["attachments"][0]["fileType"] == "pdf"
    assert lead["emailValid"] is True and lead["phoneValid"] is True


async def test_two_hundred_simultaneous_same_email(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(
            post_lead(client, workspace, {"name": f"Person {i}", "email": "SAME@example.com"})
            for i in range(200)
        )
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses][:3]
    receipts = [r.json() for r in responses]
    originals = [r for r in receipts if not r["isDuplicate"]]
    duplicates = [r for r in receipts if r["isDuplicate"]]
    assert len(originals) == 1
    assert len(duplicates) == 199
    assert {d["duplicateOf"] for d in duplicates} == {originals[0]["id"]}
    assert sorted(r["requestId"] for r in receipts) == list(range(1, 201))
    # numbers follow commit order: the original, committed first, holds the lowest one
    by_position = sorted(receipts, key=lambda r: r["position"])
    assert [r["requestId"] for r in by_position] == list(range(1, 201))
    assert by_position[0]["id"] == originals[0]["id"]


async def test_phone_numbers_match_in_e164(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    first = await post_lead(client, workspace, {"name": "A", "phone": "(415) 555-2671"})
    second = await post_lead(client, workspace, {"name": "B", "phone": "+1 415-555-2671"})
    other = await post_lead(client, workspace, {"name": "C", "phone": "+1 415-555-2672"})
    assert second.json()["isDuplicate"] is True
    assert second.json()["duplicateOf"] == first.json()["id"]
    assert other.json()["isDuplicate"] is False


async def test_invalid_email_and_phone_are_kept_and_flagged(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    response = await post_lead(
        client, workspace, {"name": "X", "email": "not-an-email", "phone": "12"}
    )
    assert response.status_code == 201
    lead = (await client.get(f"/v1/leads/{response.json()['id']}", headers=auth(workspace))).json()
    assert lead["email"] == "not-an-email" and lead["emailValid"] is False
    assert lead["phone"] == "12" and lead["phoneValid"] is False


async def test_campaign_is_its_own_duplicate_scope(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    one = await make_campaign(client, auth(workspace), "One")
    two = await make_campaign(client, auth(workspace), "Two")
    a = await post_lead(client, workspace, {"name": "A", "email": "a@x.test", "campaignId": one})
    b = await post_lead(client, workspace, {"name": "B", "email": "a@x.test", "campaignId": two})
    c = await post_lead(client, workspace, {"name": "C", "email": "a@x.test", "campaignId": one})
    d = await post_lead(client, workspace, {"name": "D", "email": "a@x.test"})
    assert [r.json()["isDuplicate"] for r in (a, b, c, d)] == [False, False, True, False]
    assert a.json()["submissionId"] and b.json()["submissionId"]
    assert d.json()["submissionId"] is None


async def test_idempotency_key_returns_the_first_result(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    first = await post_lead(client, workspace, {"name": "Once"}, **{"Idempotency-Key": "abc"})
    before = await engine.store.max_position()
    retries = await asyncio.gather(
        *(
            post_lead(client, workspace, {"name": "Once"}, **{"Idempotency-Key": "abc"})
            for _ in range(20)
        )
    )
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert {r.json()["requestId"] for r in retries} == {1}
    assert all(r.json()["replayed"] for r in retries)
    assert await engine.store.max_position() == before
    fresh = await post_lead(client, workspace, {"name": "Twice"}, **{"Idempotency-Key": "def"})
    assert fresh.json()["requestId"] == 2  # the retries spent no request number


async def test_concurrent_first_submissions_with_one_key_make_one_lead(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    responses = await asyncio.gather(
        *(
            post_lead(client, workspace, {"name": "Race"}, **{"Idempotency-Key": "k1"})
            for _ in range(30)
        )
    )
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(not r.json()["replayed"] for r in responses) == 1


async def test_initial_status_follows_the_customer(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    inactive = await client.post("/v1/customers", json={"name": "Newco"}, headers=auth(workspace))
    active = await client.post(
        "/v1/customers", json={"name": "Oldco", "active": True}, headers=auth(workspace)
    )
    assert inactive.status_code == 201
    pending = await post_lead(client, workspace, {"name": "P", "customerId": inactive.json()["id"]})
    backlog = await post_lead(client, workspace, {"name": "B", "customerId": active.json()["id"]})
    assert pending.json()["status"] == "pending"
    assert backlog.json()["status"] == "backlog"
    history = await engine.store.history(uuid.UUID(pending.json()["id"]))
    assert [h.event_type for h in history] == ["lead.received", "lead.invitation_requested"]
    assert isinstance(history[1].event, Lead.InvitationRequested)

    unknown = await post_lead(client, workspace, {"name": "U", "customerId": str(uuid.uuid4())})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_customer"


async def test_other_workspaces_leads_are_not_found(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    lead = await post_lead(client, workspace, {"name": "Mine"})
    other = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
    token = await client.post(
        f"/v1/workspaces/{other.json()['id']}/tokens", json={"role": "admin"}, headers=OPERATOR
    )
    response = await client.get(
        f"/v1/leads/{lead.json()['id']}", headers=bearer(token.json()["token"])
    )
    assert response.status_code == 404
    missing = await client.get(f"/v1/leads/{uuid.uuid4()}", headers=auth(workspace))
    assert response.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"


async def test_viewer_cannot_enter_leads(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    viewer = await client.post(
        f"/v1/workspaces/{workspace['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    response = await client.post(
        "/v1/leads", json={"name": "x"}, headers=bearer(viewer.json()["token"])
    )
    assert response.status_code == 403


async def test_bad_input_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    before = await engine.store.max_position()
    deep: Any = {"name": "x"}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    cases: list[tuple[bytes, str, int, str]] = [
        (b'{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b"{nope", "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "empty_body"),
        (b"[1, 2]", "application/json", 422, "not_an_object"),
        (b'"just a string"', "application/json", 422, "not_an_object"),
        (b'{"name": "caf\xe9"}', "application/json", 400, "invalid_utf8"),
        (
            b'{"name": "x", "customFields": {'
            + b",".join(f'"f{i}": {i}'.encode() for i in range(600))
            + b"}}",
            "application/json",
            422,
            "too_many_fields",
        ),
        (b'{"email": "a@b.test"}', "application/json", 422, "name_required"),
        (b'{"name": "x", "surprise": true}', "application/json", 422, "validation_failed"),
        (b'{"name": "x", "tags": 5}', "application/json", 422, "validation_failed"),
        (b'{"name": "x", "customerId": "nope"}', "application/json", 422, "validation_failed"),
        (
            b'{"name": "x", "campaignId": "%s"}' % str(uuid.uuid4()).encode(),
            "application/json",
            422,
            "unknown_campaign",
        ),
    ]
    cases.append((orjson.dumps(deep), "application/json", 422, "too_deep"))
    for body, content_type, status, code in cases:
        response = await client.post(
            "/v1/leads", content=body, headers=auth(workspace, **{"Content-Type": content_type})
        )
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["error"]["code"] == code, body[:60]
    bad_key = await post_lead(client, workspace, {"name": "x"}, **{"Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 400
    assert await engine.store.max_position() == before


async def test_control_characters_are_cleaned(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    response = await post_lead(
        client,
        workspace,
        {
            "name": "An\u0000n\u0007 ",
            "company": "\u001bAcme",
            "customFields": {"k\u0000": "v\u0001"},
        },
    )
    assert response.status_code == 201
    lead = (await client.get(f"/v1/leads/{response.json()['id']}", headers=auth(workspace))).json()
    assert lead["name"] == "Ann"
    assert lead["company"] == "Acme"
    assert lead["customFields"] == {"k": "v", "_displayNames": {}}


async def test_new_leads_land_in_the_first_stage_of_the_active_pipeline(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    stored = await engine.store.load(Workspace, uuid.UUID(workspace["id"]))
    assert stored is not None and stored.active_pipeline_id is not None
    pipeline = await engine.store.load(Pipeline, stored.active_pipeline_id)
    assert pipeline is not None
    assert [s.name for s in pipeline.stages] == [
        "New",
        "Contacted",
        "Qualified",
        "Proposal",
        "Won",
        "Lost",
    ]
    assert [s.type for s in pipeline.stages][-2:] == ["won", "lost"]
    response = await post_lead(client, workspace, {"name": "Staged"})
    lead = (await client.get(f"/v1/leads/{response.json()['id']}", headers=auth(workspace))).json()
    assert lead["pipelineId"] == str(pipeline.id)
    assert lead["stageId"] == str(pipeline.stages[0].id)
