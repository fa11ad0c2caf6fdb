"""Partners see their referred leads (only what a referral shares) and receive each referral
as a signed webhook, once per referral however it was made."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from standardwebhooks import Webhook as ReferenceWebhook

from domain.deliveries import NO_LEAD_TYPE, Delivery
from gateways.bootstrap import Engine
from gateways.consumers.action_shards import SHARDS, ActionWorkers, consumer_name
from gateways.nats.relay import event_payload
from handlers.actions import ActionRunner
from tests.gateways.http.test_lead_commands import add
from tests.gateways.outbound.test_deliveries import Receiver, Reply, eventually

pytestmark = pytest.mark.timeout(120)

# What a referral shares: the person, what they asked for, and where the referral stands.
PARTNER_FIELDS = {
    "id",
    "requestId",
    "name",
    "email",
    "phone",
    "company",
    "title",
    "category",
    "product",
    "description",
    "customFields",
    "source",
    "createdAt",
    "referredAt",
    "returnStatus",
}


async def partner_of(
    client: httpx.AsyncClient, ws: dict[str, Any], name: str, url: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name}
    if url is not None:
        body["webhookUrl"] = url
    created = await client.post("/v1/partners", json=body, headers=ws["h"])
    assert created.status_code == 201, created.text
    partner: dict[str, Any] = created.json()
    return partner


async def token_of(client: httpx.AsyncClient, ws: dict[str, Any], partner: dict[str, Any]) -> Any:
    issued = await client.post(f"/v1/partners/{partner['id']}/tokens", headers=ws["h"])
    assert issued.status_code == 201, issued.text
    return {"Authorization": f"Bearer {issued.json()['token']}"}


async def refer(
    client: httpx.AsyncClient, ws: dict[str, Any], lead: dict[str, Any], partner: dict[str, Any]
) -> int:
    referred = await client.post(
        f"/v1/leads/{lead['id']}/refer", json={"partnerId": partner["id"]}, headers=ws["h"]
    )
    assert referred.status_code == 200, referred.text
    position: int = referred.json()["position"]
    return position


async def listed(
    client: httpx.AsyncClient, token: dict[str, str], after: int, **params: Any
) -> dict[str, Any]:
    response = await client.get("/v1/leads", params={"after": after, **params}, headers=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def referral_deliveries(engine: Engine, lead_id: str) -> list[Delivery.Scheduled]:
    found = await engine.store.read(0, 100_000, ["delivery.scheduled"])
    return [
        e.event
        for e in found
        if isinstance(e.event, Delivery.Scheduled)
        and e.event.partner_id is not None
        and str(e.event.lead_id) == lead_id
    ]


async def actions_reached(engine: Engine, position: int) -> bool:
    """Every action shard has decided everything up to `position`."""
    for shard in range(SHARDS):
        if (await engine.log.max_tracking_id(consumer_name(shard)) or 0) < position:
            return False
    return True


def received(receiver: Receiver, count: int) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: the receiver has had `count` distinct messages."""

    async def check() -> bool:
        return len({r.headers["webhook-id"] for r in receiver.requests}) >= count

    return check


def verified(secret: str, request: Any) -> dict[str, Any]:
    """The body, if its Standard Webhooks signature verifies with `secret` (else raises)."""
    body: dict[str, Any] = ReferenceWebhook(secret).verify(request.body, request.headers)
    return body


