"""Lead automations over HTTP: CRUD, the 422s naming the field (channels, webhook sources,
templates, delays), stats and the automation timeline of a lead, and the retry route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.channels import Channel, ChannelConfig
from gateways.bootstrap import Engine
from gateways.http import automations as automation_routes
from handlers.ports import Append
from tests.conftest import OPERATOR

CREDENTIALS: dict[str, dict[str, Any]] = {
    "sms": {"from": "+14155550100", "credentials": {"accountSid": "AC1", "authToken": "t"}},
    "whatsapp": {
        "credentials": {
            "phoneNumberId": "1055",
            "accessToken": "a",
            "appSecret": "s",
            "verifyToken": "v",
        }
    },
    "email": {"from": "hello@acme.example"},
}
SMS = {"body": "Hi {{lead.name}}, thanks for asking"}
EMAIL = {"subject": "Welcome {{lead.name}}", "body": "Your quote is on its way"}
WHATSAPP = {"name": "welcome", "language": "en_US", "parameters": ["{{lead.name}}"]}


async def add_channel(engine: Engine, workspace_id: str | UUID, kind: str) -> str:
    """A channel of the workspace, appended as the channels API would."""
    config = ChannelConfig.model_validate({"type": kind, "name": f"{kind} 1", **CREDENTIALS[kind]})
    channel = Channel(workspace_id=UUID(str(workspace_id)), config=config, actor="system:test")
    await engine.store.append(Append(channel.workspace_id, events=channel.collect_events()))
    return str(channel.id)


async def delete_channel(engine: Engine, channel_id: str) -> None:
    channel = await engine.store.load(Channel, UUID(channel_id))
    assert channel is not None
    channel.delete("system:test")
    await engine.store.append(Append(channel.workspace_id, events=channel.collect_events()))


async def setup(engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any]) -> dict[str, str]:
    ids = {kind: await add_channel(engine, ws["id"], kind) for kind in CREDENTIALS}
    hook = await client.post("/v1/lead-webhooks", json={"name": "Site"}, headers=ws["h"])
    assert hook.status_code == 201, hook.text
    ids["webhook"] = hook.json()["id"]
    return ids


def welcome(ids: dict[str, str], **extra: Any) -> dict[str, Any]:
    """The seed's welcome sequence: WhatsApp at once, SMS when it fails, email a day later."""
    return {
        "name": "Welcome",
        "description": "New leads from the site",
        "webhookSourceId": ids["webhook"],
        "steps": [
            {
                "channel": "whatsapp",
                "channelId": ids["whatsapp"],
                "delay": "immediate",
                "template": WHATSAPP,
                "fallbackChannel": "sms",
                "fallbackChannelId": ids["sms"],
                "fallbackTemplate": SMS,
            },
            {"channel": "email", "channelId": ids["email"], "delay": "24 h", "template": EMAIL},
        ],
        **extra,
    }


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


@pytest.fixture
def no_retry_handler() -> Iterator[None]:
    automation_routes.set_retry_handler(None)
    yield
    automation_routes.set_retry_handler(None)


