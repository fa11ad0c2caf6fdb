"""The submissions, campaigns and campaign stats views from Submission and Campaign events
appended through the store, and the reads over them (a submission with its journey, the
filtered list, a campaign's stats); a rebuild from the log gives the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from domain.campaigns import CampaignConfig
from domain.submissions import Origin, Submission, SubmissionStatus
from domain.workspaces import Role
from gateways.bootstrap import Engine
from gateways.http.app import create_app
from handlers.campaigns import create_campaign, delete_campaign, update_campaign
from handlers.ports import Append
from handlers.workspaces import create_workspace, issue_token
from projections.base import Projection, Tables
from projections.campaign_stats import CampaignStats
from projections.campaigns import CampaignsView
from projections.submissions import SubmissionsView
from tests.conftest import bearer

ACTOR = "system:test"


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app with only the projections running: no pipeline worker moves the
    submissions this module writes by hand."""
    await engine.projector.start()
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client
    await engine.projector.stop()


@dataclass
class Tenant:
    id: UUID
    h: dict[str, str]
    campaign: UUID
    snapshot: dict[str, Any]


async def tenant(engine: Engine, name: str) -> Tenant:
    workspace = await create_workspace(engine.store, name)
    token = await issue_token(engine.store, workspace.id, Role.MANAGER)
    config = CampaignConfig.model_validate(
        {
            "name": f"{name} solar",
            "endpoints": [
                {"url": "https://one.example/leads"},
                {"url": "https://two.example/leads"},
            ],
            "price": "12.50",
        }
    )
    campaign, _ = await create_campaign(engine.store, workspace.id, config, ACTOR)
    return Tenant(workspace.id, bearer(token.token), campaign.id, config.snapshot())


def submission(t: Tenant, campaign: UUID | None = None, **extra: Any) -> Submission:
    return Submission(
        workspace_id=t.id,
        lead_id=uuid4(),
        campaign_id=campaign or t.campaign,
        source="api",
        snapshot={"name": "Ann", "email": "ann@example.com"},
        **extra,
    )


def qualified(t: Tenant, campaign: UUID | None = None, **extra: Any) -> Submission:
    s = submission(t, campaign, **extra)
    s.start(t.snapshot)
    s.compute_keys({"age": 41}, {})
    s.qualify([{"field": "lead.email", "type": "email", "result": "pass"}])
    return s


def post(s: Submission, endpoint: str, price: Decimal | None = None) -> None:
    s.start_post(endpoint, f"https://{endpoint}.example/leads", {"body": {}}, price, {})


def answer(
    s: Submission,
    outcome: str,
    *,
    final: bool,
    reason: str | None = None,
    price: Decimal | None = None,
) -> None:
    s.record_answer(
        outcome,
        status_code=200,
        latency_ms=12.5,
        reason=reason,
        price=price,
        response='{"status": "' + outcome + '"}',
        final=final,
    )


async def save(engine: Engine, t: Tenant, *submissions: Submission) -> int:
    """Each submission's new events in one append (positions: in the order given)."""
    position = 0
    for s in submissions:
        appended = await engine.store.append(Append(t.id, events=s.collect_events()))
        position = appended.position
    return position


