"""End to end: a lead in by webhook, its lead type assigns a user and fires a signed webhook."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import httpx
from standardwebhooks import Webhook

from gateways.bootstrap import PROJECTIONS, Engine
from gateways.consumers.audit import verify
from tests.conftest import make_user
from tests.gateways.consumers.test_action_shards import by_webhook

# The deliveries tests' settings: private targets allowed (the receiver is on 127.0.0.1)
# and a short retry backoff.
from tests.gateways.outbound.test_deliveries import BASE, Receiver, Reply, eventually, settings  # noqa: F401


async def webhook_lead_type(
    client: httpx.AsyncClient, ws: dict[str, Any], url: str, user_id: str
) -> tuple[dict[str, Any], str]:
    created = await client.post(
        "/v1/lead-types",
        json={
            "name": "Inbound",
            "actions": [
                # Configured first, but assignment runs first within a trigger.
                {"type": "webhook", "trigger": "received_not_duplicate", "url": url},
                {"type": "assign_user", "trigger": "received_not_duplicate", "userId": user_id},
            ],
        },
        headers=ws["h"],
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    secret: str = body["secrets"][body["actions"][0]["id"]]
    return body, secret


async def test_webhook_lead_is_assigned_and_a_signed_form_webhook_fires(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    alice = await make_user(client, ws["h"], "Alice Agent", "alice@agents.example.com")
    async with Receiver() as receiver:
        _, secret = await webhook_lead_type(client, ws, receiver.url, alice["id"])
        lead_id = await by_webhook(
            client, ws, name="Ann Lead", email="ann@example.com", phone="+14155550101"
        )

        async def delivered() -> bool:
            return len(receiver.requests) >= 1

        await eventually(delivered)
        await asyncio.sleep(0.3)

    (request,) = receiver.requests
    assert request.headers["content-type"].startswith("application/x-www-form-urlencoded")
    # The reference implementation of the Standard Webhooks spec accepts the signature.
    Webhook(secret).verify(request.body, request.headers, json_parse=False)
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form["id"] == lead_id
    assert form["assignedTo"] == alice["id"]
    assert form["assignedToName"] == "Alice Agent"
    assert form["assignedToEmail"] == "alice@agents.example.com"
    assert form["eventtype"] == "deliveryndupe"
    assert form["eventdatetime"]
    assert form["email"] == "ann@example.com"

    lead = (await client.get(f"/v1/leads/{lead_id}", headers=ws["h"])).json()
    assert lead["assignedTo"] == alice["id"]

    # The timeline has the action and the attempt, hidden unless asked for.
    async def timeline(include: bool) -> list[dict[str, Any]]:
        params = {"include": "actions,webhooks"} if include else {}
        response = await client.get(f"/v1/leads/{lead_id}/timeline", params=params, headers=ws["h"])
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def attempt_shown() -> bool:
        return any(e.get("category") == "webhook" for e in await timeline(True))

    await eventually(attempt_shown)
    assert not any(e.get("category") in ("webhook", "action") for e in await timeline(False))

    # Every view still matches the log after all of it.
    report = await verify(engine.projector, PROJECTIONS)
    assert report.clean, report


async def test_a_receiver_failing_three_times_gets_the_lead_on_the_fourth_attempt(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    bob = await make_user(client, ws["h"], "Bob")
    failing = [Reply(503), Reply(500), Reply(503)]
    async with Receiver(*failing) as receiver:
        _, secret = await webhook_lead_type(client, ws, receiver.url, bob["id"])
        lead_id = await by_webhook(client, ws, name="Flaky", email="flaky@example.com")

        async def four() -> bool:
            return len(receiver.requests) >= 4

        await eventually(four, timeout=30)
        await asyncio.sleep(0.5)

    assert len(receiver.requests) == 4
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1  # the same message, retried
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= BASE * 0.4 for gap in gaps), gaps
    for request in receiver.requests:
        Webhook(secret).verify(request.body, request.headers, json_parse=False)

    listed = await client.get("/v1/deliveries", params={"leadId": lead_id}, headers=ws["h"])
    assert listed.status_code == 200, listed.text
    (delivery,) = listed.json()["items"]
    assert delivery["state"] == "succeeded" and delivery["attempts"] == 4
