"""The automation views from AutomationRun and Message events appended through the store:
where each run stands (and what the timer worker polls), the lead's automation timeline with
each message's current delivery status, the stats per automation; the reads over them; a
retry through the engine's runner; and a rebuild from the log giving the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from domain.automations import AutomationConfig, AutomationRun
from domain.base import Aggregate
from domain.messages import Message, MessageStatus
from domain.workspaces import Role
from gateways.bootstrap import Engine
from gateways.http.app import create_app
from handlers.automations import create_automation, update_automation
from handlers.ports import Append
from handlers.workspaces import create_workspace, issue_token
from projections.automation_runs import AutomationRunsView
from projections.automations import AutomationsView
from tests.conftest import bearer
from tests.gateways.consumers.test_campaign_views import same_when_rebuilt
from tests.gateways.http.test_automations import EMAIL, SMS, WHATSAPP, add_channel

ACTOR = "system:test"
PHONE = "+14155552671"


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app with only the projections running: no automation runner moves the runs
    this module writes by hand."""
    await engine.projector.start()
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client
    await engine.projector.stop()


@dataclass
class Tenant:
    id: UUID
    h: dict[str, str]
    channels: dict[str, UUID]
    welcome: UUID
    welcome_config: AutomationConfig
    text: UUID
    text_config: AutomationConfig


async def tenant(engine: Engine, name: str) -> Tenant:
    workspace = await create_workspace(engine.store, name)
    token = await issue_token(engine.store, workspace.id, Role.MANAGER)
    channels = {
        kind: UUID(await add_channel(engine, workspace.id, kind))
        for kind in ("sms", "whatsapp", "email")
    }
    welcome = AutomationConfig.model_validate(
        {
            "name": "Welcome",
            "steps": [
                {
                    "channel": "whatsapp",
                    "channelId": str(channels["whatsapp"]),
                    "template": WHATSAPP,
                    "fallbackChannel": "sms",
                    "fallbackChannelId": str(channels["sms"]),
                    "fallbackTemplate": SMS,
                },
                {"channel": "email", "delay": "24 h", "template": EMAIL},
            ],
        }
    )
    text = AutomationConfig.model_validate(
        {
            "name": "Text",
            "steps": [{"channel": "sms", "channelId": str(channels["sms"]), "template": SMS}],
        }
    )
    first, _ = await create_automation(engine.store, workspace.id, welcome, ACTOR)
    second, _ = await create_automation(engine.store, workspace.id, text, ACTOR)
    return Tenant(workspace.id, bearer(token.token), channels, first.id, welcome, second.id, text)


async def lead(api: httpx.AsyncClient, t: Tenant, name: str) -> UUID:
    created = await api.post(
        "/v1/leads",
        json={"name": name, "phone": PHONE, "email": f"{name.lower()}@example.com"},
        headers=t.h,
    )
    assert created.status_code == 201, created.text
    return UUID(created.json()["id"])


def run_of(t: Tenant, automation: UUID, config: AutomationConfig, lead_id: UUID) -> AutomationRun:
    return AutomationRun(
        workspace_id=t.id,
        automation_id=automation,
        lead_id=lead_id,
        cause=str(uuid4()),
        config=config,
        contact={"phone": PHONE, "email": "ann@example.com"},
    )


def message(
    t: Tenant, run: AutomationRun, kind: str, step: int, origin: str = "automation"
) -> Message:
    return Message(  # type: ignore[call-arg]  # `id` from the library's metaclass
        id=uuid4(),
        workspace_id=t.id,
        lead_id=run.lead_id,
        channel_id=t.channels[kind],
        channel=kind,
        to=PHONE,
        content={"body": "Hi Ann"},
        origin=origin,
        origin_id=run.id,
        step=step,
    )


async def save(engine: Engine, t: Tenant, *aggregates: Aggregate) -> int:
    """The aggregates' new events in one append; its position."""
    events = [e for a in aggregates for e in a.collect_events()]
    appended = await engine.store.append(Append(t.id, events=events))
    return appended.position


