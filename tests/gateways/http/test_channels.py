"""Channels over HTTP: CRUD with write-only secrets, the 422s naming the field, and the
providers' callbacks in their real wire formats: Twilio's signed form posts and the Cloud
API's signed JSON webhooks and subscription handshake, applied to the messages view
monotonically and once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from domain.channels import Channel
from domain.messages import Message, Origin
from domain.provider_signatures import hub_signature, twilio_signature
from gateways.bootstrap import Engine
from gateways.http import channels as channel_routes
from gateways.nats.relay import event_payload
from gateways.settings import Settings
from handlers.messages import provider_claim
from handlers.ports import Append, Claim
from tests.conftest import settings_for
from tests.gateways.outbound.fake_providers import (
    twilio_inbound,
    twilio_status,
    whatsapp_error,
    whatsapp_inbound,
    whatsapp_status,
    whatsapp_verify,
)

PUBLIC_URL = "https://leads.example.com/app"
AUTH_TOKEN = "twilio-auth-token-0f3c9a"
ACCESS_TOKEN = "EAAGmeta-access-token-77a1"
APP_SECRET = "meta-app-secret-5be2"
VERIFY_TOKEN = "meta-verify-token-9d41"
SECRETS = (AUTH_TOKEN, ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN)
PHONE_NUMBER_ID = "106540352242922"  # the fake Cloud API's default number

SMS: dict[str, Any] = {
    "type": "sms",
    "name": "Twilio US",
    "from": "+15005550006",
    "credentials": {"accountSid": "AC" + "1" * 32, "authToken": AUTH_TOKEN},
}
WHATSAPP: dict[str, Any] = {
    "type": "whatsapp",
    "name": "WhatsApp",
    "credentials": {
        "phoneNumberId": PHONE_NUMBER_ID,
        "accessToken": ACCESS_TOKEN,
        "appSecret": APP_SECRET,
        "verifyToken": VERIFY_TOKEN,
        "apiVersion": "v21.0",
    },
}


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    """Callback URLs are handed out on a public URL with a path, as behind a proxy."""
    return settings_for(
        schema_name, nats_prefix, max_body_bytes=64 * 1024, public_url=PUBLIC_URL + "/"
    )


def error_of(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


async def create(
    client: httpx.AsyncClient, ws: dict[str, Any], body: dict[str, Any]
) -> dict[str, Any]:
    created = await client.post("/v1/channels", json=body, headers=ws["h"])
    assert created.status_code == 201, created.text
    result: dict[str, Any] = created.json()
    return result


def no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


async def test_channel_crud_never_shows_a_secret(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    sms = await create(client, ws, SMS)
    channel_id = sms["id"]
    url = f"/v1/channels/{channel_id}"
    assert sms["position"] > 0
    assert (sms["type"], sms["name"], sms["from"], sms["active"]) == (
        "sms",
        "Twilio US",
        "+15005550006",
        True,
    )
    assert sms["credentials"] == {"accountSid": "AC" + "1" * 32, "authToken": "[set]"}
    assert sms["baseUrl"] == "https://api.twilio.com" and sms["ratePerSecond"] is None
    assert sms["statusCallbackUrl"] == f"{PUBLIC_URL}/v1/channels/{channel_id}/status"
    assert sms["inboundUrl"] == f"{PUBLIC_URL}/v1/channels/{channel_id}/inbound"
    wa = await create(client, ws, {**WHATSAPP, "ratePerSecond": 20})
    assert wa["credentials"] == {
        "phoneNumberId": PHONE_NUMBER_ID,
        "accessToken": "[set]",
        "appSecret": "[set]",
        "verifyToken": "[set]",
        "apiVersion": "v21.0",
    }
    assert wa["ratePerSecond"] == 20 and wa["baseUrl"] == "https://graph.facebook.com"
    email = await create(client, ws, {"type": "email", "name": "Mail", "from": "hi@acme.example"})
    assert email["credentials"] == {} and email["baseUrl"] is None
    no_secret(json.dumps([sms, wa, email]))

    read = await client.get(url, headers=ws["viewer"])
    assert read.status_code == 200, read.text
    assert read.json() == {k: v for k, v in sms.items() if k != "position"}
    listed = await client.get("/v1/channels", headers=ws["viewer"])
    assert listed.status_code == 200, listed.text
    assert [c["id"] for c in listed.json()["items"]] == [channel_id, wa["id"], email["id"]]
    assert listed.json()["total"] == 3
    no_secret(listed.text)
    only = await client.get("/v1/channels", params={"type": "whatsapp"}, headers=ws["h"])
    assert [c["id"] for c in only.json()["items"]] == [wa["id"]]
    assert (await client.get("/v1/channels", params={"type": "fax"}, headers=ws["h"])).is_error
    assert (await client.get("/v1/channels", headers=other["h"])).json()["total"] == 0

    # PATCH merges: a secret left out, or sent back as `[set]`, stays as it was.
    renamed = await client.patch(url, json={"name": "Twilio", "active": False}, headers=ws["h"])
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Twilio" and renamed.json()["active"] is False
    assert renamed.json()["position"] > sms["position"]
    stored = await engine.store.load(Channel, UUID(channel_id))
    assert stored is not None and stored.config.credentials["authToken"] == AUTH_TOKEN
    again = (await client.get(url, headers=ws["h"])).json()
    same = await client.patch(url, json=again, headers=ws["h"])
    assert same.status_code == 200, same.text
    assert same.json()["position"] == 0
    rotated = await client.patch(
        url, json={"credentials": {"authToken": "rotated-token-1"}}, headers=ws["h"]
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["credentials"]["authToken"] == "[set]"
    assert "rotated-token-1" not in rotated.text
    stored = await engine.store.load(Channel, UUID(channel_id))
    assert stored is not None
    assert stored.config.credentials == {
        "accountSid": "AC" + "1" * 32,
        "authToken": "rotated-token-1",
    }
    moved = await client.patch(
        url, json={"baseUrl": "https://twilio.example.net/"}, headers=ws["h"]
    )
    assert moved.json()["baseUrl"] == "https://twilio.example.net"

    # Another workspace reaches none of it.
    for method, body in (("GET", None), ("PATCH", {"name": "Mine"}), ("DELETE", None)):
        theirs = await client.request(method, url, json=body, headers=other["h"])
        assert error_of(theirs, 404)["code"] == "not_found", method
    # Reads need leads:view, writes leads:manage.
    assert (await client.post("/v1/channels", json=SMS, headers=ws["viewer"])).status_code == 403
    assert (await client.patch(url, json={"name": "x"}, headers=ws["viewer"])).status_code == 403
    assert (await client.delete(url, headers=ws["viewer"])).status_code == 403
    assert (await client.get("/v1/channels")).status_code == 401

    deleted = await client.delete(url, headers=ws["h"])
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] is True and deleted.json()["position"] > 0
    assert error_of(await client.get(url, headers=ws["h"]), 404)["code"] == "not_found"
    assert error_of(await client.patch(url, json={"name": "x"}, headers=ws["h"]), 404)
    assert [
        c["id"] for c in (await client.get("/v1/channels", headers=ws["h"])).json()["items"]
    ] == [
        wa["id"],
        email["id"],
    ]


async def test_the_relay_never_publishes_a_channel_secret(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    sms = await create(client, ws, SMS)
    await create(client, ws, WHATSAPP)
    await client.patch(
        f"/v1/channels/{sms['id']}",
        json={"credentials": {"authToken": AUTH_TOKEN + "-new"}},
        headers=ws["h"],
    )
    records = await engine.log.read(0, 1000, event_types=["channel.created", "channel.updated"])
    assert len(records) == 3
    assert any(AUTH_TOKEN.encode() in r.state for r in records)  # kept in the log itself
    for record in records:
        payload = event_payload(record)
        for secret in SECRETS:
            assert secret.encode() not in payload, (record.event_type, secret)
        credentials = json.loads(payload)["data"]["config"]["credentials"]
        assert credentials.get("accountSid", credentials.get("phoneNumberId"))  # ids stay


async def test_a_bad_channel_is_a_422_naming_the_field(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**SMS, "type": "fax"}, "type"),
        ({k: v for k, v in SMS.items() if k != "name"}, "name"),
        ({**SMS, "name": ""}, "name"),
        ({k: v for k, v in SMS.items() if k != "from"}, "from"),
        ({**SMS, "credentials": {"accountSid": "AC1"}}, "authToken"),
        ({**SMS, "credentials": {**SMS["credentials"], "apiKey": "k"}}, "apiKey"),
        ({**SMS, "credentials": {**SMS["credentials"], "authToken": "[set]"}}, "authToken"),
        ({**SMS, "credentials": "secret"}, "credentials"),
        ({**SMS, "baseUrl": "ftp://twilio.example"}, "baseUrl"),
        ({**SMS, "baseUrl": "https://user:pw@twilio.example"}, "baseUrl"),
        ({**SMS, "ratePerSecond": 0}, "ratePerSecond"),
        ({**SMS, "colour": "red"}, "colour"),
        ({**WHATSAPP, "credentials": {"phoneNumberId": "1"}}, "accessToken"),
        ({"type": "email", "name": "Mail", "from": "not-an-address"}, "from"),
    ]
    for body, named in cases:
        error = error_of(await client.post("/v1/channels", json=body, headers=ws["h"]))
        assert error["code"] == "validation_failed", body
        assert named in error["message"], (named, error["message"])
    assert (await client.post("/v1/channels", content=b"{", headers=ws["h"])).status_code in (
        400,
        415,
    )
    wrong_type = await client.post(
        "/v1/channels", content=b"type=sms", headers={**ws["h"], "content-type": "text/plain"}
    )
    assert error_of(wrong_type, 415)["code"] == "unsupported_media_type"
    # A change is checked as a whole channel, and refused without changing anything.
    sms = await create(client, ws, SMS)
    url = f"/v1/channels/{sms['id']}"
    for body, named in (
        ({"from": None}, "from"),
        ({"credentials": {"authToken": None}}, "authToken"),
        ({"credentials": {"authToken": "[set]", "password": "[set]"}}, "password"),
        ({"type": "whatsapp"}, "credentials"),
        ({"name": None}, "name"),
    ):
        error = error_of(await client.patch(url, json=body, headers=ws["h"]))
        assert named in error["message"], (named, error["message"])
    assert (await client.get(url, headers=ws["h"])).json()["name"] == "Twilio US"
    # A type change starts the credentials afresh: the new provider's, all of them.
    switched = await client.patch(
        url, json={"type": "whatsapp", "credentials": WHATSAPP["credentials"]}, headers=ws["h"]
    )
    assert switched.status_code == 200, switched.text
    assert set(switched.json()["credentials"]) == set(WHATSAPP["credentials"])


@dataclass
class Sent:
    """A message recorded as sent through a channel, as the message worker records it."""

    id: UUID
    provider_id: str
    channel_id: UUID
    lead_id: UUID = field(default_factory=uuid4)


async def sent_message(
    engine: Engine, workspace_id: str, channel: dict[str, Any], provider_id: str
) -> Sent:
    channel_id = UUID(channel["id"])
    message = Message(  # type: ignore[call-arg]
        id=uuid4(),
        workspace_id=UUID(workspace_id),
        lead_id=uuid4(),
        channel_id=channel_id,
        channel=channel["type"],
        to="+14155552671",
        content={"body": "Welcome!"},
        origin=Origin.QUICK_SEND,
    )
    message.sent(provider_id)
    await engine.store.append(
        Append(
            UUID(workspace_id),
            events=message.collect_events(),
            claims=[Claim(provider_claim(channel_id, provider_id), message.id)],
        )
    )
    return Sent(message.id, provider_id, channel_id, message.lead_id or uuid4())


async def statuses(engine: Engine, message_id: UUID) -> tuple[str, list[str], dict[str, Any]]:
    """The messages view's status, status history (statuses) and row, once it has the log."""
    assert await engine.projector.wait_for("messages", await engine.log.max_position(), 10)
    row = await engine.pool.fetchrow("SELECT * FROM messages WHERE id = $1", message_id)
    assert row is not None
    history = json.loads(row["status_history"])
    return row["status"], [h["status"] for h in history], dict(row)


