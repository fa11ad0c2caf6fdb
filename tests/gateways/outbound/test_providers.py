"""Sending through Twilio, the WhatsApp Cloud API and SMTP, against local fakes of each."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from domain.channels import REDACTED, ChannelConfig
from domain.provider_signatures import hub_valid, twilio_valid
from gateways.outbound.providers import (
    EmailSender,
    SendResult,
    TwilioSms,
    WhatsAppCloud,
    message_id_header,
)
from gateways.outbound.smtp_sender import NO_SERVER, SmtpSender
from gateways.outbound.webhook_sender import WebhookSender
from tests.gateways.outbound.fake_buyers import Answer
from tests.gateways.outbound.fake_providers import (
    FakeTwilio,
    FakeWhatsApp,
    twilio_inbound,
    whatsapp_error,
    whatsapp_inbound,
    whatsapp_verify,
)

pytestmark = pytest.mark.timeout(120)

CALLBACK = "http://testserver/v1/channels/0b4f/status"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The engine's outbound client: the SSRF-guarded pool, loopback allowed for the fakes."""
    sender = WebhookSender(allow_private=True)
    yield sender.client
    await sender.aclose()


def sms_channel(base_url: str, credentials: dict[str, str]) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {
            "type": "sms",
            "name": "Twilio",
            "baseUrl": base_url,
            "from": "+15005550006",
            "credentials": credentials,
        }
    )


def whatsapp_channel(base_url: str, credentials: dict[str, str]) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {"type": "whatsapp", "name": "WhatsApp", "baseUrl": base_url, "credentials": credentials}
    )


def no_secret_in(result: SendResult, *secrets: str) -> None:
    assert result.error is not None
    for secret in secrets:
        assert secret not in result.error


# ---- Twilio ---------------------------------------------------------------------------------


async def test_an_sms_goes_out_in_twilios_format(http: httpx.AsyncClient) -> None:
    async with FakeTwilio() as twilio:
        channel = sms_channel(twilio.base_url, twilio.credentials)
        result = await TwilioSms(http).send(
            channel, "+447700900123", "Hi Ada & co — 10% off", CALLBACK, "msg-1"
        )
        assert result.ok and result.status_code == 201 and result.error is None
        assert result.provider_id is not None and result.provider_id.startswith("SM")
        assert len(result.provider_id) == 34
        [request] = twilio.requests
        assert request.seen.method == "POST"
        assert request.seen.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert request.form == {
            "To": "+447700900123",
            "From": "+15005550006",
            "Body": "Hi Ada & co — 10% off",
            "StatusCallback": CALLBACK,
        }
        assert (request.auth_user, request.auth_password) == (
            twilio.account_sid,
            twilio.auth_token,
        )
        assert request.idempotency_token == "msg-1"
        assert twilio.sent == [request] and request.sid == result.provider_id


async def test_a_messaging_service_sends_in_place_of_a_number(http: httpx.AsyncClient) -> None:
    async with FakeTwilio() as twilio:
        service = "MG" + "ab" * 16
        channel = sms_channel(twilio.base_url, twilio.credentials).model_copy(
            update={"from_": service}
        )
        assert (await TwilioSms(http).send(channel, "+447700900123", "Hi", CALLBACK, "m")).ok
        [request] = twilio.requests
        assert request.form["MessagingServiceSid"] == service and "From" not in request.form


async def test_a_repeated_attempt_carries_the_same_idempotency_token(
    http: httpx.AsyncClient,
) -> None:
    async with FakeTwilio() as twilio:
        channel = sms_channel(twilio.base_url, twilio.credentials)
        sms = TwilioSms(http)
        first = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "msg-2")
        again = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "msg-2")
        other = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "msg-3")
        assert first.provider_id == again.provider_id != other.provider_id
        assert [r.idempotency_token for r in twilio.requests] == ["msg-2", "msg-2", "msg-3"]
        assert len(twilio.sent) == 2


async def test_twilios_error_becomes_the_error_code_and_text(http: httpx.AsyncClient) -> None:
    async with FakeTwilio() as twilio:
        channel = sms_channel(twilio.base_url, twilio.credentials)
        sms = TwilioSms(http)
        invalid = await sms.send(channel, "+1555", "Hi", CALLBACK, "m")
        assert invalid == SendResult(
            None, 400, error_code="21211", error="Invalid 'To' Phone Number: +1555"
        )
        empty = await sms.send(channel, "+447700900123", "", CALLBACK, "m2")
        assert (empty.error_code, empty.error) == ("21602", "Message body is required.")
        twilio.fail_next(21610, "Attempt to send to unsubscribed recipient", status=400)
        stopped = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "m3")
        assert (stopped.error_code, stopped.error, stopped.retryable) == (
            "21610",
            "Attempt to send to unsubscribed recipient",
            False,
        )
        assert not twilio.sent