async def caught_up(engine: Engine, position: int) -> None:
    assert await engine.projector.wait_for(AutomationRunsView.name, position, 10)


async def row(engine: Engine, table: str, key: str, value: Any) -> dict[str, Any]:
    found = await engine.pool.fetchrow(f"SELECT * FROM {table} WHERE {key} = $1", value)
    assert found is not None, (table, value)
    return dict(found)


async def stats(api: httpx.AsyncClient, t: Tenant, automation: UUID) -> dict[str, int]:
    answered = await api.get(f"/v1/lead-automations/{automation}/stats", headers=t.h)
    assert answered.status_code == 200, answered.text
    body: dict[str, Any] = answered.json()
    assert body.pop("automationId") == str(automation)
    return body


async def timeline(api: httpx.AsyncClient, t: Tenant, lead_id: UUID, **params: Any) -> Any:
    answered = await api.get(f"/v1/leads/{lead_id}/automation-timeline", params=params, headers=t.h)
    assert answered.status_code == 200, answered.text
    return answered.json()


async def test_runs_timeline_and_stats_follow_the_log(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    t = await tenant(engine, "Acme")
    other = await tenant(engine, "Globex")
    ann, bea, cy = await lead(api, t, "Ann"), await lead(api, t, "Bea"), await lead(api, t, "Cy")
    now = datetime.now(UTC)

    # The welcome sequence for Ann: WhatsApp fails, SMS goes instead, email in a day.
    welcome = run_of(t, t.welcome, t.welcome_config, ann)
    whatsapp = message(t, welcome, "whatsapp", 0)
    welcome.start_step(0, "whatsapp", t.channels["whatsapp"], whatsapp.id, fallback=False)
    await save(engine, t, welcome, whatsapp)
    whatsapp.fail("131026 the number is not on WhatsApp", "131026")
    await save(engine, t, whatsapp)
    welcome.step_failed(0, "whatsapp", "131026 the number is not on WhatsApp", whatsapp.id, False)
    welcome.fall_back(0, "whatsapp", "sms")
    sms = message(t, welcome, "sms", 0)
    welcome.start_step(0, "sms", t.channels["sms"], sms.id, fallback=True)
    await save(engine, t, welcome, sms)
    sms.sent("SM0001")
    await save(engine, t, sms)
    # The provider's callback lands before the runner recorded the step as sent.
    assert sms.report(MessageStatus.DELIVERED)
    await save(engine, t, sms)
    due = now + timedelta(hours=24)
    welcome.step_sent(0, "sms", sms.id, "SM0001", fallback=True)
    welcome.schedule(1, due)
    head = await save(engine, t, welcome)
    await caught_up(engine, head)

    r = await row(engine, "automation_runs", "id", welcome.id)
    assert (r["status"], r["step"], r["due_at"], r["failed_step"]) == ("running", 1, due, None)
    assert (r["workspace_id"], r["automation_id"], r["lead_id"]) == (t.id, t.welcome, ann)
    assert r["updated_position"] == head
    assert await stats(api, t, t.welcome) == {
        "triggered": 1,
        "running": 1,
        "completed": 0,
        "failed": 0,
        "skipped": 0,
        "stopped": 0,
    }
    items = (await timeline(api, t, ann))["items"]
    assert [(i["type"], i["step"], i["channel"], i["status"]) for i in items] == [
        ("automation_triggered", None, None, None),
        ("step_failed", 0, "whatsapp", "failed"),
        ("fallback", 0, "sms", None),
        ("step_sent", 0, "sms", "delivered"),
        ("step_scheduled", 1, None, None),
    ]
    assert items[1]["error"] == "131026 the number is not on WhatsApp"
    assert items[1]["messageId"] == str(whatsapp.id) and items[1]["fallback"] is False
    assert (items[2]["fromChannel"], items[2]["toChannel"]) == ("whatsapp", "sms")
    assert items[3]["messageId"] == str(sms.id) and items[3]["providerId"] == "SM0001"
    assert items[3]["fallback"] is True
    assert datetime.fromisoformat(items[4]["dueAt"]) == due
    assert all(i["automationName"] == "Welcome" for i in items)
    assert all(i["runId"] == str(welcome.id) for i in items)
    assert all(i["automationId"] == str(t.welcome) for i in items)
    assert [i["position"] for i in items] == sorted(i["position"] for i in items)

    # The delivery status of the sent message as it changes: read, then a late `sent` that
    # the message ignores.
    assert sms.report(MessageStatus.READ)
    assert not sms.report(MessageStatus.SENT)
    head = await save(engine, t, sms)
    await caught_up(engine, head)
    items = (await timeline(api, t, ann))["items"]
    assert items[3]["type"] == "step_sent" and items[3]["status"] == "read"
    assert items[1]["status"] == "failed"

    # The email a day later, then the end.
    email = message(t, welcome, "email", 1)
    welcome.start_step(1, "email", t.channels["email"], email.id, fallback=False)
    await save(engine, t, welcome, email)
    email.sent("<1@acme.example>")
    welcome.step_sent(1, "email", email.id, "<1@acme.example>", fallback=False)
    welcome.complete()
    head = await save(engine, t, email, welcome)
    await caught_up(engine, head)
    r = await row(engine, "automation_runs", "id", welcome.id)
    assert (r["status"], r["step"], r["due_at"]) == ("completed", 1, None)
    items = (await timeline(api, t, ann))["items"]
    assert [i["type"] for i in items[5:]] == ["step_sent", "automation_completed"]
    assert (items[5]["channel"], items[5]["status"], items[5]["step"]) == ("email", "sent", 1)

    # Bea is skipped by the safety lock; Cy's step was due a minute ago, then stopped.
    skipped = run_of(t, t.welcome, t.welcome_config, bea)
    skipped.skip("safety_lock", f"{PHONE} started this automation less than 5 minutes ago")
    waiting = run_of(t, t.welcome, t.welcome_config, cy)
    waiting.schedule(0, now - timedelta(minutes=1))
    later = run_of(t, t.text, t.text_config, cy)
    later.schedule(0, now + timedelta(hours=1))
    head = await save(engine, t, skipped, waiting, later)
    await caught_up(engine, head)
    due_now = await engine.pool.fetch("SELECT id FROM automation_runs WHERE due_at <= now()")
    assert [d["id"] for d in due_now] == [waiting.id]
    plan = await engine.pool.fetch("EXPLAIN SELECT id FROM automation_runs WHERE due_at <= now()")
    assert "automation_runs" in " ".join(p[0] for p in plan)
    bea_items = (await timeline(api, t, bea))["items"]
    assert [i["type"] for i in bea_items] == ["automation_triggered", "automation_skipped"]
    assert bea_items[1]["reason"] == "safety_lock" and PHONE in bea_items[1]["detail"]
    waiting.stop("lead converted")
    head = await save(engine, t, waiting)
    await caught_up(engine, head)
    assert await engine.pool.fetch("SELECT id FROM automation_runs WHERE due_at <= now()") == []
    stopped = await row(engine, "automation_runs", "id", waiting.id)
    assert (stopped["status"], stopped["due_at"], stopped["step"]) == ("stopped", None, 0)
    cy_items = await timeline(api, t, cy, automationId=str(t.welcome))
    assert [i["type"] for i in cy_items["items"]] == [
        "automation_triggered",
        "step_scheduled",
        "automation_stopped",
    ]
    assert cy_items["total"] == 3 and cy_items["items"][2]["reason"] == "lead converted"
    assert (await timeline(api, t, cy))["total"] == 5

    # Elsewhere: another workspace's run, and a quick send's message (not an automation's).
    theirs = run_of(other, other.welcome, other.welcome_config, uuid4())
    theirs.complete()
    await save(engine, other, theirs)
    quick = message(t, welcome, "sms", 0, origin="quick_send")
    quick.sent("SM0002")
    quick.report(MessageStatus.DELIVERED)
    head = await save(engine, t, quick)
    await caught_up(engine, head)
    assert (
        await engine.pool.fetchval(
            "SELECT count(*) FROM automation_messages WHERE id = $1", quick.id
        )
        == 0
    )
    assert await engine.pool.fetchval("SELECT count(*) FROM automation_messages") == 3

    assert await stats(api, t, t.welcome) == {
        "triggered": 3,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "skipped": 1,
        "stopped": 1,
    }
    assert await stats(api, t, t.text) == {
        "triggered": 1,
        "running": 1,
        "completed": 0,
        "failed": 0,
        "skipped": 0,
        "stopped": 0,
    }
    assert (await stats(api, other, other.welcome))["completed"] == 1
    assert (await stats(api, other, other.welcome))["triggered"] == 1

    # A renamed automation shows its current name on its entries.
    renamed = AutomationConfig.model_validate(
        t.welcome_config.model_dump(mode="json", by_alias=True) | {"name": "Hello"}
    )
    _, changed = await update_automation(engine.store, t.id, t.welcome, renamed, ACTOR)
    assert await engine.projector.wait_for(AutomationsView.name, changed, 10)
    assert {i["automationName"] for i in (await timeline(api, t, ann))["items"]} == {"Hello"}

    # Rebuilt from position 0 in one pass, the views hold the same rows.
    head = await engine.log.max_position()
    await same_when_rebuilt(
        engine,
        AutomationRunsView(),
        {
            "automation_runs": "id",
            "automation_timeline": "position",
            "automation_stats": "automation_id",
            "automation_messages": "id",
        },
        head,
    )
    await same_when_rebuilt(engine, AutomationsView(), {"automations": "id"}, head)


async def test_a_failed_run_retried_through_the_api(engine: Engine, api: httpx.AsyncClient) -> None:
    t = await tenant(engine, "Acme")
    ann = await lead(api, t, "Ann")
    run = run_of(t, t.text, t.text_config, ann)
    sms = message(t, run, "sms", 0)
    run.start_step(0, "sms", t.channels["sms"], sms.id, fallback=False)
    sms.fail("21211 invalid 'To' phone number", "21211")
    await save(engine, t, run, sms)
    run.step_failed(0, "sms", "21211 invalid 'To' phone number", sms.id, False)
    run.fail(0, "the step failed")
    head = await save(engine, t, run)
    await caught_up(engine, head)
    failed = await row(engine, "automation_runs", "id", run.id)
    assert (failed["status"], failed["failed_step"]) == ("failed", 0)
    assert (await stats(api, t, t.text))["failed"] == 1

    retried = await api.post(f"/v1/lead-automations/{t.text}/retry/{ann}", headers=t.h)
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["runId"] == str(run.id) and body["retried"] is True
    await caught_up(engine, body["position"])
    again = await row(engine, "automation_runs", "id", run.id)
    assert (again["status"], again["failed_step"], again["step"]) == ("running", None, 0)
    assert await stats(api, t, t.text) == {
        "triggered": 1,
        "running": 1,
        "completed": 0,
        "failed": 0,
        "skipped": 0,
        "stopped": 0,
    }
    items = (await timeline(api, t, ann, after=body["position"]))["items"]
    assert [i["type"] for i in items] == [
        "automation_triggered",
        "step_failed",
        "automation_failed",
        "retry_requested",
    ]
    assert items[2]["error"] == "the step failed" and items[2]["step"] == 0
    assert items[3]["actor"].startswith("token:") and items[3]["step"] == 0
    # The retry queued a new message for the step, tracked from its first status.
    queued = await engine.pool.fetch(
        "SELECT id, status, step FROM automation_messages WHERE run_id = $1 ORDER BY id", run.id
    )
    assert len(queued) == 2
    assert {(q["status"], q["step"]) for q in queued} == {("failed", 0), ("pending", 0)}
    # Nothing left to retry while it runs.
    nothing = await api.post(f"/v1/lead-automations/{t.text}/retry/{ann}", headers=t.h)
    assert nothing.status_code == 409, nothing.text
    assert nothing.json()["error"]["code"] == "nothing_to_retry"
