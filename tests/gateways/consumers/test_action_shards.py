"""Lead types and their ordered actions, through HTTP: triggers, order, effects, exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
import orjson

from domain.deliveries import Delivery
from domain.leads import Lead
from gateways.bootstrap import Engine
from gateways.consumers.action_shards import ActionWorkers
from gateways.nats.relay import event_payload
from handlers.actions import MAX_DEPTH, ActionRunner
from tests.conftest import make_user

SLOW = 15.0


async def eventually(check: Callable[[], Any], timeout: float = SLOW) -> Any:
    """Poll an async `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def lead_type(
    client: httpx.AsyncClient, ws: dict[str, Any], actions: list[dict[str, Any]], **body: Any
) -> dict[str, Any]:
    response = await client.post(
        "/v1/lead-types",
        json={"name": f"Type {time.monotonic_ns()}", "actions": actions, **body},
        headers=ws["h"],
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def add(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/leads", json=fields, headers=ws["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def by_webhook(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> str:
    hook = await client.post("/v1/lead-webhooks", json={"name": "Ads"}, headers=ws["h"])
    assert hook.status_code == 201, hook.text
    sent = await client.post(f"/webhooks/leads/{hook.json()['apiKey']}", json=fields)
    assert sent.status_code in (200, 201, 202), sent.text
    lead_id: str = sent.json()["id"]
    return lead_id


async def events_of(engine: Engine, lead_id: str, event_type: str) -> list[Any]:
    return [
        e.event for e in await engine.store.history(UUID(lead_id)) if e.event_type == event_type
    ]


async def deliveries_of(engine: Engine, lead_id: str) -> list[Delivery.Scheduled]:
    found = await engine.store.read(0, 10_000, ["delivery.scheduled"])
    return [
        e.event
        for e in found
        if isinstance(e.event, Delivery.Scheduled) and str(e.event.lead_id) == lead_id
    ]


def hook(trigger: str, url: str = "https://hooks.example.com/in", **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "trigger": trigger, "url": url, **extra}


async def test_assign_runs_before_the_webhook_configured_ahead_of_it(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    alice = await make_user(client, ws["h"], "Alice")
    await lead_type(
        client,
        ws,
        [
            hook("received_not_duplicate"),
            {"type": "assign_user", "trigger": "received_not_duplicate", "userId": alice["id"]},
        ],
    )
    lead_id = await by_webhook(client, ws, name="Ann", email="ann@example.com")

    async def scheduled() -> list[Delivery.Scheduled]:
        return await deliveries_of(engine, lead_id)

    (delivery,) = await eventually(scheduled)
    assert delivery.payload["assignedTo"] == alice["id"]
    assert delivery.payload["assignedToName"] == "Alice"
    assert delivery.payload["eventtype"] == "deliveryndupe"
    assert delivery.kind == "webhook"
    (assigned,) = await events_of(engine, lead_id, "lead.assigned")
    assert assigned.new == alice["id"] and assigned.actor.startswith("action:")
    taken = await events_of(engine, lead_id, "lead.action_taken")
    assert [t.action_type for t in taken] == ["assign_user", "webhook"]
    assert [t.outcome for t in taken] == ["done", "scheduled"]
    # The assignment fired User Changed in turn; this type has nothing bound to it.
    lead = (await client.get(f"/v1/leads/{lead_id}", headers=ws["h"])).json()
    assert lead["assignedTo"] == alice["id"]


async def test_receipt_triggers_fire_in_the_guides_order(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    triggers = [
        "received_other",
        "received",
        "received_not_referred",
        "received_not_duplicate",
        "received_duplicate",
        "received_user",
    ]
    await lead_type(client, ws, [hook(t) for t in triggers])
    first = await add(client, ws, name="Bo", email="bo@example.com")
    second = await by_webhook(client, ws, name="Bo again", email="bo@example.com")

    async def codes(lead_id: str, n: int) -> list[str] | None:
        found = await deliveries_of(engine, lead_id)
        return [d.event_code for d in found] if len(found) == n else None

    assert await eventually(lambda: codes(first["id"], 4)) == [
        "deliveryndupe",
        "delivery",
        "deliveryall",
        "deliveryass",
    ]
    assert await eventually(lambda: codes(second, 4)) == [
        "deliverydupe",
        "delivery",
        "deliveryall",
        "deliveryna",
    ]


async def test_updates_status_and_milestones_fire_their_triggers_once(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    await lead_type(
        client,
        ws,
        [
            hook("updated"),
            hook("updated_user"),
            hook("updated_other"),
            hook("status_changed"),
            hook("validated"),
        ],
    )
    lead = await add(client, ws, name="Cy")
    patched = await client.patch(
        f"/v1/leads/{lead['id']}", json={"company": "Cyco"}, headers=ws["h"]
    )
    assert patched.status_code == 200, patched.text
    for status in ("validated", "contacted", "validated"):
        changed = await client.patch(
            f"/v1/leads/{lead['id']}/status", json={"status": status}, headers=ws["h"]
        )
        assert changed.status_code == 200, changed.text

    async def codes() -> list[str] | None:
        found = [d.event_code for d in await deliveries_of(engine, lead["id"])]
        return found if len(found) >= 6 else None

    found = await eventually(codes)
    await asyncio.sleep(0.3)
    found = [d.event_code for d in await deliveries_of(engine, lead["id"])]
    assert found == ["updatedall", "updatedass", "status", "progvalidated", "status", "status"]


async def test_change_lead_type_finishes_the_trigger_with_the_old_types_actions(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    second = await lead_type(client, ws, [hook("status_changed", "https://b.example.com/")])
    await lead_type(
        client,
        ws,
        [
            {"type": "change_lead_type", "trigger": "received", "leadTypeId": second["id"]},
            {"type": "change_status", "trigger": "received", "status": "contacted"},
            hook("received", "https://a.example.com/"),
        ],
        default=True,
    )
    lead = await add(client, ws, name="Di")

    async def two() -> list[Delivery.Scheduled] | None:
        found = await deliveries_of(engine, lead["id"])
        return found if len(found) == 2 else None

    first, then = await eventually(two)
    # The old type's webhook still ran, and saw the new type and status set before it.
    assert first.target == "https://a.example.com/"
    assert first.lead_type_id != UUID(second["id"])
    assert first.payload["leadTypeId"] == second["id"]
    assert first.payload["status"] == "contacted"
    # The status change the action made fired Status Changed under the new type.
    assert then.target == "https://b.example.com/" and then.event_code == "status"


async def test_round_robin_shares_leads_evenly_under_concurrency(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    users = [await make_user(client, ws["h"], name) for name in ("U1", "U2", "U3")]
    group = await client.post(
        "/v1/user-groups",
        json={"name": "Sales", "memberIds": [u["id"] for u in users]},
        headers=ws["h"],
    )
    assert group.status_code == 201, group.text
    await lead_type(
        client,
        ws,
        [
            {
                "type": "assign_user",
                "trigger": "received",
                "mode": "round_robin",
                "groupId": group.json()["id"],
            }
        ],
    )
    leads = await asyncio.gather(*(add(client, ws, name=f"L{i}") for i in range(30)))

    async def assigned() -> Counter[str] | None:
        owners: Counter[str] = Counter()
        for lead in leads:
            found = await events_of(engine, lead["id"], "lead.assigned")
            if not found:
                return None
            owners[found[-1].new] += 1
        return owners

    owners = await eventually(assigned, timeout=30)
    assert sorted(owners.values()) == [10, 10, 10]
    assert set(owners) == {u["id"] for u in users}


async def test_actions_are_decided_once_across_a_restart(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    await lead_type(client, ws, [hook("received"), hook("received_user")])
    # A second runner over the same log, started and stopped while leads arrive: with the
    # workers' own runner it must not decide any trigger twice.
    extra = ActionWorkers(engine.log, engine.store, ActionRunner(engine.store))
    leads: list[dict[str, Any]] = []
    for round_ in range(3):
        await extra.start()
        leads += await asyncio.gather(*(add(client, ws, name=f"R{round_}-{i}") for i in range(10)))
        await asyncio.sleep(0.05 * round_)
        await extra.stop()

    async def all_done() -> bool:
        counts = [len(await deliveries_of(engine, lead["id"])) for lead in leads]
        return all(c >= 2 for c in counts)

    await eventually(all_done, timeout=30)
    await asyncio.sleep(0.5)
    for lead in leads:
        codes = [d.event_code for d in await deliveries_of(engine, lead["id"])]
        assert codes == ["deliveryall", "deliveryass"]
        assert len(await events_of(engine, lead["id"], "lead.action_taken")) == 2


async def test_a_loop_of_actions_stops_at_the_guard(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    await lead_type(
        client,
        ws,
        [
            {
                "type": "change_status",
                "trigger": "status_changed",
                "status": "contacted",
                "conditions": [{"field": "status", "op": "eq", "value": "validated"}],
            },
            {
                "type": "change_status",
                "trigger": "status_changed",
                "status": "validated",
                "conditions": [{"field": "status", "op": "eq", "value": "contacted"}],
            },
        ],
    )
    lead = await add(client, ws, name="Loop")
    await client.patch(
        f"/v1/leads/{lead['id']}/status", json={"status": "validated"}, headers=ws["h"]
    )

    async def quiet() -> list[Any] | None:
        before = await events_of(engine, lead["id"], "lead.action_taken")
        await asyncio.sleep(0.5)
        after = await events_of(engine, lead["id"], "lead.action_taken")
        return after if after and len(after) == len(before) else None

    taken = await eventually(quiet, timeout=30)
    # Each decision's own changes fire further triggers, until the chain is MAX_DEPTH deep.
    skipped = [t for t in taken if t.outcome == "skipped"]
    assert skipped and all("loop guard" in t.detail for t in skipped)
    assert {t.depth for t in skipped} == {MAX_DEPTH}
    assert max(t.depth for t in taken if t.outcome == "done") == MAX_DEPTH - 1
    assert len(await events_of(engine, lead["id"], "lead.status_changed")) < 2 ** (MAX_DEPTH + 2)


async def test_conditions_choose_which_leads_an_action_runs_for(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    await lead_type(
        client,
        ws,
        [
            hook(
                "received",
                conditions=[
                    {"field": "source", "op": "eq", "value": "webhook"},
                    {"field": "tags", "op": "contains", "value": "vip"},
                ],
            ),
            hook("received_other", url="https://marker.example.com/"),
        ],
    )
    manual = await add(client, ws, name="Manual", tags=["vip"])
    plain = await by_webhook(client, ws, name="Plain", email="plain@example.com")
    vip = await by_webhook(client, ws, name="Vip", email="vip@example.com", tags="vip")

    async def marked(lead_id: str) -> list[Delivery.Scheduled]:
        return await deliveries_of(engine, lead_id)

    await eventually(lambda: marked(plain))
    await eventually(lambda: marked(vip))
    await asyncio.sleep(0.3)
    assert [d.event_code for d in await marked(vip)] == ["deliveryall", "deliveryna"]
    assert [d.event_code for d in await marked(plain)] == ["deliveryna"]
    assert await marked(manual["id"]) == []


async def test_immediate_referral_fires_received_and_referred(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    partner = await client.post("/v1/partners", json={"name": "Partner Co"}, headers=ws["h"])
    await lead_type(
        client,
        ws,
        [hook("received_referred"), hook("referred")],
        referral={"method": "immediately", "partnerId": partner.json()["id"]},
    )
    lead = await add(client, ws, name="Ref")

    async def two() -> list[str] | None:
        codes = [d.event_code for d in await deliveries_of(engine, lead["id"])]
        return codes if len(codes) == 2 else None

    assert await eventually(two) == ["deliveryref", "referral"]
    (referred,) = await events_of(engine, lead["id"], "lead.referred")
    assert str(referred.partner_id) == partner.json()["id"]


async def test_lead_type_api_validates_and_shows_secrets_once(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    bad = [
        [{"type": "assign_user", "trigger": "received", "userId": str(UUID(int=7))}],
        [{"type": "change_status", "trigger": "received", "status": "no-such-status"}],
        [{"type": "webhook", "trigger": "received", "url": "ftp://x"}],
        [{"type": "webhook", "trigger": "nope", "url": "https://x.example.com"}],
        [{"type": "send_pigeon", "trigger": "received"}],
        [{"type": "change_status", "trigger": "received", "status": "new", "extra": 1}],
    ]
    for actions in bad:
        response = await client.post(
            "/v1/lead-types", json={"name": "Bad", "actions": actions}, headers=ws["h"]
        )
        assert response.status_code == 422, (actions, response.text)
        assert response.json()["error"]["code"] in ("invalid_lead_type", "validation_failed")
    listed = await client.get("/v1/lead-types", headers=ws["h"])
    assert listed.json()["total"] == 0

    created = await lead_type(client, ws, [hook("received")])
    action_id = created["actions"][0]["id"]
    secret = created["secrets"][action_id]
    assert secret.startswith("whsec_")
    shown = (await client.get(f"/v1/lead-types/{created['id']}", headers=ws["h"])).json()
    assert secret not in str(shown) and shown["actions"][0]["hasSecret"] is True
    assert shown["default"] is True
    rotated = await client.post(
        f"/v1/lead-types/{created['id']}/actions/{action_id}/rotate-secret",
        json={"overlapSeconds": 3600},
        headers=ws["h"],
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secrets"][action_id] not in (secret, None)
    assert rotated.json()["actions"][0]["previousSecretValidUntil"] is not None
    # Another workspace sees nothing of it.
    hidden = await client.get(f"/v1/lead-types/{created['id']}", headers=other["h"])
    assert hidden.status_code == 404
    taken = await client.post("/v1/lead-types", json={"name": created["name"]}, headers=ws["h"])
    assert taken.status_code == 409


async def test_changing_a_leads_type_over_http(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    first = await lead_type(client, ws, [])
    second = await lead_type(client, ws, [hook("updated")])
    lead = await add(client, ws, name="Ty")
    loaded = await engine.store.load(Lead, UUID(lead["id"]))
    assert loaded is not None and loaded.lead_type_id == UUID(first["id"])
    moved = await client.patch(
        f"/v1/leads/{lead['id']}/lead-type", json={"leadTypeId": second["id"]}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    missing = await client.patch(
        f"/v1/leads/{lead['id']}/lead-type", json={"leadTypeId": str(UUID(int=3))}, headers=ws["h"]
    )
    assert missing.status_code == 404
    await client.patch(f"/v1/leads/{lead['id']}", json={"title": "CTO"}, headers=ws["h"])
    assert [d.event_code for d in await eventually(lambda: deliveries_of(engine, lead["id"]))] == [
        "updatedall"
    ]


async def test_the_relay_never_publishes_a_signing_secret(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    created = await lead_type(client, ws, [hook("received")])
    secret = next(iter(created["secrets"].values()))
    records = await engine.log.read(0, 1000, event_types=["lead_type.secret_issued"])
    assert records and secret.encode() in records[0].state
    payload = orjson.loads(event_payload(records[0]))
    assert payload["data"]["secret"] == "[redacted]"
    assert payload["data"]["action_id"] == created["actions"][0]["id"]
