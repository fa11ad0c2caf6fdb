"""End to end: automations, quick sends and broadcasts against fake Twilio, WhatsApp and SMTP."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email import message_from_bytes
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from gateways.bootstrap import Engine
from gateways.settings import Settings
from gateways.workers import Worker, build_workers
from tests.conftest import make_workspace, settings_for
from tests.gateways.outbound.fake_buyers import FakeBuyer
from tests.gateways.outbound.fake_providers import FakeTwilio, FakeWhatsApp, twilio_inbound
from tests.gateways.outbound.test_deliveries import Mailbox, free_port

PUBLIC = "http://leadlog.test"


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    return settings_for(
        schema_name,
        nats_prefix,
        allow_private_webhook_targets=True,
        public_url=PUBLIC,
        timer_interval=0.1,
    )


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


class Workers:
    """The engine's workers, started and stopped by the test (a restart in between)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.running: list[Worker] = []

    async def start(self) -> None:
        self.running = build_workers(self.engine)
        for worker in self.running:
            await worker.start()

    async def stop(self) -> None:
        for worker in reversed(self.running):
            await worker.stop()
        self.running = []


@pytest.fixture
async def workers(engine: Engine) -> AsyncIterator[Workers]:
    started = Workers(engine)
    await started.start()
    yield started
    await started.stop()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.05)


async def channel(client: httpx.AsyncClient, ws: dict[str, Any], **body: Any) -> str:
    created = await client.post("/v1/channels", json=body, headers=ws["h"])
    assert created.status_code == 201, created.text
    channel_id: str = created.json()["id"]
    return channel_id


async def sms_channel(
    client: httpx.AsyncClient, ws: dict[str, Any], twilio: FakeTwilio, **extra: Any
) -> str:
    return await channel(
        client,
        ws,
        type="sms",
        name="Twilio",
        baseUrl=twilio.base_url,
        **{"from": "+15005550006"},
        credentials=twilio.credentials,
        **extra,
    )


async def source(client: httpx.AsyncClient, ws: dict[str, Any]) -> dict[str, Any]:
    hook = await client.post("/v1/lead-webhooks", json={"name": "Ads"}, headers=ws["h"])
    assert hook.status_code == 201, hook.text
    found: dict[str, Any] = hook.json()
    return found


async def lead_from(client: httpx.AsyncClient, hook: dict[str, Any], **fields: Any) -> str:
    sent = await client.post(f"/webhooks/leads/{hook['apiKey']}", json=fields)
    assert sent.status_code in (200, 201), sent.text
    lead_id: str = sent.json()["id"]
    return lead_id


async def timeline(
    client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str
) -> list[dict[str, Any]]:
    found = await client.get(f"/v1/leads/{lead_id}/automation-timeline", headers=ws["h"])
    assert found.status_code == 200, found.text
    items: list[dict[str, Any]] = found.json()["items"]
    return items


def types(items: list[dict[str, Any]]) -> list[str]:
    return [item["type"] for item in items if item["type"] != "step_scheduled"]


async def messages(
    client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str
) -> list[dict[str, Any]]:
    found = await client.get("/v1/messages", params={"leadId": lead_id}, headers=ws["h"])
    assert found.status_code == 200, found.text
    items: list[dict[str, Any]] = found.json()["items"]
    return items


ANN = {"name": "Ann Lead", "email": "ann@example.com", "phone": "+14155550101"}


