"""The delivery worker: sends due webhooks and emails at least once and records each attempt."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

import asyncpg
import structlog

from domain.base import Aggregate
from domain.deliveries import Delivery, DeliveryKind, DeliveryState, Outcome
from domain.lead_types import LeadType
from domain.partners import Partner
from domain.signing import webhook_headers
from gateways.bootstrap import Engine
from gateways.consumers.consumer_state import live_consumer
from gateways.metrics import Metrics
from gateways.outbound.smtp_sender import SmtpSender
from gateways.outbound.webhook_sender import WebhookSender, encode_body
from gateways.postgres.errors import after_failure, describe
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.settings import Settings
from handlers.deliveries import AttemptResult, Recorded, RetryPolicy, record_attempt
from projections.deliveries import DeliveriesView
from projections.timeline import event_types_of

log = structlog.get_logger(__name__)

PROJECTION = DeliveriesView.name
WAKE_EVENTS = ("delivery.scheduled", "delivery.redelivery_requested")
LEAD_TYPE_EVENTS = tuple(sorted(event_types_of(LeadType)))
PARTNER_EVENTS = tuple(sorted(event_types_of(Partner)))
LEASE_SECONDS = 120.0
# Retries due within this many seconds wait on a timer in memory; later ones in the view.
RETRY_HORIZON = 300.0
# How old a never-tried pending row must be before the view's poll takes it from the
# follower (which normally has it within milliseconds).
FOLLOWER_GRACE = 30.0
LEAD_TYPE_TTL = 30.0
FOLLOW_BATCH = 1000
RECENT = 100_000
FOLLOW_PAUSE = 0.005
# While busy, slots are handed out in lots of at least this many, waiting at most this long.
COALESCE = 16
COALESCE_SECONDS = 0.002

_LEASES_SQL = """
CREATE TABLE IF NOT EXISTS delivery_leases (
    delivery_id uuid        PRIMARY KEY,
    holder      text        NOT NULL,
    expires_at  timestamptz NOT NULL
)"""


A = TypeVar("A", bound=Aggregate)


def utc_now() -> datetime:
    return datetime.now(UTC)


class AggregateCache(Generic[A]):
    """Aggregates of one class by id for `ttl` seconds; `forget` when one changes. A load
    that was in flight while its aggregate changed is not cached."""

    def __init__(self, store: PostgresEventStore, cls: type[A], ttl: float = LEAD_TYPE_TTL) -> None:
        self.store = store
        self.cls = cls
        self.ttl = ttl
        self._cached: dict[UUID, tuple[float, A | None]] = {}
        self._loading: dict[UUID, asyncio.Future[A | None]] = {}
        self._generation: dict[UUID, int] = {}

    def forget(self, aggregate_id: UUID) -> None:
        self._cached.pop(aggregate_id, None)
        self._generation[aggregate_id] = self._generation.get(aggregate_id, 0) + 1

    async def get(self, aggregate_id: UUID) -> A | None:
        cached = self._cached.get(aggregate_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        loading = self._loading.get(aggregate_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[A | None] = asyncio.get_running_loop().create_future()
        self._loading[aggregate_id] = future
        generation = self._generation.get(aggregate_id, 0)
        try:
            found = await self.store.load(self.cls, aggregate_id)
        except BaseException as error:
            if isinstance(error, Exception):
                future.set_exception(error)
                future.exception()  # retrieved here; waiters get it too
            else:
                future.cancel()
            raise
        finally:
            self._loading.pop(aggregate_id, None)
        if self._generation.get(aggregate_id, 0) == generation:
            self._cached[aggregate_id] = (time.monotonic() + self.ttl, found)
        future.set_result(found)
        return found


class LeadTypeCache(AggregateCache[LeadType]):
    """Lead types (their webhook actions' signing secrets)."""

    def __init__(self, store: PostgresEventStore, ttl: float = LEAD_TYPE_TTL) -> None:
        super().__init__(store, LeadType, ttl)


class DeliveryWorker:
    """`gateways.workers.Worker` that delivers due webhooks and emails.

    Where work comes from:

    * **The log**, for promptness: a follower reads `delivery.scheduled` and
      `delivery.redelivery_requested` as they commit (woken by the log's LISTEN), so a first
      attempt starts milliseconds after its schedule commits. It also reads `lead_type.*` and
      `partner.*` to drop cached lead types and partners (signing secrets) the moment they
      change.
    * **Timers in memory**, for retries due soon after an attempt (within `RETRY_HORIZON`).
    * **The `deliveries` view**, for durability: every `interval` seconds (and at once on
      start) due pending rows are read from it, so what was due while no worker ran, retries
      further off, and anything the other sources dropped are found again. The follower starts
      at the view's own checkpoint, so nothing falls between the view and the follower.

    Whatever the source, an attempt is decided on the delivery as loaded from the log at that
    moment (never on a row of the view, which may lag): only a pending delivery whose backoff
    is over is sent. Ids are deduplicated in memory, so one process never has two attempts of
    a delivery in flight, and an attempt it made is never made again from a stale row.

    Across processes: before loading a batch the worker takes a lease on each delivery
    (`delivery_leases`, `LEASE_SECONDS`, released when the attempt is recorded); a delivery
    leased by another live process is left to it. A process that dies holding leases delays
    those deliveries until the leases expire (lease times are the database's clock). Two
    processes could both send only if an attempt outlived its lease, which attempts (at most
    60 s) do not; the append that records an attempt is checked against the delivery's
    version regardless, so each attempt is recorded once, and receivers dedupe on
    `webhook-id`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        log_store: PostgresLog,
        store: PostgresEventStore,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        webhooks: WebhookSender | None = None,
        smtp: SmtpSender | None = None,
        interval: float = 5.0,
        concurrency: int | None = None,
        batch_size: int = 256,
        clock: Callable[[], datetime] = utc_now,
        stop_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.log = log_store
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.interval = interval
        self.concurrency = concurrency or settings.delivery_concurrency
        self.batch_size = batch_size
        self.clock = clock
        self.stop_timeout = stop_timeout
        self.policy = RetryPolicy(
            settings.webhook_retry_base_seconds, settings.webhook_retry_cap_seconds
        )
        self._webhooks = webhooks
        self._smtp = smtp
        self.lead_types = LeadTypeCache(store)
        self.partners = AggregateCache(store, Partner)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.attempts = 0
        """Attempts this instance recorded since it was built."""
        self._queue: deque[UUID] = deque()
        self._queued: set[UUID] = set()
        self._in_flight: set[UUID] = set()
        self._again: set[UUID] = set()
        self._timers: dict[UUID, asyncio.TimerHandle] = {}
        self._released: list[UUID] = []
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._attempt_tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake_poller = asyncio.Event()
        self._backlog = False
        self._coalesced = False
        # Where this instance recorded its latest attempt of each delivery (most recent
        # last, bounded), so view rows older than that are not taken for due work.
        self._recent: dict[UUID, int] = {}
        # The follower's start: never-tried rows changed before it are the poll's at once.
        self._followed_from = 0
        # Below this many queued, the view is asked for more due work (above: enough to do).
        self._low_water = max(self.batch_size, self.concurrency) * 2

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def webhooks(self) -> WebhookSender:
        if self._webhooks is None:
            self._webhooks = WebhookSender(
                allow_private=self.settings.allow_private_webhook_targets,
                max_connections=self.concurrency + 16,
            )
        return self._webhooks

    @property
    def smtp(self) -> SmtpSender:
        if self._smtp is None:
            s = self.settings
            self._smtp = SmtpSender(
                host=s.smtp_host,
                port=s.smtp_port,
                sender=s.smtp_from,
                username=s.smtp_username,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                starttls=s.smtp_starttls,
            )
        return self._smtp

    async def start(self) -> None:
        if self._tasks:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            # Processes starting together take turns creating it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", "leadlog.delivery_leases"
            )
            await conn.execute(_LEASES_SQL)
        self._stopping = asyncio.Event()
        after = await self.log.max_tracking_id(live_consumer(PROJECTION)) or 0
        self._followed_from = after
        self._tasks = [
            asyncio.create_task(self._follow(after), name="leadlog-deliveries-follower"),
            asyncio.create_task(self._poll(), name="leadlog-deliveries-poller"),
            asyncio.create_task(self._dispatch(), name="leadlog-deliveries-dispatcher"),
        ]

    async def stop(self) -> None:
        """Stop taking work; let attempts in flight finish (cancelled after `stop_timeout`)."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        self._stopping.set()
        self._work.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        running = set(self._attempt_tasks)
        if running:
            _, pending = await asyncio.wait(running, timeout=self.stop_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        self._queue.clear()
        self._queued.clear()
        self._in_flight.clear()
        self._again.clear()
        self._released.clear()
        with contextlib.suppress(Exception):
            # Every lease of this instance, including any a cancelled claim left behind.
            async with self.pool.acquire() as conn:
                await conn.execute("DELETE FROM delivery_leases WHERE holder = $1", self.holder)
        if self._webhooks is not None:
            await self._webhooks.aclose()
            self._webhooks = None

    # ---- the queue ----------------------------------------------------------------------

    def enqueue(self, ids: Iterable[UUID], *, after_in_flight: bool = True) -> None:
        """Look at these deliveries soon (each once, however often it is asked). One in
        flight is looked at again once its attempt is over when `after_in_flight` (news
        from the log, such as a redelivery, may postdate what the attempt loaded)."""
        added = False
        for delivery_id in ids:
            if delivery_id in self._in_flight:
                if after_in_flight:
                    self._again.add(delivery_id)
            elif delivery_id not in self._queued:
                self._queued.add(delivery_id)
                self._queue.append(delivery_id)
                added = True
        if added:
            self._work.set()

    def _retry_at(self, delivery_id: UUID, when: datetime) -> None:
        delay = (when - self.clock()).total_seconds()
        if delay > RETRY_HORIZON or self._stopping.is_set():
            return  # the view's poll finds it when it is due
        old = self._timers.pop(delivery_id, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            self._timers.pop(delivery_id, None)
            self.enqueue([delivery_id])

        self._timers[delivery_id] = asyncio.get_running_loop().call_later(max(delay, 0), fire)

    # ---- sources --------------------------------------------------------------------------

    async def _follow(self, after: int) -> None:
        wanted = [*WAKE_EVENTS, *LEAD_TYPE_EVENTS, *PARTNER_EVENTS]
        while not self._stopping.is_set():
            try:
                generation = self.log.generation
                head, rows = await self._read_log(after, wanted)
            except Exception as error:  # the database away for a while
                await after_failure(self.pool, error)
                log.warning("delivery follower retrying", error=describe(error))
                await asyncio.sleep(min(self.interval, 1.0))
                continue
            woken: list[UUID] = []
            for event_type, originator_id, _ in rows:
                if event_type.startswith("lead_type."):
                    self.lead_types.forget(originator_id)
                elif event_type.startswith("partner."):
                    self.partners.forget(originator_id)
                else:
                    woken.append(originator_id)
            self.enqueue(woken)
            if len(rows) == FOLLOW_BATCH:
                after = rows[-1][2]
                continue
            # Every position up to the head is committed or gone for good (the log's
            # append lock), so the next read starts past events of other types too.
            after = max(after, head)
            await self.log.wait_for_commit(generation, self.interval)
            # Commits come in bursts: one read serves the ones a few ms apart.
            await asyncio.sleep(FOLLOW_PAUSE)

    async def _read_log(self, after: int, event_types: list[str]) -> tuple[int, list[Any]]:
        """The log's head and the wanted events after `after` up to it, in one snapshot."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                WITH head AS (SELECT coalesce(max(position), 0) AS position FROM events)
                SELECT head.position, e.event_type, e.originator_id, e.position
                  FROM head LEFT JOIN LATERAL (
                       SELECT event_type, originator_id, position FROM events
                        WHERE position > $1 AND position <= head.position
                          AND event_type = ANY($2::text[])
                        ORDER BY position LIMIT $3) e ON true
                """,
                after,
                event_types,
                FOLLOW_BATCH,
            )
        head = int(rows[0][0]) if rows else after
        return head, [(r[1], r[2], r[3]) for r in rows if r[1] is not None]

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            self._wake_poller.clear()
            try:
                if len(self._queue) < self._low_water:
                    self._backlog = await self._sweep(FOLLOWER_GRACE)
                await self._expire_leases()
                await self._flush_releases()
            except Exception as error:  # the database away for a while: next tick
                await after_failure(self.pool, error)
                log.warning("delivery poll failed", error=describe(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_poller.wait(), self.interval)

    async def _sweep(self, grace: float) -> bool:
        """Queue due pending rows of the view, oldest first, page by page, up to a high
        water mark; whether it stopped there (more is due)."""
        now = self.clock()
        cutoff = now - timedelta(seconds=grace)
        cursor: tuple[datetime, UUID] | None = None
        table = "deliveries"  # the view the projector keeps on the live copy
        high_water = self._low_water * 4
        while True:
            if len(self._queue) >= high_water:
                return True
            args: list[Any] = [now, cutoff, 1000, self._followed_from]
            keyset = ""
            if cursor is not None:
                args.extend(cursor)
                keyset = "AND (coalesce(next_attempt_at, updated_at), id) > ($5, $6)"
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    f"""
                    SELECT id, coalesce(next_attempt_at, updated_at) AS due, updated_position
                      FROM {table}
                     WHERE state = 'pending' AND coalesce(next_attempt_at, updated_at) <= $1
                       AND (next_attempt_at IS NOT NULL OR updated_at <= $2
                            OR updated_position <= $4) {keyset}
                     ORDER BY coalesce(next_attempt_at, updated_at), id LIMIT $3
                    """,
                    *args,
                )
            recent = self._recent
            self.enqueue(
                (
                    r["id"]
                    for r in rows
                    if r["id"] not in self._timers
                    # a row from before our own last attempt: the view has not caught up
                    and r["updated_position"] >= recent.get(r["id"], 0)
                ),
                after_in_flight=False,
            )
            if len(rows) < 1000:
                return False
            cursor = (rows[-1]["due"], rows[-1]["id"])

    # ---- leases ---------------------------------------------------------------------------

    async def _claim(self, ids: list[UUID]) -> set[UUID]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                INSERT INTO delivery_leases AS l (delivery_id, holder, expires_at)
                SELECT id, $2, now() + make_interval(secs => $3)
                  FROM unnest($1::uuid[]) AS u(id) ORDER BY id
                ON CONFLICT (delivery_id) DO UPDATE
                   SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                 WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
                RETURNING delivery_id
                """,
                ids,
                self.holder,
                LEASE_SECONDS,
            )
        return {row[0] for row in rows}

    async def _flush_releases(self) -> None:
        if not self._released:
            return
        released, self._released = self._released, []
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM delivery_leases WHERE delivery_id = ANY($1::uuid[]) "
                    "AND holder = $2",
                    released,
                    self.holder,
                )
        except BaseException:
            self._released.extend(released)
            raise

    async def _expire_leases(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM delivery_leases WHERE expires_at < now()")

    # ---- loading --------------------------------------------------------------------------

    async def _load(self, ids: Sequence[UUID]) -> dict[UUID, Delivery]:
        """The deliveries as they are now, in one read."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT originator_id, originator_version, topic, state FROM events
                 WHERE originator_id = ANY($1::uuid[])
                 ORDER BY originator_id, originator_version
                """,
                list(ids),
            )
        found: dict[UUID, Any] = {}
        for row in rows:
            event = self.store.codec.decode(row[2], row[0], row[1], row[3])
            key = event.originator_id
            found[key] = event.mutate(found.get(key))  # type: ignore[attr-defined]
        return {k: v for k, v in found.items() if isinstance(v, Delivery)}

    # ---- dispatching ----------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._in_flight)
            if not self._queue or free <= 0:
                self._work.clear()
                await self._work.wait()
                continue
            if free < min(len(self._queue), COALESCE) and not self._coalesced:
                # Busy: let a few more attempts finish so that one claim and one load serve
                # a batch rather than each single free slot.
                self._coalesced = True
                await asyncio.sleep(COALESCE_SECONDS)
                continue
            self._coalesced = False
            ids: list[UUID] = []
            while self._queue and len(ids) < min(free, self.batch_size):
                delivery_id = self._queue.popleft()
                self._queued.discard(delivery_id)
                ids.append(delivery_id)
            self._in_flight.update(ids)
            if self._backlog and len(self._queue) < self._low_water:
                self._backlog = False
                self._wake_poller.set()  # the view holds more due work: fetch the next lot
            try:
                await self._flush_releases()
                claimed = await self._claim(ids)
                loaded = await self._load(sorted(claimed))
            except Exception as error:  # the database away: put them back, try again later
                await after_failure(self.pool, error)
                log.warning("delivery dispatch retrying", error=describe(error))
                self._in_flight.difference_update(ids)
                self.enqueue(ids, after_in_flight=False)
                await asyncio.sleep(min(self.interval, 1.0))
                continue
            now = self.clock()
            for delivery_id in ids:
                delivery = loaded.get(delivery_id)
                if delivery is None or not delivery.due(now):
                    if (
                        delivery is not None
                        and delivery.state is DeliveryState.PENDING
                        and delivery.next_attempt_at is not None
                    ):
                        self._retry_at(delivery_id, delivery.next_attempt_at)
                    self._finish(delivery_id, delivery_id in claimed)
                    continue
                task = asyncio.create_task(self._attempt(delivery))
                self._attempt_tasks.add(task)
                task.add_done_callback(self._attempt_tasks.discard)

    def _finish(self, delivery_id: UUID, leased: bool) -> None:
        self._in_flight.discard(delivery_id)
        if leased:
            self._released.append(delivery_id)
        if delivery_id in self._again:
            self._again.discard(delivery_id)
            self.enqueue([delivery_id])
        self._work.set()

    # ---- one attempt ----------------------------------------------------------------------

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            if delivery.kind is DeliveryKind.WEBHOOK:
                result = await self._send_webhook(delivery)
            else:
                result = await self._send_email(delivery)
            recorded = await record_attempt(
                self.store, delivery, result, now=self.clock(), policy=self.policy
            )
            if recorded is not None:
                self._recorded(recorded, result)
        except Exception as error:  # sent or not, unrecorded: the view's poll retries it
            if await after_failure(self.pool, error):
                log.warning(
                    "delivery attempt not recorded: database unavailable",
                    delivery_id=str(delivery.id),
                    error=describe(error),
                )
            else:
                log.exception(
                    "delivery attempt failed", delivery_id=str(delivery.id), error=repr(error)
                )
        finally:
            self._finish(delivery.id, True)

    def _recorded(self, recorded: Recorded, result: AttemptResult) -> None:
        self.attempts += 1
        delivery = recorded.delivery
        self._recent.pop(delivery.id, None)
        self._recent[delivery.id] = recorded.position
        if len(self._recent) > RECENT:
            for stale in list(itertools.islice(self._recent, RECENT // 2)):
                del self._recent[stale]
        if recorded.outcome is Outcome.RETRYING and delivery.next_attempt_at is not None:
            self._retry_at(delivery.id, delivery.next_attempt_at)
        if self.metrics is not None:
            kind = str(delivery.kind)
            self.metrics.deliveries.labels(kind, str(recorded.outcome)).inc()
            self.metrics.delivery_seconds.labels(kind).observe(result.latency_ms / 1000)
        if recorded.outcome is not Outcome.SUCCEEDED:
            log.info(
                "delivery attempt",
                delivery_id=str(delivery.id),
                kind=str(delivery.kind),
                outcome=str(recorded.outcome),
                status=result.status_code,
                error=result.error,
                next_attempt_at=(
                    delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None
                ),
            )

    async def _send_webhook(self, delivery: Delivery) -> AttemptResult:
        try:
            content_type, body = encode_body(delivery.format, delivery.payload)
        except (ValueError, TypeError) as error:
            return AttemptResult(None, 0.0, f"cannot encode the payload: {error}", retryable=False)
        now = self.clock()
        if delivery.partner_id is not None:
            partner = await self.partners.get(delivery.partner_id)
            secrets = partner.signing_secrets(now) if partner and not partner.deleted else []
            missing = (
                f"partner {delivery.partner_id} has no signing secret "
                f"(POST /v1/partners/{delivery.partner_id}/rotate-secret issues one)"
            )
        else:
            lead_type = await self.lead_types.get(delivery.lead_type_id)
            secrets = lead_type.signing_secrets(delivery.action_id, now) if lead_type else []
            missing = f"action {delivery.action_id} has no signing secret"
        if not secrets:
            return AttemptResult(None, 0.0, missing, retryable=False)
        headers = webhook_headers(
            msg_id=delivery.message_id,
            timestamp=int(now.timestamp()),
            body=body,
            secrets=secrets,
            content_type=content_type,
            custom=delivery.headers,
        )
        return await self.webhooks.send(delivery.target, body, headers, delivery.timeout_seconds)

    async def _send_email(self, delivery: Delivery) -> AttemptResult:
        subject = delivery.payload.get("subject")
        body = delivery.payload.get("body")
        if not isinstance(subject, str) or not isinstance(body, str):
            return AttemptResult(
                None, 0.0, "an email payload needs a subject and a body", retryable=False
            )
        return await self.smtp.send(
            delivery.message_id, delivery.target, subject, body, delivery.timeout_seconds
        )


def delivery_worker(engine: Engine) -> DeliveryWorker:
    """The worker `build_workers` runs, wired from a running `Engine`."""
    return DeliveryWorker(
        engine.pool,
        engine.log,
        engine.store,
        engine.settings,
        metrics=engine.metrics,
        interval=engine.settings.timer_interval,
    )