async def test_wrong_credentials_are_refused_and_not_repeated_in_the_error(
    http: httpx.AsyncClient,
) -> None:
    async with FakeTwilio() as twilio:
        wrong = {"accountSid": twilio.account_sid, "authToken": "not-the-token-1234"}
        result = await TwilioSms(http).send(
            sms_channel(twilio.base_url, wrong), "+447700900123", "Hi", CALLBACK, "m"
        )
        assert (result.status_code, result.error_code, result.retryable) == (401, "20003", False)
        assert twilio.requests[0].auth_password == "not-the-token-1234"
        # a provider that echoes a secret back does not get it into our error text
        twilio.fail_next(20003, f"Bad token {twilio.auth_token}", status=401)
        echoed = await TwilioSms(http).send(
            sms_channel(twilio.base_url, twilio.credentials), "+447700900123", "Hi", CALLBACK, "m"
        )
        assert echoed.error == f"Bad token {REDACTED}"


async def test_429_and_5xx_are_retryable_with_retry_after(http: httpx.AsyncClient) -> None:
    async with FakeTwilio(rate_limit=2) as twilio:
        channel = sms_channel(twilio.base_url, twilio.credentials)
        sms = TwilioSms(http)
        results = [
            await sms.send(channel, "+447700900123", "Hi", CALLBACK, f"m{i}") for i in range(3)
        ]
        assert [r.ok for r in results] == [True, True, False]
        limited = results[2]
        assert (limited.status_code, limited.error_code, limited.retryable) == (429, "20429", True)
        assert limited.retry_after == 1.0 and limited.error == "Too Many Requests"
        await asyncio.sleep(1.05)
        assert (await sms.send(channel, "+447700900123", "Hi", CALLBACK, "m2")).ok

        twilio.rate_limit = None
        twilio.fail_next(20500, status=500)
        failed = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "m4")
        assert (failed.status_code, failed.error_code, failed.retryable) == (500, "20500", True)
        assert failed.retry_after is None
        twilio.answer(
            lambda seen: Answer(status=503, body="upstream down", content_type="text/plain")
        )
        bare = await sms.send(channel, "+447700900123", "Hi", CALLBACK, "m5")
        assert bare == SendResult(None, 503, error="HTTP 503 Service Unavailable", retryable=True)


async def test_transport_failures_are_retryable_and_keep_secrets_out(
    http: httpx.AsyncClient,
) -> None:
    credentials = {"accountSid": "AC" + "1" * 32, "authToken": "s3cret-token-value"}
    closed = sms_channel(f"http://127.0.0.1:{free_port()}", credentials)
    result = await TwilioSms(http).send(closed, "+447700900123", "Hi", CALLBACK, "m")
    assert result.retryable and result.status_code is None and not result.ok
    assert result.error is not None and result.error.startswith("Twilio: ConnectError")
    no_secret_in(result, "s3cret-token-value")

    async with FakeTwilio() as twilio:
        twilio.answer(lambda seen: Answer(delay=3.0))
        slow = TwilioSms(http, timeout=0.3)
        timed_out = await slow.send(
            sms_channel(twilio.base_url, twilio.credentials), "+447700900123", "Hi", CALLBACK, "m"
        )
        assert timed_out == SendResult(
            None, None, error="Twilio did not answer within 0.3 s", retryable=True
        )


async def test_the_ssrf_guard_applies_and_is_final() -> None:
    guarded = WebhookSender(allow_private=False)
    try:
        async with FakeTwilio() as twilio:
            result = await TwilioSms(guarded.client).send(
                sms_channel(twilio.base_url, twilio.credentials),
                "+447700900123",
                "Hi",
                CALLBACK,
                "m",
            )
            assert not twilio.requests
    finally:
        await guarded.aclose()
    assert not result.retryable and result.error is not None
    assert result.error.startswith("refused: 127.0.0.1 resolves to a non-public address")


# ---- WhatsApp -------------------------------------------------------------------------------

TEMPLATE = {"name": "welcome", "language": "en_US", "parameters": ["Ada", "Acme"]}


