"""Converting a lead into a Contact: carry-over, linking to an existing contact, and
exactly one contact however many converts race."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import httpx

from domain.leads import Lead
from gateways.bootstrap import Engine
from tests.gateways.http.test_lead_commands import add, history, of_type


async def contacts_created(engine: Engine) -> list[Any]:
    return [e.event for e in await engine.store.read(0, 10_000, ["contact.created"])]


async def test_convert_carries_the_lead_over(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(
        client,
        ws,
        name="Ivy",
        email="IVY@x.test",
        phone="+1 415 555 2671",
        company="Ivy Co",
        customFields={"budget": 5},
    )
    await client.post(f"/v1/leads/{lead['id']}/notes", json={"value": "met"}, headers=ws["h"])
    converted = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert converted.status_code == 200, converted.text
    body = converted.json()
    assert body["position"] > 0 and body["convertedAt"] and not body["linkedExisting"]
    contact = await client.get(f"/v1/contacts/{body['contactId']}", headers=ws["viewer"])
    assert contact.status_code == 200
    c = contact.json()
    assert (c["name"], c["email"], c["phone"], c["company"]) == (
        "Ivy",
        "IVY@x.test",
        "+1 415 555 2671",
        "Ivy Co",
    )
    assert c["customFields"] == {"budget": 5}
    assert [n["value"] for n in c["notes"]] == ["met"] and c["leadIds"] == [lead["id"]]

    events = await history(engine, lead["id"])
    [marked] = of_type(events, "lead.converted")
    assert str(marked.contact_id) == body["contactId"]
    assert [m.milestone for m in of_type(events, "lead.milestone_reached")] == ["converted"]
    converted_lead = await engine.store.load(Lead, UUID(lead["id"]))
    assert converted_lead is not None and converted_lead.converted_at is not None

    again = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert again.json()["contactId"] == body["contactId"] and again.json()["replayed"]
    assert again.json()["position"] == body["position"]
    assert len(of_type(await history(engine, lead["id"]), "lead.converted")) == 1


async def test_fifty_concurrent_converts_make_one_contact(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Jo", email="jo@x.test")
    responses = await asyncio.gather(
        *(client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"]) for _ in range(50))
    )
    assert [r.status_code for r in responses] == [200] * 50, {r.text for r in responses}
    assert len({r.json()["contactId"] for r in responses}) == 1
    assert len(await contacts_created(engine)) == 1
    assert len(of_type(await history(engine, lead["id"]), "lead.converted")) == 1
    assert sum(not r.json()["replayed"] for r in responses) == 1


async def test_a_contact_with_the_same_email_or_phone_is_linked(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    first = await add(client, ws, name="Kim", email="kim@x.test")
    by_email = await add(client, ws, name="Kim again", email=" KIM@x.test", phone="+14155550100")
    by_phone = await add(client, ws, name="Kim's phone", phone="(415) 555-0100")
    elsewhere = await add(client, other, name="Kim elsewhere", email="kim@x.test")
    created = (await client.post(f"/v1/leads/{first['id']}/convert", headers=ws["h"])).json()
    linked = (await client.post(f"/v1/leads/{by_email['id']}/convert", headers=ws["h"])).json()
    assert linked["contactId"] == created["contactId"] and linked["linkedExisting"]
    # the linked conversion claimed the phone for the contact too
    via_phone = (await client.post(f"/v1/leads/{by_phone['id']}/convert", headers=ws["h"])).json()
    assert via_phone["contactId"] == created["contactId"]
    contact = (await client.get(f"/v1/contacts/{created['contactId']}", headers=ws["h"])).json()
    assert contact["leadIds"] == [first["id"], by_email["id"], by_phone["id"]]
    # another workspace has its own contacts, and cannot see this one
    own = (await client.post(f"/v1/leads/{elsewhere['id']}/convert", headers=other["h"])).json()
    assert own["contactId"] != created["contactId"] and not own["linkedExisting"]
    hidden = await client.get(f"/v1/contacts/{created['contactId']}", headers=other["h"])
    assert hidden.status_code == 404
    assert (
        await client.post(f"/v1/leads/{first['id']}/convert", headers=other["h"])
    ).status_code == 404


async def test_leads_of_one_person_converted_at_once_share_a_contact(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    leads = [await add(client, ws, name=f"Lu {i}", email="lu@x.test") for i in range(10)]
    responses = await asyncio.gather(
        *(client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"]) for lead in leads)
    )
    assert [r.status_code for r in responses] == [200] * 10, {r.text for r in responses}
    assert len({r.json()["contactId"] for r in responses}) == 1
    assert len(await contacts_created(engine)) == 1
    contact_id = responses[0].json()["contactId"]
    contact = (await client.get(f"/v1/contacts/{contact_id}", headers=ws["h"])).json()
    assert sorted(contact["leadIds"]) == sorted(lead["id"] for lead in leads)
