"""A lead's history from the log and its state as of a time or position: HTTP and CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from gateways.settings import Settings
from tests.conftest import OPERATOR, Servers, bearer
from tests.gateways.consumers.test_rebuild import cli

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def changed(client: httpx.AsyncClient, ws: dict[str, Any]) -> dict[str, Any]:
    """A lead received, then (later) given another status and moved to another stage."""
    received = await client.post(
        "/v1/leads", json={"name": "Ada", "email": "ada@x.test"}, headers=ws["h"]
    )
    assert received.status_code == 201, received.text
    lead = received.json()
    await asyncio.sleep(0.05)
    status = await client.patch(
        f"/v1/leads/{lead['id']}/status", json={"status": "contacted"}, headers=ws["h"]
    )
    assert status.status_code == 200, status.text
    stages = ws["pipeline"]["stages"]
    moved = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": stages[2]["id"]}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    return {**lead, "stages": stages}


async def history(
    client: httpx.AsyncClient, ws: dict[str, Any], lead: str, **params: Any
) -> httpx.Response:
    return await client.get(f"/v1/leads/{lead}/history", params=params, headers=ws["h"])


async def test_history_and_state_before_a_later_change(
    client: httpx.AsyncClient, ws: dict[str, Any], changed: dict[str, Any]
) -> None:
    now = await history(client, ws, changed["id"])
    assert now.status_code == 200, now.text
    body = now.json()
    types = [i["eventType"] for i in body["items"]]
    assert types[0] == "lead.received"
    assert "lead.status_changed" in types and "lead.stage_changed" in types
    assert [i["position"] for i in body["items"]] == sorted(i["position"] for i in body["items"])
    assert body["state"]["status"] == "contacted"
    assert body["state"]["stageId"] == changed["stages"][2]["id"]
    assert body["later"] == 0
    received = body["items"][0]
    assert received["actor"] and received["recordedAt"]
    status_change = next(i for i in body["items"] if i["eventType"] == "lead.status_changed")
    assert {"field": "status", "old": changed["status"], "new": "contacted"} in status_change[
        "changes"
    ]
    moved = next(i for i in body["items"] if i["eventType"] == "lead.stage_changed")
    assert changed["stages"][2]["name"] in moved["summary"]

    # `at` between the receipt and the status change: the lead as it was received.
    t = datetime.fromisoformat(received["recordedAt"])
    before = await history(
        client, ws, changed["id"], at=(t + timedelta(milliseconds=1)).isoformat()
    )
    assert before.status_code == 200, before.text
    then = before.json()
    assert then["state"]["status"] == changed["status"]
    assert then["state"]["stageId"] == changed["stages"][0]["id"]
    assert [i["eventType"] for i in then["items"]][-1] != "lead.status_changed"
    assert then["later"] >= 2

    # By log position: just before the status change, and at it.
    upto = await history(client, ws, changed["id"], position=status_change["position"] - 1)
    assert upto.json()["state"]["status"] == changed["status"]
    at_change = await history(client, ws, changed["id"], position=status_change["position"])
    assert at_change.json()["state"]["status"] == "contacted"
    assert at_change.json()["state"]["stageId"] == changed["stages"][0]["id"]

    # By request id, the same lead.
    by_request = await history(client, ws, str(changed["requestId"]), at=received["recordedAt"])
    assert by_request.status_code == 200, by_request.text
    assert by_request.json()["leadId"] == changed["id"]
    assert by_request.json()["state"]["status"] == changed["status"]


async def test_history_bad_input(
    client: httpx.AsyncClient, ws: dict[str, Any], changed: dict[str, Any]
) -> None:
    bad_time = await history(client, ws, changed["id"], at="yesterday")
    assert bad_time.status_code == 422
    assert "ISO 8601" in bad_time.json()["error"]["message"]
    both = await history(client, ws, changed["id"], at="2026-01-01T00:00:00Z", position=3)
    assert both.status_code == 422
    unknown = await history(client, ws, "00000000-0000-4000-8000-000000000000")
    assert unknown.status_code == 404
    no_request = await history(client, ws, "987654321")
    assert no_request.status_code == 404
    nonsense = await history(client, ws, "not-a-lead")
    assert nonsense.status_code == 422
    too_early = await history(client, ws, changed["id"], at="2000-01-01T00:00:00")
    assert too_early.status_code == 404
    assert "did not exist yet" in too_early.json()["error"]["message"]

    other = await client.post("/v1/workspaces", json={"name": "Other"}, headers=OPERATOR)
    token = await client.post(
        f"/v1/workspaces/{other.json()['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    foreign = await client.get(
        f"/v1/leads/{changed['id']}/history", headers=bearer(token.json()["token"])
    )
    assert foreign.status_code == 404


async def test_cli_replay(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    changed: dict[str, Any],
    servers: Servers,
    settings: Settings,
) -> None:
    body = (await history(client, ws, changed["id"])).json()
    t = body["items"][0]["recordedAt"]

    as_json = await asyncio.to_thread(
        cli, servers, settings, "replay", changed["id"], "--at", t, "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    then = json.loads(as_json.stdout)
    assert then["state"]["status"] == changed["status"]
    assert then["state"]["stageId"] == changed["stages"][0]["id"]

    table = await asyncio.to_thread(
        cli, servers, settings, "replay", str(changed["requestId"]), "--at", t
    )
    assert table.returncode == 0, table.stderr
    assert "lead.received" in table.stdout and "lead.status_changed" not in table.stdout
    assert "later event(s) not shown" in table.stdout

    full = await asyncio.to_thread(cli, servers, settings, "replay", changed["id"])
    assert full.returncode == 0, full.stderr
    assert "lead.status_changed" in full.stdout and "contacted" in full.stdout

    bad = await asyncio.to_thread(cli, servers, settings, "replay", changed["id"], "--at", "noon")
    assert bad.returncode == 1 and "ISO 8601" in bad.stderr
    missing = await asyncio.to_thread(
        cli, servers, settings, "replay", "00000000-0000-4000-8000-000000000000"
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr
