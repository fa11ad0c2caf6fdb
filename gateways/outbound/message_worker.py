"""The message worker: sends queued messages through their channel's provider, once each.

Work comes from the log (`message.queued`, read as it commits) and, for durability, from the
`messages` view: every `interval` seconds it asks for messages still pending that nobody has
tried, so what was queued while no worker ran (a restart, a crash) goes out on the first
poll. Before sending a batch the worker takes a lease on each message (`message_leases`), so
two processes never send the same message at once; the outcome (`message.sent` with the
provider's id, claimed so status callbacks find the message, or `message.send_failed`) is
appended with the message's version, so it is recorded once.

Each channel is paced: at most its `ratePerSecond` messages a second leave this process, and
a provider's 429 pauses the channel for its `Retry-After`. A transport error or a 5xx is
tried again (up to `MAX_ATTEMPTS`, backing off); a provider's refusal is final.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote
from uuid import UUID

import structlog

from domain.base import DomainEvent
from domain.channels import Channel, ChannelType
from domain.leads import Lead
from domain.messages import Message, MessageStatus
from domain.suppressions import Suppression, suppression_id
from gateways.bootstrap import Engine
from gateways.consumers.automations import ChannelViews
from gateways.consumers.consumer_state import live_consumer
from gateways.outbound.providers import EmailSender, SendResult, TwilioSms, WhatsAppCloud
from gateways.outbound.smtp_sender import SmtpSender
from gateways.outbound.webhook_sender import WebhookSender
from gateways.outbound.work_queue import WorkQueue
from gateways.postgres.errors import after_failure, describe, is_unavailable
from gateways.servers import secret_key
from gateways.web.signing import Signer
from handlers.messages import provider_claim
from handlers.ports import Append, Claim, ConcurrencyConflict

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 5
LEASE_SECONDS = 120.0
STALE_SECONDS = 10.0
FOLLOW_BATCH = 1000
# Commits come in bursts: one read serves those a few ms apart (a follower that finds
# nothing would otherwise cost a query per commit while leads pour in).
FOLLOW_PAUSE = 0.02
OPEN, CLICK, UNSUBSCRIBE = "message-open", "message-click", "message-unsubscribe"

_LEASES_SQL = """
CREATE TABLE IF NOT EXISTS message_leases (
    message_id uuid        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
)"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def public_base(engine: Engine) -> str:
    s = engine.settings
    return (s.public_url or f"http://{s.http_host}:{s.http_port}").rstrip("/")


class TrackingLinks:
    """The signed URLs an email carries: open pixel, click redirects, one-click unsubscribe.
    Each signature names its purpose and the message (and, for a click, the target), so a
    link cannot be forged or pointed elsewhere."""

    def __init__(self, engine: Engine) -> None:
        self.base = public_base(engine)
        self.signer = Signer(secret_key(engine.settings))

    def open_pixel(self, message_id: UUID) -> str:
        return f"{self.base}/t/o/{message_id}?s={self.signer.mac(OPEN, str(message_id))}"

    def click(self, message_id: UUID, url: str) -> str:
        signature = self.signer.mac(CLICK, f"{message_id}\x00{url}")
        return f"{self.base}/t/c/{message_id}?u={quote(url, safe='')}&s={signature}"

    def unsubscribe(self, message_id: UUID) -> str:
        return f"{self.base}/t/u/{message_id}?s={self.signer.mac(UNSUBSCRIBE, str(message_id))}"

    def valid(self, purpose: str, value: str, signature: str) -> bool:
        return self.signer.matches(purpose, value, signature)


class _Pace:
    """At most `rate` sends a second on one channel; paused until `until` after a 429."""

    def __init__(self) -> None:
        self.next_at = 0.0
        self.until = 0.0

    async def wait(self, rate: float | None) -> None:
        now = time.monotonic()
        start = max(now, self.until, self.next_at)
        if rate:
            self.next_at = start + 1.0 / rate
        if start > now:
            await asyncio.sleep(start - now)


