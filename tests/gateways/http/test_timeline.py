"""A lead's timeline and the submissions view, through HTTP with their projections running."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

import httpx
import pytest

from domain import leads as lead_domain
from domain.base import Aggregate, LoggedEvent
from domain.leads import LeadDetails, Source, Status
from domain.submissions import FINAL
from gateways.bootstrap import PROJECTIONS, Engine
from gateways.consumers.projector import Projector
from gateways.consumers.read_models import LeadViews
from gateways.http import timeline
from gateways.http.app import create_app
from gateways.workers import build_workers
from handlers.intake import Intake
from handlers.ports import Append
from projections.base import Projection, Tables
from projections.submissions import SubmissionsView
from projections.timeline import (
    ACTION,
    LEAD,
    WEBHOOK,
    LeadState,
    LeadTimeline,
    Names,
    category_of,
    describe,
    event_types_of,
    render_changes,
    render_summary,
)
from tests.conftest import OPERATOR, bearer, make_campaign


class Probe:
    """Test-only events on a lead's own stream, typed `lead.action_*` / `lead.webhook_*`
    like the action and webhook events still to come (the nesting keeps the name `Lead`)."""

    class Lead(Aggregate):
        class ActionExecuted(Aggregate.Event):
            action: str
            actor: str

        class WebhookDelivered(Aggregate.Event):
            webhook_id: UUID
            status_code: int


class ProbedTimeline(LeadTimeline):
    """The timeline reading the probe events too (the real one finds `domain.leads.Lead`'s)."""

    event_types = frozenset(LeadTimeline.event_types or ()) | event_types_of(Probe.Lead)


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def batch_size() -> int:
    return 500


@pytest.fixture
async def views(engine: Engine, batch_size: int) -> AsyncIterator[Projector]:
    """The engine's workers as `leadlog up` runs them, but with the timeline swapped for one
    that also reads this module's test-only action and webhook events."""
    engine.projector = Projector(
        engine.pool,
        engine.log,
        engine.store,
        [ProbedTimeline() if p.name == LeadTimeline.name else p for p in PROJECTIONS],
        batch_size=batch_size,
        idle_flush=0.05,
    )
    engine.lead_views = LeadViews(engine.projector)
    workers = build_workers(engine)
    for worker in workers:
        await worker.start()
    yield engine.projector
    for worker in reversed(workers):
        await worker.stop()


@pytest.fixture
async def api(engine: Engine, views: Projector) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine)
    if not any(getattr(r, "path", "") == "/v1/leads/{lead_id}/timeline" for r in app.routes):
        app.include_router(timeline.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client


async def make_workspace(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    created = await api.post("/v1/workspaces", json={"name": name}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    manager = await api.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    viewer = await api.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    pipelines = await api.get("/v1/lead-pipelines", headers=bearer(manager.json()["token"]))
    return {
        "id": workspace_id,
        "h": bearer(manager.json()["token"]),
        "actor": f"token:{manager.json()['id']}",
        "viewer": bearer(viewer.json()["token"]),
        "pipeline": pipelines.json()["items"][0],
    }


@pytest.fixture
async def ws(api: httpx.AsyncClient) -> dict[str, Any]:
    return await make_workspace(api, "Acme")


async def add(api: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await api.post("/v1/leads", json=fields, headers=ws["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def entries(
    api: httpx.AsyncClient, ws: dict[str, Any], lead_id: str, **params: Any
) -> dict[str, Any]:
    response = await api.get(f"/v1/leads/{lead_id}/timeline", params=params, headers=ws["viewer"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def eventually_entries(
    api: httpx.AsyncClient, ws: dict[str, Any], lead_id: str, count: int, **params: Any
) -> dict[str, Any]:
    """The timeline once it holds `count` entries (for events a reaction appends later)."""
    async with asyncio.timeout(10):
        while True:
            body = await entries(api, ws, lead_id, **params)
            if body["total"] >= count:
                return body
            await asyncio.sleep(0.05)


async def probe(engine: Engine, workspace_id: str, lead_id: str, *events: Any) -> int:
    """Append test-only `lead.action_*` / `lead.webhook_*` events to a lead's stream."""
    history = await engine.store.history(UUID(lead_id))
    version = history[-1].event.originator_version
    built = []
    for offset, (cls, fields) in enumerate(events, start=1):
        built.append(
            cls(
                originator_id=UUID(lead_id),
                originator_version=version + offset,
                timestamp=datetime.now(UTC),
                **fields,
            )
        )
    appended = await engine.store.append(Append(UUID(workspace_id), events=built))
    return appended.position


async def settled(api: httpx.AsyncClient, ws: dict[str, Any], submission_id: str) -> dict[str, Any]:
    """The submission once the pipeline has finished with it (the workers run it on)."""
    async with asyncio.timeout(30):  # a buyer's answer may take the endpoint's 10 s
        while True:
            response = await api.get(f"/v1/submissions/{submission_id}", headers=ws["h"])
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] in FINAL:
                return body
            await asyncio.sleep(0.05)


async def all_settled(engine: Engine, views: Projector) -> None:
    """Every submission finished and in the view: the workers append nothing more to it (a
    final step and its fallback are one append)."""
    table = views.tables("submissions")["submissions"]
    async with asyncio.timeout(30):  # a buyer's answer may take the endpoint's 10 s
        while True:
            head = await engine.log.max_position()
            assert await views.wait_for("submissions", head, 10)
            unfinished = await engine.pool.fetchval(
                f"SELECT count(*) FROM {table} WHERE status <> ALL($1::text[])", sorted(FINAL)
            )
            if unfinished == 0:
                return
            await asyncio.sleep(0.05)


def stage_body(stage: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "id": stage["id"],
        "name": stage["name"],
        "color": stage["color"],
        "type": stage["type"],
        **changes,
    }


# ---- unit: categories and generic entries -------------------------------------------------


def test_categories() -> None:
    assert category_of("lead.received") == LEAD
    assert category_of("lead.note_added") == LEAD
    assert category_of("lead.action_executed") == ACTION
    assert category_of("lead.actions_scheduled") == ACTION
    assert category_of("lead.webhook_delivered") == WEBHOOK
    assert category_of("lead.webhook_delivery_failed") == WEBHOOK
    assert category_of("submission.created") == LEAD

    class Explicit(Aggregate.Event):
        timeline_category: ClassVar[str] = "webhook"

    event = Explicit(originator_id=uuid.uuid4(), originator_version=2, timestamp=datetime.now(UTC))
    assert category_of("lead.sent_somewhere", event) == WEBHOOK


def test_event_types_are_found_on_the_aggregates() -> None:
    types = LeadTimeline.event_types or frozenset()
    assert {
        "lead.received",
        "lead.status_changed",
        "lead.stage_changed",
        "lead.invitation_requested",
        "submission.created",
    } <= types
    assert all(t.startswith(("lead.", "submission.", "delivery.")) for t in types)
    assert "submission.created" in (SubmissionsView.event_types or frozenset())
    assert event_types_of(Probe.Lead) >= {"lead.action_executed", "lead.webhook_delivered"}


def _logged(event: Any, event_type: str, position: int = 7) -> LoggedEvent:
    return LoggedEvent(position, uuid.uuid4(), uuid.uuid4(), event_type, datetime.now(UTC), event)


def test_an_unknown_lead_event_gets_a_generic_entry() -> None:
    lead_id = uuid.uuid4()
    action = Probe.Lead.ActionExecuted(
        originator_id=lead_id,
        originator_version=3,
        timestamp=datetime.now(UTC),
        action="send-email",
        actor="system:actions",
    )
    entry = describe(_logged(action, "lead.action_executed"), None)
    assert (entry.actor, entry.summary, entry.category) == (
        "system:actions",
        "Action executed",
        ACTION,
    )
    assert entry.changes == [{"field": "action", "old": None, "new": "send-email"}]

    changed = lead_domain.Lead.StatusChanged(
        originator_id=lead_id,
        originator_version=4,
        timestamp=datetime.now(UTC),
        old="new",
        new="lost {x}",
        reason="no {budget}",
        actor="token:abc",
    )
    entry = describe(_logged(changed, "lead.status_changed"), None)
    # braces in free text are literal, never placeholders
    assert render_summary(entry.summary, Names()) == (
        "Status changed from new to lost {x} — no {budget}"
    )


def test_stage_names_are_filled_in_when_read() -> None:
    pipeline, other = uuid.uuid4(), uuid.uuid4()
    new, won, inbox = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    moved = lead_domain.Lead.StageChanged(
        originator_id=uuid.uuid4(),
        originator_version=2,
        timestamp=datetime.now(UTC),
        pipeline_id=other,
        old_stage_id=new,
        new_stage_id=inbox,
        reason="",
        actor="token:x",
    )
    state = LeadState(uuid.uuid4(), 1, "token:x", pipeline, 5)
    entry = describe(_logged(moved, "lead.stage_changed"), state)
    names = Names({pipeline: "Sales", other: "Partners"}, {new: "New", won: "Won", inbox: "In"})
    assert render_summary(entry.summary, names) == "Moved from Sales / New to Partners / In"
    assert render_changes(entry.changes, names) == [
        {"field": "stage", "old": "New", "new": "In", "oldId": str(new), "newId": str(inbox)},
        {
            "field": "pipeline",
            "old": "Sales",
            "new": "Partners",
            "oldId": str(pipeline),
            "newId": str(other),
        },
    ]
    assert render_summary(entry.summary, Names()).startswith("Moved from an unknown pipeline")


# ---- through HTTP -------------------------------------------------------------------------


async def test_intake_and_release_appear_newest_first(
    api: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    customer = await api.post("/v1/customers", json={"name": "Newco"}, headers=ws["h"])
    customer_id = customer.json()["id"]
    lead = await add(api, ws, name="Ann", email="ann@x.test", customerId=customer_id)
    assert lead["status"] == "pending"
    first = await entries(api, ws, lead["id"], after=lead["position"])
    assert [i["eventType"] for i in first["items"]] == [
        "lead.invitation_requested",
        "lead.received",
    ]
    received = first["items"][1]
    assert received["summary"] == "Entered by hand"
    assert received["actor"] == ws["actor"]
    assert received["category"] == "lead"
    assert received["position"] <= lead["position"]  # the receipt names the command's last event
    assert {"field": "status", "old": None, "new": "pending"} in received["changes"]
    assert {"field": "email", "old": None, "new": "ann@x.test"} in received["changes"]
    stage = next(c for c in received["changes"] if c["field"] == "stage")
    assert (stage["old"], stage["new"]) == (None, "New")
    assert datetime.fromisoformat(received["occurredAt"]).tzinfo is not None

    activated = await api.post(f"/v1/customers/{customer_id}/activate", headers=ws["h"])
    assert activated.status_code == 200
    after = await eventually_entries(api, ws, lead["id"], 3)
    newest = after["items"][0]
    assert newest["eventType"] == "lead.status_changed"
    assert newest["summary"] == "Status changed from pending to backlog — the customer registered"
    assert newest["actor"] == "system:customer-registration"
    assert newest["changes"] == [{"field": "status", "old": "pending", "new": "backlog"}]
    positions = [i["position"] for i in after["items"]]
    assert positions == sorted(positions, reverse=True)

    duplicate = await add(api, ws, name="Ann again", email="ANN@x.test")
    assert duplicate["isDuplicate"]
    dup = await entries(api, ws, duplicate["id"], after=duplicate["position"])
    assert dup["items"][0]["summary"] == "Entered by hand (duplicate of #1)"


async def test_stage_moves_show_current_stage_names(
    api: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    pipeline = ws["pipeline"]
    stages = pipeline["stages"]
    lead = await add(api, ws, name="Bo")
    # remove "New" (its leads go to "Contacted"), renaming "Contacted" in the same change
    moved = await api.patch(
        f"/v1/lead-pipelines/{pipeline['id']}",
        json={
            "stages": [stage_body(stages[1], name="Reached out")]
            + [stage_body(s) for s in stages[2:]],
            "moveLeadsTo": {stages[0]["id"]: stages[1]["id"]},
        },
        headers=ws["h"],
    )
    assert moved.status_code == 200, moved.text
    body = await entries(api, ws, lead["id"], after=moved.json()["position"])
    newest = body["items"][0]
    assert newest["eventType"] == "lead.stage_changed"
    assert newest["actor"] == ws["actor"]
    # a removed stage keeps the last name it had
    assert newest["summary"] == "Moved from New to Reached out — its stage was removed"
    assert newest["changes"] == [
        {
            "field": "stage",
            "old": "New",
            "new": "Reached out",
            "oldId": stages[0]["id"],
            "newId": stages[1]["id"],
        }
    ]
    renamed = await api.patch(
        f"/v1/lead-pipelines/{pipeline['id']}",
        json={
            "stages": [stage_body(stages[1], name="Called")] + [stage_body(s) for s in stages[2:]]
        },
        headers=ws["h"],
    )
    assert renamed.status_code == 200, renamed.text
    again = await entries(api, ws, lead["id"])
    # the choice documented in projections/timeline.py: current names, not names at the time
    assert again["items"][0]["summary"] == "Moved from New to Called — its stage was removed"
    received = again["items"][-1]
    assert next(c for c in received["changes"] if c["field"] == "stage")["new"] == "New"


async def test_paging(api: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    customer = await api.post("/v1/customers", json={"name": "Pageco"}, headers=ws["h"])
    lead = await add(api, ws, name="Cy", customerId=customer.json()["id"])
    await api.post(f"/v1/customers/{customer.json()['id']}/activate", headers=ws["h"])
    everything = await eventually_entries(api, ws, lead["id"], 3)
    assert everything["total"] == 3
    first = await entries(api, ws, lead["id"], limit=2, page=1)
    second = await entries(api, ws, lead["id"], limit=2, page=2)
    beyond = await entries(api, ws, lead["id"], limit=2, page=3)
    assert (first["total"], first["page"], first["limit"]) == (3, 1, 2)
    assert [i["position"] for i in first["items"] + second["items"]] == [
        i["position"] for i in everything["items"]
    ]
    assert len(second["items"]) == 1 and beyond["items"] == []
    bad = await api.get(
        f"/v1/leads/{lead['id']}/timeline", params={"limit": 0}, headers=ws["viewer"]
    )
    assert bad.status_code == 422


async def test_actions_and_webhooks_are_hidden_unless_included(
    api: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(api, ws, name="Di")
    webhook_id = uuid.uuid4()
    position = await probe(
        engine,
        ws["id"],
        lead["id"],
        (Probe.Lead.ActionExecuted, {"action": "send-welcome-email", "actor": "system:actions"}),
        (Probe.Lead.WebhookDelivered, {"webhook_id": webhook_id, "status_code": 200}),
    )
    default = await entries(api, ws, lead["id"], after=position)
    assert [i["eventType"] for i in default["items"]] == ["lead.received"]
    assert default["total"] == 1
    actions = await entries(api, ws, lead["id"], include="actions")
    assert [i["eventType"] for i in actions["items"]] == ["lead.action_executed", "lead.received"]
    action = actions["items"][0]
    assert (action["summary"], action["actor"], action["category"]) == (
        "Action executed",
        "system:actions",
        "action",
    )
    both = await entries(api, ws, lead["id"], include="actions, webhooks")
    assert both["total"] == 3
    webhook = both["items"][0]
    assert (webhook["eventType"], webhook["category"], webhook["summary"]) == (
        "lead.webhook_delivered",
        "webhook",
        "Webhook delivered",
    )
    assert webhook["actor"] == "system"
    assert webhook["changes"] == [
        {"field": "webhookId", "old": None, "new": str(webhook_id)},
        {"field": "statusCode", "old": None, "new": 200},
    ]
    bogus = await api.get(
        f"/v1/leads/{lead['id']}/timeline", params={"include": "notes"}, headers=ws["h"]
    )
    assert bogus.status_code == 422


async def test_submissions_of_a_lead_and_of_the_workspace(
    api: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    one = await make_campaign(api, ws["h"], "One")
    two = await make_campaign(api, ws["h"], "Two")
    a = await add(api, ws, name="Eve", email="eve@x.test", campaignId=one, tags=["hot"])
    b = await add(api, ws, name="Fay", email="fay@x.test", campaignId=two)
    plain = await add(api, ws, name="Gus")
    assert a["submissionId"] and b["submissionId"] and plain["submissionId"] is None

    mine = await api.get(
        f"/v1/leads/{a['id']}/submissions", params={"after": b["position"]}, headers=ws["viewer"]
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["total"] == 1
    [submission] = mine.json()["items"]
    assert submission["id"] == a["submissionId"]
    assert (submission["leadId"], submission["campaignId"]) == (a["id"], one)
    assert (submission["source"], submission["origin"]) == ("manual", "manual")
    assert submission["snapshot"]["name"] == "Eve"
    assert submission["snapshot"]["email"] == "eve@x.test"
    assert submission["snapshot"]["tags"] == ["hot"]
    assert submission["snapshot"]["campaignId"] == one
    # The workers take it on from `pending`; its journey starts there whatever it reached.
    done = await settled(api, ws, a["submissionId"])
    assert done["journey"][0]["step"] == "received"
    assert (done["journey"][0]["status"], done["journey"][0]["campaignId"]) == ("pending", one)
    assert datetime.fromisoformat(done["updatedAt"]) > datetime.fromisoformat(done["createdAt"])
    final = (await settled(api, ws, b["submissionId"]))["status"]
    assert final == done["status"]  # the same minimal campaign, the same end
    none = await api.get(f"/v1/leads/{plain['id']}/submissions", headers=ws["h"])
    assert none.json() == {"items": [], "total": 0}

    listed = await api.get("/v1/submissions", headers=ws["viewer"])
    assert listed.json()["total"] == 2
    assert [s["leadId"] for s in listed.json()["items"]] == [b["id"], a["id"]]
    by_campaign = await api.get("/v1/submissions", params={"campaignId": one}, headers=ws["h"])
    assert [s["id"] for s in by_campaign.json()["items"]] == [a["submissionId"]]
    ended = await api.get("/v1/submissions", params={"status": final}, headers=ws["h"])
    assert ended.json()["total"] == 2
    pending = await api.get("/v1/submissions", params={"status": "pending"}, headers=ws["h"])
    assert pending.json() == {"items": [], "total": 0, "page": 1, "limit": 50}
    paged = await api.get("/v1/submissions", params={"limit": 1, "page": 2}, headers=ws["h"])
    assert [s["leadId"] for s in paged.json()["items"]] == [a["id"]]
    assert paged.json()["total"] == 2

    story = await entries(api, ws, a["id"])
    assert story["items"][0]["eventType"] == "submission.created"
    assert story["items"][0]["summary"] == f"Submitted to campaign {one} (status pending)"
    assert story["items"][0]["actor"] == ws["actor"]


async def test_another_workspace_sees_nothing(api: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    campaign = await make_campaign(api, ws["h"])
    lead = await add(api, ws, name="Hal", campaignId=campaign)
    other = await make_workspace(api, "Other")
    missing = str(uuid.uuid4())
    for path in ("timeline", "submissions"):
        theirs = await api.get(f"/v1/leads/{lead['id']}/{path}", headers=other["h"])
        nobody = await api.get(f"/v1/leads/{missing}/{path}", headers=other["h"])
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"] == "not_found"
    listed = await api.get(
        "/v1/submissions", params={"after": lead["position"]}, headers=other["h"]
    )
    assert listed.json()["total"] == 0
    one = await api.get(f"/v1/submissions/{lead['submissionId']}", headers=other["h"])
    assert one.status_code == 404 and one.json()["error"]["code"] == "not_found"
    # Nor can it name this workspace's campaign for its own leads.
    foreign = await api.post(
        "/v1/leads", json={"name": "Hal", "campaignId": campaign}, headers=other["h"]
    )
    assert foreign.status_code == 422 and foreign.json()["error"]["code"] == "unknown_campaign"
    not_a_lead = await api.get(f"/v1/leads/{ws['pipeline']['id']}/timeline", headers=ws["h"])
    assert not_a_lead.status_code == 404
    assert (await api.get(f"/v1/leads/{lead['id']}/timeline")).status_code == 401


async def test_after_reads_your_writes(
    api: httpx.AsyncClient, ws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    campaigns = [await make_campaign(api, ws["h"], f"Ivy {i}") for i in range(5)]
    for i, campaign in enumerate(campaigns):
        lead = await add(api, ws, name=f"Ivy {i}", campaignId=campaign)
        # no retry loop: `after` alone makes the write visible
        body = await entries(api, ws, lead["id"], after=lead["position"])
        assert [e["eventType"] for e in body["items"]] == ["submission.created", "lead.received"]
        subs = await api.get(
            f"/v1/leads/{lead['id']}/submissions",
            params={"after": lead["position"]},
            headers=ws["h"],
        )
        assert subs.json()["total"] == 1
    monkeypatch.setattr(timeline, "MAX_WAIT", 0.3)  # bounded: how long is not the point here
    for url in (f"/v1/leads/{lead['id']}/timeline", "/v1/submissions"):
        behind = await api.get(url, params={"after": 10**9}, headers=ws["h"])
        assert behind.status_code == 503
        assert behind.json()["error"]["code"] == "view_behind"


# ---- incremental == rebuilt ---------------------------------------------------------------


async def _rows(engine: Engine, table: str, order: str) -> list[dict[str, Any]]:
    async with engine.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")]


@pytest.mark.parametrize("batch_size", [3])
async def test_incremental_equals_rebuilt(
    api: httpx.AsyncClient, ws: dict[str, Any], engine: Engine, views: Projector
) -> None:
    campaign = await make_campaign(api, ws["h"])
    customer = (await api.post("/v1/customers", json={"name": "Waveco"}, headers=ws["h"])).json()
    leads: list[dict[str, Any]] = []
    for wave in range(4):
        batch = await asyncio.gather(
            *(
                add(
                    api,
                    ws,
                    name=f"W{wave}.{i}",
                    email=f"w{i % 3}@x.test",
                    campaignId=campaign if i % 2 else None,
                    customerId=customer["id"] if wave == 0 and i < 3 else None,
                )
                for i in range(5)
            )
        )
        leads.extend(batch)
        if wave == 1:
            await api.post(f"/v1/customers/{customer['id']}/activate", headers=ws["h"])
        if wave == 2:
            stages = ws["pipeline"]["stages"]
            moved = await api.patch(
                f"/v1/lead-pipelines/{ws['pipeline']['id']}",
                json={
                    "stages": [stage_body(s) for s in stages[1:]],
                    "moveLeadsTo": {stages[0]["id"]: stages[2]["id"]},
                },
                headers=ws["h"],
            )
            assert moved.status_code == 200, moved.text
        await probe(
            engine,
            ws["id"],
            leads[wave]["id"],
            (Probe.Lead.ActionExecuted, {"action": f"a{wave}", "actor": "system:actions"}),
        )
        # direct intake too (another source, and a submission created the same way)
        await engine.intake.receive(
            _intake(ws["id"], f"Direct {wave}", None if wave % 2 else UUID(campaign))
        )
        if wave >= 1:
            async with asyncio.timeout(10):  # the release reaction appends on its own
                while await pending(engine, leads):
                    await asyncio.sleep(0.05)
        await all_settled(engine, views)
        head = await engine.log.max_position()
        assert await views.wait_for("timeline", head, 10)
        assert await views.wait_for("submissions", head, 10)

    head = await engine.log.max_position()
    projections: list[tuple[Projection, dict[str, str]]] = [
        (
            ProbedTimeline(),
            {"timeline_entries": "lead_id, position", "timeline_leads": "lead_id"},
        ),
        (SubmissionsView(), {"submissions": "id"}),
    ]
    for projection, tables in projections:
        rebuilt = Tables.versioned(projection.table_names, projection.version + 1)
        reached = await views.build(projection, rebuilt, consumer=f"rebuild:{projection.name}")
        assert reached == head
        live = views.tables(projection.name)
        for logical, order in tables.items():
            live_rows = await _rows(engine, live[logical], order)
            rebuilt_rows = await _rows(engine, rebuilt[logical], order)
            assert live_rows, logical
            assert live_rows == rebuilt_rows, logical

    entries_count = await engine.pool.fetchval(
        f"SELECT count(*) FROM {views.tables('timeline')['timeline_entries']}"
    )
    kinds = {
        r[0]
        for r in await engine.pool.fetch(
            f"SELECT DISTINCT event_type FROM {views.tables('timeline')['timeline_entries']}"
        )
    }
    assert kinds >= {
        "lead.received",
        "lead.invitation_requested",
        "lead.status_changed",
        "lead.stage_changed",
        "lead.action_executed",
        "submission.created",
        "submission.processing_started",
    }
    lead_events = await engine.pool.fetchval(
        "SELECT count(*) FROM events WHERE event_type LIKE 'lead.%' "
        "OR event_type LIKE 'submission.%'"
    )
    assert entries_count == lead_events
    subs = await engine.pool.fetchval(
        "SELECT count(*) FROM events WHERE event_type = 'submission.created'"
    )
    assert subs == await engine.pool.fetchval(
        f"SELECT count(*) FROM {views.tables('submissions')['submissions']}"
    )


async def pending(engine: Engine, leads: list[dict[str, Any]]) -> int:
    statuses = [await engine.store.load(lead_domain.Lead, UUID(lead["id"])) for lead in leads]
    return sum(1 for lead in statuses if lead is not None and lead.status == Status.PENDING)


def _intake(workspace_id: str, name: str, campaign: UUID | None) -> Intake:
    return Intake(
        workspace_id=UUID(workspace_id),
        details=LeadDetails(name=name, campaign_id=campaign),
        source=Source.NATS,
        actor="nats:crm",
        channel="nats:crm",
    )


async def test_a_lead_shows_its_notes_and_recent_activity(
    api: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    lead = await add(api, ws, name="Noted")
    note = await api.post(
        f"/v1/leads/{lead['id']}/notes", json={"value": "called, no answer"}, headers=ws["h"]
    )
    assert note.status_code in (200, 201), note.text
    await entries(api, ws, lead["id"], after=note.json()["position"])
    shown = (await api.get(f"/v1/leads/{lead['id']}", headers=ws["h"])).json()
    assert [n["value"] for n in shown["notes"]] == ["called, no answer"]
    assert [a["eventType"] for a in shown["recentActivity"]] == ["lead.note_added", "lead.received"]
