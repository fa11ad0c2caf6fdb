"""End to end: leads through the partner submit API, campaigns, and local buyer endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateways.bootstrap import Engine
from gateways.settings import Settings
from gateways.workers import build_workers
from tests.conftest import make_workspace, settings_for
from tests.gateways.http.test_partner_access import partner_of, token_of
from tests.gateways.outbound.fake_buyers import Answer, FakeBuyer, Seen, accept, reject

RULES = {
    "successPath": "status",
    "successMatch": "accepted",
    "duplicateMatch": "duplicate",
    "reasonPath": "reason",
    "pricePath": "price",
}


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    return settings_for(
        schema_name,
        nats_prefix,
        allow_private_webhook_targets=True,
        submission_poll_interval=0.2,
        public_url="http://leadlog.test",
    )


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "it"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def endpoint(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "contentType": "json",
        "fields": {
            "email": "{{lead.email}}",
            "contact.name": "{{lead.name}}",
            "contact.phone": "{{key.phone}}",
            "age": "{{key.age}}",
            "vendor": "leadlog",
        },
        "responseRules": RULES,
        **extra,
    }


async def campaign(client: httpx.AsyncClient, ws: dict[str, Any], **config: Any) -> str:
    body = {
        "name": config.pop("name", "Auto insurance"),
        "dynamicKeys": [
            {"name": "age", "op": "age", "from": "lead.customFields.dob"},
            {"name": "phone", "op": "phone_e164", "from": "lead.phone"},
        ],
        **config,
    }
    created = await client.post("/v1/campaigns", json=body, headers=ws["h"])
    assert created.status_code == 201, created.text
    campaign_id: str = created.json()["id"]
    return campaign_id


LEAD = {
    "name": "Ann Lead",
    "email": "ann@example.com",
    "phone": "(415) 555-0101",
    "customFields": {"dob": "1990-05-01", "state": "CA"},
}


async def submit(
    client: httpx.AsyncClient, ws: dict[str, Any], campaign_id: str | None, **lead: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"lead": {**LEAD, **lead}}
    if campaign_id is not None:
        body["campaignId"] = campaign_id
    response = await client.post("/api/v1/leads/submit", json=body, headers=ws["h"])
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    assert result["submissionId"], result
    return result


async def submission(client: httpx.AsyncClient, ws: dict[str, Any], sid: str) -> dict[str, Any]:
    response = await client.get(f"/v1/submissions/{sid}", headers=ws["h"])
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def settled(
    client: httpx.AsyncClient, ws: dict[str, Any], sid: str, *statuses: str
) -> dict[str, Any]:
    wanted = statuses or ("accepted", "rejected", "failed", "disqualified", "capped", "returned")

    last: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        found = await submission(client, ws, sid)
        last.update(found)
        return found if found["status"] in wanted else None

    try:
        result: dict[str, Any] = await eventually(check, what=f"submission {sid} in {wanted}")
    except AssertionError as error:
        raise AssertionError(f"{error}; it is {last.get('status')}: {steps(last)}") from None
    return result


def steps(found: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["step"], entry["outcome"]) for entry in found["journey"]]


async def stats(client: httpx.AsyncClient, ws: dict[str, Any], campaign_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/campaigns/{campaign_id}/stats", headers=ws["h"])
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def stats_reach(
    client: httpx.AsyncClient, ws: dict[str, Any], campaign_id: str, **expected: Any
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await stats(client, ws, campaign_id)
        return found if all(found[k] == v for k, v in expected.items()) else None

    result: dict[str, Any] = await eventually(check, what=f"stats {expected}")
    return result


# ---- the direct pipeline ------------------------------------------------------------------------


async def test_an_accepted_lead_carries_its_dynamic_keys_to_the_buyer(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer(lambda _: accept("12.50")) as buyer:
        campaign_id = await campaign(client, ws, endpoints=[endpoint(buyer.url())], price="10")
        result = await submit(client, ws, campaign_id)
        found = await settled(client, ws, result["submissionId"])

    assert found["status"] == "accepted", found
    assert found["campaignId"] == campaign_id
    assert found["leadId"] == result["leadId"]
    assert steps(found) == [
        ("received", "api"),
        ("processing", "started"),
        ("dynamic_keys", "computed"),
        ("qualification", "passed"),
        ("post", "sent"),
        ("delivery", "accepted"),
    ]
    assert all(entry["at"] for entry in found["journey"])
    (post,) = buyer.seen
    sent = post.json()
    assert sent == {
        "email": "ann@example.com",
        "contact": {"name": "Ann Lead", "phone": "+14155550101"},
        "age": sent["age"],
        "vendor": "leadlog",
    }
    assert isinstance(sent["age"], int) and sent["age"] >= 36
    assert post.headers["content-type"] == "application/json"
    assert post.headers["idempotency-key"]
    assert found["journey"][-1]["price"] == "12.50"
    counted = await stats_reach(client, ws, campaign_id, accepted=1)
    assert counted["submitted"] == 1 and counted["delivered"] == 1
    timeline = f"/v1/leads/{result['leadId']}/timeline"
    plain = (await client.get(timeline, headers=ws["h"])).json()["items"]
    assert all(item["category"] != "submission" for item in plain)
    full = await client.get(timeline, params={"include": "submissions"}, headers=ws["h"])
    shown = [i for i in full.json()["items"] if i["category"] == "submission"]
    assert len(shown) == 5  # processing, keys, qualification, post, delivery
    assert any("delivery accepted" in item["summary"] for item in shown)
    assert counted["rejected"] == 0 and counted["disqualified"] == 0
    assert counted["revenue"] in ("12.50", "12.5")


async def test_a_rejected_lead_falls_back_to_the_next_campaign(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    def answer(seen: Seen) -> Answer:
        return reject("no coverage in CA") if seen.path == "/first" else accept()

    async with FakeBuyer(answer) as buyer:
        second = await campaign(
            client, ws, name="Second", endpoints=[endpoint(buyer.url("/second"))]
        )
        first = await campaign(
            client,
            ws,
            name="First",
            endpoints=[endpoint(buyer.url("/first"))],
            fallbackCampaignIds=[second],
        )
        result = await submit(client, ws, first)
        found = await settled(client, ws, result["submissionId"])
        assert found["status"] == "rejected"
        assert found["reason"] == "no coverage in CA"
        fallback = found["journey"][-1]
        assert fallback["step"] == "fallback"
        follow = await settled(client, ws, fallback["submissionId"])

    assert follow["status"] == "accepted"
    assert follow["origin"] == "fallback"
    assert follow["parentId"] == result["submissionId"]
    assert follow["campaignId"] == second
    assert [s.path for s in buyer.seen] == ["/first", "/second"]
    lead = (await client.get(f"/v1/leads/{result['leadId']}", headers=ws["h"])).json()
    assert lead["repostedTo"] == [second]
    assert lead["submissionStatus"] == "accepted"
    counted = await stats_reach(client, ws, first, rejected=1)
    assert counted["rejectedByReason"] == {"no coverage in CA": 1}


async def test_disqualified_and_missing_fields_never_reach_the_buyer(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        campaign_id = await campaign(
            client,
            ws,
            endpoints=[endpoint(buyer.url())],
            requiredFields=["lead.customFields.zip"],
            disqualify=[
                {
                    "field": "lead.state",
                    "op": "in",
                    "value": ["NY", "NJ"],
                    "reason": "excluded state",
                },
                {"field": "key.age", "op": "lt", "value": 18},
            ],
        )
        excluded = await submit(client, ws, campaign_id, customFields={"state": "ny"})
        minor = await submit(
            client, ws, campaign_id, email="kid@example.com", customFields={"dob": "2015-01-01"}
        )
        missing = await submit(client, ws, campaign_id, email="nozip@example.com")
        found = await settled(client, ws, excluded["submissionId"])
        young = await settled(client, ws, minor["submissionId"])
        lacking = await settled(client, ws, missing["submissionId"])
        await asyncio.sleep(0.2)

    assert buyer.seen == []
    assert found["status"] == "disqualified" and found["reason"] == "excluded state"
    assert young["status"] == "disqualified"
    assert "key.age" in young["reason"]
    assert lacking["status"] == "failed"
    assert lacking["journey"][-1]["missing"] == ["lead.customFields.zip"]
    counted = await stats_reach(client, ws, campaign_id, disqualified=2, failed=1)
    assert counted["disqualifiedByReason"]["excluded state"] == 1


async def test_field_qualification_disqualifies_a_disposable_email(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        campaign_id = await campaign(
            client,
            ws,
            endpoints=[endpoint(buyer.url())],
            qualification=[
                {"field": "lead.email", "type": "email"},
                {"field": "lead.phone", "type": "phone", "region": "US"},
            ],
        )
        bad = await submit(client, ws, campaign_id, email="x@mailinator.com")
        good = await submit(client, ws, campaign_id, email="real@example.org")
        refused = await settled(client, ws, bad["submissionId"])
        passed = await settled(client, ws, good["submissionId"])
    assert refused["status"] == "disqualified"
    assert "lead.email" in refused["reason"]
    assert passed["status"] == "accepted"
    assert len(buyer.seen) == 1


# ---- first-submission actions -------------------------------------------------------------------


async def test_a_review_holds_the_submission_until_approved_or_rejected(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        campaign_id = await campaign(
            client, ws, endpoints=[endpoint(buyer.url())], firstSubmissionAction={"type": "review"}
        )
        approved = await submit(client, ws, campaign_id)
        rejected = await submit(client, ws, campaign_id, email="bob@example.com")
        for sid in (approved["submissionId"], rejected["submissionId"]):
            await settled(client, ws, sid, "pending_action")
        await asyncio.sleep(0.3)
        assert buyer.seen == []
        yes = await client.post(
            f"/v1/submissions/{approved['submissionId']}/review",
            json={"decision": "approve"},
            headers=ws["h"],
        )
        assert yes.status_code == 200, yes.text
        no = await client.post(
            f"/v1/submissions/{rejected['submissionId']}/review",
            json={"decision": "reject", "reason": "looks fake"},
            headers=ws["h"],
        )
        assert no.status_code == 200, no.text
        ok = await settled(client, ws, approved["submissionId"])
        refused = await settled(client, ws, rejected["submissionId"])
        again = await client.post(
            f"/v1/submissions/{approved['submissionId']}/review",
            json={"decision": "approve"},
            headers=ws["h"],
        )
        bad = await client.post(
            f"/v1/submissions/{approved['submissionId']}/review",
            json={"decision": "maybe"},
            headers=ws["h"],
        )
    assert ok["status"] == "accepted"
    assert ("first_submission_action", "approve") in steps(ok)
    assert refused["status"] == "disqualified" and refused["reason"] == "looks fake"
    assert len(buyer.seen) == 1
    assert again.status_code == 409
    assert bad.status_code == 422


async def test_a_webhook_action_answers_on_its_signed_callback(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        campaign_id = await campaign(
            client,
            ws,
            endpoints=[endpoint(buyer.url())],
            firstSubmissionAction={"type": "webhook", "url": buyer.url("/verify")},
        )
        result = await submit(client, ws, campaign_id)
        sid = result["submissionId"]
        await settled(client, ws, sid, "pending_action")
        (asked,) = await eventually(lambda: _async(buyer.at("/verify")))
        callback = asked.json()["callbackUrl"]
        assert callback.startswith(f"http://leadlog.test/v1/submissions/{sid}/callback?signature=")
        path = callback.removeprefix("http://leadlog.test")
        forged = await client.post(
            path.split("?")[0] + "?signature=forged", json={"decision": "approve"}
        )
        assert forged.status_code == 401
        answered = await client.post(path, json={"decision": "approve"})
        assert answered.status_code == 200, answered.text
        found = await settled(client, ws, sid)
    assert found["status"] == "accepted"
    assert len(buyer.at("/leads")) == 1


async def _async(value: Any) -> Any:
    return value


# ---- ping-post, reposts, caps, returns ----------------------------------------------------------


async def test_a_ping_post_auction_posts_to_the_highest_bidder(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    bids = {"/ping/a": "7.00", "/ping/b": "11.25"}

    def answer(seen: Seen) -> Answer:
        if seen.path == "/ping/slow":
            return Answer(body=json.dumps({"status": "accepted", "price": "99"}), delay=3.0)
        if seen.path in bids:
            return Answer(body=json.dumps({"status": "accepted", "price": bids[seen.path]}))
        return accept()

    def bidder(name: str) -> dict[str, Any]:
        return {
            **endpoint(buyer.url(f"/post/{name}")),
            "id": name,
            "ping": {
                "url": buyer.url(f"/ping/{name}"),
                "fields": {"state": "{{lead.state}}", "age": "{{key.age}}"},
                "responseRules": RULES,
            },
        }

    async with FakeBuyer(answer) as buyer:
        campaign_id = await campaign(
            client,
            ws,
            mode="ping_post",
            pingTimeoutSeconds=1.0,
            endpoints=[bidder("a"), bidder("b"), bidder("slow")],
        )
        result = await submit(client, ws, campaign_id)
        found = await settled(client, ws, result["submissionId"])

    assert found["status"] == "accepted"
    pings = [s for s in buyer.seen if s.path.startswith("/ping/")]
    assert sorted(s.path for s in pings) == ["/ping/a", "/ping/b", "/ping/slow"]
    for ping in pings:
        assert set(ping.json()) == {"state", "age"}  # anonymised: no email, name or phone
    posts = [s.path for s in buyer.seen if s.path.startswith("/post/")]
    assert posts == ["/post/b"]
    auction = next(e for e in found["journey"] if e["step"] == "ping")
    outcome = {b["endpointId"]: b["outcome"] for b in auction["bids"]}
    assert outcome == {"a": "bid", "b": "bid", "slow": "timeout"}
    assert found["journey"][-1]["price"] == "11.25"


async def test_a_repost_is_a_new_submission_of_the_same_lead(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        first = await campaign(client, ws, name="First", endpoints=[endpoint(buyer.url("/a"))])
        second = await campaign(client, ws, name="Second", endpoints=[endpoint(buyer.url("/b"))])
        result = await submit(client, ws, first)
        await settled(client, ws, result["submissionId"])
        reposted = await client.post(
            f"/api/v1/leads/{result['leadId']}/repost", json={"campaignId": second}, headers=ws["h"]
        )
        assert reposted.status_code == 201, reposted.text
        found = await settled(client, ws, reposted.json()["submissionId"])
        unknown = await client.post(
            f"/v1/leads/{result['leadId']}/repost",
            json={"campaignId": "00000000-0000-4000-8000-000000000000"},
            headers=ws["h"],
        )
    assert found["status"] == "accepted" and found["origin"] == "repost"
    assert found["leadId"] == result["leadId"]
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_campaign"
    lead = (await client.get(f"/v1/leads/{result['leadId']}", headers=ws["h"])).json()
    assert lead["repostedTo"] == [second]


async def test_a_daily_cap_holds_under_a_hundred_concurrent_leads(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer(lambda _: Answer(delay=0.05)) as buyer:
        campaign_id = await campaign(
            client,
            ws,
            endpoints=[endpoint(buyer.url())],
            caps={"daily": 10, "timezone": "America/New_York"},
        )
        results = await asyncio.gather(
            *(submit(client, ws, campaign_id, email=f"lead{n}@example.com") for n in range(100))
        )
        finals = await asyncio.gather(*(settled(client, ws, r["submissionId"]) for r in results))
    statuses = [f["status"] for f in finals]
    assert statuses.count("accepted") == 10
    assert statuses.count("capped") == 90
    assert len(buyer.seen) == 10
    counted = await stats_reach(client, ws, campaign_id, accepted=10, capped=90)
    daily = next(c for c in counted["caps"] if c["label"] == "daily")
    assert daily["used"] == 10 and daily["limit"] == 10


async def test_a_buyer_returns_a_lead_within_the_window(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    buyer_partner = await partner_of(client, ws, "Buyer Co")
    rival = await partner_of(client, ws, "Rival Co")
    async with FakeBuyer(lambda _: accept("20")) as buyer:
        campaign_id = await campaign(
            client,
            ws,
            endpoints=[endpoint(buyer.url())],
            buyerPartnerId=buyer_partner["id"],
            returnWindowDays=3,
        )
        result = await submit(client, ws, campaign_id)
        sid = result["submissionId"]
        await settled(client, ws, sid)
    not_theirs = await client.post(
        f"/v1/submissions/{sid}/return",
        json={"reason": "wrong number"},
        headers=await token_of(client, ws, rival),
    )
    assert not_theirs.status_code == 403
    asked = await client.post(
        f"/v1/submissions/{sid}/return",
        json={"reason": "wrong number"},
        headers=await token_of(client, ws, buyer_partner),
    )
    assert asked.status_code == 200, asked.text
    decided = await client.post(
        f"/v1/submissions/{sid}/return/decision", json={"decision": "accept"}, headers=ws["h"]
    )
    assert decided.status_code == 200, decided.text
    found = await settled(client, ws, sid, "returned")
    assert [s for s, _ in steps(found)][-2:] == ["return", "return"]
    counted = await stats_reach(client, ws, campaign_id, returned=1)
    assert counted["revenue"] in ("0", "0.00")


# ---- routing, bad input -----------------------------------------------------------------------


async def test_routing_rules_pick_the_campaign_in_turn(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        east = await campaign(client, ws, name="East", endpoints=[endpoint(buyer.url("/east"))])
        west = await campaign(client, ws, name="West", endpoints=[endpoint(buyer.url("/west"))])
        rules = {
            "rules": [
                {
                    "name": "California",
                    "conditions": [{"field": "lead.state", "op": "eq", "value": "CA"}],
                    "campaignIds": [east, west],
                    "strategy": "round_robin",
                }
            ]
        }
        put = await client.put("/v1/routing-rules", json=rules, headers=ws["h"])
        assert put.status_code == 200, put.text
        results = [await submit(client, ws, None, email=f"r{n}@example.com") for n in range(4)]
        found = [await settled(client, ws, r["submissionId"]) for r in results]
        unrouted = await client.post(
            "/api/v1/leads/submit",
            json={"lead": {**LEAD, "customFields": {"state": "TX"}}},
            headers=ws["h"],
        )
    assert [f["campaignId"] for f in found] == [east, west, east, west]
    assert found[0]["origin"] == "routed"
    assert found[0]["journey"][0]["routing"]["ruleName"] == "California"
    assert unrouted.status_code == 422
    assert unrouted.json()["error"]["code"] == "campaign_required"


async def test_an_unknown_or_foreign_campaign_is_refused(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    theirs = await campaign(client, other, endpoints=[endpoint("https://buyer.example/leads")])
    for campaign_id in (theirs, "00000000-0000-4000-8000-000000000000"):
        response = await client.post(
            "/api/v1/leads/submit", json={"campaignId": campaign_id, "lead": LEAD}, headers=ws["h"]
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "unknown_campaign"
    leads = (await client.get("/v1/leads", headers=ws["h"])).json()
    assert leads["total"] == 0


async def test_imported_leads_wait_for_a_bulk_submit(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        campaign_id = await campaign(client, ws, endpoints=[endpoint(buyer.url())])
        csv = "name,email\nAnn,ann@example.com\nBob,bob@example.com\n"
        imported = await client.post(
            "/v1/leads/import",
            content=csv.encode(),
            headers={**ws["h"], "content-type": "text/csv"},
        )
        assert imported.status_code in (200, 201), imported.text
        leads = await eventually(lambda: _leads(client, ws), what="the imported leads in the list")
        await asyncio.sleep(0.3)
        assert buyer.seen == []
        bulk = await client.post(
            "/v1/leads/bulk-action",
            json={"action": "submit", "campaignId": campaign_id, "leadIds": leads},
            headers=ws["h"],
        )
        assert bulk.status_code == 200, bulk.text
        assert bulk.json()["succeeded"] == 2
        for item in bulk.json()["results"]:
            found = await settled(client, ws, item["submissionId"])
            assert found["status"] == "accepted" and found["origin"] == "bulk"
    assert len(buyer.seen) == 2


async def _leads(client: httpx.AsyncClient, ws: dict[str, Any]) -> list[str] | None:
    found = (await client.get("/v1/leads", headers=ws["h"])).json()
    return [item["id"] for item in found["items"]] if found["total"] == 2 else None


# ---- a restart mid-pipeline ---------------------------------------------------------------------


async def test_a_restart_mid_pipeline_resumes_every_submission_once(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    workers = build_workers(engine)
    for worker in workers:
        await worker.start()
    ws = await make_workspace(client)
    async with FakeBuyer(lambda _: Answer(delay=0.4)) as buyer:
        campaign_id = await campaign(
            client, ws, endpoints=[endpoint(buyer.url())], firstSubmissionAction=None
        )
        results = [
            await submit(client, ws, campaign_id, email=f"restart{n}@example.com")
            for n in range(30)
        ]
        await eventually(lambda: _async(len(buyer.seen) >= 5), what="posts in flight")
        for worker in reversed(workers):
            await worker.stop()
        held = len(buyer.seen)
        await asyncio.sleep(0.5)
        assert len(buyer.seen) == held  # stopped: nothing more goes out
        workers = build_workers(engine)
        for worker in workers:
            await worker.start()
        try:
            finals = [await settled(client, ws, r["submissionId"]) for r in results]
        finally:
            for worker in reversed(workers):
                await worker.stop()
    assert [f["status"] for f in finals] == ["accepted"] * 30
    keys = [s.headers["idempotency-key"] for s in buyer.seen]
    assert len(keys) == 30 and len(set(keys)) == 30  # one post per submission, none twice
    for found in finals:
        assert [s for s, _ in steps(found)].count("post") == 1


async def test_a_lapsed_action_goes_on_or_fails_as_configured(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    async with FakeBuyer() as buyer:
        lenient = await campaign(
            client,
            ws,
            name="Lenient",
            endpoints=[endpoint(buyer.url())],
            firstSubmissionAction={
                "type": "review",
                "timeoutSeconds": 0.5,
                "onTimeout": "continue",
            },
        )
        strict = await campaign(
            client,
            ws,
            name="Strict",
            endpoints=[endpoint(buyer.url())],
            firstSubmissionAction={"type": "review", "timeoutSeconds": 0.5},
        )
        went_on = await submit(client, ws, lenient)
        lapsed = await submit(client, ws, strict, email="late@example.com")
        ok = await settled(client, ws, went_on["submissionId"])
        failed = await settled(client, ws, lapsed["submissionId"])
    assert ok["status"] == "accepted"
    assert ("first_submission_action", "continue") in steps(ok)
    assert failed["status"] == "failed"
    assert ("first_submission_action", "timeout") in steps(failed)
    assert len(buyer.seen) == 1


async def test_a_failing_buyer_holds_only_its_own_leads(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    def answer(seen: Seen) -> Answer:
        if seen.path == "/down":
            return Answer(status=500, body="<html>oops</html>", content_type="text/html")
        if seen.path == "/garbage":
            return Answer(body="\x00not json{", content_type="application/json")
        if seen.path == "/slow":
            return Answer(delay=5.0)
        return accept()

    async with FakeBuyer(answer) as buyer:
        ids = {
            path: await campaign(
                client,
                ws,
                name=path,
                endpoints=[endpoint(buyer.url(path), timeoutSeconds=0.3)],
            )
            for path in ("/down", "/garbage", "/slow", "/fine")
        }
        results = {
            path: await submit(client, ws, cid, email=f"{path[1:]}@example.com")
            for path, cid in ids.items()
        }
        fine = await settled(client, ws, results["/fine"]["submissionId"])
        down = await settled(client, ws, results["/down"]["submissionId"])
        garbage = await settled(client, ws, results["/garbage"]["submissionId"])
        slow = await settled(client, ws, results["/slow"]["submissionId"])
    assert fine["status"] == "accepted"
    assert down["status"] == "failed" and "500" in (down["reason"] or "")
    assert garbage["status"] == "rejected"
    assert slow["status"] == "failed" and "timed out" in (slow["reason"] or "")
    assert len(buyer.at("/slow")) == 3  # transport failures only are tried again
    assert len(buyer.at("/down")) == 1  # an answer, even a 500, is the buyer's word
