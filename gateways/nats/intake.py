"""NATS intake: a durable JetStream pull consumer turning published JSON into leads."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    Header,
    RetentionPolicy,
    StatusCode,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError

from domain.dead_letters import Reason
from domain.leads import LeadDetails, MissingName, Source
from gateways.bootstrap import Engine
from gateways.nats.streams import ensure_stream
from gateways.postgres.errors import after_failure, describe
from handlers.dead_letters import Letter, record_dead_letter
from handlers.intake import (
    Intake,
    Receipt,
    UnknownCampaign,
    UnknownCustomer,
    idempotency_claim,
)
from handlers.payloads import BodyRefused, is_json, parse_json_object
from handlers.workspaces import WorkspaceNotFound

log = structlog.get_logger(__name__)

DURABLE = "intake"
CHANNEL = "nats"
MSG_ID_HEADER = "Nats-Msg-Id"
MAX_MSG_ID = 255
SOURCE_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
# nak delays for transient failures (Postgres away, timeouts), by delivery count.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MAX_BACKOFF = 600.0
# Pauses (first, longest) between tries of a message held while the database is away.
UNAVAILABLE_BACKOFF = (0.25, 5.0)
MAX_SUBJECTS_KEPT = 10_000
# What intake refuses a lead for before writing anything (see `_process` for the reasons).
_REFUSALS = (MissingName, UnknownCustomer, UnknownCampaign, WorkspaceNotFound)


def stream_name(prefix: str) -> str:
    """`LEADLOG_INTAKE` for the default prefix; characters a stream name may not hold become `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix).upper() + "_INTAKE"


def intake_subject(prefix: str, workspace_id: UUID | str, source: str) -> str:
    """Where a publisher sends a lead: `<prefix>.intake.<workspace>.<source>`."""
    return f"{prefix}.intake.{workspace_id}.{source}"


class Rejected(Exception):
    """A message no retry can fix: it becomes a dead letter and is terminated."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_subject(prefix: str, subject: str) -> tuple[UUID, str]:
    """(workspace id, source label) from `<prefix>.intake.<workspace>.<source>`."""
    head = f"{prefix}.intake."
    expected = f"expected {head}<workspace id>.<source>"
    if not subject.startswith(head):
        raise Rejected(Reason.BAD_SUBJECT, expected)
    parts = subject[len(head) :].split(".")
    if len(parts) != 2:
        raise Rejected(Reason.BAD_SUBJECT, expected)
    workspace, source = parts
    try:
        workspace_id = UUID(workspace)
    except ValueError:
        raise Rejected(Reason.BAD_SUBJECT, f"{workspace[:100]!r} is not a workspace id") from None
    if not SOURCE_LABEL.fullmatch(source):
        raise Rejected(
            Reason.BAD_SUBJECT, "the source label must be 1 to 64 of A-Z, a-z, 0-9, - and _"
        )
    return workspace_id, source


def msg_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The publisher's `Nats-Msg-Id`, if it sent one that can serve as an idempotency key."""
    msg_id = (headers or {}).get(MSG_ID_HEADER)
    if msg_id is None:
        return None
    if not msg_id.strip() or len(msg_id) > MAX_MSG_ID or not msg_id.isprintable():
        raise Rejected(
            Reason.BAD_MSG_ID, f"{MSG_ID_HEADER} must be 1 to {MAX_MSG_ID} printable characters"
        )
    return msg_id


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None


def parse_lead(body: bytes, headers: Mapping[str, str] | None, max_bytes: int) -> LeadDetails:
    """The lead in a message body, by the same rules (and error codes) as the HTTP channel."""
    content_type = _header(headers, "Content-Type")
    if content_type is not None and not is_json(content_type):
        raise Rejected(
            Reason.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {content_type[:100]!r} is not JSON"
        )
    if len(body) > max_bytes:
        raise Rejected(
            Reason.PAYLOAD_TOO_LARGE, f"the body is {len(body)} bytes; the limit is {max_bytes}"
        )
    try:
        data = parse_json_object(body)
    except BodyRefused as error:
        try:
            reason = Reason(error.code)
        except ValueError:
            reason = Reason.VALIDATION_FAILED
        raise Rejected(reason, error.message) from None
    try:
        return LeadDetails.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
        raise Rejected(Reason.VALIDATION_FAILED, f"the lead is not valid: {problems}") from None


# Pull-request statuses that end a request without an error (nats-py's own list).
_REQUEST_ENDED = {StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT}


async def pull(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to `batch` messages, by the protocol of nats-py's `PullSubscription.fetch`: what
    is pending already, else one no-wait request (which, given `expires`, waits for the
    first message and then ends with what the consumer has), else a lingering request for
    what comes before `timeout` (TimeoutError if nothing does). `fetch` waits for each
    message with two tasks and a timer of their own, which made it the costliest part of
    bulk intake (about 35 µs a message); this waits for them all under one deadline."""
    inner = sub._sub
    queue = inner._pending_queue
    taken: list[Msg] = []

    def status_of(msg: Msg) -> str | None:
        inner._pending_size -= len(msg.data)  # the slow-consumer limit counts these bytes
        queue.task_done()
        return msg.headers.get(Header.STATUS) if msg.headers else None

    while not queue.empty() and len(taken) < batch:
        msg = queue.get_nowait()
        if status_of(msg) is None:  # a status left over answers an earlier request
            taken.append(msg)
    if taken:
        return taken
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for no_wait in (True, False):
        left = deadline - loop.time()
        expires = int(left * 1e9) - 100_000
        if expires <= 0:
            break
        request: dict[str, Any] = {"batch": batch, "expires": expires}
        if no_wait:
            request["no_wait"] = True
        await sub._nc.publish(sub._nms, orjson.dumps(request), sub._deliver)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while len(taken) < batch:
                    msg = await queue.get()
                    status = status_of(msg)
                    if status is None:
                        taken.append(msg)
                    elif status in _REQUEST_ENDED:
                        break
                    elif status != StatusCode.CONTROL_MESSAGE:
                        APIError.from_msg(msg)
        if taken:
            return taken
    raise TimeoutError


@dataclass
class _Progress:
    """What is known about a message so far, for the dead letter if it comes to that."""

    workspace_id: UUID | None = None
    idempotency_key: str | None = None
    rejected: Rejected | None = None


class NatsIntake:
    """Consumes `<prefix>.intake.>` and acks each message only once its lead is committed.

    Each fetched batch is received together (`LeadIntake.receive_many`: one group commit
    writes its leads); `concurrency` bounds the messages in flight across batches.

    Invalid messages are recorded as dead letters (an event) and then terminated; transient
    failures are nak'ed with a delay and retried up to `max_deliver` deliveries.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        durable: str = DURABLE,
        concurrency: int = 1024,
        fetch_batch: int = 256,
        fetch_timeout: float = 1.0,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        max_ack_pending: int = 20_000,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        process_timeout: float | None = None,
        duplicate_window: float = 120.0,
        max_age: float = 7 * 24 * 3600.0,
    ) -> None:
        if concurrency < 1 or fetch_batch < 1 or max_deliver < 1 or not retry_delays:
            raise ValueError("concurrency, fetch_batch, max_deliver and retry_delays must be > 0")
        self.nats = engine.nats
        self.js: JetStreamContext = engine.nats.jetstream()
        self.intake = engine.intake
        self.store = engine.store
        self.pool = engine.pool
        self.prefix = engine.settings.nats_prefix
        self.max_body_bytes = engine.settings.max_body_bytes
        self.stream = stream_name(self.prefix)
        self.durable = durable
        self.concurrency = concurrency
        self.fetch_batch = fetch_batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.max_ack_pending = max_ack_pending
        self.retry_delays = tuple(retry_delays)
        # Give up on an attempt (and nak it) before the server would redeliver it anyway.
        self.process_timeout = process_timeout if process_timeout is not None else ack_wait * 0.8
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.replicas = engine.settings.nats_replicas
        self._epoch = ""
        self._sub: JetStreamContext.PullSubscription | None = None
        self._advisories: Subscription | None = None
        self._loop: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        # Subjects parsed already: a bulk load repeats a few of them thousands of times.
        self._subjects: dict[str, tuple[UUID, str]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._stopping = False
        self._aborted = False
        self._stop_event = asyncio.Event()
        self.acked = 0
        self.waiting = 0
        """Times a message was held back because the database was unavailable."""
        self.dead_lettered = 0
        self.retried = 0

    # ---- set-up ------------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.intake.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # Kept after the ack for a week: a message that ran out of deliveries can be read
            # back from the stream by its sequence.
            max_age=self.max_age,
            max_msg_size=self.max_body_bytes,
            duplicate_window=self.duplicate_window,
            num_replicas=self.replicas,
        )

    def consumer_config(self) -> ConsumerConfig:
        # BackOff spaces redeliveries after crashes and hangs; the server takes AckWait from
        # BackOff[0]. It also lengthens a nak's delay on delivery n by BackOff[n-1] -
        # BackOff[0] (2.9 and 2.1x alike), so a long outage is retried for about an hour
        # with the defaults, and for the sum of the nak delays on a server that does not.
        backoff = [
            min(self.ack_wait * 2**i, max(MAX_BACKOFF, self.ack_wait))
            for i in range(max(1, self.max_deliver - 1))
        ]
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            backoff=backoff if self.max_deliver > 1 else None,
            max_ack_pending=self.max_ack_pending,
        )

    async def ensure_stream(self) -> None:
        """Create the stream, or bring an existing one's settings up to date."""
        info = await ensure_stream(self.js, self.stream_config())
        # Stream sequences restart when a stream is re-created; keys built from them carry
        # the creation time so that they never collide with an earlier stream's.
        created = info.created
        self._epoch = f"{created.timestamp():.6f}" if created is not None else "0"

    async def ensure_consumer(self) -> None:
        await self.js.add_consumer(self.stream, self.consumer_config())

    async def start(self) -> None:
        await self.ensure_stream()
        await self.ensure_consumer()
        self._stopping = self._aborted = False
        self._stop_event = asyncio.Event()
        self._sub = await self.js.pull_subscribe_bind(consumer=self.durable, stream=self.stream)
        self._advisories = await self.nats.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.durable}",
            queue=f"{self.stream}-advisories",
            cb=self._on_max_deliveries,
        )
        self._loop = asyncio.create_task(self._run(), name=f"nats-intake-{self.stream}")
        log.info("nats intake started", stream=self.stream, durable=self.durable)

    async def stop(self) -> None:
        """Stop fetching, let every message in flight finish (and its ack go out), then return."""
        self._stopping = True
        self._stop_event.set()
        self._room.set()
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for task in list(self._side_tasks):
            task.cancel()
        await asyncio.gather(*list(self._side_tasks), return_exceptions=True)
        await self._unsubscribe()
        with contextlib.suppress(Exception):
            await self.nats.flush(timeout=5)
        log.info("nats intake stopped", stream=self.stream, acked=self.acked)

    async def abort(self) -> None:
        """Stop at once, acking nothing more: what a crash does (the server redelivers)."""
        self._stopping = self._aborted = True
        self._stop_event.set()
        self._room.set()
        # Until none is left: a fetch that was answered as it was cancelled may still spawn.
        while tasks := [t for t in (self._loop, *self._tasks, *self._side_tasks) if t]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop = None
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        for sub in (self._sub, self._advisories):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = None
        self._advisories = None

    # ---- the fetch loop ----------------------------------------------------------------

    async def _run(self) -> None:
        assert self._sub is not None
        # Fetch only for free slots, so every fetched message starts at once (its ack timer
        # runs from delivery); but wait for a useful number of them, not one at a time.
        low_water = max(1, min(self.fetch_batch, self.concurrency) // 4)
        failures = 0
        while not self._stopping:
            self._room.clear()
            free = self.concurrency - self._in_flight
            if free < low_water:
                await self._room.wait()
                continue
            try:
                messages = await pull(self._sub, min(free, self.fetch_batch), self.fetch_timeout)
            except TimeoutError:
                failures = 0
                continue
            except Exception as error:
                if self._stopping:
                    break
                failures += 1
                log.warning("nats intake fetch failed", error=repr(error), failures=failures)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
                continue
            failures = 0
            if self._aborted:
                return
            if messages:
                self._spawn(self._handle_batch(messages), self._tasks, len(messages))

    def _spawn(
        self, work: Coroutine[Any, Any, None], into: set[asyncio.Task[None]], messages: int = 0
    ) -> None:
        task = asyncio.create_task(work)
        into.add(task)
        self._in_flight += messages

        def done(finished: asyncio.Task[None]) -> None:
            into.discard(finished)
            self._in_flight -= messages
            self._room.set()

        task.add_done_callback(done)

    # ---- a fetched batch, and one message -----------------------------------------------

    async def _handle_batch(self, messages: list[Msg]) -> None:
        """A fetched batch's leads received together (one group commit writes them all),
        each message acked once its own lead is committed. A message refused or failing
        goes on alone through `_handle`: dead-lettered, held while the database is away,
        or nak'ed, exactly as if it had been fetched by itself."""
        parsed: list[tuple[Msg, _Progress, Intake]] = []
        alone: list[tuple[Msg, _Progress | None, Exception | None]] = []
        for msg in messages:
            progress = _Progress()
            try:
                parsed.append((msg, progress, await self._intake_of(msg, progress)))
            except Exception:
                alone.append((msg, None, None))  # refused: the one-message path records why
        if parsed:
            results: list[Receipt | Exception]
            try:
                async with asyncio.timeout(self.process_timeout):
                    results = await self.intake.receive_many([intake for _, _, intake in parsed])
            except Exception as error:
                # Possibly committed with the answer lost: the retry finds each lead by its
                # idempotency key and acks it without writing it again.
                results = [error] * len(parsed)
            for (msg, progress, _), result in zip(parsed, results, strict=True):
                if isinstance(result, _REFUSALS):
                    # Refused before anything was written: the one-message path refuses it
                    # again and records why.
                    alone.append((msg, None, None))
                elif isinstance(result, Exception):
                    alone.append((msg, progress, result))
                else:
                    await self._ack(msg)
        if alone:
            await asyncio.gather(*(self._handle(msg, p, failure) for msg, p, failure in alone))

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except Exception as error:
            # Committed: the redelivery is answered from the lead's idempotency claim.
            log.warning("nats intake could not ack", stream_seq=_seq(msg), error=repr(error))
            return
        self.acked += 1

    async def _handle(
        self, msg: Msg, progress: _Progress | None = None, failure: Exception | None = None
    ) -> None:
        """One message until it is acked, dead-lettered or nak'ed; `failure` is the error
        its first try (in a batch) ended with."""
        progress = progress or _Progress()
        backoff = min(UNAVAILABLE_BACKOFF[0], self.ack_wait / 3)
        while True:
            if failure is None:
                try:
                    async with asyncio.timeout(self.process_timeout):
                        await self._process(msg, progress)
                    return
                except Exception as error:
                    failure = error
            if self._stopping or not await after_failure(self.pool, failure):
                await self._failed(msg, progress, failure)
                return
            # The database is away: keep the message in hand (its ack timer reset, its
            # delivery count untouched) and try again, rather than spend its deliveries
            # towards a dead letter. Fetching pauses by itself: the slots stay taken.
            self.waiting += 1
            log.warning(
                "nats intake waiting for the database",
                stream_seq=_seq(msg),
                error=describe(failure),
                backoff=backoff,
            )
            failure = None
            with contextlib.suppress(Exception):
                await msg.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), backoff)
            # Tried (and its ack timer reset) well within the ack wait, or the server
            # would hand the message to another delivery meanwhile.
            backoff = min(backoff * 2, UNAVAILABLE_BACKOFF[1], self.ack_wait / 3)

    async def _failed(self, msg: Msg, progress: _Progress, error: Exception) -> None:
        """Nak for a later redelivery, or dead-letter on the last one (see `_retry_later`)."""
        try:
            await self._retry_later(msg, progress, error)
        except Exception as again:
            log.error(
                "nats intake could not nak a failed message; the server will redeliver it",
                stream_seq=_seq(msg),
                error=repr(error),
                nak_error=repr(again),
            )

    async def _intake_of(self, msg: Msg, progress: _Progress) -> Intake:
        """The lead a message carries, or Rejected (with `progress` telling what is known)."""
        parsed = self._subjects.get(msg.subject)
        if parsed is None:
            parsed = parse_subject(self.prefix, msg.subject)
            if len(self._subjects) >= MAX_SUBJECTS_KEPT:
                self._subjects.clear()
            self._subjects[msg.subject] = parsed
        workspace_id, source = parsed
        try:
            await self.intake.region_of(workspace_id)
        except WorkspaceNotFound:
            raise Rejected(
                Reason.UNKNOWN_WORKSPACE, f"workspace {workspace_id} does not exist"
            ) from None
        progress.workspace_id = workspace_id
        msg_id = msg_id_of(msg.headers)
        key = f"nats:{msg_id}" if msg_id is not None else self._sequence_key("js", msg)
        progress.idempotency_key = key
        details = parse_lead(msg.data, msg.headers, self.max_body_bytes)
        return Intake(
            workspace_id=workspace_id,
            details=details,
            source=Source.NATS,
            actor=f"nats:{source}",
            channel=f"nats:{source}",
            idempotency_key=key,
        )

    async def _process(self, msg: Msg, progress: _Progress) -> None:
        try:
            intake = await self._intake_of(msg, progress)
            try:
                await self.intake.receive(intake)
            except MissingName as error:
                raise Rejected(Reason.NAME_REQUIRED, str(error)) from None
            except UnknownCustomer as error:
                raise Rejected(Reason.UNKNOWN_CUSTOMER, str(error)) from None
            except UnknownCampaign as error:
                raise Rejected(Reason.UNKNOWN_CAMPAIGN, str(error)) from None
            except WorkspaceNotFound as error:
                progress.workspace_id = None
                raise Rejected(Reason.UNKNOWN_WORKSPACE, str(error)) from None
        except Rejected as rejected:
            progress.rejected = rejected
            # Recorded before the term: a crash in between redelivers it, never loses it.
            await self._dead_letter(msg, rejected.reason, rejected.detail, progress.workspace_id)
            await msg.term()
            return
        await msg.ack()
        self.acked += 1

    async def _retry_later(self, msg: Msg, progress: _Progress, error: Exception) -> None:
        delivered = msg.metadata.num_delivered
        if delivered < self.max_deliver:
            self.retried += 1
            delay = self.retry_delays[min(delivered, len(self.retry_delays)) - 1]
            log.warning(
                "nats intake will retry a message",
                stream_seq=_seq(msg),
                delivered=delivered,
                delay=delay,
                error=repr(error),
            )
            await msg.nak(delay=delay)
            return
        log.error(
            "nats intake failed a message on its last delivery",
            stream_seq=_seq(msg),
            delivered=delivered,
            error=repr(error),
        )
        try:
            async with asyncio.timeout(self.process_timeout):
                if await self._already_received(progress.workspace_id, progress.idempotency_key):
                    await msg.ack()
                    return
                rejected = progress.rejected
                if rejected is not None:
                    # Refused, but recording why kept failing: keep the refusal's reason.
                    await self._dead_letter(
                        msg, rejected.reason, rejected.detail, progress.workspace_id
                    )
                else:
                    await self._dead_letter(
                        msg,
                        Reason.RETRIES_EXHAUSTED,
                        f"failed on all {delivered} deliveries; last error: {error!r}",
                        progress.workspace_id,
                    )
                await msg.term()
        except Exception as again:
            # The server will not redeliver it; its max-deliveries advisory gives us one more
            # chance to record it, and the stream keeps the message itself.
            log.error(
                "nats intake could not record a dead letter; the message stays in the stream",
                stream=self.stream,
                stream_seq=_seq(msg),
                error=repr(again),
            )
            await msg.nak(delay=self.retry_delays[0])

    async def _already_received(self, workspace_id: UUID | None, key: str | None) -> bool:
        """Whether a lead holds this message's idempotency key (committed, ack lost)."""
        if workspace_id is None or key is None:
            return False
        claim = idempotency_claim(workspace_id, key, uuid.UUID(int=0))
        return await self.store.holder(claim.key) is not None

    def _sequence_key(self, kind: str, msg: Msg) -> str:
        return f"{kind}:{self.stream}:{self._epoch}:{msg.metadata.sequence.stream}"

    async def _dead_letter(
        self, msg: Msg, reason: Reason, detail: str, workspace_id: UUID | None
    ) -> None:
        meta = msg.metadata
        headers = msg.headers or {}
        recorded = await record_dead_letter(
            self.store,
            Letter(
                channel=CHANNEL,
                subject=msg.subject,
                reason=reason,
                detail=detail,
                body=msg.data,
                received_at=meta.timestamp,
                workspace_id=workspace_id,
                headers=headers,
                msg_id=headers.get(MSG_ID_HEADER, "")[: MAX_MSG_ID * 4] or None,
                stream=meta.stream,
                stream_seq=meta.sequence.stream,
                deliveries=meta.num_delivered,
                key=self._sequence_key(CHANNEL, msg),
            ),
        )
        self.dead_lettered += 1
        log.warning(
            "nats intake dead-lettered a message",
            reason=str(reason),
            subject=msg.subject[:200],
            stream_seq=meta.sequence.stream,
            dead_letter=str(recorded.id),
            replayed=recorded.replayed,
        )

    # ---- messages the server gave up on --------------------------------------------------

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        try:
            data = orjson.loads(advisory.data)
            seq = int(data["stream_seq"])
            deliveries = int(data.get("deliveries", self.max_deliver))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            log.warning("unreadable max-deliveries advisory", error=repr(error))
            return
        log.error(
            "nats intake message reached max deliveries",
            stream=self.stream,
            stream_seq=seq,
            deliveries=deliveries,
        )
        self._spawn(self._record_exhausted(seq, deliveries), self._side_tasks)

    async def _record_exhausted(self, seq: int, deliveries: int) -> None:
        """Record a message the server stopped redelivering (a hang or a crash loop)."""
        for attempt, delay in enumerate((*self.retry_delays[:5], 0.0)):
            try:
                await self._record_from_stream(seq, deliveries)
                return
            except NotFoundError:
                log.error("the exhausted message is no longer in the stream", stream_seq=seq)
                return
            except Exception as error:
                log.warning(
                    "could not record an exhausted message yet",
                    stream_seq=seq,
                    attempt=attempt + 1,
                    error=repr(error),
                )
                await asyncio.sleep(delay)
        log.error(
            "nats intake could not record an exhausted message; it stays in the stream",
            stream=self.stream,
            stream_seq=seq,
        )

    async def _record_from_stream(self, seq: int, deliveries: int) -> None:
        raw = await self.js.get_msg(self.stream, seq)
        subject = raw.subject or ""
        headers: dict[str, str] = dict(raw.headers or {})
        workspace_id: UUID | None = None
        key: str | None = None
        with contextlib.suppress(Rejected):
            parsed, _ = parse_subject(self.prefix, subject)
            try:
                await self.intake.region_of(parsed)
                workspace_id = parsed
                msg_id = msg_id_of(headers)
                key = f"nats:{msg_id}" if msg_id else f"js:{self.stream}:{self._epoch}:{seq}"
            except WorkspaceNotFound:
                pass
        if await self._already_received(workspace_id, key):
            log.info("the exhausted message's lead was committed; its ack was lost", seq=seq)
            return
        await record_dead_letter(
            self.store,
            Letter(
                channel=CHANNEL,
                subject=subject,
                reason=Reason.MAX_DELIVERIES,
                detail=f"the server stopped redelivering after {deliveries} unacked deliveries",
                body=raw.data or b"",
                received_at=raw.time or datetime.now(UTC),
                workspace_id=workspace_id,
                headers=headers,
                msg_id=headers.get(MSG_ID_HEADER, "")[: MAX_MSG_ID * 4] or None,
                stream=self.stream,
                stream_seq=seq,
                deliveries=deliveries,
                key=f"{CHANNEL}:{self.stream}:{self._epoch}:{seq}",
            ),
        )
        self.dead_lettered += 1


def _seq(msg: Msg) -> int | None:
    try:
        return msg.metadata.sequence.stream
    except Exception:
        return None