def path_of(url: str) -> str:
    return url.removeprefix(PUBLIC_URL)


async def test_twilio_status_callbacks_out_of_order_and_repeated(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    sms = await create(client, ws, SMS)
    callback = sms["statusCallbackUrl"]
    one = await sent_message(engine, ws["id"], sms, "SM" + "a" * 32)
    two = await sent_message(engine, ws["id"], sms, "SM" + "b" * 32)

    async def report(sent: Sent, status: str, code: int | None = None) -> dict[str, Any]:
        # Posted where the engine listens, signed over the URL it handed out (a proxy in
        # between): the signature holds.
        answered = await twilio_status(
            client,
            path_of(callback),
            AUTH_TOKEN,
            sent.provider_id,
            status,
            code,
            signed_url=callback,
        )
        assert answered.status_code == 200, answered.text
        body: dict[str, Any] = answered.json()
        return body

    # Out of order and repeated: delivered before sent, delivered again, queued late.
    assert await report(one, "delivered") == {"applied": 1, "ignored": 0, "received": 0}
    assert (await report(one, "sent"))["ignored"] == 1
    assert (await report(one, "delivered"))["ignored"] == 1
    assert (await report(one, "queued"))["ignored"] == 1
    assert (await report(one, "undelivered", 30003))["ignored"] == 1  # after delivered
    assert (await report(one, "receiving"))["ignored"] == 1  # not a status we know
    status, history, row = await statuses(engine, one.id)
    assert (status, history) == ("delivered", ["sent", "delivered"])
    assert row["error_code"] is None

    assert (await report(two, "undelivered", 30003))["applied"] == 1
    assert (await report(two, "delivered"))["ignored"] == 1  # a failure is final
    status, history, row = await statuses(engine, two.id)
    assert (status, history) == ("undelivered", ["sent", "undelivered"])
    assert (row["error_code"], row["error"]) == ("30003", "Twilio error 30003")

    # A sid no recorded send holds (unknown, or its send not recorded yet): 200, ignored.
    unknown = await report(Sent(uuid4(), "SM" + "c" * 32, one.channel_id), "delivered")
    assert unknown == {"applied": 0, "ignored": 1, "received": 0}
    # The URL as the request reached it signs too (no proxy in between).
    reached = "http://leadlog.test" + path_of(callback)
    direct = await twilio_status(
        client, path_of(callback), AUTH_TOKEN, two.provider_id, "failed", signed_url=reached
    )
    assert direct.status_code == 200 and direct.json()["ignored"] == 1


async def test_bad_signatures_and_garbage_apply_nothing(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    sms = await create(client, ws, SMS)
    wa = await create(client, ws, WHATSAPP)
    sms_url, wa_url = sms["statusCallbackUrl"], wa["statusCallbackUrl"]
    texted = await sent_message(engine, ws["id"], sms, "SM" + "d" * 32)
    messaged = await sent_message(engine, ws["id"], wa, "wamid.HBgLMTQxNTU1NTI2NzEVAgARGBI")
    before = {m: len(await engine.store.history(m)) for m in (texted.id, messaged.id)}

    forged = [
        await twilio_status(
            client,
            path_of(sms_url),
            "not-the-token",
            texted.provider_id,
            "delivered",
            signed_url=sms_url,
        ),
        # Signed over another URL (another channel's), or with the fields changed after.
        await twilio_status(
            client, path_of(sms_url), AUTH_TOKEN, texted.provider_id, "delivered", signed_url=wa_url
        ),
        await whatsapp_status(
            client, path_of(wa_url), "not-the-secret", messaged.provider_id, "read"
        ),
        # No signature at all.
        await client.post(
            path_of(sms_url),
            content=b"MessageSid=SMdddd&MessageStatus=delivered",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
    ]
    for answered in forged:
        assert error_of(answered, 403)["code"] == "invalid_signature"
    tampered = await client.post(
        path_of(wa_url),
        content=json.dumps({"entry": [{"changes": [{"value": {"statuses": []}}]}]}).encode(),
        headers={"content-type": "application/json", "x-hub-signature-256": "sha256=" + "0" * 64},
    )
    assert error_of(tampered, 403)["code"] == "invalid_signature"
    for message_id, count in before.items():
        assert len(await engine.store.history(message_id)) == count

    # Unknown channels, and channels that take no callbacks.
    email = await create(client, ws, {"type": "email", "name": "Mail"})
    for url in (f"/v1/channels/{uuid4()}/status", f"/v1/channels/{ws['id']}/status"):
        answered = await twilio_status(client, url, AUTH_TOKEN, texted.provider_id, "read")
        assert error_of(answered, 404)["code"] == "not_found", url
    assert error_of(await client.post(f"/v1/channels/{email['id']}/inbound"), 404)
    assert error_of(await client.post("/v1/channels/not-a-uuid/status"), 422)

    # Garbage, signed or not, is a 4xx: never applied, never a 5xx.
    form = {"content-type": "application/x-www-form-urlencoded"}
    garbage = [
        (
            await client.post(
                path_of(sms_url), content=b"{}", headers={"content-type": "text/plain"}
            ),
            415,
        ),
        (await client.post(path_of(sms_url), content=b"MessageSid=%ff%fe", headers=form), 400),
        (await client.post(path_of(wa_url), content=b"a=b", headers=form), 415),
    ]
    for answered, status in garbage:
        assert answered.status_code == status, answered.text

    async def signed_meta(body: bytes) -> httpx.Response:
        return await client.post(
            path_of(wa_url),
            content=body,
            headers={
                "content-type": "application/json",
                "x-hub-signature-256": hub_signature(APP_SECRET, body),
            },
        )

    for body, status in (
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b"", 400),
        (b'{"entry": "everything"}', 422),
        (b'{"entry": [{"changes": {"value": 1}}]}', 422),
        (b'{"entry": [{"changes": [{"value": {"statuses": "delivered"}}]}]}', 422),
    ):
        answered = await signed_meta(body)
        assert answered.status_code == status, (body, answered.text)
    # Shapes a provider might send that carry nothing to apply: 200, ignored or empty.
    for body in (
        b'{"object": "whatsapp_business_account"}',
        b'{"entry": [1, {"changes": [2, {"value": "x"}]}]}',
        b'{"entry": [{"changes": [{"value": {"statuses": [1, {"id": 5}, {"status": "read"}]}}]}]}',
    ):
        answered = await signed_meta(body)
        assert answered.status_code == 200, (body, answered.text)
        assert answered.json()["applied"] == 0
    params = {"MessageSid": texted.provider_id}  # no MessageStatus
    missing = await client.post(
        path_of(sms_url),
        content="&".join(f"{k}={v}" for k, v in params.items()),
        headers={**form, "x-twilio-signature": twilio_signature(AUTH_TOKEN, sms_url, params)},
    )
    assert "MessageStatus" in error_of(missing)["message"]
    for message_id, count in before.items():
        assert len(await engine.store.history(message_id)) == count


async def test_whatsapp_status_webhooks(
    engine: Engine, client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    wa = await create(client, ws, WHATSAPP)
    url = wa["statusCallbackUrl"]
    read = await sent_message(engine, ws["id"], wa, "wamid.read")
    failed = await sent_message(engine, ws["id"], wa, "wamid.failed")

    async def report(sent: Sent, status: str, **extra: Any) -> dict[str, Any]:
        answered = await whatsapp_status(
            client, path_of(url), APP_SECRET, sent.provider_id, status, **extra
        )
        assert answered.status_code == 200, answered.text
        body: dict[str, Any] = answered.json()
        return body

    # `read` first: it implies delivered; the late delivered and sent change nothing.
    assert await report(read, "read") == {"applied": 1, "ignored": 0, "received": 0}
    assert (await report(read, "delivered"))["ignored"] == 1
    assert (await report(read, "sent"))["ignored"] == 1
    assert (await report(read, "read"))["ignored"] == 1
    status, history, _ = await statuses(engine, read.id)
    assert (status, history) == ("read", ["sent", "delivered", "read"])

    errors = [whatsapp_error(131026, "Message undeliverable")]
    assert (await report(failed, "failed", errors=errors))["applied"] == 1
    status, history, row = await statuses(engine, failed.id)
    assert (status, history) == ("failed", ["sent", "failed"])
    assert (row["error_code"], row["error"]) == ("131026", "Message undeliverable")
    stored = await engine.store.load(Message, failed.id)
    assert stored is not None and stored.history == json.loads(row["status_history"])

    # A change about another phone number of the app: a sibling channel's (same app
    # secret) is applied there; one no channel of the workspace has is ignored.
    sibling = await create(
        client,
        ws,
        {**WHATSAPP, "credentials": {**WHATSAPP["credentials"], "phoneNumberId": "2220001"}},
    )
    theirs = await sent_message(engine, ws["id"], sibling, "wamid.sibling")
    assert (await report(theirs, "delivered", phone_number_id="2220001"))["applied"] == 1
    assert (await report(theirs, "read", phone_number_id="9990001"))["ignored"] == 1
    assert (await statuses(engine, theirs.id))[1] == ["sent", "delivered"]


async def test_whatsapp_subscription_handshake(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    wa = await create(client, ws, WHATSAPP)
    sms = await create(client, ws, SMS)
    for url in (wa["statusCallbackUrl"], wa["inboundUrl"]):
        answered = await whatsapp_verify(client, path_of(url), VERIFY_TOKEN, "1158201444")
        assert answered.status_code == 200, answered.text
        assert answered.text == "1158201444"
        assert answered.headers["content-type"].startswith("text/plain")
        wrong = await whatsapp_verify(client, path_of(url), "not-the-token")
        assert error_of(wrong, 403)["code"] == "forbidden" and "1158201444" not in wrong.text
    path = path_of(wa["statusCallbackUrl"])
    for params in (
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {},
    ):
        assert (await client.get(path, params=params)).status_code == 403, params
    not_meta = await whatsapp_verify(client, path_of(sms["statusCallbackUrl"]), VERIFY_TOKEN)
    assert not_meta.status_code == 403
    unknown = await whatsapp_verify(client, f"/v1/channels/{uuid4()}/status", VERIFY_TOKEN)
    assert unknown.status_code == 404
    strict = await client.get(path, params={"hub.mode": "subscribe", "zz": "1"})
    assert error_of(strict, 400)["code"] == "unknown_parameter"
    deleted = await client.delete(f"/v1/channels/{wa['id']}", headers=ws["h"])
    assert deleted.status_code == 200
    gone = await whatsapp_verify(client, path, VERIFY_TOKEN)
    assert gone.status_code == 404


@dataclass
class Replies:
    """What the inbound route hands on, as the messaging engine would take it."""

    seen: list[tuple[UUID, UUID, UUID | None, str, str, str]] = field(default_factory=list)

    async def inbound(
        self,
        workspace_id: UUID,
        channel: Channel,
        lead_id: UUID | None,
        from_: str,
        body: str,
        provider_message_id: str,
        /,
    ) -> int:
        self.seen.append((workspace_id, channel.id, lead_id, from_, body, provider_message_id))
        return 0


@pytest.fixture
def replies(monkeypatch: pytest.MonkeyPatch) -> Replies:
    recorder = Replies()
    monkeypatch.setattr(channel_routes, "inbound_handler", lambda engine: recorder)
    return recorder


async def add_lead(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> str:
    created = await client.post("/v1/leads", json={"name": "Ann", **fields}, headers=ws["h"])
    assert created.status_code == 201, created.text
    position = created.json()["position"]
    # Once the leads view has it: the reply's lead is looked up there.
    read = await client.get("/v1/leads", params={"after": position}, headers=ws["h"])
    assert read.status_code == 200, read.text
    lead_id: str = created.json()["id"]
    return lead_id


async def test_replies_reach_the_lead_with_that_number(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], replies: Replies
) -> None:
    sms = await create(client, ws, SMS)
    wa = await create(client, ws, WHATSAPP)
    older = await add_lead(client, ws, phone="(415) 555-2671")
    newer = await add_lead(client, ws, phone="+1 415 555 2671")
    elsewhere = await client.post(
        "/v1/leads", json={"name": "Bo", "phone": "+14155550000"}, headers=other["h"]
    )
    assert elsewhere.status_code == 201

    answered = await twilio_inbound(
        client,
        path_of(sms["inboundUrl"]),
        AUTH_TOKEN,
        "+14155552671",
        "Yes please",
        sid="SM" + "e" * 32,
        signed_url=sms["inboundUrl"],
    )
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/xml")
    assert answered.text == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    workspace = UUID(ws["id"])
    assert replies.seen == [
        (workspace, UUID(sms["id"]), UUID(newer), "+14155552671", "Yes please", "SM" + "e" * 32)
    ]

    # The newest lead is deleted: the reply goes to the one before it.
    assert (await client.delete(f"/v1/leads/{newer}", headers=ws["h"])).status_code == 200
    await add_lead(client, ws, phone="+442071838750")  # a later lead, another number
    # The Cloud API gives the number without its `+`.
    answered = await whatsapp_inbound(
        client, path_of(wa["inboundUrl"]), APP_SECRET, "14155552671", "STOP", wamid="wamid.in1"
    )
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"applied": 0, "ignored": 0, "received": 1}
    assert replies.seen[-1] == (
        workspace,
        UUID(wa["id"]),
        UUID(older),
        "+14155552671",
        "STOP",
        "wamid.in1",
    )
    # Replies on the status URL are taken too (one app webhook carries both).
    await whatsapp_inbound(
        client, path_of(wa["statusCallbackUrl"]), APP_SECRET, "+14155550000", "Hi", wamid="w2"
    )
    # A number no lead of this workspace has (another's lead has it): no lead.
    assert replies.seen[-1:] == [(workspace, UUID(wa["id"]), None, "+14155550000", "Hi", "w2")]

    # Forged or broken replies reach nothing.
    count = len(replies.seen)
    forged = await twilio_inbound(
        client,
        path_of(sms["inboundUrl"]),
        "wrong",
        "+14155552671",
        "x",
        signed_url=sms["inboundUrl"],
    )
    assert error_of(forged, 403)["code"] == "invalid_signature"
    forged_meta = await whatsapp_inbound(
        client, path_of(wa["inboundUrl"]), "wrong", "14155552671", "x"
    )
    assert error_of(forged_meta, 403)["code"] == "invalid_signature"
    params = {"Body": "no sender", "MessageSid": "SMx"}
    no_sender = await client.post(
        path_of(sms["inboundUrl"]),
        content="&".join(f"{k}={v.replace(' ', '+')}" for k, v in params.items()),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": twilio_signature(AUTH_TOKEN, sms["inboundUrl"], params),
        },
    )
    assert "From" in error_of(no_sender)["message"]
    assert len(replies.seen) == count


async def test_replies_wait_for_a_handler(
    client: httpx.AsyncClient, ws: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to take a reply, the provider is told to retry (503), not told 200."""
    monkeypatch.setattr(channel_routes, "inbound_handler", lambda engine: None)
    sms = await create(client, ws, SMS)
    answered = await twilio_inbound(
        client,
        path_of(sms["inboundUrl"]),
        AUTH_TOKEN,
        "+14155552671",
        "Hi",
        signed_url=sms["inboundUrl"],
    )
    assert error_of(answered, 503)["code"] == "inbound_unavailable"
    assert "Retry-After" in answered.headers