async def test_submissions_and_campaign_stats_follow_the_log(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    t = await tenant(engine, "Acme")
    other = await tenant(engine, "Globex")
    now = datetime.now(UTC)

    # Accepted by the second endpoint after the first said duplicate, then returned.
    returned = qualified(t)
    post(returned, "e1", Decimal("12.50"))
    answer(returned, "duplicate", final=False, reason="seen it")
    post(returned, "e2", Decimal("12.50"))
    answer(returned, "accepted", final=True, price=Decimal("12.50"))
    # Accepted, kept.
    kept = qualified(t)
    post(kept, "e1")
    answer(kept, "accepted", final=True, price=Decimal("30.25"))
    # Accepted, its return asked for but not decided.
    questioned = qualified(t)
    post(questioned, "e1")
    answer(questioned, "accepted", final=True, price=Decimal("7"))
    # Refused by the last buyer.
    rejected = qualified(t)
    post(rejected, "e1")
    answer(rejected, "rejected", final=True, reason="out of area")
    # Failed on an error answer, after a rejection that left another endpoint to try.
    errored = qualified(t)
    post(errored, "e1")
    answer(errored, "rejected", final=False, reason="out of area")
    post(errored, "e2")
    answer(errored, "error", final=True, reason="HTTP 500")
    disqualified = submission(t)
    disqualified.start(t.snapshot)
    disqualified.disqualify("state NY is excluded", field="lead.state")
    missing = submission(t)
    missing.start(t.snapshot)
    missing.compute_keys({}, {})
    missing.miss_fields(["phone", "zip"])
    # No endpoint could take it: one lacks a field, the other's payload cannot be built.
    skipped = qualified(t)
    skipped.miss_fields(["zip"], endpoint_id="e1", final=False)
    skipped.skip_endpoint("e2", "no value for applicant.zip")
    skipped.fail_post("no endpoint left to post to")
    # A shared lead: two buyers accept, each paying.
    shared = qualified(t)
    post(shared, "e1", Decimal("5"))
    answer(shared, "accepted", final=False, price=Decimal("5"))
    post(shared, "e2", Decimal("6"))
    answer(shared, "accepted", final=False, price=Decimal("6.10"))
    shared.finish_accepted()
    capped = qualified(t)
    capped.cap(["daily"])
    waiting = submission(t, origin=Origin.REPOST, actor="user:mia")
    waiting.start(t.snapshot)
    due = now + timedelta(hours=4)
    waiting.request_action("review", due)
    refused = submission(t)
    refused.start(t.snapshot)
    refused.request_action("review", now + timedelta(hours=1))
    refused.complete_action(
        "reject", "looks fake", "user:mia", fail_as=SubmissionStatus.DISQUALIFIED
    )
    in_flight = qualified(t, origin=Origin.FALLBACK, parent_id=rejected.id)
    post(in_flight, "e2", Decimal("9.99"))
    pending = submission(t)
    # Elsewhere: another campaign of the workspace, and another workspace.
    second = await create_campaign(
        engine.store, t.id, CampaignConfig.model_validate(t.snapshot | {"name": "Two"}), ACTOR
    )
    aside = qualified(t, second[0].id)
    post(aside, "e1")
    answer(aside, "accepted", final=True, price=Decimal("100"))
    foreign = qualified(other)
    post(foreign, "e1")
    answer(foreign, "rejected", final=True, reason="out of area")

    everything = (
        returned,
        kept,
        questioned,
        rejected,
        errored,
        disqualified,
        missing,
        skipped,
        shared,
        capped,
        waiting,
        refused,
        in_flight,
        pending,
        aside,
    )
    await save(engine, t, *everything)
    await save(engine, other, foreign)
    returned.request_return("the phone is dead", "token:buyer", now, window_days=7)
    await save(engine, t, returned)
    returned.decide_return(True, "agreed", ACTOR)
    questioned.request_return("wrong person", "token:buyer", now, window_days=7)
    head = await save(engine, t, returned, questioned)
    assert await engine.projector.wait_for("submissions", head, 10)
    assert await engine.projector.wait_for("campaign_stats", head, 10)

    rows = {
        r["id"]: dict(r)
        for r in await engine.pool.fetch("SELECT * FROM submissions WHERE workspace_id = $1", t.id)
    }
    assert len(rows) == len(everything)

    def row(s: Submission) -> dict[str, Any]:
        return rows[s.id]

    r = row(returned)
    assert (r["status"], r["reason"], r["endpoint_id"]) == ("returned", "agreed", "e2")
    assert r["price"] == Decimal("12.50") and r["accepted_at"] is not None
    assert r["return_pending"] is False and r["post_started_at"] is None
    assert r["origin"] == "api" and r["parent_id"] is None and r["source"] == "api"
    assert r["snapshot"] is not None
    assert row(questioned)["return_pending"] is True
    assert row(questioned)["status"] == "accepted"
    assert row(questioned)["reason"] == "wrong person"
    assert (row(kept)["status"], row(kept)["price"], row(kept)["reason"]) == (
        "accepted",
        Decimal("30.25"),
        None,
    )
    assert (row(rejected)["status"], row(rejected)["reason"]) == ("rejected", "out of area")
    assert (row(errored)["status"], row(errored)["reason"]) == ("failed", "HTTP 500")
    assert row(errored)["endpoint_id"] == "e2" and row(errored)["price"] is None
    assert row(disqualified)["reason"] == "state NY is excluded"
    assert (row(missing)["status"], row(missing)["reason"]) == ("failed", "missing phone, zip")
    assert (row(skipped)["status"], row(skipped)["endpoint_id"]) == ("failed", None)
    assert row(skipped)["reason"] == "no endpoint left to post to"
    assert (row(shared)["status"], row(shared)["price"], row(shared)["endpoint_id"]) == (
        "accepted",
        Decimal("11.10"),
        "e2",
    )
    assert row(shared)["reason"] == "every bidder was tried"
    assert (row(capped)["status"], row(capped)["reason"]) == ("capped", "capped: daily")
    w = row(waiting)
    assert (w["status"], w["action_due_at"], w["origin"], w["actor"]) == (
        "pending_action",
        due,
        "repost",
        "user:mia",
    )
    assert row(refused)["status"] == "disqualified" and row(refused)["action_due_at"] is None
    assert row(refused)["reason"] == "looks fake"
    f = row(in_flight)
    assert (f["status"], f["endpoint_id"], f["origin"], f["parent_id"]) == (
        "delivered",
        "e2",
        "fallback",
        rejected.id,
    )
    assert f["post_started_at"] is not None and f["price"] is None
    assert (row(pending)["status"], row(pending)["updated_at"]) == (
        "pending",
        row(pending)["created_at"],
    )
    for s in everything:
        assert row(s)["updated_position"] > 0

    stats = await api.get(f"/v1/campaigns/{t.campaign}/stats", headers=t.h)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert {k: v for k, v in body.items() if k != "caps"} == {
        "campaignId": str(t.campaign),
        "submitted": 14,
        "delivered": 7,  # first posts: all but the returned one's second and those not posted
        "accepted": 4,
        "rejected": 1,
        "duplicate": 1,
        "disqualified": 2,
        "failed": 3,
        "capped": 1,
        "returned": 1,
        "pendingAction": 1,
        "revenue": "48.35",  # 12.50 + 30.25 + 7 + 5 + 6.10 - 12.50 given back
        "disqualifiedByReason": {"looks fake": 1, "state NY is excluded": 1},
        "rejectedByReason": {"out of area": 1},
        "failedByReason": {
            "HTTP 500": 1,
            "missing phone, zip": 1,
            "no endpoint left to post to": 1,
        },
    }
    assert body["caps"] == []
    aside_stats = (await api.get(f"/v1/campaigns/{second[0].id}/stats", headers=t.h)).json()
    assert (aside_stats["submitted"], aside_stats["accepted"], aside_stats["revenue"]) == (
        1,
        1,
        "100.00",
    )
    theirs = (await api.get(f"/v1/campaigns/{other.campaign}/stats", headers=other.h)).json()
    assert (theirs["submitted"], theirs["rejected"], theirs["rejectedByReason"]) == (
        1,
        1,
        {"out of area": 1},
    )

    # The list, by campaign, status, lead and origin.
    async def listed(**params: Any) -> list[str]:
        answered = await api.get("/v1/submissions", params=params, headers=t.h)
        assert answered.status_code == 200, answered.text
        return sorted(item["id"] for item in answered.json()["items"])

    by_campaign = await listed(campaignId=str(t.campaign), limit=200)
    assert by_campaign == sorted(str(s.id) for s in everything if s is not aside)
    assert await listed(campaignId=str(t.campaign), status="accepted") == sorted(
        [str(kept.id), str(questioned.id), str(shared.id)]
    )
    assert await listed(origin="fallback") == [str(in_flight.id)]
    assert await listed(leadId=str(waiting.lead_id)) == [str(waiting.id)]
    failed = [str(errored.id), str(missing.id), str(skipped.id)]
    assert await listed(status="failed", origin="api") == sorted(failed)

    # One submission with its journey, read from the log.
    one = await api.get(f"/v1/submissions/{returned.id}", headers=t.h)
    assert one.status_code == 200, one.text
    detail = one.json()
    assert (detail["status"], detail["campaignId"], detail["price"]) == (
        "returned",
        str(t.campaign),
        "12.50",
    )
    assert detail["leadId"] == str(returned.lead_id) and detail["endpointId"] == "e2"
    assert detail["campaign"] == t.snapshot
    assert detail["snapshot"] == {"name": "Ann", "email": "ann@example.com"}
    assert [(e["step"], e["outcome"]) for e in detail["journey"]] == [
        ("received", "api"),
        ("processing", "started"),
        ("dynamic_keys", "computed"),
        ("qualification", "passed"),
        ("post", "sent"),
        ("delivery", "duplicate"),
        ("post", "sent"),
        ("delivery", "accepted"),
        ("return", "requested"),
        ("return", "accepted"),
    ]
    assert detail["journey"][5]["reason"] == "seen it"
    assert detail["journey"][7]["price"] == "12.50"
    assert all(e["at"] for e in detail["journey"])
    fresh = await api.get(f"/v1/submissions/{pending.id}", headers=t.h)
    assert fresh.json()["campaign"] is None and fresh.json()["journey"][0]["status"] == "pending"
    for unknown in (foreign.id, uuid4(), t.campaign, t.id):
        missing_one = await api.get(f"/v1/submissions/{unknown}", headers=t.h)
        assert missing_one.status_code == 404, (unknown, missing_one.text)

    # Rebuilt from position 0 in one pass, the views hold the same rows.
    for projection, order in (
        (SubmissionsView(), {"submissions": "id"}),
        (CampaignStats(), {"campaign_stats": "campaign_id", "campaign_stat_reasons": "1, 2, 3, 4"}),
    ):
        await same_when_rebuilt(engine, projection, order, head)


async def same_when_rebuilt(
    engine: Engine, projection: Projection, order: dict[str, str], head: int
) -> None:
    rebuilt = Tables.versioned(projection.table_names, projection.version + 1)
    reached = await engine.projector.build(
        projection, rebuilt, consumer=f"rebuild:{projection.name}"
    )
    assert reached >= head
    live = engine.projector.tables(projection.name)
    for logical, columns in order.items():
        query = "SELECT * FROM {} ORDER BY " + columns
        live_rows = [dict(r) for r in await engine.pool.fetch(query.format(live[logical]))]
        new_rows = [dict(r) for r in await engine.pool.fetch(query.format(rebuilt[logical]))]
        assert live_rows and live_rows == new_rows, logical


async def test_the_campaigns_view(engine: Engine, api: httpx.AsyncClient) -> None:
    t = await tenant(engine, "Acme")
    config = CampaignConfig.model_validate(t.snapshot | {"name": "Renamed", "active": False})
    _, changed = await update_campaign(engine.store, t.id, t.campaign, config, ACTOR)
    assert await engine.projector.wait_for("campaigns", changed, 10)
    [row] = await engine.pool.fetch("SELECT * FROM campaigns WHERE id = $1", t.campaign)
    assert (row["name"], row["active"], row["mode"], row["deleted"]) == (
        "Renamed",
        False,
        "direct",
        False,
    )
    assert row["workspace_id"] == t.id and row["updated_position"] == changed
    assert row["updated_at"] > row["created_at"]
    listed = await api.get("/v1/campaigns", params={"after": changed}, headers=t.h)
    [item] = listed.json()["items"]
    assert item["name"] == "Renamed" and item["active"] is False
    assert item["endpoints"] == config.snapshot()["endpoints"]

    gone = await delete_campaign(engine.store, t.id, t.campaign, ACTOR)
    assert await engine.projector.wait_for("campaigns", gone, 10)
    deleted = await engine.pool.fetchrow("SELECT * FROM campaigns WHERE id = $1", t.campaign)
    assert deleted is not None and deleted["deleted"] and deleted["name"] == "Renamed"
    after = await api.get("/v1/campaigns", params={"after": gone}, headers=t.h)
    assert after.json()["total"] == 0
    # A deleted campaign's stats stay readable.
    assert (await api.get(f"/v1/campaigns/{t.campaign}/stats", headers=t.h)).status_code == 200
    await same_when_rebuilt(engine, CampaignsView(), {"campaigns": "id"}, gone)