async def test_a_partner_token_reads_only_the_leads_referred_to_it(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    partner = await partner_of(client, ws, "Reader")
    rival = await partner_of(client, ws, "Rival")
    token = await token_of(client, ws, partner)
    mine = await add(
        client,
        ws,
        name="Ada Mine",
        email="ada@mine.example",
        phone="+1 415 555 2671",
        company="Mine Co",
        title="CTO",
        description="wants a quote",
        tags=["internaltagmarker"],
        customFields={"budget": 5000, "_displayNames": {"budget": "Budget"}},
    )
    second = await add(client, ws, name="Bo Mine")
    theirs = await add(client, ws, name="Cy Theirs")
    unreferred = await add(client, ws, name="Di Nobody")
    note = await client.post(
        f"/v1/leads/{mine['id']}/notes", json={"value": "internalnotemarker"}, headers=ws["h"]
    )
    assert note.status_code == 201, note.text
    await refer(client, ws, mine, partner)
    await refer(client, ws, second, partner)
    position = await refer(client, ws, theirs, rival)

    page = await listed(client, token, position)
    assert page["total"] == 2
    assert [i["id"] for i in page["items"]] == [second["id"], mine["id"]]  # newest first
    for item in page["items"]:
        assert set(item) == PARTNER_FIELDS
    shown = (await client.get(f"/v1/leads/{mine['id']}", headers=token)).json()
    assert shown == page["items"][1]
    assert shown["name"] == "Ada Mine" and shown["description"] == "wants a quote"
    assert shown["customFields"] == {"budget": 5000, "_displayNames": {"budget": "Budget"}}
    assert shown["referredAt"] is not None and shown["returnStatus"] is None
    text = str(shown)
    assert "internaltagmarker" not in text and "internalnotemarker" not in text
    # The same lead as the workspace sees it carries what the partner must not.
    full = (await client.get(f"/v1/leads/{mine['id']}", headers=ws["h"])).json()
    assert {"status", "assignedTo", "notes", "tags", "stageId", "referredTo"} <= set(full)

    # Another partner's lead, an unreferred one, another workspace's and a missing one all
    # answer alike.
    foreign = await add(client, other, name="Elsewhere")
    for lead_id in (theirs["id"], unreferred["id"], foreign["id"], str(uuid.uuid4())):
        hidden = await client.get(f"/v1/leads/{lead_id}", headers=token)
        assert hidden.status_code == 404, hidden.text
        error = hidden.json()["error"]
        assert (error["code"], error["message"]) == ("not_found", f"lead {lead_id} does not exist")

    # Filters a referral shares work; the others are refused like unknown ones.
    found = await listed(client, token, position, search="ada")
    assert [i["id"] for i in found["items"]] == [mine["id"]]
    by_phone = await listed(client, token, position, search="555-2671")
    assert [i["id"] for i in by_phone["items"]] == [mine["id"]]
    oldest = await listed(client, token, position, sortBy="requestId", sortOrder="asc", limit=1)
    assert [i["id"] for i in oldest["items"]] == [mine["id"]] and oldest["total"] == 2
    following = await listed(
        client,
        token,
        position,
        sortBy="requestId",
        sortOrder="asc",
        limit=1,
        cursor=oldest["nextCursor"],
    )
    assert [i["id"] for i in following["items"]] == [second["id"]]
    assert following["nextCursor"] is None
    for params in ({"status": "new"}, {"partnerId": partner["id"]}, {"deleted": "true"}):
        refused = await client.get("/v1/leads", params=params, headers=token)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "unknown_parameter"
    assert (await client.get("/v1/leads?sortBy=status", headers=token)).status_code == 422
    assert (await client.get("/v1/leads?nope=1", headers=token)).status_code == 400

    # A return the partner starts shows as open; once accepted, the lead leaves its list.
    started = await client.post(
        f"/v1/leads/{mine['id']}/returns", json={"reason": "wrong area"}, headers=token
    )
    assert started.status_code == 200, started.text
    opened = await listed(client, token, started.json()["position"], returnStatus="open")
    assert [(i["id"], i["returnStatus"]) for i in opened["items"]] == [(mine["id"], "open")]
    accepted = await client.post(f"/v1/leads/{mine['id']}/returns/accept", json={}, headers=ws["h"])
    assert accepted.status_code == 200, accepted.text
    left = await listed(client, token, accepted.json()["position"])
    assert [i["id"] for i in left["items"]] == [second["id"]]
    assert (await client.get(f"/v1/leads/{mine['id']}", headers=token)).status_code == 404
    # Referred elsewhere: gone from this partner's list too.
    moved = await refer(client, ws, second, rival)
    assert (await listed(client, token, moved))["items"] == []
    assert (await client.get(f"/v1/leads/{second['id']}", headers=token)).status_code == 404
    # Referred back, then deleted: a deleted lead is not shown either.
    await refer(client, ws, second, partner)
    deleted = await client.delete(f"/v1/leads/{second['id']}", headers=ws["h"])
    assert (await listed(client, token, deleted.json()["position"]))["total"] == 0
    assert (await client.get(f"/v1/leads/{second['id']}", headers=token)).status_code == 404

    # Nothing else: no writes, no other reads.
    refused_calls = [
        client.post("/v1/leads", json={"name": "x"}, headers=token),
        client.patch(f"/v1/leads/{theirs['id']}", json={"title": "x"}, headers=token),
        client.post(
            f"/v1/leads/{theirs['id']}/refer", json={"partnerId": partner["id"]}, headers=token
        ),
        client.post(f"/v1/leads/{theirs['id']}/notes", json={"value": "x"}, headers=token),
        client.get(f"/v1/leads/{theirs['id']}/timeline", headers=token),
        client.post(f"/v1/leads/{theirs['id']}/returns/decline", json={}, headers=token),
        client.get("/v1/partners", headers=token),
        client.post(f"/v1/partners/{partner['id']}/rotate-secret", headers=token),
        client.get("/v1/deliveries", headers=token),
    ]
    for response in await asyncio.gather(*refused_calls):
        assert response.status_code in (403, 404), (response.request.url, response.text)


async def test_the_partner_receives_each_referral_as_a_signed_webhook(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    async with Receiver() as receiver:
        partner = await partner_of(client, ws, "Hooked", receiver.url)
        secret = partner["webhookSecret"]
        assert secret.startswith("whsec_") and partner["hasWebhookSecret"] is True
        read = (await client.get(f"/v1/partners/{partner['id']}", headers=ws["h"])).json()
        assert secret not in str(read) and "webhookSecret" not in read
        token = await token_of(client, ws, partner)
        lead = await add(client, ws, name="Hook Lead", email="hook@lead.example")
        await refer(client, ws, lead, partner)

        await eventually(received(receiver, 1))
        first = receiver.requests[0]
        body = verified(secret, first)
        assert body["type"] == "lead.referred"
        view = (await client.get(f"/v1/leads/{lead['id']}", headers=token)).json()
        assert body["data"] == view
        assert body["timestamp"] == view["referredAt"]
        assert first.headers["content-type"].startswith("application/json")

        # Referred again: sent again, as a new message.
        await refer(client, ws, lead, partner)
        await eventually(received(receiver, 2))
        again = receiver.requests[1]
        assert verified(secret, again)["data"]["id"] == lead["id"]
        assert again.headers["webhook-id"] != first.headers["webhook-id"]

        # Both show among the workspace's deliveries and on the lead's timeline.
        async def both_listed() -> list[Any] | None:
            # The deliveries view follows the log: it may be a moment behind the receiver.
            listed = await client.get(
                "/v1/deliveries", params={"leadId": lead["id"]}, headers=ws["h"]
            )
            found: list[Any] = listed.json()["items"]
            return found if len(found) == 2 else None

        items = await eventually(both_listed)
        assert len(items) == 2
        assert {(d["kind"], d["target"], d["eventCode"]) for d in items} == {
            ("webhook", receiver.url, "lead.referred")
        }
        assert {d["actionId"] for d in items} == {partner["id"]}
        assert {d["leadTypeId"] for d in items} == {str(NO_LEAD_TYPE)}

        async def delivered() -> list[str]:
            timeline = await client.get(
                f"/v1/leads/{lead['id']}/timeline",
                params={"include": "webhooks"},
                headers=ws["h"],
            )
            summaries = [e["summary"] for e in timeline.json()["items"]]
            done = [s for s in summaries if "lead.referred" in s and "delivered" in s]
            return done if len(done) == 2 else []

        await eventually(delivered)

        # Rotation: the new secret is shown once; both sign during the overlap.
        rotated = await client.post(
            f"/v1/partners/{partner['id']}/rotate-secret",
            json={"overlapSeconds": 3600},
            headers=ws["h"],
        )
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()["webhookSecret"]
        assert fresh not in (secret, None)
        assert rotated.json()["previousWebhookSecretValidUntil"] is not None
        await refer(client, ws, lead, partner)
        await eventually(received(receiver, 3))
        third = receiver.requests[2]
        assert verified(fresh, third) == verified(secret, third)


async def test_no_webhook_url_sends_nothing_and_410_switches_the_webhook_off(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    quiet = await partner_of(client, ws, "Quiet")
    assert "webhookSecret" not in quiet and quiet["hasWebhookSecret"] is False
    lead = await add(client, ws, name="Quiet Lead")
    position = await refer(client, ws, lead, quiet)
    await eventually(lambda: actions_reached(engine, position))
    assert await referral_deliveries(engine, lead["id"]) == []

    async with Receiver(Reply(410)) as receiver:
        # The URL set later brings the secret, shown in that update's response.
        changed = await client.patch(
            f"/v1/partners/{quiet['id']}", json={"webhookUrl": receiver.url}, headers=ws["h"]
        )
        assert changed.status_code == 200, changed.text
        secret = changed.json()["webhookSecret"]
        renamed = await client.patch(
            f"/v1/partners/{quiet['id']}", json={"name": "Quieter"}, headers=ws["h"]
        )
        assert "webhookSecret" not in renamed.json()
        await refer(client, ws, lead, quiet)
        await eventually(received(receiver, 1))
        assert verified(secret, receiver.requests[0])["data"]["id"] == lead["id"]

        async def switched_off() -> Any:
            read = await client.get(f"/v1/partners/{quiet['id']}", headers=ws["h"])
            return read.json()["webhookDisabled"]

        assert "410" in await eventually(switched_off)
        position = await refer(client, ws, lead, quiet)
        await eventually(lambda: actions_reached(engine, position))
        assert len(await referral_deliveries(engine, lead["id"])) == 1
        # Setting the URL again switches it back on.
        again = await client.patch(
            f"/v1/partners/{quiet['id']}", json={"webhookUrl": receiver.url}, headers=ws["h"]
        )
        assert again.json()["webhookDisabled"] is None and "webhookSecret" not in again.json()
        await refer(client, ws, lead, quiet)
        await eventually(received(receiver, 2))
        assert verified(secret, receiver.requests[1])["data"]["id"] == lead["id"]


async def test_lead_type_referrals_are_sent_too(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with Receiver() as on_receipt, Receiver() as by_action:
        first = await partner_of(client, ws, "On receipt", on_receipt.url)
        second = await partner_of(client, ws, "By action", by_action.url)
        created = await client.post(
            "/v1/lead-types",
            json={
                "name": "Refers",
                "referral": {"method": "immediately", "partnerId": first["id"]},
                "actions": [{"type": "refer", "trigger": "referred", "partnerId": second["id"]}],
            },
            headers=ws["h"],
        )
        assert created.status_code == 201, created.text
        lead = await add(client, ws, name="Typed")
        await eventually(received(on_receipt, 1))
        await eventually(received(by_action, 1))
        for receiver, partner in ((on_receipt, first), (by_action, second)):
            body = verified(partner["webhookSecret"], receiver.requests[0])
            assert body["type"] == "lead.referred" and body["data"]["id"] == lead["id"]
            assert set(body["data"]) == PARTNER_FIELDS


async def test_one_delivery_per_referral_across_concurrent_and_restarted_workers(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    async with Receiver() as receiver:
        partner = await partner_of(client, ws, "Busy", receiver.url)
        leads = await asyncio.gather(*(add(client, ws, name=f"L{i}") for i in range(30)))
        # A second set of action shards (another process) started and stopped while the
        # referrals arrive: the referral webhook is still scheduled once per referral.
        extra = ActionWorkers(engine.log, engine.store, ActionRunner(engine.store))
        positions: list[int] = []
        for round_ in range(3):
            await extra.start()
            batch = leads[round_ * 10 : (round_ + 1) * 10]
            positions += await asyncio.gather(*(refer(client, ws, x, partner) for x in batch))
            await asyncio.sleep(0.05 * round_)
            await extra.stop()
        await extra.start()
        positions += await asyncio.gather(*(refer(client, ws, x, partner) for x in leads[:5]))
        await extra.stop()
        await eventually(lambda: actions_reached(engine, max(positions)), timeout=30)
        for index, lead in enumerate(leads):
            scheduled = await referral_deliveries(engine, lead["id"])
            assert len(scheduled) == (2 if index < 5 else 1), lead

        await eventually(received(receiver, 35), timeout=30)
        ids = [verified(partner["webhookSecret"], r)["data"]["id"] for r in receiver.requests]
        assert sorted(set(ids)) == sorted(lead["id"] for lead in leads)


async def test_the_relay_never_publishes_a_partners_signing_secret(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    partner = await partner_of(client, ws, "Secretive", "https://p.example.com/hook")
    records = await engine.log.read(0, 1000, event_types=["partner.secret_issued"])
    assert records and partner["webhookSecret"].encode() in records[0].state
    payload = orjson.loads(event_payload(records[0]))
    assert payload["data"]["secret"] == "[redacted]"
    assert payload["aggregateId"] == partner["id"]
    assert partner["webhookSecret"].encode() not in event_payload(records[0])


async def test_the_partner_list_checks_its_query_string(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    await partner_of(client, ws, "Listed")
    unknown = await client.get("/v1/partners?active=true", headers=ws["h"])
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_parameter"
    control = await client.get("/v1/partners?na%00me=x", headers=ws["h"])
    assert control.status_code == 400
    one = await client.get(f"/v1/partners/{UUID(int=1)}?x=%00", headers=ws["h"])
    assert one.status_code == 400
    assert (await client.get("/v1/partners", headers=ws["h"])).json()["total"] == 1
