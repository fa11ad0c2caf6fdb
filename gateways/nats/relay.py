"""The NATS relay: publishes every committed event, in log order, to a JetStream stream.

Each event goes to `<prefix>.events.<workspace | system>.<event_type>` on the stream
`<PREFIX>_EVENTS`, with `Nats-Msg-Id` = the event's id. The relay's checkpoint (consumer
`relay:nats`) moves only after the server has acknowledged every event up to it, so a
crash or a NATS outage only ever causes re-publishes, which the server drops as duplicates
(within the stream's duplicate window).

Order. Events are published in windows. The first event of a window is published alone
and its ack awaited; the others are pipelined, each carrying
`Nats-Expected-Last-Msg-Id` = the previous event's id. If one of them is lost (the
connection dropped, say), the server refuses every later one in the window, because the
stream's last message is not the one they expect; so the stream always holds a gap-free
prefix of the log, in log order. The relay then re-publishes from the first event that
was not acknowledged, after a back-off, never skipping one. (The server checks
duplicates before expectations, so a re-published window is acknowledged as duplicates.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import orjson
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from domain.campaigns import redact_headers
from domain.channels import redact_credentials
from domain.lead_types import LeadType
from domain.partners import Partner
from domain.users import User
from gateways.bootstrap import Engine
from gateways.nats.streams import ensure_stream
from gateways.postgres.errors import after_failure, describe
from gateways.postgres.log_store import PostgresLog, Record
from handlers.ports import Checkpoint, TrackingConflict

log = structlog.get_logger(__name__)

CONSUMER = "relay:nats"
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
POSITION_HEADER = "Leadlog-Position"
EVENT_TYPE_HEADER = "Leadlog-Event-Type"
WORKSPACE_HEADER = "Leadlog-Workspace"
SYSTEM = "system"
_BAD_TOKEN = re.compile(r"[\s*>]")


def events_stream_name(prefix: str) -> str:
    """`LEADLOG_EVENTS` for the default prefix (see `nats_intake.stream_name`)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", prefix).upper() + "_EVENTS"


def event_subject(prefix: str, record: Record) -> str:
    """`<prefix>.events.<workspace | system>.<event_type>`; the type's dots stay tokens."""
    workspace = str(record.workspace_id) if record.workspace_id is not None else SYSTEM
    tokens = record.event_type.split(".")
    # Event types come from class names, so this never changes one; it only guards the
    # subject against an empty token or a wildcard.
    event_type = ".".join(_BAD_TOKEN.sub("_", token) or "_" for token in tokens)
    return f"{prefix}.events.{workspace}.{event_type}"


# Fields never published (a webhook signing secret): by event type, from the event classes.
REDACTED_FIELDS: dict[str, frozenset[str]] = {
    "lead_type.secret_issued": LeadType.SecretIssued.redacted_fields,
    "user.password_set": User.PasswordSet.redacted_fields,
    "partner.secret_issued": Partner.SecretIssued.redacted_fields,
}
REDACTED = "[redacted]"
# Events carrying a campaign's configuration: its header values (buyers' API keys) hidden.
HEADERS_HIDDEN = frozenset(
    {"campaign.created", "campaign.updated", "submission.processing_started"}
)


# Events carrying a channel's configuration: its secret credentials hidden.
CREDENTIALS_HIDDEN = frozenset({"channel.created", "channel.updated"})


def _state(record: Record) -> orjson.Fragment:
    if record.event_type in CREDENTIALS_HIDDEN:
        return orjson.Fragment(orjson.dumps(redact_credentials(orjson.loads(record.state))))
    if record.event_type in HEADERS_HIDDEN:
        return orjson.Fragment(orjson.dumps(redact_headers(orjson.loads(record.state))))
    hidden = REDACTED_FIELDS.get(record.event_type)
    if not hidden:
        # Already JSON (orjson-encoded by the codec): embedded as is, not re-decoded.
        return orjson.Fragment(record.state)
    state = orjson.loads(record.state)
    for name in hidden & state.keys():
        state[name] = REDACTED
    return orjson.Fragment(orjson.dumps(state))


