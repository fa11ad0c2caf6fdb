"""Delivering webhooks and emails: signing, retries, 410, timeouts, targets, redelivery."""

from __future__ import annotations

import asyncio
import http
import itertools
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from standardwebhooks import Webhook as ReferenceWebhook

from domain.deliveries import Delivery, DeliveryKind, DeliveryState, Outcome
from domain.lead_types import LeadType, Referral, Webhook
from domain.triggers import Trigger
from gateways.bootstrap import Engine
from gateways.outbound.deliveries import DeliveryWorker
from gateways.outbound.smtp_sender import NO_SERVER
from gateways.outbound.webhook_sender import BlockedTarget, WebhookSender
from gateways.settings import Settings
from handlers.ports import Append
from tests.conftest import (
    OPERATOR,
    Servers,
    leadlog_cli,
    make_workspace,
    settings_for,
)

pytestmark = pytest.mark.timeout(120)

BASE = 0.1  # retry backoff base in these tests (seconds)


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    return settings_for(
        schema_name,
        nats_prefix,
        allow_private_webhook_targets=True,
        webhook_retry_base_seconds=BASE,
        webhook_retry_cap_seconds=5.0,
    )


# ---- a local receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """A bare HTTP/1.1 keep-alive server on 127.0.0.1 answering from a script (then 200)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[Received] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/leads?src=leadlog"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                path = line.decode().split(" ")[1]
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(path, headers, body, time.monotonic()))
                reply = self.replies.pop(0) if self.replies else Reply()
                await asyncio.sleep(reply.delay)
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                phrase = http.HTTPStatus(reply.status).phrase
                head = f"HTTP/1.1 {reply.status} {phrase}\r\ncontent-length: 2\r\n{extra}\r\n"
                writer.write(head.encode() + b"ok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


# ---- helpers --------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


@dataclass
class Setup:
    """A workspace (over HTTP) and a lead type with one webhook action and its secret."""

    engine: Engine
    workspace_id: UUID
    headers: dict[str, str]
    lead_type: LeadType
    action_id: UUID
    secret: str

    async def delivery(
        self,
        target: str,
        *,
        kind: DeliveryKind = DeliveryKind.WEBHOOK,
        fmt: str = "form",
        payload: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int = 4,
        timeout: float = 5.0,
        lead_id: UUID | None = None,
    ) -> Delivery:
        delivery = Delivery(
            workspace_id=self.workspace_id,
            lead_id=lead_id or uuid.uuid4(),
            lead_type_id=self.lead_type.id,
            action_id=self.action_id,
            trigger=Trigger.RECEIVED_NOT_DUPLICATE,
            event_code="deliveryndupe",
            kind=kind,
            target=target,
            format=fmt,
            payload=payload
            if payload is not None
            else {
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "tags": ["vip", "spring"],
                "customFields": {"budget": 5000, "plan": "pro"},
                "eventtype": "deliveryndupe",
            },
            headers=headers or {},
            max_attempts=max_attempts,
            timeout_seconds=timeout,
        )
        await self.engine.store.append(Append(self.workspace_id, events=delivery.collect_events()))
        return delivery

    async def email(
        self,
        to: str,
        subject: str = "S",
        body: str = "B",
        *,
        max_attempts: int = 3,
        lead_id: UUID | None = None,
    ) -> Delivery:
        """An email delivery (what a Contact/Notify action schedules)."""
        return await self.delivery(
            to,
            kind=DeliveryKind.EMAIL,
            fmt="text",
            payload={"subject": subject, "body": body},
            max_attempts=max_attempts,
            lead_id=lead_id,
        )

    async def load(self, delivery_id: UUID) -> Delivery:
        found = await self.engine.store.load(Delivery, delivery_id)
        assert found is not None
        return found

    async def settled(self, delivery_id: UUID, timeout: float = 15.0) -> Delivery:
        async def done() -> Delivery | None:
            d = await self.load(delivery_id)
            return d if d.state is not DeliveryState.PENDING else None

        result: Delivery = await eventually(done, timeout)
        return result


async def make_setup(engine: Engine, client: httpx.AsyncClient, url: str) -> Setup:
    ws = await make_workspace(client)
    workspace_id = UUID(ws["id"])
    action = Webhook(trigger=Trigger.RECEIVED, url=url, headers={"X-Partner-Key": "k-123"})
    lead_type = LeadType(
        workspace_id=workspace_id, name="Solar", referral=Referral(), actions=[action], actor="t"
    )
    secret = lead_type.issue_secret(action.id, timedelta(0), "t")
    await engine.store.append(Append(workspace_id, events=lead_type.collect_events()))
    return Setup(engine, workspace_id, ws["h"], lead_type, action.id, secret)


@pytest.fixture
async def views(engine: Engine) -> AsyncIterator[Engine]:
    """The projections running (the deliveries view and the timeline among them)."""
    await engine.projector.start()
    yield engine
    await engine.projector.stop()


@pytest.fixture
async def workers(views: Engine) -> AsyncIterator[Callable[..., Awaitable[DeliveryWorker]]]:
    """Starts delivery workers (default: the test settings); stops them all at the end."""
    started: list[DeliveryWorker] = []

    async def start(settings: Settings | None = None, **kwargs: Any) -> DeliveryWorker:
        engine = views
        worker = DeliveryWorker(
            engine.pool,
            engine.log,
            engine.store,
            settings or engine.settings,
            metrics=engine.metrics,
            interval=0.1,
            **kwargs,
        )
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.stop()


Start = Callable[..., Awaitable[DeliveryWorker]]


# ---- webhooks -------------------------------------------------------------------------------


async def test_form_webhook_is_signed_and_delivered_once(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        started = time.monotonic()
        delivery = await setup.delivery(receiver.url, headers={"X-Partner-Key": "k-123"})
        done = await setup.settled(delivery.id)
        assert done.state is DeliveryState.SUCCEEDED and done.attempts == 1
        first = receiver.requests[0].at - started
        assert first < 2.0, f"the first attempt took {first:.2f} s to start"
        await asyncio.sleep(0.3)
    [request] = receiver.requests
    assert request.path == "/hooks/leads?src=leadlog"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["webhook-id"] == f"msg_{delivery.id.hex}"
    assert request.headers["x-partner-key"] == "k-123"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    fields = dict(parse_qsl(request.body.decode()))
    assert fields == {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "tags": "vip,spring",
        "customFields[budget]": "5000",
        "customFields[plan]": "pro",
        "eventtype": "deliveryndupe",
    }
    ReferenceWebhook(setup.secret).verify(request.body, request.headers, json_parse=False)
    metrics = engine.metrics.render().decode()
    assert 'leadlog_deliveries_total{kind="webhook",outcome="succeeded"} 1.0' in metrics
    assert "leadlog_delivery_attempt_seconds_count" in metrics


async def test_json_webhook_and_a_redirect_counts_as_success(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(302, {"location": "http://127.0.0.1:9/elsewhere"})) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        delivery = await setup.delivery(receiver.url, fmt="json", payload={"name": "Ada", "n": 1})
        done = await setup.settled(delivery.id)
        await asyncio.sleep(0.2)
    assert done.state is DeliveryState.SUCCEEDED and done.last_status == 302
    [request] = receiver.requests  # the redirect was not followed
    assert request.headers["content-type"] == "application/json"
    assert ReferenceWebhook(setup.secret).verify(request.body, request.headers) == {
        "name": "Ada",
        "n": 1,
    }


async def test_retries_with_backoff_then_success(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(503), Reply(503), Reply(503)) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        delivery = await setup.delivery(receiver.url, max_attempts=6)
        done = await setup.settled(delivery.id)
        await asyncio.sleep(0.5)  # nothing more arrives
    assert done.state is DeliveryState.SUCCEEDED
    assert len(receiver.requests) == 4
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery.message_id}
    for request in receiver.requests:
        ReferenceWebhook(setup.secret).verify(request.body, request.headers, json_parse=False)
    at = [r.at for r in receiver.requests]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # full jitter: attempt n waits between base·2^(n-1)/2 and base·2^(n-1)
    for n, gap in enumerate(gaps, start=1):
        assert gap >= BASE * 2 ** (n - 1) / 2 * 0.9, gaps
    assert gaps[2] > gaps[0], gaps
    history = [e.event for e in await engine.store.history(delivery.id)]
    outcomes = [e.outcome for e in history if isinstance(e, Delivery.Attempted)]
    assert outcomes == [Outcome.RETRYING] * 3 + [Outcome.SUCCEEDED]
    # the view, once caught up: one row, delivered, four attempts
    body = (await client.get(f"/v1/deliveries/{delivery.id}", headers=setup.headers)).json()
    assert body["state"] == "succeeded" and len(body["attempts"]) == 4
    assert [a["statusCode"] for a in body["attempts"]] == [503, 503, 503, 200]
    assert body["webhookId"] == delivery.message_id
    assert body["headers"] == [] and "k-123" not in str(body)


async def test_retry_after_is_honoured(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(429, {"retry-after": "1"})) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        delivery = await setup.delivery(receiver.url)
        done = await setup.settled(delivery.id)
    assert done.state is DeliveryState.SUCCEEDED
    first, second = receiver.requests
    assert second.at - first.at >= 0.95  # the backoff alone would be at most BASE
    attempted = [
        e.event
        for e in await engine.store.history(delivery.id)
        if e.event_type.endswith("attempted")
    ]
    assert isinstance(attempted[0], Delivery.Attempted)
    assert attempted[0].next_attempt_at is not None
    assert attempted[0].next_attempt_at - attempted[0].timestamp >= timedelta(seconds=0.99)


async def test_gone_disables_the_delivery_and_the_action(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(410)) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        delivery = await setup.delivery(receiver.url)
        done = await setup.settled(delivery.id)
        await asyncio.sleep(0.3)
    assert done.state is DeliveryState.DISABLED and done.attempts == 1
    assert len(receiver.requests) == 1
    lead_type = await engine.store.load(LeadType, setup.lead_type.id)
    assert lead_type is not None
    action = lead_type.action(setup.action_id)
    assert action is not None and not action.enabled
    # one append: the attempt and the action switched off, side by side in the log
    attempted = (await engine.store.history(delivery.id))[-1]
    disabled = (await engine.store.history(setup.lead_type.id))[-1]
    assert disabled.event_type == "lead_type.action_disabled"
    assert abs(disabled.position - attempted.position) == 1


async def test_a_timeout_is_a_failed_attempt(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(200, delay=2.0)) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        delivery = await setup.delivery(receiver.url, timeout=0.3, max_attempts=2)
        done = await setup.settled(delivery.id)
    assert done.state is DeliveryState.SUCCEEDED and done.attempts == 2
    attempts = [
        e.event
        for e in await engine.store.history(delivery.id)
        if isinstance(e.event, Delivery.Attempted)
    ]
    assert attempts[0].status_code is None and attempts[0].outcome is Outcome.RETRYING
    assert attempts[0].error == "timed out after 0.3 s"
    assert 250 <= attempts[0].latency_ms < 1500

    async with Receiver(Reply(200, delay=2.0)) as slow:
        once = await setup.delivery(slow.url, timeout=0.3, max_attempts=1)
        failed = await setup.settled(once.id)
    assert failed.state is DeliveryState.FAILED and failed.last_error == "timed out after 0.3 s"


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        lead_type = await engine.store.load(LeadType, setup.lead_type.id)
        assert lead_type is not None
        new = lead_type.issue_secret(setup.action_id, timedelta(hours=1), "t")
        await engine.store.append(Append(setup.workspace_id, events=lead_type.collect_events()))
        await workers()
        delivery = await setup.delivery(receiver.url)
        await setup.settled(delivery.id)
    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (new, setup.secret):
        ReferenceWebhook(secret).verify(request.body, request.headers, json_parse=False)


async def test_a_private_target_is_refused_unless_allowed(
    engine: Engine, client: httpx.AsyncClient, workers: Start, settings: Settings
) -> None:
    strict = settings.model_copy(update={"allow_private_webhook_targets": False})
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers(strict)
        delivery = await setup.delivery(receiver.url)
        done = await setup.settled(delivery.id)
        named = await setup.delivery(f"http://localhost:{receiver.port}/x")
        by_name = await setup.settled(named.id)
    assert receiver.requests == []
    for refused in (done, by_name):
        assert refused.state is DeliveryState.FAILED and refused.attempts == 1
        assert refused.last_status is None
        assert refused.last_error is not None and refused.last_error.startswith("refused:")
        assert "LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS" in refused.last_error


async def test_the_worker_resumes_after_a_restart_mid_retry(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(503, {"retry-after": "1"})) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        first = await workers()
        delivery = await setup.delivery(receiver.url)

        async def tried_once() -> bool:
            return (await setup.load(delivery.id)).attempts == 1

        await eventually(tried_once)
        await first.stop()  # its retry timer goes with it
        second = await workers()
        done = await setup.settled(delivery.id)
        await asyncio.sleep(0.3)
    assert done.state is DeliveryState.SUCCEEDED and done.attempts == 2
    assert len(receiver.requests) == 2
    assert second.attempts == 1 and first.attempts == 1


async def test_a_delivery_scheduled_while_no_worker_ran_goes_out_on_start(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        waiting = [await setup.delivery(receiver.url) for _ in range(3)]
        assert await engine.projector.wait_for("deliveries", await engine.log.max_position(), 5)
        await workers()
        for delivery in waiting:
            assert (await setup.settled(delivery.id)).state is DeliveryState.SUCCEEDED
        await asyncio.sleep(0.3)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == sorted(
        d.message_id for d in waiting
    )


# ---- listing, redelivery -------------------------------------------------------------------


async def test_listing_and_redelivery_over_http(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        lead = uuid.uuid4()
        pending = await setup.delivery(receiver.url, lead_id=lead)  # no worker yet
        again = await client.post(f"/v1/deliveries/{pending.id}/redeliver", headers=setup.headers)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "still_pending"

        await workers()
        await setup.settled(pending.id)
        other = await setup.delivery(receiver.url)
        await setup.settled(other.id)
        position = await engine.log.max_position()
        listed = await client.get(
            "/v1/deliveries", params={"after": position}, headers=setup.headers
        )
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert body["total"] == 2 and [i["id"] for i in body["items"]] == [
            str(other.id),
            str(pending.id),
        ]
        item = body["items"][1]
        assert item["leadId"] == str(lead) and item["state"] == "succeeded"
        assert item["attempts"] == 1 and item["lastStatus"] == 200
        assert item["kind"] == "webhook" and item["eventCode"] == "deliveryndupe"
        by_lead = await client.get(
            "/v1/deliveries", params={"leadId": str(lead)}, headers=setup.headers
        )
        assert [i["id"] for i in by_lead.json()["items"]] == [str(pending.id)]
        paged = await client.get(
            "/v1/deliveries", params={"limit": 1, "page": 2}, headers=setup.headers
        )
        assert paged.json()["items"][0]["id"] == str(pending.id)
        failed = await client.get(
            "/v1/deliveries", params={"state": "failed", "kind": "webhook"}, headers=setup.headers
        )
        assert failed.json()["total"] == 0
        bad = await client.get("/v1/deliveries", params={"state": "lost"}, headers=setup.headers)
        assert bad.status_code == 422

        redone = await client.post(f"/v1/deliveries/{pending.id}/redeliver", headers=setup.headers)
        assert redone.status_code == 202, redone.text
        assert redone.json()["state"] == "pending" and redone.json()["position"] > 0

        async def twice() -> bool:
            d = await setup.load(pending.id)
            return d.state is DeliveryState.SUCCEEDED and d.attempts == 2

        await eventually(twice)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids.count(pending.message_id) == 2
    detail = (await client.get(f"/v1/deliveries/{pending.id}", headers=setup.headers)).json()
    assert [a["attempt"] for a in detail["attempts"]] == [1, 1]
    assert detail["redeliveries"][0]["actor"].startswith("token:")

    # another workspace sees none of it
    stranger = await make_workspace(client, "Globex")
    for response in (
        await client.get(f"/v1/deliveries/{pending.id}", headers=stranger["h"]),
        await client.post(f"/v1/deliveries/{pending.id}/redeliver", headers=stranger["h"]),
    ):
        assert response.status_code == 404
    assert (await client.get("/v1/deliveries", headers=stranger["h"])).json()["total"] == 0
    viewer = await client.post(f"/v1/deliveries/{pending.id}/redeliver", headers=stranger["viewer"])
    assert viewer.status_code in (403, 404)
    missing = await client.get(
        f"/v1/deliveries/{uuid.uuid4()}",
        headers=OPERATOR | {"X-Workspace-Id": str(setup.workspace_id)},
    )
    assert missing.status_code == 404


leadlog = leadlog_cli


async def test_list_and_redeliver_from_the_cli(
    engine: Engine,
    client: httpx.AsyncClient,
    workers: Start,
    servers: Servers,
    settings: Settings,
) -> None:
    async with Receiver(Reply(500)) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        lead = uuid.uuid4()
        delivery = await setup.delivery(receiver.url, max_attempts=1, lead_id=lead)
        assert (await setup.settled(delivery.id)).state is DeliveryState.FAILED
        assert await engine.projector.wait_for("deliveries", await engine.log.max_position(), 5)

        listed = await asyncio.to_thread(
            leadlog,
            servers,
            settings,
            "deliveries",
            "list",
            "--lead",
            str(lead),
            "--state",
            "failed",
        )
        assert listed.returncode == 0, listed.stderr
        assert str(delivery.id) in listed.stdout and "HTTP 500" in listed.stdout
        none = await asyncio.to_thread(
            leadlog, servers, settings, "deliveries", "list", "--state", "succeeded", "--json"
        )
        assert none.returncode == 0, none.stderr
        assert '"total": 0' in none.stdout

        redone = await asyncio.to_thread(
            leadlog, servers, settings, "deliveries", "redeliver", str(delivery.id), "--json"
        )
        assert redone.returncode == 0, redone.stderr
        assert '"state": "pending"' in redone.stdout

        async def delivered() -> bool:
            return (await setup.load(delivery.id)).state is DeliveryState.SUCCEEDED

        await eventually(delivered)
        missing = await asyncio.to_thread(
            leadlog, servers, settings, "deliveries", "redeliver", str(uuid.uuid4())
        )
        assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery.message_id] * 2


# ---- the timeline ------------------------------------------------------------------------------


async def test_deliveries_show_in_the_lead_timeline(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver(Reply(503)) as receiver:
        setup = await make_setup(engine, client, receiver.url)
        created = await client.post(
            "/v1/leads", json={"name": "Ada", "email": "ada@x.test"}, headers=setup.headers
        )
        assert created.status_code == 201, created.text
        lead_id = UUID(created.json()["id"])
        await workers()
        webhook = await setup.delivery(receiver.url, lead_id=lead_id)
        email = await setup.email("ada@x.test", "Hi", "Hello", max_attempts=1, lead_id=lead_id)
        await setup.settled(webhook.id)
        await setup.settled(email.id)
    position = await engine.log.max_position()
    url = f"/v1/leads/{lead_id}/timeline"
    default = (await client.get(url, params={"after": position}, headers=setup.headers)).json()
    assert {i["category"] for i in default["items"]} == {"lead"}
    full = (
        await client.get(url, params={"include": "webhooks,actions"}, headers=setup.headers)
    ).json()
    entries = [(i["eventType"], i["category"], i["summary"]) for i in full["items"]]
    hooks = [e for e in entries if e[1] == "webhook"]
    target = receiver.url
    assert (
        "delivery.scheduled",
        "webhook",
        f"Webhook deliveryndupe to {target} scheduled",
    ) in hooks
    attempts = [s for t, _, s in hooks if t == "delivery.attempted"]
    assert attempts[-1].startswith(f"Webhook deliveryndupe to {target} — attempt 1: 503 in ")
    assert ", retrying at " in attempts[-1]
    assert attempts[0].startswith(f"Webhook deliveryndupe to {target} — attempt 2: 200 in ")
    assert attempts[0].endswith(" ms, delivered")
    mails = [e for e in entries if e[0].startswith("delivery.") and e[1] == "action"]
    assert ("delivery.scheduled", "action", "Email deliveryndupe to ada@x.test scheduled") in mails
    assert any(NO_SERVER in s and s.endswith("failed") for _, _, s in mails)


# ---- email ---------------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler keeping what it accepts; answers from a script first."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        if self.answers:
            return self.answers.pop(0)
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox("451 4.3.0 try again later")
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


async def test_email_over_smtp(
    engine: Engine,
    client: httpx.AsyncClient,
    workers: Start,
    settings: Settings,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    setup = await make_setup(engine, client, "https://partner.example/hook")
    smtp = settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_from": "Leads <leads@acme.test>"}
    )
    await workers(smtp)
    delivery = await setup.email(
        "ann@example.com", "New lead: Ada", "Ada Lovelace wants a quote.\nCall her."
    )
    done = await setup.settled(delivery.id)
    assert done.state is DeliveryState.SUCCEEDED and done.attempts == 2  # 451, then 250
    attempts = [
        e.event
        for e in await engine.store.history(delivery.id)
        if isinstance(e.event, Delivery.Attempted)
    ]
    assert [a.status_code for a in attempts] == [451, 250]
    assert attempts[0].outcome is Outcome.RETRYING
    [raw] = box.messages
    message = message_from_bytes(raw)
    assert message["Subject"] == "New lead: Ada"
    assert message["To"] == "ann@example.com"
    assert message["From"] == "Leads <leads@acme.test>"
    assert message["Message-ID"] == f"<msg_{delivery.id.hex}@acme.test>"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert (
        payload.decode().replace("\r\n", "\n").strip() == "Ada Lovelace wants a quote.\nCall her."
    )

    box.answers = ["554 5.7.1 rejected"]
    refused = await setup.email("bob@example.com")
    permanent = await setup.settled(refused.id)
    assert permanent.state is DeliveryState.FAILED and permanent.attempts == 1
    assert permanent.last_status == 554


async def test_email_without_an_smtp_server_fails_clearly(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    setup = await make_setup(engine, client, "https://partner.example/hook")
    await workers()
    delivery = await setup.email("ann@example.com")
    done = await setup.settled(delivery.id)
    assert done.state is DeliveryState.FAILED and done.attempts == 1
    assert done.last_error == NO_SERVER


async def test_the_engine_workers_include_the_delivery_worker(
    engine: Engine, client: httpx.AsyncClient, running: None
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        delivery = await setup.delivery(receiver.url)
        assert (await setup.settled(delivery.id)).state is DeliveryState.SUCCEEDED


# ---- several workers, one schema (several processes) ------------------------------------------


async def test_two_workers_send_each_delivery_once(
    engine: Engine, client: httpx.AsyncClient, workers: Start
) -> None:
    async with Receiver() as receiver:
        setup = await make_setup(engine, client, receiver.url)
        await workers()
        await workers()  # another process, as far as leases go
        sent = [await setup.delivery(receiver.url) for _ in range(60)]
        for delivery in sent:
            assert (await setup.settled(delivery.id)).attempts == 1
        await asyncio.sleep(0.5)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert sorted(ids) == sorted(d.message_id for d in sent)  # none twice


# ---- the HTTP client itself ----------------------------------------------------------------------


class RawServer:
    """Answers each connection's requests with canned bytes, one answer per request."""

    def __init__(self, *answers: bytes, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/x"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                writer.write(self.answers.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_the_connection_pool_reads_answers_of_every_framing() -> None:
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n"
        b"4\r\nbusy\r\n0\r\n\r\n"
    )
    retry = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n"
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody until the end"
    sender = WebhookSender(allow_private=True)
    try:
        async with RawServer(chunked, retry, closing) as server:
            first = await sender.send(server.url, b"a=1", {"x-a": "1"}, 5)
            second = await sender.send(server.url, b"a=2", {}, 5)
            third = await sender.send(server.url, b"a=3", {}, 5)
        assert (first.status_code, first.error, first.retryable) == (
            503,
            "HTTP 503 Service Unavailable",
            True,
        )
        assert (second.status_code, second.retry_after) == (429, 7.0)
        assert (third.status_code, third.error) == (200, None)
        assert server.connections == 1  # kept alive until the server said close

        # an idle connection the server dropped is replaced, not reported
        ok = b"HTTP/1.1 204 No Content\r\n\r\n"
        async with RawServer(ok, ok, close_after=True) as dropping:
            assert (await sender.send(dropping.url, b"", {}, 5)).status_code == 204
            await asyncio.sleep(0.05)
            assert (await sender.send(dropping.url, b"", {}, 5)).status_code == 204
        assert dropping.connections == 2

        async with RawServer(b"NOT HTTP AT ALL\r\n\r\n") as broken:
            garbled = await sender.send(broken.url, b"", {}, 5)
        assert garbled.status_code is None and garbled.retryable
        assert garbled.error is not None and "RemoteProtocolError" in garbled.error

        injected = await sender.send("http://127.0.0.1:9/x", b"", {"x-a": "1\r\nx-b: 2"}, 5)
        assert injected.retryable is False and "not a valid HTTP header" in (injected.error or "")
        refused = await sender.send(f"http://127.0.0.1:{free_port()}/x", b"", {}, 5)
        assert refused.status_code is None and refused.retryable
        assert refused.error is not None and refused.error.startswith("ConnectError")
        for bad in ("ftp://example.com/x", "http:///nohost", "not a url"):
            result = await sender.send(bad, b"", {}, 5)
            assert result.retryable is False and result.error is not None
    finally:
        await sender.aclose()


async def test_the_httpx_client_on_the_guarded_pool() -> None:
    open_sender = WebhookSender(allow_private=True)
    strict = WebhookSender(allow_private=False)
    try:
        async with Receiver(Reply(201)) as receiver:
            response = await open_sender.client.post(receiver.url, content=b"hello")
            assert response.status_code == 201 and response.content == b"ok"
            assert receiver.requests[0].body == b"hello"
            with pytest.raises(BlockedTarget):
                await strict.client.get(receiver.url)
            with pytest.raises(httpx.ConnectError, match="non-public"):
                await strict.client.get(f"http://localhost:{receiver.port}/")
        assert len(receiver.requests) == 1
    finally:
        await open_sender.aclose()
        await strict.aclose()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_targets_are_verified(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    receiver = Receiver(Reply(200), Reply(200))
    server = await asyncio.start_server(receiver._serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    sender = WebhookSender(allow_private=True, ssl_context=trusting)
    stranger = WebhookSender(allow_private=True)  # the system's CAs only
    try:
        for _ in range(2):  # the second one on the kept-alive TLS connection
            ok = await sender.send(f"https://localhost:{port}/x", b"a=1", {}, 5)
            assert (ok.status_code, ok.error) == (200, None)
        assert [r.body for r in receiver.requests] == [b"a=1", b"a=1"]
        untrusted = await stranger.send(f"https://localhost:{port}/x", b"a=1", {}, 5)
        assert untrusted.status_code is None and "CERTIFICATE_VERIFY_FAILED" in (
            untrusted.error or ""
        )
        # the certificate names localhost, not 127.0.0.1
        wrong_name = await sender.send(f"https://127.0.0.1:{port}/x", b"a=1", {}, 5)
        assert wrong_name.status_code is None and wrong_name.error is not None
        assert len(receiver.requests) == 2
    finally:
        await sender.aclose()
        await stranger.aclose()
        server.close()