async def test_the_welcome_sequence_falls_back_and_survives_a_restart(
    client: httpx.AsyncClient, engine: Engine, workers: Workers, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    ws = await make_workspace(client)
    async with FakeWhatsApp() as whatsapp, FakeTwilio() as twilio:
        wa = await channel(
            client,
            ws,
            type="whatsapp",
            name="WhatsApp",
            baseUrl=whatsapp.base_url,
            credentials=whatsapp.credentials,
        )
        sms = await sms_channel(client, ws, twilio)
        email = await channel(
            client,
            ws,
            type="email",
            name="Mail",
            **{"from": "hello@acme.example"},
            credentials={"host": "127.0.0.1", "port": port},
        )
        hook = await source(client, ws)
        created = await client.post(
            "/v1/lead-automations",
            json={
                "name": "Welcome",
                "webhookSourceId": hook["id"],
                "safetyLockMinutes": 5,
                "active": True,
                "steps": [
                    {
                        "channel": "whatsapp",
                        "channelId": wa,
                        "delay": "immediate",
                        "template": {
                            "name": "welcome",
                            "language": "en",
                            "parameters": ["{{lead.name}}"],
                        },
                        "fallbackChannel": "sms",
                        "fallbackChannelId": sms,
                        "fallbackTemplate": {"body": "Hi {{lead.name}}, welcome!"},
                    },
                    {
                        "channel": "email",
                        "channelId": email,
                        "delaySeconds": 2,
                        "template": {
                            "subject": "Welcome {{lead.name}}",
                            "body": "Hello {{lead.name}}",
                        },
                    },
                ],
            },
            headers=ws["h"],
        )
        assert created.status_code == 201, created.text
        automation = created.json()["id"]
        whatsapp.fail_next(131026)
        lead_id = await lead_from(client, hook, **ANN)

        await eventually(lambda: _now(len(twilio.sent) == 1))
        assert twilio.sent[0].form["Body"] == "Hi Ann Lead, welcome!"
        assert twilio.sent[0].form["To"] == "+14155550101"
        # Restart in the middle of the email's delay: it is sent after, once.
        await workers.stop()
        await asyncio.sleep(2.5)
        assert box.messages == []
        await workers.start()
        await eventually(lambda: _now(len(box.messages) == 1))
        sent = message_from_bytes(box.messages[0])
        assert sent["Subject"] == "Welcome Ann Lead"
        assert sent["To"] == "ann@example.com"
        assert sent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        async def finished() -> list[dict[str, Any]] | None:
            items = await timeline(client, ws, lead_id)
            return items if "automation_completed" in types(items) else None

        items = await eventually(finished)
        assert types(items) == [
            "automation_triggered",
            "step_failed",
            "fallback",
            "step_sent",
            "step_sent",
            "automation_completed",
        ]
        failed = next(i for i in items if i["type"] == "step_failed")
        assert failed["channel"] == "whatsapp"
        assert "131026" in str(failed) or "undeliverable" in str(failed).lower()
        sent_channels = [i["channel"] for i in items if i["type"] == "step_sent"]
        assert sent_channels == ["sms", "email"]
        found = await messages(client, ws, lead_id)
        assert sorted((m["channel"], m["status"]) for m in found) == [
            ("email", "sent"),
            ("sms", "sent"),
            ("whatsapp", "failed"),
        ]
        await asyncio.sleep(0.5)
        assert len(box.messages) == 1 and len(twilio.sent) == 1
        stats = await client.get(f"/v1/lead-automations/{automation}/stats", headers=ws["h"])
        assert stats.json()["triggered"] == 1 and stats.json()["completed"] == 1


async def _now(value: Any) -> Any:
    return value


async def test_status_callbacks_apply_in_order_once(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio:
        sms = await sms_channel(client, ws, twilio)
        lead = await client.post("/v1/leads", json=ANN, headers=ws["h"])
        lead_id = lead.json()["id"]
        sent = await client.post(
            "/v1/leads/broadcast/quick-send",
            json={
                "leadIds": [lead_id],
                "channel": "sms",
                "channelId": sms,
                "message": "Hello {{lead.name}}",
            },
            headers=ws["h"],
        )
        assert sent.status_code == 200, sent.text
        await eventually(lambda: _now(len(twilio.sent) == 1))
        sid = next(iter(twilio.messages))
        assert twilio.sent[0].form["StatusCallback"] == f"{PUBLIC}/v1/channels/{sms}/status"
        assert twilio.sent[0].form["Body"] == "Hello Ann Lead"

        async def has_provider_id() -> bool:
            found = await messages(client, ws, lead_id)
            return bool(found and found[0]["providerId"] == sid)

        await eventually(has_provider_id)
        for status in ("delivered", "sent", "delivered", "undelivered"):
            answer = await twilio.report(client, sid, status)
            assert answer.status_code == 200, answer.text

        async def settled() -> list[dict[str, Any]] | None:
            found = await messages(client, ws, lead_id)
            return found if found and found[0]["status"] == "delivered" else None

        (message,) = await eventually(settled)
        assert [h["status"] for h in message["statusHistory"]] == ["sent", "delivered"]
        forged = await client.post(
            f"/v1/channels/{sms}/status",
            data={"MessageSid": sid, "MessageStatus": "failed"},
            headers={"X-Twilio-Signature": "bogus"},
        )
        assert forged.status_code == 403


async def test_the_safety_lock_skips_the_same_phone_within_its_window(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio:
        sms = await sms_channel(client, ws, twilio)
        hook = await source(client, ws)
        created = await client.post(
            "/v1/lead-automations",
            json={
                "name": "Hello",
                "webhookSourceId": hook["id"],
                "steps": [
                    {"channel": "sms", "channelId": sms, "template": {"body": "Hi {{lead.name}}"}}
                ],
            },
            headers=ws["h"],
        )
        automation = created.json()["id"]
        first = await lead_from(client, hook, **ANN)
        await eventually(lambda: _now(len(twilio.sent) == 1))
        again = await lead_from(client, hook, name="Ann Again", phone="+14155550101")

        async def skipped() -> list[dict[str, Any]] | None:
            items = await timeline(client, ws, again)
            return items if "automation_skipped" in types(items) else None

        items = await eventually(skipped)
        skip = next(i for i in items if i["type"] == "automation_skipped")
        assert "safety_lock" in str(skip)
        assert len(twilio.sent) == 1
        assert types(await timeline(client, ws, first))[-1] == "automation_completed"
        stats = (
            await client.get(f"/v1/lead-automations/{automation}/stats", headers=ws["h"])
        ).json()
        assert stats["triggered"] == 2 and stats["skipped"] == 1


async def test_a_failed_step_is_retried_on_request(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio:
        sms = await sms_channel(client, ws, twilio)
        hook = await source(client, ws)
        created = await client.post(
            "/v1/lead-automations",
            json={
                "name": "Hello",
                "webhookSourceId": hook["id"],
                "steps": [
                    {"channel": "sms", "channelId": sms, "template": {"body": "Hi {{lead.name}}"}}
                ],
            },
            headers=ws["h"],
        )
        automation = created.json()["id"]
        twilio.fail_next(30003, "Unreachable destination handset")
        lead_id = await lead_from(client, hook, **ANN)

        async def failed() -> list[dict[str, Any]] | None:
            items = await timeline(client, ws, lead_id)
            return items if "step_failed" in types(items) else None

        items = await eventually(failed)
        assert "Unreachable" in str(items)
        retried = await client.post(
            f"/v1/lead-automations/{automation}/retry/{lead_id}", headers=ws["h"]
        )
        assert retried.status_code in (200, 202), retried.text
        await eventually(lambda: _now(len(twilio.sent) == 1))

        async def done() -> list[dict[str, Any]] | None:
            items = await timeline(client, ws, lead_id)
            return items if "automation_completed" in types(items) else None

        assert "step_sent" in types(await eventually(done))
        again = await client.post(
            f"/v1/lead-automations/{automation}/retry/{lead_id}", headers=ws["h"]
        )
        assert again.status_code == 409


async def test_a_quick_send_names_the_leads_it_skips(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio:
        sms = await sms_channel(client, ws, twilio)
        ann = (await client.post("/v1/leads", json=ANN, headers=ws["h"])).json()["id"]
        bob = (
            await client.post(
                "/v1/leads", json={"name": "Bob", "email": "bob@example.com"}, headers=ws["h"]
            )
        ).json()["id"]
        sent = await client.post(
            "/v1/leads/broadcast/quick-send",
            json={"leadIds": [ann, bob], "channel": "sms", "channelId": sms, "message": "Hi"},
            headers=ws["h"],
        )
        assert sent.status_code == 200, sent.text
        results = {r["leadId"]: r for r in sent.json()["results"]}
        assert results[ann]["status"] == "queued"
        assert results[bob]["status"] == "skipped" and results[bob]["reason"] == "missing_contact"
        await eventually(lambda: _now(len(twilio.sent) == 1))
        bad = await client.post(
            "/v1/leads/broadcast/quick-send",
            json={"leadIds": [ann], "channel": "sms", "message": "Hi {{leed.name}}"},
            headers=ws["h"],
        )
        assert bad.status_code == 422


async def test_a_reply_fires_smsreplied_and_stop_is_honoured(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio, FakeBuyer() as receiver:
        sms = await sms_channel(client, ws, twilio)
        lead_type = await client.post(
            "/v1/lead-types",
            json={
                "name": "Replies",
                "actions": [
                    {"type": "webhook", "trigger": "sms_replied", "url": receiver.url("/hook")}
                ],
            },
            headers=ws["h"],
        )
        assert lead_type.status_code == 201, lead_type.text
        lead_id = (await client.post("/v1/leads", json=ANN, headers=ws["h"])).json()["id"]
        inbound = f"{PUBLIC}/v1/channels/{sms}/inbound"
        answer = await twilio_inbound(client, inbound, twilio.auth_token, "+14155550101", "Thanks!")
        assert answer.status_code == 200, answer.text

        async def notified() -> bool:
            return any(b"smsreplied" in s.body for s in receiver.seen)

        try:
            await eventually(notified)
        except AssertionError:
            history = await client.get(f"/v1/leads/{lead_id}/history", headers=ws["h"])
            raise AssertionError(history.text[:3000]) from None
        stop = await twilio_inbound(client, inbound, twilio.auth_token, "+14155550101", "STOP")
        assert stop.status_code == 200, stop.text

        async def suppressed() -> bool:
            sent = await client.post(
                "/v1/leads/broadcast/quick-send",
                json={"leadIds": [lead_id], "channel": "sms", "channelId": sms, "message": "Sale!"},
                headers=ws["h"],
            )
            reason: str | None = sent.json()["results"][0].get("reason")
            return reason == "suppressed"

        await eventually(suppressed)
        await asyncio.sleep(0.3)
        assert twilio.sent == []


async def test_an_email_unsubscribe_link_is_honoured(
    client: httpx.AsyncClient, workers: Workers, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    ws = await make_workspace(client)
    email = await channel(
        client,
        ws,
        type="email",
        name="Mail",
        **{"from": "hello@acme.example"},
        credentials={"host": "127.0.0.1", "port": port},
    )
    lead_id = (await client.post("/v1/leads", json=ANN, headers=ws["h"])).json()["id"]
    body = {
        "leadIds": [lead_id],
        "channel": "email",
        "channelId": email,
        "message": "News",
        "subject": "Hi",
    }
    first = await client.post("/v1/leads/broadcast/quick-send", json=body, headers=ws["h"])
    assert first.json()["queued"] == 1
    await eventually(lambda: _now(len(box.messages) == 1))
    sent = message_from_bytes(box.messages[0])
    link = sent["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{PUBLIC}/t/u/")
    clicked = await client.post(link.removeprefix(PUBLIC), content=b"List-Unsubscribe=One-Click")
    assert clicked.status_code == 200
    forged = await client.post(link.removeprefix(PUBLIC).split("?")[0] + "?s=forged")
    assert forged.status_code == 404
    again = await client.post("/v1/leads/broadcast/quick-send", json=body, headers=ws["h"])
    assert again.json()["results"][0]["reason"] == "suppressed"

    async def on_the_lead() -> bool:
        activity = await client.get(f"/v1/leads/{lead_id}/timeline", headers=ws["h"])
        return "email_unsubscribed" in activity.text

    await eventually(on_the_lead)


async def test_a_broadcast_to_a_thousand_leads_keeps_the_pace(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio(rate_limit=400) as twilio:
        sms = await sms_channel(client, ws, twilio, ratePerSecond=300)
        rows = "\n".join(f"Lead {n},+1415555{n:04d}" for n in range(1000))
        imported = await client.post(
            "/v1/leads/import",
            content=f"name,phone\n{rows}\n".encode(),
            headers={**ws["h"], "content-type": "text/csv"},
        )
        assert imported.status_code in (200, 201), imported.text
        audience = await client.post(
            "/v1/leads/broadcast/create-audience",
            json={"name": "Everyone", "filter": {"source": "import"}},
            headers=ws["h"],
        )
        assert audience.status_code == 201, audience.text
        assert audience.json()["size"] == 1000
        started = time.monotonic()
        broadcast = await client.post(
            "/v1/broadcasts",
            json={
                "audienceId": audience.json()["id"],
                "channel": "sms",
                "channelId": sms,
                "template": {"body": "Spring sale, {{lead.name}}!"},
            },
            headers=ws["h"],
        )
        assert broadcast.status_code == 201, broadcast.text
        broadcast_id = broadcast.json()["id"]
        await eventually(lambda: _now(len(twilio.sent) == 1000), timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed >= 1000 / 300 * 0.8  # paced to the channel's rate
        assert len({r.form["To"] for r in twilio.sent}) == 1000  # each once

        async def counted() -> dict[str, Any] | None:
            found = (await client.get(f"/v1/broadcasts/{broadcast_id}", headers=ws["h"])).json()
            return found if found["sent"] == 1000 else None

        stats = await eventually(counted)
        assert stats["failed"] == 0 and stats["queued"] == 1000


async def test_lead_type_actions_text_and_start_and_stop_workflows(
    client: httpx.AsyncClient, workers: Workers
) -> None:
    ws = await make_workspace(client)
    async with FakeTwilio() as twilio:
        sms = await sms_channel(client, ws, twilio)
        drip = await client.post(
            "/v1/lead-automations",
            json={
                "name": "Drip",
                "steps": [
                    {"channel": "sms", "channelId": sms, "template": {"body": "Step one"}},
                    {
                        "channel": "sms",
                        "channelId": sms,
                        "delay": "1h",
                        "template": {"body": "Step two"},
                    },
                ],
            },
            headers=ws["h"],
        )
        assert drip.status_code == 201, drip.text
        drip_id = drip.json()["id"]
        lead_type = await client.post(
            "/v1/lead-types",
            json={
                "name": "Texting",
                "actions": [
                    {
                        "type": "text_customer",
                        "trigger": "received",
                        "channelId": sms,
                        "body": "Thanks {{lead.name}}",
                    },
                    {
                        "type": "notify_user_by_text",
                        "trigger": "received",
                        "to": "+14155550199",
                        "body": "New lead: {{lead.name}}",
                    },
                    {"type": "start_workflow", "trigger": "received", "automationId": drip_id},
                    {"type": "stop_workflow", "trigger": "status_changed", "automationId": drip_id},
                ],
            },
            headers=ws["h"],
        )
        assert lead_type.status_code == 201, lead_type.text
        lead_id = (await client.post("/v1/leads", json=ANN, headers=ws["h"])).json()["id"]
        await eventually(lambda: _now(len(twilio.sent) == 3))
        by_to = sorted((r.form["To"], r.form["Body"]) for r in twilio.sent)
        assert by_to == [
            ("+14155550101", "Step one"),
            ("+14155550101", "Thanks Ann Lead"),
            ("+14155550199", "New lead: Ann Lead"),
        ]
        moved = await client.patch(
            f"/v1/leads/{lead_id}/status", json={"status": "contacted"}, headers=ws["h"]
        )
        assert moved.status_code == 200, moved.text

        async def stopped() -> list[dict[str, Any]] | None:
            items = await timeline(client, ws, lead_id)
            return items if "automation_stopped" in types(items) else None

        await eventually(stopped)
        found = await messages(client, ws, lead_id)
        assert {m["origin"] for m in found} == {"action", "automation"}


def html_part(raw: bytes) -> str:
    message = message_from_bytes(raw)
    for part in message.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no HTML part")


async def test_opens_clicks_bounces_and_complaints_come_back_to_the_lead(
    client: httpx.AsyncClient, workers: Workers, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    ws = await make_workspace(client)
    email = await channel(
        client,
        ws,
        type="email",
        name="Mail",
        **{"from": "hello@acme.example"},
        credentials={"host": "127.0.0.1", "port": port},
    )
    lead_id = (await client.post("/v1/leads", json=ANN, headers=ws["h"])).json()["id"]
    sent = await client.post(
        "/v1/leads/broadcast/quick-send",
        json={
            "leadIds": [lead_id],
            "channel": "email",
            "channelId": email,
            "subject": "Your quote",
            "message": "See https://acme.example/quote?id=7 for the details.",
        },
        headers=ws["h"],
    )
    message_id = sent.json()["results"][0]["messageId"]
    await eventually(lambda: _now(len(box.messages) == 1))
    page = html_part(box.messages[0])
    pixel = re.search(r'<img[^>]+src="([^"]+/t/o/[^"]+)"', page)
    click = re.search(r'href="([^"]+/t/c/[^"]+)"', page)
    assert pixel and click
    opened = await client.get(html.unescape(pixel.group(1)).removeprefix(PUBLIC))
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    target = html.unescape(click.group(1)).removeprefix(PUBLIC)
    followed = await client.get(target)
    assert followed.status_code == 302
    assert followed.headers["location"] == "https://acme.example/quote?id=7"
    retargeted = target.replace("acme.example", "evil.example")
    assert (await client.get(retargeted)).status_code == 404  # no open redirect

    async def read() -> bool:
        found = await messages(client, ws, lead_id)
        return bool(found) and found[0]["status"] == "read"

    await eventually(read)
    bounced = await client.post(
        f"/v1/channels/{email}/email-events",
        json={"type": "complaint", "messageId": message_id},
        headers=ws["h"],
    )
    assert bounced.status_code == 200, bounced.text
    again = await client.post(
        "/v1/leads/broadcast/quick-send",
        json={
            "leadIds": [lead_id],
            "channel": "email",
            "channelId": email,
            "subject": "Hi",
            "message": "x",
        },
        headers=ws["h"],
    )
    assert again.json()["results"][0]["reason"] == "suppressed"

    async def on_the_lead() -> bool:
        activity = await client.get(f"/v1/leads/{lead_id}/timeline", headers=ws["h"])
        text = activity.text
        return all(kind in text for kind in ("email_opened", "email_clicked", "email_spam"))

    await eventually(on_the_lead)