async def test_automation_crud(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    ids = await setup(engine, client, ws)
    created = await client.post("/v1/lead-automations", json=welcome(ids), headers=ws["h"])
    assert created.status_code == 201, created.text
    body = created.json()
    automation_id = body["id"]
    assert body["position"] > 0 and body["name"] == "Welcome"
    # Defaults filled in; named delays shown in seconds.
    assert body["safetyLockMinutes"] == 5 and body["active"] is True
    assert body["failureWindowSeconds"] == 3600 and body["sources"] == []
    assert [s["delaySeconds"] for s in body["steps"]] == [0, 86_400]
    assert body["steps"][0]["fallbackTemplate"]["body"] == SMS["body"]
    assert body["webhookSourceId"] == ids["webhook"] and body["leadTrigger"] is None
    url = f"/v1/lead-automations/{automation_id}"

    read = await client.get(url, headers=ws["viewer"])
    assert read.status_code == 200, read.text
    assert read.json() == {k: v for k, v in body.items() if k != "position"}
    listed = await client.get(
        "/v1/lead-automations", params={"after": body["position"]}, headers=ws["viewer"]
    )
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"items": [read.json()], "total": 1, "page": 1, "limit": 50}
    assert (await client.get("/v1/lead-automations", headers=other["h"])).json()["total"] == 0

    # PUT replaces the whole configuration: what it leaves out takes its default.
    replaced = await client.put(
        url,
        json={
            "name": "Nudge",
            "active": False,
            "safetyLockMinutes": 0,
            "steps": [{"channel": "sms", "delaySeconds": 90, "template": SMS}],
        },
        headers=ws["h"],
    )
    assert replaced.status_code == 200, replaced.text
    r = replaced.json()
    assert (r["name"], r["active"], r["webhookSourceId"], r["description"]) == (
        "Nudge",
        False,
        None,
        None,
    )
    # A step without a channel id sends on the workspace's channel of its type.
    assert r["steps"] == [
        {
            "channel": "sms",
            "channelId": None,
            "delaySeconds": 90,
            "template": {**SMS, "subject": None, "name": None, "language": None, "parameters": []},
            "fallbackChannel": None,
            "fallbackChannelId": None,
            "fallbackTemplate": None,
        }
    ]
    assert r["createdAt"] == body["createdAt"] and r["position"] > body["position"]
    paused = await client.get(
        "/v1/lead-automations", params={"active": "false", "after": r["position"]}, headers=ws["h"]
    )
    assert [a["name"] for a in paused.json()["items"]] == ["Nudge"]
    running = await client.get("/v1/lead-automations", params={"active": "true"}, headers=ws["h"])
    assert running.json()["total"] == 0

    # PATCH merges top-level fields; `delay` works there too.
    patched = await client.patch(
        url,
        json={
            "safetyLockMinutes": 10,
            "leadTrigger": "status_changed",
            "sources": ["form", "api"],
            "steps": [{"channel": "email", "delay": "2 h", "template": EMAIL}],
        },
        headers=ws["h"],
    )
    assert patched.status_code == 200, patched.text
    p = patched.json()
    assert (p["safetyLockMinutes"], p["name"], p["active"]) == (10, "Nudge", False)
    assert p["leadTrigger"] == "status_changed" and p["sources"] == ["form", "api"]
    assert p["steps"][0]["delaySeconds"] == 7200
    # What a GET returned goes back as it is; nothing differs, nothing is written.
    again = await client.get(url, headers=ws["h"])
    same = await client.put(url, json=again.json(), headers=ws["h"])
    assert same.status_code == 200, same.text
    assert same.json()["position"] == 0
    assert (
        "colour"
        in error_of(await client.patch(url, json={"colour": "red"}, headers=ws["h"]))["message"]
    )
    assert (
        "name" in error_of(await client.patch(url, json={"name": None}, headers=ws["h"]))["message"]
    )
    assert (
        "steps" in error_of(await client.patch(url, json={"steps": []}, headers=ws["h"]))["message"]
    )

    # Stats of an automation nothing has run yet: zeros.
    stats = await client.get(f"{url}/stats", headers=ws["viewer"])
    assert stats.status_code == 200, stats.text
    assert stats.json() == {
        "automationId": automation_id,
        "triggered": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
        "skipped": 0,
        "stopped": 0,
    }

    # Another workspace reaches none of it.
    for method, sent in (("GET", None), ("PUT", welcome(ids)), ("PATCH", {"active": True})):
        theirs = await client.request(method, url, json=sent, headers=other["h"])
        assert error_of(theirs, 404)["code"] == "not_found", method
    assert error_of(await client.delete(url, headers=other["h"]), 404)
    assert error_of(await client.get(f"{url}/stats", headers=other["h"]), 404)

    # Permissions: reads need leads:view, writes leads:manage.
    viewer_post = await client.post("/v1/lead-automations", json=welcome(ids), headers=ws["viewer"])
    assert viewer_post.status_code == 403
    assert (await client.patch(url, json={}, headers=ws["viewer"])).status_code == 403
    assert (await client.delete(url, headers=ws["viewer"])).status_code == 403
    assert (await client.get("/v1/lead-automations")).status_code == 401
    # The operator names the workspace.
    as_operator = await client.get(url, headers={**OPERATOR, "X-Workspace-Id": ws["id"]})
    assert as_operator.status_code == 200 and as_operator.json()["name"] == "Nudge"

    deleted = await client.delete(url, headers=ws["h"])
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["position"] > p["position"]
    assert error_of(await client.get(url, headers=ws["h"]), 404)["code"] == "not_found"
    assert error_of(await client.put(url, json=welcome(ids), headers=ws["h"]), 404)
    assert error_of(await client.delete(url, headers=ws["h"]), 404)
    gone = await client.get(
        "/v1/lead-automations", params={"after": deleted.json()["position"]}, headers=ws["h"]
    )
    assert gone.json() == {"items": [], "total": 0, "page": 1, "limit": 50}
    # Its stats stay readable.
    assert (await client.get(f"{url}/stats", headers=ws["h"])).json()["triggered"] == 0


