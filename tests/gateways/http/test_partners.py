"""Partners (CRUD), referral (a Referred event every time) and returns."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx

from gateways.bootstrap import Engine
from tests.gateways.http.test_lead_commands import add, history, of_type


async def make_partner(client: httpx.AsyncClient, ws: dict[str, Any], name: str) -> dict[str, Any]:
    created = await client.post(
        "/v1/partners",
        json={"name": name, "email": "ops@partner.test", "webhookUrl": "https://p.test/hook"},
        headers=ws["h"],
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_partner_crud(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    partner = await make_partner(client, ws, "Acme Partners")
    assert partner["name"] == "Acme Partners" and partner["active"] and partner["position"] > 0
    await make_partner(client, other, "Globex Partners")
    listed = await client.get("/v1/partners", headers=ws["viewer"])
    assert [p["name"] for p in listed.json()["items"]] == ["Acme Partners"]
    url = f"/v1/partners/{partner['id']}"
    changed = await client.patch(url, json={"name": "Acme P", "active": False}, headers=ws["h"])
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Acme P" and not changed.json()["active"]
    assert changed.json()["email"] == "ops@partner.test"
    assert (await client.get(url, headers=other["h"])).status_code == 404
    assert (await client.patch(url, json={"name": "x"}, headers=other["h"])).status_code == 404
    assert (await client.patch(url, json={"name": None}, headers=ws["h"])).status_code == 422
    assert (await client.post("/v1/partners", json={}, headers=ws["h"])).status_code == 422
    assert (
        await client.post("/v1/partners", json={"name": "v"}, headers=ws["viewer"])
    ).status_code == 403
    deleted = await client.delete(url, headers=ws["h"])
    assert deleted.status_code == 200
    assert (await client.get(url, headers=ws["h"])).status_code == 404
    assert (await client.get("/v1/partners", headers=ws["h"])).json()["items"] == []


async def test_referred_every_time_and_returns(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    partner = await make_partner(client, ws, "P1")
    foreign = await make_partner(client, other, "P2")
    lead = await add(client, ws, name="Max")
    url = f"/v1/leads/{lead['id']}"
    for _ in range(2):
        referred = await client.post(
            f"{url}/refer", json={"partnerId": partner["id"]}, headers=ws["h"]
        )
        assert referred.status_code == 200, referred.text
    assert referred.json()["referredTo"] == partner["id"] and referred.json()["referrals"] == 2
    unknown = await client.post(f"{url}/refer", json={"partnerId": foreign["id"]}, headers=ws["h"])
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_partner"

    no_return = await client.post(f"{url}/returns/accept", json={}, headers=ws["h"])
    assert no_return.status_code == 422
    started = await client.post(f"{url}/returns", json={"reason": "bad number"}, headers=ws["h"])
    assert started.status_code == 200, started.text
    assert started.json()["openReturn"] == {"partnerId": partner["id"]}
    twice = await client.post(f"{url}/returns", json={"reason": "again"}, headers=ws["h"])
    assert twice.status_code == 422
    declined = await client.post(
        f"{url}/returns/decline", json={"reason": "number works"}, headers=ws["h"]
    )
    assert declined.json()["openReturn"] is None and declined.json()["referredTo"] == partner["id"]
    await client.post(f"{url}/returns", json={"reason": "still bad"}, headers=ws["h"])
    accepted = await client.post(f"{url}/returns/accept", json={}, headers=ws["h"])
    assert accepted.status_code == 200
    assert accepted.json()["referredTo"] is None and accepted.json()["openReturn"] is None
    no_partner = await client.post(f"{url}/returns", json={"reason": "x"}, headers=ws["h"])
    assert no_partner.status_code == 422

    events = await history(engine, lead["id"])
    referrals = of_type(events, "lead.referred")
    assert [r.partner_id for r in referrals] == [UUID(partner["id"])] * 2
    assert [e.event_type for e in events][3:] == [
        "lead.return_started",
        "lead.return_declined",
        "lead.return_started",
        "lead.return_accepted",
    ]
    [first_return, _] = of_type(events, "lead.return_started")
    assert first_return.reason == "bad number" and first_return.partner_id == UUID(partner["id"])
    hidden = await client.post(
        f"{url}/refer", json={"partnerId": foreign["id"]}, headers=other["h"]
    )
    assert hidden.status_code == 404


async def test_a_partner_returns_a_lead_with_its_own_token(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    partner = await make_partner(client, ws, "Returner")
    rival = await make_partner(client, ws, "Rival")
    issued = await client.post(f"/v1/partners/{partner['id']}/tokens", headers=ws["h"])
    assert issued.status_code == 201, issued.text
    token = {"Authorization": f"Bearer {issued.json()['token']}"}
    mine = await add(client, ws, name="Mine")
    theirs = await add(client, ws, name="Theirs")
    for lead, to in ((mine, partner), (theirs, rival)):
        referred = await client.post(
            f"/v1/leads/{lead['id']}/refer", json={"partnerId": to["id"]}, headers=ws["h"]
        )
        assert referred.status_code == 200, referred.text

    # A lead referred elsewhere does not exist as far as this partner can tell.
    other_lead = await client.post(
        f"/v1/leads/{theirs['id']}/returns", json={"reason": "not ours"}, headers=token
    )
    assert other_lead.status_code == 404
    # Naming another partner is refused; the token speaks for its own only.
    spoofed = await client.post(
        f"/v1/leads/{mine['id']}/returns",
        json={"reason": "x", "partnerId": rival["id"]},
        headers=token,
    )
    assert spoofed.status_code == 403
    started = await client.post(
        f"/v1/leads/{mine['id']}/returns", json={"reason": "wrong area"}, headers=token
    )
    assert started.status_code == 200, started.text
    assert set(started.json()) == {"id", "returnStarted", "position"}
    (event,) = of_type(await history(engine, mine["id"]), "lead.return_started")
    assert str(event.partner_id) == partner["id"] and event.reason == "wrong area"
    assert event.actor == f"token:{issued.json()['id']}"

    # The partner token reads only the leads referred to it (test_partner_access.py), and
    # can do nothing else: change leads, decide returns.
    seen = await client.get(
        "/v1/leads", params={"after": started.json()["position"]}, headers=token
    )
    assert [lead["id"] for lead in seen.json()["items"]] == [mine["id"]]
    decided = await client.post(f"/v1/leads/{mine['id']}/returns/accept", json={}, headers=token)
    assert decided.status_code == 403
    # A plain token issue cannot mint a partner token (it must name the partner).
    minted = await client.post(
        f"/v1/workspaces/{ws['id']}/tokens", json={"role": "partner"}, headers=ws["h"]
    )
    assert minted.status_code == 422