class MessageWorker:
    """`gateways.workers.Worker` that sends queued messages (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        channels: ChannelViews,
        *,
        concurrency: int = 64,
        interval: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        stop_timeout: float = 15.0,
    ) -> None:
        self.engine = engine
        self.channels = channels
        self.concurrency = concurrency
        self.interval = interval
        self.clock = clock
        self.stop_timeout = stop_timeout
        settings = engine.settings
        self._sender = WebhookSender(
            allow_private=settings.allow_private_webhook_targets,
            max_connections=concurrency + 16,
        )
        self.sms = TwilioSms(self._sender.client)
        self.whatsapp = WhatsAppCloud(self._sender.client)
        self.email = EmailSender()
        self.smtp = SmtpSender(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            starttls=settings.smtp_starttls,
        )
        self.links = TrackingLinks(engine)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.sent = 0
        self.failed = 0
        self._work = WorkQueue(self._send_logged, concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._paces: dict[UUID, _Pace] = {}

    async def start(self) -> None:
        if self._tasks:
            return
        async with self.engine.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", "leadlog.message_leases"
            )
            await conn.execute(_LEASES_SQL)
        after = await self.engine.log.max_tracking_id(live_consumer("messages")) or 0
        self._tasks = [
            asyncio.create_task(self._follow(after), name="leadlog-messages-follower"),
            asyncio.create_task(self._poll(), name="leadlog-messages-poller"),
        ]
        self._work.start("leadlog-messages")

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._work.stop(self.stop_timeout)
        await self._sender.aclose()

    # ---- where work comes from -----------------------------------------------------------

    def enqueue(self, message_id: UUID) -> None:
        self._work.put(message_id)

    async def _follow(self, after: int) -> None:
        event_log = self.engine.log
        while True:
            try:
                generation = event_log.generation
                records = await event_log.read(
                    after, FOLLOW_BATCH, event_types=["message.queued", "channel.updated"]
                )
                for record in records:
                    if record.event_type == "channel.updated":
                        self.channels.forget(record.originator_id)
                    else:
                        self.enqueue(record.originator_id)
                if records:
                    after = records[-1].position
                    continue
                await event_log.wait_for_commit(generation, event_log.poll_interval)
                await asyncio.sleep(FOLLOW_PAUSE)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await after_failure(event_log.pool, error)
                log.warning("message follower retrying", error=describe(error))
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        first = True
        while True:
            try:
                async with self.engine.pool.acquire() as conn:
                    rows = await conn.fetch(
                        """SELECT id FROM messages WHERE status = 'pending'
                            AND provider_id IS NULL AND error IS NULL
                            AND updated_at <= now() - make_interval(secs => $1)
                            ORDER BY created_at LIMIT 2000""",
                        0.0 if first else STALE_SECONDS,
                    )
                for row in rows:
                    self.enqueue(row["id"])
                first = False
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await after_failure(self.engine.pool, error)
                log.warning("message poll retrying", error=describe(error))
            await asyncio.sleep(self.interval)

    # ---- sending --------------------------------------------------------------------------

    async def _send_logged(self, message_id: UUID) -> None:
        try:
            await self._send_one(message_id)
        except Exception as error:
            if is_unavailable(error):
                await after_failure(self.engine.pool, error)
            log.error("message send failed; the poll tries it again", error=repr(error))

    async def _lease(self, message_id: UUID) -> bool:
        async with self.engine.pool.acquire() as conn:
            taken = await conn.fetchval(
                """INSERT INTO message_leases (message_id, holder, expires_at)
                   VALUES ($1, $2, now() + make_interval(secs => $3))
                   ON CONFLICT (message_id) DO UPDATE
                      SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                    WHERE message_leases.expires_at < now()
                       OR message_leases.holder = EXCLUDED.holder
                   RETURNING 1""",
                message_id,
                self.holder,
                LEASE_SECONDS,
            )
        return taken is not None

    async def _send_one(self, message_id: UUID) -> None:
        store = self.engine.store
        message = await store.load(Message, message_id)
        if message is None or message.attempted or message.status is not MessageStatus.PENDING:
            return
        if not await self._lease(message_id):
            return  # another process has it
        channel = await self.channels.get(message.channel_id)
        if channel is None or channel.deleted or not channel.config.active:
            await self._record(
                message, SendResult(None, None, "channel", "the channel is gone or off")
            )
            return
        suppressed = await store.load(Suppression, suppression_id(message.workspace_id, message.to))
        if suppressed is not None and suppressed.active:
            await self._record(
                message, SendResult(None, None, "suppressed", f"{message.to} unsubscribed")
            )
            return
        pace = self._paces.setdefault(channel.id, _Pace())
        result = SendResult(None, None, None, "not sent")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await pace.wait(channel.config.rate_per_second)
            result = await self._send(channel, message)
            if result.ok or not result.retryable or attempt == MAX_ATTEMPTS:
                break
            delay = result.retry_after if result.retry_after is not None else 0.2 * 2**attempt
            if result.status_code == 429:
                pace.until = time.monotonic() + delay
            else:
                await asyncio.sleep(min(delay, 30.0))
        await self._record(message, result)

    async def _send(self, channel: Channel, message: Message) -> SendResult:
        kind = channel.config.type
        content = message.content
        if kind is ChannelType.SMS:
            callback = f"{public_base(self.engine)}/v1/channels/{channel.id}/status"
            return await self.sms.send(
                channel.config,
                message.to,
                str(content.get("body", "")),
                callback,
                message.idempotency_key,
            )
        if kind is ChannelType.WHATSAPP:
            return await self.whatsapp.send(
                channel.config,
                message.to,
                dict(content.get("template", {})),
                message.idempotency_key,
            )
        return await self.email.send(
            channel.config,
            message.to,
            str(content.get("subject", "")),
            str(content.get("body", "")),
            message_id=message.id,
            unsubscribe_url=self.links.unsubscribe(message.id),
            open_pixel_url=self.links.open_pixel(message.id),
            click_url=lambda url: self.links.click(message.id, url),
            default_from=self.engine.settings.smtp_from,
            smtp=self.smtp,
        )

    async def _record(self, message: Message, result: SendResult) -> None:
        store = self.engine.store
        for _ in range(20):
            claims: list[Claim] = []
            events: list[DomainEvent] = []
            if result.provider_id is not None:
                if not message.sent(result.provider_id):
                    return
                claims.append(
                    Claim(provider_claim(message.channel_id, result.provider_id), message.id)
                )
            else:
                code = result.error_code
                if not message.fail(result.error or "not sent", code):
                    return
            events.extend(message.collect_events())
            if result.provider_id is None and message.lead_id is not None:
                lead = await store.load(Lead, message.lead_id)
                if lead is not None and not lead.deleted:
                    kind = (
                        "email_failed"
                        if message.channel == "email"
                        else f"{message.channel}_failed"
                    )
                    lead.message_activity(
                        kind, message.channel, message.id, result.error, "system:messages"
                    )
                    events.extend(lead.collect_events())
            try:
                await store.append(
                    Append(
                        message.workspace_id,
                        events=events,
                        claims=claims,
                    )
                )
            except ConcurrencyConflict:
                reloaded = await store.load(Message, message.id)
                if reloaded is None or reloaded.attempted:
                    return
                message = reloaded
                continue
            if result.ok:
                self.sent += 1
            else:
                self.failed += 1
            return
