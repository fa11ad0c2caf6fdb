"""Campaigns over HTTP: CRUD, the 422s naming the field, references that must be the
workspace's own, the stats of a campaign, and the routing rules."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from gateways.bootstrap import Engine
from gateways.nats.relay import event_payload
from tests.conftest import OPERATOR

ENDPOINT = {
    "url": "https://buyer.example/leads",
    "fields": {"email": "{{lead.email}}", "src": "leadlog"},
    "responseRules": {"successPath": "status", "successMatch": "ok"},
}


def campaign_body(name: str = "Solar NY", **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoints": [ENDPOINT], **extra}


async def create(client: httpx.AsyncClient, ws: dict[str, Any], **extra: Any) -> dict[str, Any]:
    created = await client.post("/v1/campaigns", json=campaign_body(**extra), headers=ws["h"])
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_campaign_crud(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    created = await create(
        client, ws, caps={"daily": 10, "timezone": "America/New_York"}, price="12.50"
    )
    campaign_id = created["id"]
    assert created["position"] > 0 and created["name"] == "Solar NY"
    # The defaults are filled in and each endpoint gets an id.
    assert created["mode"] == "direct" and created["active"] is True
    assert created["returnWindowDays"] == 7 and created["fallbackCampaignIds"] == []
    assert created["endpoints"][0]["id"] == "e1"
    assert created["endpoints"][0]["fields"] == ENDPOINT["fields"]
    assert created["caps"]["daily"] == 10 and created["price"] == "12.50"
    url = f"/v1/campaigns/{campaign_id}"

    read = await client.get(url, headers=ws["viewer"])
    assert read.status_code == 200, read.text
    assert read.json() == {k: v for k, v in created.items() if k != "position"}

    listed = await client.get(
        "/v1/campaigns", params={"after": created["position"]}, headers=ws["viewer"]
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 1 and listed.json()["page"] == 1
    assert listed.json()["items"] == [read.json()]
    assert (await client.get("/v1/campaigns", headers=other["h"])).json()["total"] == 0

    # PUT replaces the whole configuration: what it leaves out takes its default.
    replaced = await client.put(url, json=campaign_body("Solar NJ", active=False), headers=ws["h"])
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["name"] == "Solar NJ" and replaced.json()["active"] is False
    assert replaced.json()["caps"] is None and replaced.json()["price"] is None
    assert replaced.json()["createdAt"] == created["createdAt"]
    position = replaced.json()["position"]
    assert position > created["position"]
    paused = await client.get(
        "/v1/campaigns", params={"active": "false", "after": position}, headers=ws["h"]
    )
    assert [c["name"] for c in paused.json()["items"]] == ["Solar NJ"]
    running = await client.get("/v1/campaigns", params={"active": "true"}, headers=ws["h"])
    assert running.json()["total"] == 0

    # PATCH merges top-level fields into the current configuration.
    patched = await client.patch(
        url, json={"price": "3", "active": True, "disqualify": []}, headers=ws["h"]
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["price"] == "3" and patched.json()["active"] is True
    assert patched.json()["name"] == "Solar NJ"
    assert patched.json()["endpoints"] == replaced.json()["endpoints"]
    # What a GET returned can be sent back as it is; nothing differs, so nothing is written.
    again = await client.get(url, headers=ws["h"])
    same = await client.put(url, json=again.json(), headers=ws["h"])
    assert same.status_code == 200, same.text
    assert same.json()["position"] == 0 and same.json()["price"] == "3"

    bad_patch = error_of(await client.patch(url, json={"colour": "red"}, headers=ws["h"]))
    assert "colour" in bad_patch["message"]
    nulled = error_of(await client.patch(url, json={"name": None}, headers=ws["h"]))
    assert "name" in nulled["message"]
    assert (await client.get(url, headers=ws["h"])).json()["name"] == "Solar NJ"

    # Another workspace reaches none of it.
    for method, body in (("GET", None), ("PUT", campaign_body()), ("PATCH", {"price": "1"})):
        theirs = await client.request(method, url, json=body, headers=other["h"])
        assert error_of(theirs, 404)["code"] == "not_found", method
    assert error_of(await client.delete(url, headers=other["h"]), 404)
    assert error_of(await client.get(f"{url}/stats", headers=other["h"]), 404)

    # Permissions: reads need leads:view, writes leads:manage.
    assert (
        await client.post("/v1/campaigns", json=campaign_body(), headers=ws["viewer"])
    ).status_code == 403
    assert (await client.delete(url, headers=ws["viewer"])).status_code == 403
    assert (await client.get("/v1/campaigns")).status_code == 401

    deleted = await client.delete(url, headers=ws["h"])
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["position"] > position
    assert error_of(await client.get(url, headers=ws["h"]), 404)["code"] == "not_found"
    assert error_of(await client.put(url, json=campaign_body(), headers=ws["h"]), 404)
    assert error_of(await client.delete(url, headers=ws["h"]), 404)
    gone = await client.get(
        "/v1/campaigns", params={"after": deleted.json()["position"]}, headers=ws["h"]
    )
    assert gone.json() == {"items": [], "total": 0, "page": 1, "limit": 50}


async def test_the_list_pages_by_name(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    last = 0
    for name in ("Charlie", "alpha", "Bravo"):
        last = (await create(client, ws, name=name))["position"]
    first = await client.get("/v1/campaigns", params={"limit": 2, "after": last}, headers=ws["h"])
    second = await client.get("/v1/campaigns", params={"limit": 2, "page": 2}, headers=ws["h"])
    names = [c["name"] for c in first.json()["items"] + second.json()["items"]]
    assert sorted(names) == sorted(["Charlie", "alpha", "Bravo"]) and len(set(names)) == 3
    assert first.json()["total"] == second.json()["total"] == 3
    unknown = error_of(
        await client.get("/v1/campaigns", params={"status": "x"}, headers=ws["h"]), 400
    )
    assert unknown["details"]["unknown"] == ["status"]
    assert error_of(await client.get("/v1/campaigns", params={"active": "maybe"}, headers=ws["h"]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"endpoints": [ENDPOINT]}, "name"),
        ({"name": "No endpoints", "endpoints": []}, "endpoints"),
        (
            {"name": "x", "endpoints": [{**ENDPOINT, "url": "ftp://buyer.example"}]},
            "endpoints.0.url",
        ),
        (
            {"name": "x", "endpoints": [{**ENDPOINT, "contentType": "yaml"}]},
            "endpoints.0.contentType",
        ),
        (
            campaign_body(disqualify=[{"field": "lead.state", "op": "in", "value": "NY"}]),
            "disqualify.0",
        ),
        (
            campaign_body(dynamicKeys=[{"name": "1age", "op": "age", "from": "lead.dob"}]),
            "dynamicKeys.0.name",
        ),
        (campaign_body(caps={"daily": 5, "timezone": "Mars/Olympus"}), "caps.timezone"),
        (campaign_body(caps={"daily": -1}), "caps.daily"),
        (campaign_body(fallbackCampaignIds=["not-a-uuid"]), "fallbackCampaignIds.0"),
        (campaign_body(mode="auction"), "mode"),
        (campaign_body(firstSubmissionAction={"type": "webhook"}), "firstSubmissionAction"),
        (campaign_body(price="-1"), "price"),
        (campaign_body(colour="red"), "colour"),
    ],
)
async def test_a_bad_configuration_is_a_422_naming_the_field(
    client: httpx.AsyncClient, engine: Engine, body: dict[str, Any], field: str
) -> None:
    created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
    headers = {**OPERATOR, "X-Workspace-Id": created.json()["id"]}
    error = error_of(await client.post("/v1/campaigns", json=body, headers=headers))
    assert error["code"] == "validation_failed"
    assert error["message"].startswith(f"the campaign is not valid: {field}"), error["message"]
    location = ".".join(str(part) for part in error["details"][0]["location"])
    assert location.startswith(field), error["details"]
    assert await engine.log.max_position() == created.json()["position"]  # nothing written


async def test_bodies_that_are_not_a_json_object(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    as_form = await client.post("/v1/campaigns", data={"name": "x"}, headers=ws["h"])
    assert error_of(as_form, 415)["code"] == "unsupported_media_type"
    for content in (b"[]", b"{", b'"x"'):
        answer = await client.post(
            "/v1/campaigns",
            content=content,
            headers={**ws["h"], "Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text


async def test_fallbacks_must_be_usable_campaigns_of_the_workspace(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    theirs = await create(client, other, name="Theirs")
    retired = await create(client, ws, name="Retired")
    await client.delete(f"/v1/campaigns/{retired['id']}", headers=ws["h"])
    backup = await create(client, ws, name="Backup")
    for missing in (str(uuid.uuid4()), theirs["id"], retired["id"]):
        refused = await client.post(
            "/v1/campaigns",
            json=campaign_body(fallbackCampaignIds=[backup["id"], missing]),
            headers=ws["h"],
        )
        error = error_of(refused)
        assert error["code"] == "unknown_campaign"
        assert error["details"] == {"field": "fallbackCampaignIds.1", "campaignId": missing}
        assert missing in error["message"] and "fallbackCampaignIds.1" in error["message"]
    main = await create(client, ws, name="Main", fallbackCampaignIds=[backup["id"]])
    assert main["fallbackCampaignIds"] == [backup["id"]]
    url = f"/v1/campaigns/{main['id']}"
    itself = await client.patch(url, json={"fallbackCampaignIds": [main["id"]]}, headers=ws["h"])
    assert error_of(itself)["code"] == "unknown_campaign"
    across = await client.put(
        url, json=campaign_body("Main", fallbackCampaignIds=[theirs["id"]]), headers=ws["h"]
    )
    assert error_of(across)["code"] == "unknown_campaign"
    twice = await client.patch(
        url, json={"fallbackCampaignIds": [backup["id"], backup["id"]]}, headers=ws["h"]
    )
    assert error_of(twice)["code"] == "validation_failed"
    kept = await client.get(url, headers=ws["h"])
    assert kept.json()["fallbackCampaignIds"] == [backup["id"]]
    # The other workspace cannot name this one's campaigns either.
    reached = await client.post(
        "/v1/campaigns", json=campaign_body(fallbackCampaignIds=[main["id"]]), headers=other["h"]
    )
    assert error_of(reached)["code"] == "unknown_campaign"
    # A fallback deleted since does not block other changes; only new references are checked.
    await client.delete(f"/v1/campaigns/{backup['id']}", headers=ws["h"])
    renamed = await client.patch(url, json={"name": "Main NY"}, headers=ws["h"])
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["fallbackCampaignIds"] == [backup["id"]]
    added = await client.patch(
        url, json={"fallbackCampaignIds": [backup["id"], retired["id"]]}, headers=ws["h"]
    )
    assert error_of(added)["details"]["field"] == "fallbackCampaignIds.1"


async def test_buyers_must_be_partners_of_the_workspace(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    ours = await client.post("/v1/partners", json={"name": "Buyer"}, headers=ws["h"])
    theirs = await client.post("/v1/partners", json={"name": "Theirs"}, headers=other["h"])
    partner, foreign = ours.json()["id"], theirs.json()["id"]
    refused = await client.post(
        "/v1/campaigns", json=campaign_body(buyerPartnerId=foreign), headers=ws["h"]
    )
    error = error_of(refused)
    assert error["code"] == "unknown_partner"
    assert error["details"] == {"field": "buyerPartnerId", "partnerId": foreign}
    endpoint = await client.post(
        "/v1/campaigns",
        json={"name": "x", "endpoints": [ENDPOINT, {**ENDPOINT, "buyerPartnerId": foreign}]},
        headers=ws["h"],
    )
    assert error_of(endpoint)["details"]["field"] == "endpoints.1.buyerPartnerId"
    created = await create(
        client,
        ws,
        buyerPartnerId=partner,
        endpoints=[{**ENDPOINT, "buyerPartnerId": partner}],
    )
    assert created["buyerPartnerId"] == partner
    assert created["endpoints"][0]["buyerPartnerId"] == partner


async def test_private_targets_are_refused_unless_allowed(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.settings, "allow_private_webhook_targets", False)
    body = campaign_body(endpoints=[ENDPOINT, {**ENDPOINT, "url": "http://127.0.0.1:9/x"}])
    error = error_of(await client.post("/v1/campaigns", json=body, headers=ws["h"]))
    assert error["details"][0]["location"] == ["endpoints", 1, "url"]
    created = await create(client, ws)
    patched = await client.patch(
        f"/v1/campaigns/{created['id']}",
        json={"firstSubmissionAction": {"type": "webhook", "url": "http://10.0.0.1/review"}},
        headers=ws["h"],
    )
    assert error_of(patched)["details"][0]["location"] == ["firstSubmissionAction", "url"]


async def test_the_stats_of_a_campaign_without_submissions(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    created = await create(
        client,
        ws,
        caps={"daily": 10, "monthly": 200, "budget": "150", "timezone": "Europe/London"},
        endpoints=[{**ENDPOINT, "caps": {"hourly": 3}}],
    )
    stats = await client.get(
        f"/v1/campaigns/{created['id']}/stats",
        params={"after": created["position"]},
        headers=ws["viewer"],
    )
    assert stats.status_code == 200, stats.text
    assert stats.json() == {
        "campaignId": created["id"],
        "submitted": 0,
        "delivered": 0,
        "accepted": 0,
        "rejected": 0,
        "duplicate": 0,
        "disqualified": 0,
        "failed": 0,
        "capped": 0,
        "returned": 0,
        "pendingAction": 0,
        "revenue": "0.00",
        "disqualifiedByReason": {},
        "rejectedByReason": {},
        "failedByReason": {},
        "caps": [
            {"endpointId": None, "label": "daily", "used": 0, "limit": 10},
            {"endpointId": None, "label": "monthly", "used": 0, "limit": 200},
            {"endpointId": None, "label": "budget", "used": "0.00", "limit": "150.00"},
            {"endpointId": "e1", "label": "hourly", "used": 0, "limit": 3},
        ],
    }
    missing = await client.get(f"/v1/campaigns/{uuid.uuid4()}/stats", headers=ws["h"])
    assert error_of(missing, 404)["code"] == "not_found"


async def test_routing_rules(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    assert (await client.get("/v1/routing-rules", headers=ws["viewer"])).json() == {"rules": []}
    ny = await create(client, ws, name="NY")
    rest = await create(client, ws, name="Rest")
    theirs = await create(client, other, name="Theirs")
    rules = {
        "rules": [
            {
                "name": "New York",
                "conditions": [{"field": "lead.state", "op": "in", "value": ["NY"]}],
                "campaignIds": [ny["id"]],
            },
            {
                "name": "Everyone else",
                "campaignIds": [ny["id"], rest["id"]],
                "strategy": "weighted",
                "weights": [1, 3],
            },
        ]
    }
    put = await client.put("/v1/routing-rules", json=rules, headers=ws["h"])
    assert put.status_code == 200, put.text
    assert put.json()["position"] > 0
    read = (await client.get("/v1/routing-rules", headers=ws["h"])).json()
    assert [r["id"] for r in read["rules"]] == ["r1", "r2"]
    assert read["rules"][1]["campaignIds"] == [ny["id"], rest["id"]]
    assert read["rules"][1]["weights"] == [1, 3] and read["rules"][0]["strategy"] == "priority"
    assert read["rules"][0]["conditions"][0]["value"] == ["NY"]
    assert (await client.get("/v1/routing-rules", headers=other["h"])).json() == {"rules": []}
    unchanged = await client.put("/v1/routing-rules", json=rules, headers=ws["h"])
    assert unchanged.json()["position"] == 0

    for unknown in (str(uuid.uuid4()), theirs["id"]):
        bad = {"rules": [{"name": "x", "campaignIds": [rest["id"], unknown]}]}
        error = error_of(await client.put("/v1/routing-rules", json=bad, headers=ws["h"]))
        assert error["code"] == "unknown_campaign"
        assert error["details"] == {"field": "rules.0.campaignIds.1", "campaignId": unknown}
    await client.delete(f"/v1/campaigns/{rest['id']}", headers=ws["h"])
    deleted = {"rules": [{"name": "x", "campaignIds": [rest["id"]]}]}
    error = error_of(await client.put("/v1/routing-rules", json=deleted, headers=ws["h"]))
    assert error["code"] == "unknown_campaign"
    weights = {"rules": [{"name": "x", "campaignIds": [ny["id"]], "strategy": "weighted"}]}
    error = error_of(await client.put("/v1/routing-rules", json=weights, headers=ws["h"]))
    assert error["code"] == "validation_failed" and "rules.0" in error["message"]
    assert (
        await client.put("/v1/routing-rules", json={"rules": []}, headers=ws["viewer"])
    ).status_code == 403
    # The refusals wrote nothing.
    assert (await client.get("/v1/routing-rules", headers=ws["h"])).json() == read
    cleared = await client.put("/v1/routing-rules", json={"rules": []}, headers=ws["h"])
    assert cleared.json() == {"rules": [], "position": cleared.json()["position"]}
    assert (await client.get("/v1/routing-rules", headers=ws["h"])).json() == {"rules": []}


async def test_buyers_keys_are_shown_only_to_managers_and_never_published(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    endpoint = {"url": "https://buyer.example/leads", "headers": {"X-Api-Key": "s3cret-key"}}
    created = await create(client, ws, endpoints=[endpoint])
    managed = await client.get(f"/v1/campaigns/{created['id']}", headers=ws["h"])
    assert managed.json()["endpoints"][0]["headers"] == {"X-Api-Key": "s3cret-key"}
    viewed = await client.get(f"/v1/campaigns/{created['id']}", headers=ws["viewer"])
    assert viewed.json()["endpoints"][0]["headers"] == {"X-Api-Key": "[redacted]"}
    listed = await client.get("/v1/campaigns", headers=ws["viewer"])
    assert "s3cret-key" not in listed.text
    records = await engine.log.read(0, 1000, event_types=["campaign.created"])
    assert records and all(b"s3cret-key" not in event_payload(r) for r in records)
    assert any(b"s3cret-key" in r.state for r in records)  # kept in the log itself