async def test_a_template_message_goes_out_in_the_cloud_api_format(
    http: httpx.AsyncClient,
) -> None:
    async with FakeWhatsApp(templates={"welcome": 2}) as wa:
        channel = whatsapp_channel(wa.base_url, wa.credentials)
        result = await WhatsAppCloud(http).send(channel, "+447700900123", TEMPLATE, "msg-1")
        assert result.ok and result.status_code == 200
        assert result.provider_id is not None and result.provider_id.startswith("wamid.")
        [request] = wa.requests
        assert request.seen.path == f"/v19.0/{wa.phone_number_id}/messages"
        assert request.bearer == wa.access_token
        assert request.headers["content-type"] == "application/json"
        assert request.body == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "447700900123",
            "type": "template",
            "template": {
                "name": "welcome",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ada"},
                            {"type": "text", "text": "Acme"},
                        ],
                    }
                ],
            },
            "biz_opaque_callback_data": "msg-1",
        }
        assert wa.messages[result.provider_id] is request


async def test_the_api_version_and_a_template_without_parameters(
    http: httpx.AsyncClient,
) -> None:
    async with FakeWhatsApp() as wa:
        for version, path in (("v21.0", "v21.0"), ("20.0", "v20.0")):
            channel = whatsapp_channel(wa.base_url, {**wa.credentials, "apiVersion": version})
            plain = {"name": "hello_world", "language": "en_US", "parameters": []}
            assert (await WhatsAppCloud(http).send(channel, "447700900123", plain, "k")).ok
            assert wa.requests[-1].version == path
            assert "components" not in wa.requests[-1].body["template"]


async def test_the_cloud_apis_errors_become_code_and_text(http: httpx.AsyncClient) -> None:
    async with FakeWhatsApp(templates={"welcome": 2}) as wa:
        channel = whatsapp_channel(wa.base_url, wa.credentials)
        send = WhatsAppCloud(http).send
        unknown = await send(channel, "+447700900123", {**TEMPLATE, "name": "nope"}, "k")
        assert (unknown.status_code, unknown.error_code, unknown.retryable) == (
            404,
            "132001",
            False,
        )
        assert unknown.error == (
            "(#132001) Template name does not exist in the translation: "
            "template name (nope) does not exist in en_US"
        )
        short = await send(channel, "+447700900123", {**TEMPLATE, "parameters": ["Ada"]}, "k")
        assert short.error_code == "132000" and not short.retryable
        wa.fail_next(131026, details="Recipient is not a WhatsApp user")
        undeliverable = await send(channel, "+447700900123", TEMPLATE, "k")
        assert undeliverable == SendResult(
            None,
            400,
            error_code="131026",
            error="(#131026) Message undeliverable: Recipient is not a WhatsApp user",
        )
        bad_number = await send(channel, "+44 77", TEMPLATE, "k")
        assert bad_number.error_code == "131009" and not bad_number.retryable
        assert not wa.sent

        wrong = whatsapp_channel(wa.base_url, {**wa.credentials, "accessToken": "EAAG-wrong-1"})
        refused = await send(wrong, "+447700900123", TEMPLATE, "k")
        assert (refused.status_code, refused.error_code, refused.retryable) == (401, "190", False)
        no_secret_in(refused, "EAAG-wrong-1", wa.app_secret)


async def test_rate_limits_and_temporary_failures_are_retryable(
    http: httpx.AsyncClient,
) -> None:
    async with FakeWhatsApp(rate_limit=1) as wa:
        channel = whatsapp_channel(wa.base_url, wa.credentials)
        send = WhatsAppCloud(http).send
        assert (await send(channel, "+447700900123", TEMPLATE, "a")).ok
        limited = await send(channel, "+447700900123", TEMPLATE, "b")
        assert (limited.status_code, limited.error_code, limited.retryable) == (429, "130429", True)
        assert limited.retry_after == 1.0
        wa.rate_limit = None
        # Meta may say "rate limit" with a 400: the code decides
        for code in (130429, 131056, 131000):
            wa.fail_next(code, status=400)
            result = await send(channel, "+447700900123", TEMPLATE, "c")
            assert (result.error_code, result.retryable) == (str(code), True)
        wa.fail_next(131000, status=500)
        assert (await send(channel, "+447700900123", TEMPLATE, "d")).retryable

    closed = whatsapp_channel(f"http://127.0.0.1:{free_port()}", wa.credentials)
    down = await WhatsAppCloud(http).send(closed, "+447700900123", TEMPLATE, "e")
    assert down.retryable and down.error is not None and down.error.startswith("WhatsApp: ")
    no_secret_in(down, wa.access_token)