async def post_error(
    client: httpx.AsyncClient, ws: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    return error_of(await client.post("/v1/lead-automations", json=body, headers=ws["h"]))


async def test_channels_and_webhook_sources_must_be_the_workspaces_own(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    ids = await setup(engine, client, ws)
    theirs = await setup(engine, client, other)
    body = welcome(ids)

    def with_step(index: int, **fields: Any) -> dict[str, Any]:
        steps = [dict(s) for s in body["steps"]]
        steps[index].update(fields)
        return {**body, "steps": steps}

    unknown = str(uuid.uuid4())
    for sent, field, channel_id, why in (
        (with_step(0, channelId=unknown), "steps.0.channelId", unknown, "does not exist"),
        (
            with_step(0, channelId=theirs["whatsapp"]),
            "steps.0.channelId",
            theirs["whatsapp"],
            "does not exist",
        ),
        (
            with_step(1, channelId=ids["sms"]),
            "steps.1.channelId",
            ids["sms"],
            "is of type sms, not email",
        ),
        (
            with_step(0, fallbackChannelId=ids["email"]),
            "steps.0.fallbackChannelId",
            ids["email"],
            "is of type email, not sms",
        ),
        # Not a channel at all: the webhook's id.
        (with_step(1, channelId=ids["webhook"]), "steps.1.channelId", ids["webhook"], "not exist"),
    ):
        error = await post_error(client, ws, sent)
        assert error["code"] == "unknown_channel", error
        assert error["details"] == {"field": field, "channelId": channel_id}
        assert field in error["message"] and why in error["message"]

    deleted = await add_channel(engine, ws["id"], "email")
    await delete_channel(engine, deleted)
    error = await post_error(client, ws, with_step(1, channelId=deleted))
    assert (error["code"], error["details"]["field"]) == ("unknown_channel", "steps.1.channelId")

    for source in (theirs["webhook"], unknown, ids["sms"]):
        error = await post_error(client, ws, {**body, "webhookSourceId": source})
        assert error["code"] == "unknown_webhook_source"
        assert error["details"] == {"field": "webhookSourceId", "webhookSourceId": source}
    await client.delete(f"/v1/lead-webhooks/{ids['webhook']}", headers=ws["h"])
    error = await post_error(client, ws, body)
    assert error["code"] == "unknown_webhook_source"

    # A change checks only what it adds: a channel deleted since does not block a rename.
    second = await add_channel(engine, ws["id"], "sms")
    created = await client.post(
        "/v1/lead-automations",
        json={
            "name": "Text",
            "steps": [{"channel": "sms", "channelId": second, "template": SMS}],
        },
        headers=ws["h"],
    )
    assert created.status_code == 201, created.text
    url = f"/v1/lead-automations/{created.json()['id']}"
    await delete_channel(engine, second)
    renamed = await client.patch(url, json={"name": "Texts"}, headers=ws["h"])
    assert renamed.status_code == 200, renamed.text
    moved = await client.patch(
        url,
        json={"steps": [{"channel": "sms", "channelId": theirs["sms"], "template": SMS}]},
        headers=ws["h"],
    )
    assert error_of(moved)["code"] == "unknown_channel"
    stale = await client.get(url, headers=ws["h"])
    assert stale.json()["steps"][0]["channelId"] == second


@pytest.mark.parametrize(
    ("step", "field", "says"),
    [
        ({"template": {"body": "Hi {{name}}"}}, "steps.0.template", "starts with `name`"),
        ({"template": {"body": "Hi {{lead.name}"}}, "steps.0.template", "unbalanced"),
        ({"template": {"body": "Hi {{ }}"}}, "steps.0.template", "empty placeholder"),
        ({"template": {"body": "Hi {{lead}}"}}, "steps.0.template", "names no field"),
        (
            {"fallbackChannel": "email", "fallbackTemplate": {"subject": "{{x.y}}", "body": "b"}},
            "steps.0.fallbackTemplate",
            "subject",
        ),
        (
            # The step's own template goes out on the fallback channel: named as the template.
            {"template": {"body": "{{lead.name}}", "subject": "{{oops}}"}, "channel": "email"},
            "steps.0.template",
            "subject",
        ),
        (
            {
                "channel": "whatsapp",
                "template": {"name": "w{{lead.name}}", "language": "en"},
            },
            "steps.0.template",
            "cannot hold placeholders",
        ),
        (
            {"fallbackChannelId": "00000000-0000-4000-8000-000000000000"},
            "steps.0.fallbackChannelId",
            "fallbackChannel",
        ),
    ],
)
async def test_templates_are_checked_when_saved(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    step: dict[str, Any],
    field: str,
    says: str,
) -> None:
    body = {"name": "T", "steps": [{"channel": "sms", "template": SMS, **step}]}
    error = await post_error(client, ws, body)
    assert error["code"] == "validation_failed", error
    assert field in error["message"] and says in error["message"], error
    assert error["details"][0]["location"] == [
        int(p) if p.isdigit() else p for p in field.split(".")
    ]


@pytest.mark.parametrize(
    ("body", "location", "says"),
    [
        ({"steps": [{"channel": "sms", "template": SMS, "delay": "soon"}]}, "steps.0", "delay"),
        ({"steps": [{"channel": "sms", "template": SMS, "delay": -5}]}, "steps.0", "negative"),
        ({"steps": [{"channel": "sms", "template": SMS, "delay": [5]}]}, "steps.0.delay", "delay"),
        ({"steps": [{"channel": "sms", "template": SMS, "delay": None}]}, "steps.0.delay", "delay"),
        (
            {"steps": [{"channel": "sms", "template": SMS, "delay": {"m": 5}}]},
            "steps.0.delay",
            "delay",
        ),
        (
            {"steps": [{"channel": "sms", "template": SMS, "delay": "5 min", "delaySeconds": 1}]},
            "steps.0",
            "not both",
        ),
        ({"steps": [{"channel": "sms", "template": SMS, "delay": "999d"}]}, "steps.0", "less"),
        ({"steps": [{"channel": "sms", "template": {"subject": "x"}}]}, "steps.0", "body"),
        ({"steps": [{"channel": "fax", "template": SMS}]}, "steps.0.channel", "sms"),
        ({"steps": [{"channel": "sms", "template": SMS}], "leadTrigger": "x"}, "leadTrigger", "x"),
        ({"steps": [{"channel": "sms", "template": SMS}], "sources": ["fax"]}, "sources.0", "fax"),
        ({"steps": [{"channel": "sms", "template": SMS}], "safetyLockMinutes": -1}, "", "safety"),
    ],
)
async def test_bad_steps_and_triggers_are_a_422_naming_the_field(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    body: dict[str, Any],
    location: str,
    says: str,
) -> None:
    error = await post_error(client, ws, {"name": "Bad", **body})
    assert error["code"] == "validation_failed", error
    assert location in error["message"] and says in error["message"].lower(), error


async def test_the_body_must_be_json(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    sent = await client.post(
        "/v1/lead-automations",
        content=b"name=x",
        headers={**ws["h"], "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert error_of(sent, 415)["code"] == "unsupported_media_type"
    broken = await client.post(
        "/v1/lead-automations",
        content=b"{",
        headers={**ws["h"], "Content-Type": "application/json"},
    )
    assert broken.status_code == 400, broken.text


async def test_a_leads_automation_timeline_and_the_retry_route(
    engine: Engine,
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    other: dict[str, Any],
    no_retry_handler: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = await setup(engine, client, ws)
    created = await client.post("/v1/lead-automations", json=welcome(ids), headers=ws["h"])
    automation_id = created.json()["id"]
    lead = await client.post("/v1/leads", json={"name": "Ann"}, headers=ws["h"])
    lead_id = lead.json()["id"]
    url = f"/v1/leads/{lead_id}/automation-timeline"
    empty = await client.get(url, params={"after": lead.json()["position"]}, headers=ws["viewer"])
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"items": [], "total": 0, "page": 1, "limit": 100}
    assert error_of(await client.get(url, headers=other["h"]), 404)["code"] == "not_found"
    missing = f"/v1/leads/{uuid.uuid4()}/automation-timeline"
    assert error_of(await client.get(missing, headers=ws["h"]), 404)
    bad = await client.get(url, params={"automationId": "x"}, headers=ws["h"])
    assert bad.status_code == 422

    retry = f"/v1/lead-automations/{automation_id}/retry/{lead_id}"
    # The engine's runner: the lead never ran this automation.
    never = error_of(await client.post(retry, headers=ws["h"]), 404)
    assert "never ran" in never["message"]
    assert (await client.post(retry, headers=ws["viewer"])).status_code == 403
    assert error_of(await client.post(retry, headers=other["h"]), 404)
    unknown_lead = f"/v1/lead-automations/{automation_id}/retry/{uuid.uuid4()}"
    assert error_of(await client.post(unknown_lead, headers=ws["h"]), 404)
    with monkeypatch.context() as patched:
        patched.setattr(Engine, "messaging", property(lambda _: None))
        assert error_of(await client.post(retry, headers=ws["h"]), 503)["code"] == "not_ready"

    calls: list[tuple[UUID, UUID, UUID, str]] = []
    run_id = uuid.uuid4()
    outcomes: list[BaseException | UUID | int] = [
        LookupError("the lead has no run of this automation"),
        ValueError("its last run has no failed step"),
        4242,
        run_id,
    ]

    async def retry_handler(
        workspace: UUID, automation: UUID, lead_: UUID, actor: str
    ) -> UUID | int:
        calls.append((workspace, automation, lead_, actor))
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    automation_routes.set_retry_handler(retry_handler)
    no_run = error_of(await client.post(retry, headers=ws["h"]), 404)
    assert "no run" in no_run["message"]
    nothing = error_of(await client.post(retry, headers=ws["h"]), 409)
    assert nothing["code"] == "nothing_to_retry"
    done = await client.post(retry, headers=ws["h"])
    assert done.status_code == 200, done.text
    assert done.json() == {
        "automationId": automation_id,
        "leadId": lead_id,
        "runId": None,
        "retried": True,
        "position": 4242,
    }
    by_run = await client.post(retry, headers=ws["h"])
    assert by_run.json()["runId"] == str(run_id)
    assert by_run.json()["position"] >= lead.json()["position"]
    assert len(calls) == 4
    assert calls[0][:3] == (UUID(ws["id"]), UUID(automation_id), UUID(lead_id))
    assert calls[0][3].startswith("token:")