def event_payload(record: Record) -> bytes:
    """The message body: the event's envelope, with its stored JSON state as `data`."""
    return orjson.dumps(
        {
            "position": record.position,
            "eventId": str(record.event_id),
            "eventType": record.event_type,
            "workspaceId": str(record.workspace_id) if record.workspace_id else None,
            "aggregateId": str(record.originator_id),
            "version": record.originator_version,
            "recordedAt": record.recorded_at.isoformat(),
            "data": _state(record),
        }
    )


def event_headers(record: Record) -> dict[str, str]:
    return {
        MSG_ID: str(record.event_id),
        POSITION_HEADER: str(record.position),
        EVENT_TYPE_HEADER: record.event_type,
        WORKSPACE_HEADER: str(record.workspace_id) if record.workspace_id else SYSTEM,
    }


class NatsRelay:
    """Worker: follows the log from its checkpoint and publishes each event to JetStream."""

    def __init__(
        self,
        engine: Engine,
        *,
        nats: NatsClient | None = None,
        consumer: str = CONSUMER,
        batch_size: int = 500,
        max_in_flight: int = 256,
        publish_timeout: float = 5.0,
        duplicate_window: float = 120.0,
        max_age: float | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        resume_from_stream: bool = True,
    ) -> None:
        if batch_size < 1 or max_in_flight < 1 or publish_timeout <= 0:
            raise ValueError("batch_size, max_in_flight and publish_timeout must be > 0")
        self.log: PostgresLog = engine.log
        self.nats: NatsClient = nats if nats is not None else engine.nats
        self.js: JetStreamContext = self.nats.jetstream(
            timeout=publish_timeout, publish_async_max_pending=max(max_in_flight, 1)
        )
        self.prefix = engine.settings.nats_prefix
        self.stream = events_stream_name(self.prefix)
        self.consumer = consumer
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.publish_timeout = publish_timeout
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.replicas = engine.settings.nats_replicas
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.resume_from_stream = resume_from_stream
        # Everything up to `position` is on the stream (and, after the batch, checkpointed).
        self.position = 0
        # What the tracking row holds (behind `position` only while a checkpoint failed).
        self.persisted = 0
        self.published = 0
        self.duplicates = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- set-up ------------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.events.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # Long enough that re-publishing after a crash or an outage dedupes at the server.
            duplicate_window=self.duplicate_window,
            max_age=self.max_age,
            num_replicas=self.replicas,
        )

    async def ensure_stream(self) -> None:
        await ensure_stream(self.js, self.stream_config())

    async def stream_last(self) -> tuple[int, str | None]:
        """(log position, event id) of the stream's last message; (0, None) when empty."""
        info = await self.js.stream_info(self.stream)
        if not info.state.messages:
            return 0, None
        try:
            message = await self.js.get_msg(self.stream, info.state.last_seq)
        except NotFoundError:
            return 0, None
        headers = message.headers or {}
        value = headers.get(POSITION_HEADER, "")
        return (int(value) if value.isdigit() else 0), headers.get(MSG_ID)

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"nats-relay-{self.stream}")
        log.info("nats relay started", stream=self.stream, consumer=self.consumer)

    async def stop(self) -> None:
        """Stop at once: whatever was published but not checkpointed is re-published (and
        deduped by the server) next time."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        log.info("nats relay stopped", stream=self.stream, position=self.position)

    # ---- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        ready = False
        while not self._stopping:
            try:
                if not ready:
                    await self._prepare()
                    ready = True
                    failures = 0
                generation = self.log.generation
                records = await self.log.read(self.position, self.batch_size)
                if not records:
                    if self.position > self.persisted:
                        # Published, but the checkpoint failed (the database was away).
                        await self._checkpoint(self.position)
                        continue
                    await self.log.wait_for_commit(generation, self.log.poll_interval)
                    continue
                await self._relay(records)
                failures = 0
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                await after_failure(self.log.pool, error)
                self.last_error = describe(error)
                log.warning(
                    "nats relay retrying",
                    error=self.last_error,
                    position=self.position,
                    failures=failures,
                )
                # Set up again (the stream may be new after a NATS restart) and resume from
                # the checkpoint, or from the stream's end where that is the same event.
                ready = False
                await asyncio.sleep(min(self.min_backoff * 2 ** (failures - 1), self.max_backoff))

    async def _prepare(self) -> None:
        await self.ensure_stream()
        checkpoint = await self.log.max_tracking_id(self.consumer) or 0
        self.position = self.persisted = checkpoint
        if self.resume_from_stream:
            # The stream is a gap-free prefix of the log: if it is ahead of the checkpoint
            # (a crash between ack and checkpoint), nothing up to its end is sent again;
            # but only if its last message is that very event (not a restored database).
            on_stream, event_id = await self.stream_last()
            if on_stream > checkpoint:
                logged = await self.log.read(on_stream - 1, 1)
                if (
                    logged
                    and logged[0].position == on_stream
                    and str(logged[0].event_id) == event_id
                ):
                    self.position = on_stream
                    await self._checkpoint(on_stream)
                else:
                    log.warning(
                        "the events stream does not match the log; relaying from the checkpoint",
                        stream_position=on_stream,
                        checkpoint=checkpoint,
                    )
        log.info("nats relay resuming", position=self.position, checkpoint=checkpoint)

    async def _relay(self, records: Sequence[Record]) -> None:
        """Publish `records` in order and checkpoint what was acknowledged, even on a failure
        (which is raised after the checkpoint)."""
        start = self.position
        try:
            for offset in range(0, len(records), self.max_in_flight):
                await self._publish_window(records[offset : offset + self.max_in_flight])
        finally:
            if self.position > start:
                await asyncio.shield(self._checkpoint(self.position))

    async def _publish_window(self, window: Sequence[Record]) -> None:
        """Publish a window in order; `self.position` follows the acknowledged prefix, and
        the first event not acknowledged raises."""
        if not self.nats.is_connected:
            raise ConnectionError("NATS is not connected")
        first = window[0]
        ack = await self.js.publish(
            event_subject(self.prefix, first),
            event_payload(first),
            timeout=self.publish_timeout,
            headers=event_headers(first),
        )
        self._count(ack)
        self.position = first.position
        futures: list[asyncio.Future[PubAck]] = []
        try:
            previous = first
            for record in window[1:]:
                headers = event_headers(record)
                headers[EXPECTED_LAST_MSG_ID] = str(previous.event_id)
                futures.append(
                    await self.js.publish_async(
                        event_subject(self.prefix, record),
                        event_payload(record),
                        wait_stall=self.publish_timeout,
                        headers=headers,
                    )
                )
                previous = record
            if futures:
                await asyncio.wait(futures, timeout=self.publish_timeout)
            for record, future in zip(window[1:], futures, strict=False):
                if not future.done():
                    raise TimeoutError(f"no ack for position {record.position}")
                self._count(future.result())
                self.position = record.position
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warnings

    def _count(self, ack: PubAck) -> None:
        if ack.duplicate:
            self.duplicates += 1
        else:
            self.published += 1

    async def _checkpoint(self, position: int) -> None:
        async with self.log.pool.acquire() as conn, conn.transaction():
            # Already there (another relay, or a restart racing this one): nothing to do.
            with contextlib.suppress(TrackingConflict):
                await self.log.record_checkpoint(conn, Checkpoint(self.consumer, position))
        self.persisted = max(self.persisted, position)

    def status(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "stream": self.stream,
            "position": self.position,
            "published": self.published,
            "duplicates": self.duplicates,
            "lastError": self.last_error,
        }
