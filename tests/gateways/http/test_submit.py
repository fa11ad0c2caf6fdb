"""Partner submit API over HTTP: lead + submission, campaign dedup, idempotency, bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest

from domain.submissions import Submission
from gateways.bootstrap import Engine
from tests.conftest import OPERATOR, bearer, make_campaign

SUBMIT = "/api/v1/leads/submit"


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "Partnerco"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"], "tokenId": token.json()["id"]}


async def submit(
    client: httpx.AsyncClient, workspace: dict[str, str], body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post(SUBMIT, json=body, headers={**bearer(workspace["token"]), **headers})


async def test_submit_creates_lead_and_submission(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    campaign = await make_campaign(client, bearer(workspace["token"]))
    response = await submit(
        client,
        workspace,
        {
            "campaignId": campaign,
            "lead": {"name": "Ann Lee", "email": "ann@example.com", "phone": "+14155552671"},
        },
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert set(receipt) >= {"id", "requestId", "isDuplicate", "duplicateOf", "submissionId"}
    assert receipt["leadId"] == receipt["id"]
    assert receipt["requestId"] == 1 and receipt["isDuplicate"] is False
    assert receipt["position"] > 0

    lead = await client.get(f"/v1/leads/{receipt['id']}", headers=bearer(workspace["token"]))
    assert lead.status_code == 200
    assert lead.json()["source"] == "api"
    assert lead.json()["campaignId"] == campaign
    history = await engine.store.history(uuid.UUID(receipt["id"]))
    received = history[0].event
    assert getattr(received, "channel", None) == f"api:{workspace['tokenId']}"

    submission = await engine.store.load(Submission, uuid.UUID(receipt["submissionId"]))
    assert submission is not None
    assert str(submission.lead_id) == receipt["id"]
    assert str(submission.campaign_id) == campaign
    assert submission.status == "pending"  # no workers run here to take it further


async def test_flat_body_is_accepted(client: httpx.AsyncClient, workspace: dict[str, str]) -> None:
    campaign = await make_campaign(client, bearer(workspace["token"]))
    response = await submit(
        client, workspace, {"campaignId": campaign, "name": "Flat", "company": "Acme"}
    )
    assert response.status_code == 201, response.text
    lead = await client.get(
        f"/v1/leads/{response.json()['id']}", headers=bearer(workspace["token"])
    )
    assert lead.json()["company"] == "Acme"


async def test_duplicates_are_scoped_to_the_campaign(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    one = await make_campaign(client, bearer(workspace["token"]), "One")
    two = await make_campaign(client, bearer(workspace["token"]), "Two")
    person = {"name": "Bo", "email": "bo@example.com"}
    first = await submit(client, workspace, {"campaignId": one, "lead": person})
    again = await submit(client, workspace, {"campaignId": one, "lead": person})
    other = await submit(client, workspace, {"campaignId": two, "lead": person})
    assert first.json()["isDuplicate"] is False
    assert again.json()["isDuplicate"] is True
    assert again.json()["duplicateOf"] == first.json()["id"]
    assert other.json()["isDuplicate"] is False
    # every call is its own submission, duplicates included
    ids = {r.json()["submissionId"] for r in (first, again, other)}
    assert len(ids) == 3 and None not in ids


async def test_idempotency_key_replays_the_first_result(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    campaign = await make_campaign(client, bearer(workspace["token"]))
    body = {"campaignId": campaign, "lead": {"name": "Once", "email": "o@x.test"}}
    first = await submit(client, workspace, body, **{"Idempotency-Key": "partner-1"})
    before = await engine.store.max_position()
    retries = await asyncio.gather(
        *(submit(client, workspace, body, **{"Idempotency-Key": "partner-1"}) for _ in range(10))
    )
    assert all(r.status_code == 201 for r in retries)
    assert {r.json()["id"] for r in retries} == {first.json()["id"]}
    assert {r.json()["submissionId"] for r in retries} == {first.json()["submissionId"]}
    assert all(r.json()["replayed"] for r in retries)
    assert await engine.store.max_position() == before


async def test_viewer_and_strangers_are_refused(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    viewer = await client.post(
        f"/v1/workspaces/{workspace['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    campaign = await make_campaign(client, bearer(workspace["token"]))
    body = {"campaignId": campaign, "lead": {"name": "x"}}
    before = await engine.store.max_position()
    as_viewer = await client.post(SUBMIT, json=body, headers=bearer(viewer.json()["token"]))
    assert as_viewer.status_code == 403
    anonymous = await client.post(SUBMIT, json=body)
    assert anonymous.status_code == 401
    forged = await client.post(SUBMIT, json=body, headers=bearer("llt_not-a-real-token"))
    assert forged.status_code == 401
    assert anonymous.json()["error"]["code"] == forged.json()["error"]["code"] == "unauthorized"
    assert await engine.store.max_position() == before


async def test_bad_input_is_refused_and_writes_nothing(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    campaign = await make_campaign(client, bearer(workspace["token"]))
    before = await engine.store.max_position()
    deep: Any = {"name": "x"}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    cases: list[tuple[bytes, str, int, str]] = [
        (b'{"campaignId": "%s"}' % campaign.encode(), "text/plain", 415, "unsupported_media_type"),
        (b"{nope", "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "empty_body"),
        (b"[1, 2]", "application/json", 422, "not_an_object"),
        (b"42", "application/json", 422, "not_an_object"),
        (b'{"campaignId": "caf\xe9"}', "application/json", 400, "invalid_utf8"),
        (b'{"lead": {"name": "x"}}', "application/json", 422, "campaign_required"),
        (
            b'{"campaignId": "nope", "lead": {"name": "x"}}',
            "application/json",
            422,
            "validation_failed",
        ),
        (b'{"campaignId": 7, "lead": {"name": "x"}}', "application/json", 422, "validation_failed"),
        (
            b'{"campaignId": "%s", "lead": {"name": "x"}}' % str(uuid.uuid4()).encode(),
            "application/json",
            422,
            "unknown_campaign",
        ),
        (
            b'{"campaignId": "%s", "lead": "Ann"}' % campaign.encode(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            b'{"campaignId": "%s", "lead": {"name": "x"}, "email": "a@b.c"}' % campaign.encode(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            b'{"campaignId": "%s", "lead": {"name": "x", "campaignId": "%s"}}'
            % (campaign.encode(), str(uuid.uuid4()).encode()),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            b'{"campaignId": "%s", "lead": {"company": "no name"}}' % campaign.encode(),
            "application/json",
            422,
            "name_required",
        ),
        (
            b'{"campaignId": "%s", "lead": {"name": "x", "surprise": 1}}' % campaign.encode(),
            "application/json",
            422,
            "validation_failed",
        ),
        (
            b'{"campaignId": "%s", "lead": {"name": "x", "customFields": {%s}}}'
            % (campaign.encode(), b",".join(f'"f{i}": {i}'.encode() for i in range(600))),
            "application/json",
            422,
            "too_many_fields",
        ),
        (
            orjson.dumps({"campaignId": campaign, "lead": deep}),
            "application/json",
            422,
            "too_deep",
        ),
    ]
    for body, content_type, status, code in cases:
        response = await client.post(
            SUBMIT,
            content=body,
            headers={**bearer(workspace["token"]), "Content-Type": content_type},
        )
        assert response.status_code == status, (body[:80], response.text)
        assert response.json()["error"]["code"] == code, (body[:80], response.text)
    too_big = await client.post(
        SUBMIT,
        content=b'{"campaignId": "%s", "lead": {"name": "%s"}}'
        % (campaign.encode(), b"x" * 70_000),
        headers={**bearer(workspace["token"]), "Content-Type": "application/json"},
    )
    assert too_big.status_code == 413
    bad_key = await submit(
        client,
        workspace,
        {"campaignId": campaign, "lead": {"name": "x"}},
        **{"Idempotency-Key": "k" * 300},
    )
    assert bad_key.status_code == 400
    assert await engine.store.max_position() == before


async def test_operator_names_the_workspace(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    campaign = await make_campaign(client, bearer(workspace["token"]))
    body = {"campaignId": campaign, "lead": {"name": "Op"}}
    missing = await client.post(SUBMIT, json=body, headers=OPERATOR)
    assert missing.status_code == 400
    named = await client.post(
        SUBMIT, json=body, headers={**OPERATOR, "X-Workspace-Id": workspace["id"]}
    )
    assert named.status_code == 201, named.text