# ---- callbacks the fakes send ---------------------------------------------------------------


@dataclass
class Receiver:
    """An ASGI app standing in for leadlog's callback endpoints."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            body = await request.body()
            self.requests.append((request.method, str(request.url), dict(request.headers), body))
            if request.method == "GET":
                return PlainTextResponse(request.query_params.get("hub.challenge", ""))
            return PlainTextResponse("ok")

        return Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, httpx.AsyncClient]]:
    box = Receiver()
    transport = httpx.ASGITransport(app=box.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield box, client


async def test_twilio_status_callbacks_are_signed_over_the_status_callback_url(
    http: httpx.AsyncClient, receiver: tuple[Receiver, httpx.AsyncClient]
) -> None:
    box, app = receiver
    async with FakeTwilio() as twilio:
        channel = sms_channel(twilio.base_url, twilio.credentials)
        sent = await TwilioSms(http).send(channel, "+447700900123", "Hi", CALLBACK, "m")
        assert sent.provider_id is not None
        assert (await twilio.report(app, sent.provider_id, "delivered")).status_code == 200
        await twilio.report(app, sent.provider_id, "undelivered", error_code=30003)
    (_, url, headers, body), (_, _, failed_headers, failed_body) = box.requests
    assert url == CALLBACK
    form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    assert form["MessageSid"] == form["SmsSid"] == sent.provider_id
    assert form["MessageStatus"] == "delivered" and form["AccountSid"] == twilio.account_sid
    assert (form["To"], form["From"]) == ("+447700900123", "+15005550006")
    assert "ErrorCode" not in form
    assert twilio_valid(twilio.auth_token, url, form, headers["x-twilio-signature"])
    assert not twilio_valid("another-token", url, form, headers["x-twilio-signature"])
    failed = dict(parse_qsl(failed_body.decode(), keep_blank_values=True))
    assert (failed["MessageStatus"], failed["ErrorCode"]) == ("undelivered", "30003")
    assert twilio_valid(twilio.auth_token, url, failed, failed_headers["x-twilio-signature"])
    # a tampered callback does not validate
    assert not twilio_valid(
        twilio.auth_token,
        url,
        {**failed, "MessageStatus": "delivered"},
        failed_headers["x-twilio-signature"],
    )


async def test_twilio_inbound_messages(receiver: tuple[Receiver, httpx.AsyncClient]) -> None:
    box, app = receiver
    url = "http://testserver/v1/channels/0b4f/inbound"
    await twilio_inbound(app, url, "tok-12345", "+447700900123", "STOP", to="+15005550006")
    [(_, seen_url, headers, body)] = box.requests
    form = dict(parse_qsl(body.decode(), keep_blank_values=True))
    assert (form["From"], form["To"], form["Body"]) == ("+447700900123", "+15005550006", "STOP")
    assert form["SmsStatus"] == "received" and form["MessageSid"].startswith("SM")
    assert twilio_valid("tok-12345", seen_url, form, headers["x-twilio-signature"])


async def test_whatsapp_status_webhooks_are_signed_and_shaped_like_metas(
    http: httpx.AsyncClient, receiver: tuple[Receiver, httpx.AsyncClient]
) -> None:
    box, app = receiver
    url = "http://testserver/v1/channels/0b4f/status"
    async with FakeWhatsApp() as wa:
        channel = whatsapp_channel(wa.base_url, wa.credentials)
        sent = await WhatsAppCloud(http).send(channel, "+447700900123", TEMPLATE, "msg-9")
        assert sent.provider_id is not None
        await wa.report(app, url, sent.provider_id, "delivered")
        error = whatsapp_error(131026, "Message undeliverable", "Receiver is incapable")
        await wa.report(app, url, sent.provider_id, "failed", [error])
    (_, _, headers, body), (_, _, failed_headers, failed_body) = box.requests
    assert hub_valid(wa.app_secret, body, headers["x-hub-signature-256"])
    assert not hub_valid(wa.app_secret, body + b" ", headers["x-hub-signature-256"])
    payload = httpx.Response(200, content=body).json()
    assert payload["object"] == "whatsapp_business_account"
    [entry] = payload["entry"]
    [change] = entry["changes"]
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == wa.phone_number_id
    [status] = value["statuses"]
    assert status["id"] == sent.provider_id and status["status"] == "delivered"
    assert status["recipient_id"] == "447700900123" and status["timestamp"].isdigit()
    assert status["biz_opaque_callback_data"] == "msg-9" and "errors" not in status
    assert hub_valid(wa.app_secret, failed_body, failed_headers["x-hub-signature-256"])
    failed = httpx.Response(200, content=failed_body).json()
    [failed_status] = failed["entry"][0]["changes"][0]["value"]["statuses"]
    assert failed_status["status"] == "failed"
    assert failed_status["errors"] == [
        {
            "code": 131026,
            "title": "Message undeliverable",
            "message": "Message undeliverable",
            "error_data": {"details": "Receiver is incapable"},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }
    ]


async def test_whatsapp_inbound_messages_and_the_handshake(
    receiver: tuple[Receiver, httpx.AsyncClient],
) -> None:
    box, app = receiver
    url = "http://testserver/v1/channels/0b4f/inbound"
    await whatsapp_inbound(app, url, "app-secret", "+447700900123", "Yes please", name="Ada")
    answer = await whatsapp_verify(app, url, "verify-me", challenge="8675309")
    assert answer.text == "8675309"
    (_, _, headers, body), (method, verify_url, _, _) = box.requests
    assert hub_valid("app-secret", body, headers["x-hub-signature-256"])
    value = httpx.Response(200, content=body).json()["entry"][0]["changes"][0]["value"]
    assert value["contacts"] == [{"profile": {"name": "Ada"}, "wa_id": "447700900123"}]
    [message] = value["messages"]
    assert message["from"] == "447700900123" and message["type"] == "text"
    assert message["text"] == {"body": "Yes please"} and message["id"].startswith("wamid.")
    assert method == "GET"
    assert dict(parse_qsl(verify_url.split("?", 1)[1])) == {
        "hub.mode": "subscribe",
        "hub.verify_token": "verify-me",
        "hub.challenge": "8675309",
    }


# ---- email ----------------------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler keeping what it accepts; answers from a script first."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.envelopes: list[Envelope] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.answers:
            return self.answers.pop(0)
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == ("mailer", "mail-pass-123"), handled=False)

    def message(self, index: int = -1) -> EmailMessage:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture
def auth_smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        auth_required=True,
        auth_require_tls=False,
        authenticator=inbox.authenticate,
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def email_channel(**credentials: Any) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {"type": "email", "name": "Mail", "credentials": credentials}
    )


MESSAGE_ID = uuid.UUID("6f1c2a4e-93b1-4c55-9a2e-0d3b5f7a8c91")
UNSUBSCRIBE = "https://leads.acme.test/v1/unsubscribe/" + "u" * 120 + "?sig=" + "s" * 43
PIXEL = "https://leads.acme.test/v1/t/o/abc.gif"


def click(url: str) -> str:
    return f"https://leads.acme.test/v1/t/c/abc?u={quote(url, safe='')}"


async def send_email(
    channel: ChannelConfig,
    smtp: SmtpSender | None,
    body: str = "Hi Ada,\nSee https://acme.test/quote?id=7&x=1. Or <b>reply</b>.",
    **extra: Any,
) -> SendResult:
    return await EmailSender(timeout=10).send(
        channel,
        "ada@example.com",
        "Your quote, Café Ada",
        body,
        message_id=MESSAGE_ID,
        unsubscribe_url=UNSUBSCRIBE,
        open_pixel_url=PIXEL,
        click_url=click,
        default_from="Leads <leads@acme.test>",
        smtp=smtp,
        **extra,
    )


async def test_an_email_has_its_id_one_click_unsubscribe_tracked_links_and_a_pixel(
    smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = smtp_server
    result = await send_email(email_channel(), SmtpSender(host="127.0.0.1", port=port))
    assert result == SendResult(f"<{MESSAGE_ID.hex}@leadlog>", 250)
    assert result.provider_id == message_id_header(MESSAGE_ID)
    [envelope] = inbox.envelopes
    assert envelope.mail_from == "leads@acme.test" and envelope.rcpt_tos == ["ada@example.com"]
    message = inbox.message()
    assert message["Message-ID"] == f"<{MESSAGE_ID.hex}@leadlog>"
    assert message["From"] == "Leads <leads@acme.test>" and message["To"] == "ada@example.com"
    assert message["Subject"] == "Your quote, Café Ada"
    # RFC 8058; the long URL is not RFC 2047-encoded (mail systems would not read it)
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    raw = inbox.envelopes[0].content
    assert isinstance(raw, bytes) and f"<{UNSUBSCRIBE}>".encode() in raw
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, page = text_part.get_content(), html_part.get_content()
    assert isinstance(text, str) and isinstance(page, str)
    text, page = text.replace("\r\n", "\n"), page.replace("\r\n", "\n")
    # the text part keeps the original link and says how to unsubscribe
    assert text.startswith("Hi Ada,\nSee https://acme.test/quote?id=7&x=1. Or <b>reply</b>.")
    assert UNSUBSCRIBE in text
    # the HTML part: every link tracked, the text escaped, a pixel
    tracked = click("https://acme.test/quote?id=7&x=1").replace("&", "&amp;")
    assert f'<a href="{tracked}">https://acme.test/quote?id=7&amp;x=1</a>.' in page
    assert 'href="https://acme.test' not in page
    assert "Or &lt;b&gt;reply&lt;/b&gt;." in page and "Hi Ada,<br>" in page
    assert f'<img src="{PIXEL}" width="1" height="1"' in page
    assert f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>' in page


async def test_an_html_body_has_its_links_tracked(smtp_server: tuple[Inbox, int]) -> None:
    inbox, port = smtp_server
    html_body = (
        "<html><body><p>Hi <a class='x' href='https://acme.test/a?b=1&amp;c=2'>here</a>,"
        ' <a href="http://acme.test/b">there</a> or <a href="mailto:help@acme.test">us</a>'
        "</p></body></html>"
    )
    result = await send_email(
        email_channel(), SmtpSender(host="127.0.0.1", port=port), "Hi", html_body=html_body
    )
    assert result.ok
    html_part = inbox.message().get_body(("html",))
    assert html_part is not None
    page = html_part.get_content()
    assert isinstance(page, str)
    first = click("https://acme.test/a?b=1&c=2").replace("&", "&amp;")
    assert f"<a class='x' href='{first}'>here</a>" in page
    assert f'<a href="{click("http://acme.test/b")}">there</a>' in page
    assert '<a href="mailto:help@acme.test">us</a>' in page
    assert page.index(f'<img src="{PIXEL}"') < page.index("</body>")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_a_channel_with_its_own_smtp_server_uses_it_and_its_login(
    auth_smtp_server: tuple[Inbox, int],
) -> None:
    inbox, port = auth_smtp_server
    engine_smtp = SmtpSender(host="127.0.0.1", port=free_port())  # nothing listens there
    own = email_channel(host="127.0.0.1", port=port, username="mailer", password="mail-pass-123")
    own = own.model_copy(update={"from_": "Sales <sales@acme.test>"})
    result = await send_email(own, engine_smtp)
    assert result.ok, result
    assert inbox.logins == [("mailer", "mail-pass-123")]
    assert inbox.message()["From"] == "Sales <sales@acme.test>"
    assert inbox.envelopes[0].mail_from == "sales@acme.test"

    wrong = email_channel(host="127.0.0.1", port=port, username="mailer", password="wrong-pass-9")
    refused = await send_email(wrong, engine_smtp)
    assert (refused.status_code, refused.error_code, refused.retryable) == (535, "535", False), (
        refused
    )
    no_secret_in(refused, "wrong-pass-9")


async def test_smtp_failures_say_whether_to_retry(smtp_server: tuple[Inbox, int]) -> None:
    inbox, port = smtp_server
    smtp = SmtpSender(host="127.0.0.1", port=port)
    inbox.answers = ["451 4.3.0 try again later", "550 5.1.1 no such user"]
    later = await send_email(email_channel(), smtp)
    assert later == SendResult(
        None, 451, error_code="451", error="SMTP 451 4.3.0 try again later", retryable=True
    )
    never = await send_email(email_channel(), smtp)
    assert (never.status_code, never.error, never.retryable) == (
        550,
        "SMTP 550 5.1.1 no such user",
        False,
    )
    down = await send_email(email_channel(), SmtpSender(host="127.0.0.1", port=free_port()))
    assert down.retryable and down.status_code is None and down.error is not None
    assert down.error.startswith("SMTP: ")
    nothing = await send_email(email_channel(), SmtpSender(host=None))
    assert nothing == SendResult(None, None, error=NO_SERVER)
    assert await send_email(email_channel(), None) == SendResult(None, None, error=NO_SERVER)
    assert not inbox.envelopes
