"""The NATS relay end to end: real JetStream and PostgreSQL, restarts, crashes and an outage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext

from gateways.bootstrap import Engine
from gateways.nats.relay import (
    CONSUMER,
    NatsRelay,
    event_payload,
    event_subject,
    events_stream_name,
)
from gateways.postgres.log_store import Record
from handlers.workspaces import create_workspace

pytestmark = pytest.mark.timeout(120)


# ---- helpers ------------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def caught_up(engine: Engine, relay: NatsRelay, timeout: float = 20) -> None:
    """Everything committed is on the stream and checkpointed (the checkpoint follows the
    acks at the end of each batch)."""

    async def done() -> bool:
        end = await engine.log.max_position()
        return relay.position == end and await engine.log.max_tracking_id(CONSUMER) == end

    await wait_until(done, timeout, "the relay to catch up")


async def add_workspaces(engine: Engine, count: int, concurrency: int = 20) -> None:
    """Commits events (a workspace and its pipeline each), many appends at once."""
    for start in range(0, count, concurrency):
        await asyncio.gather(
            *(
                create_workspace(engine.store, f"W{i}")
                for i in range(start, min(count, start + concurrency))
            )
        )


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    """Every message on the stream, in stream order."""
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    if not info.state.messages:
        return []
    out: list[RawStreamMsg] = []
    for start in range(first, last + 1, 200):
        out.extend(
            await asyncio.gather(
                *(js.get_msg(stream, seq) for seq in range(start, min(last, start + 199) + 1))
            )
        )
    return out


def header(message: RawStreamMsg, name: str) -> str:
    value = (message.headers or {}).get(name)
    assert isinstance(value, str), f"missing {name}"
    return value


async def assert_stream_is_log(engine: Engine, js: JetStreamContext, stream: str) -> None:
    """The stream holds every committed event exactly once, in log order, nothing else."""
    messages = await stream_messages(js, stream)
    records = await engine.log.read(0, 1_000_000)
    ids = [header(m, "Nats-Msg-Id") for m in messages]
    assert len(ids) == len(set(ids)), "an event is on the stream twice"
    positions = [int(header(m, "Leadlog-Position")) for m in messages]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert ids == [str(r.event_id) for r in records]
    assert positions == [r.position for r in records]


@pytest.fixture
async def js(engine: Engine) -> JetStreamContext:
    return engine.nats.jetstream()


@pytest.fixture
async def relays(engine: Engine) -> AsyncIterator[Callable[..., Awaitable[NatsRelay]]]:
    started: list[NatsRelay] = []

    async def make(**options: Any) -> NatsRelay:
        relay = NatsRelay(engine, **options)
        await relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        await relay.stop()


# ---- pure parts ---------------------------------------------------------------------------


def test_names_subjects_and_payload() -> None:
    assert events_stream_name("leadlog") == "LEADLOG_EVENTS"
    assert events_stream_name("acme.leads") == "ACME_LEADS_EVENTS"
    workspace = uuid.uuid4()
    record = Record(
        position=7,
        event_id=uuid.uuid4(),
        originator_id=uuid.uuid4(),
        originator_version=3,
        topic="domain.leads:Lead.Received",
        event_type="lead.received",
        workspace_id=workspace,
        state=b'{"name":"Ada","tags":["a"]}',
        recorded_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert event_subject("leadlog", record) == f"leadlog.events.{workspace}.lead.received"
    system = Record(**{**record.__dict__, "workspace_id": None, "event_type": "a b.*"})
    assert event_subject("leadlog", system) == "leadlog.events.system.a_b._"
    assert orjson.loads(event_payload(record)) == {
        "position": 7,
        "eventId": str(record.event_id),
        "eventType": "lead.received",
        "workspaceId": str(workspace),
        "aggregateId": str(record.originator_id),
        "version": 3,
        "recordedAt": "2025-01-02T03:04:05+00:00",
        "data": {"name": "Ada", "tags": ["a"]},
    }


# ---- against the real servers -------------------------------------------------------------


async def test_publishes_every_event_in_log_order(
    engine: Engine, js: JetStreamContext, relays: Callable[..., Awaitable[NatsRelay]]
) -> None:
    await add_workspaces(engine, 400)  # a backlog to catch up on
    backlog = await engine.log.max_position()
    began = time.monotonic()
    relay = await relays()
    await caught_up(engine, relay)
    elapsed = time.monotonic() - began
    print(f"\nrelay caught up on {backlog} events in {elapsed:.2f}s: {backlog / elapsed:.0f}/s")
    await add_workspaces(engine, 30)  # and then follow new commits
    await caught_up(engine, relay)
    assert relay.last_error is None
    assert await engine.log.max_tracking_id(CONSUMER) == relay.position

    stream = events_stream_name(engine.settings.nats_prefix)
    await assert_stream_is_log(engine, js, stream)
    messages = await stream_messages(js, stream)
    records = await engine.log.read(0, 1_000_000)
    for message, record in zip(messages, records, strict=True):
        assert message.subject == (
            f"{engine.settings.nats_prefix}.events.{record.workspace_id}.{record.event_type}"
        )
        assert header(message, "Leadlog-Event-Type") == record.event_type
        assert header(message, "Leadlog-Workspace") == str(record.workspace_id)
        body = orjson.loads(message.data or b"")
        assert body["position"] == record.position
        assert body["eventId"] == str(record.event_id)
        assert body["aggregateId"] == str(record.originator_id)
        assert body["version"] == record.originator_version
        assert body["data"] == orjson.loads(record.state)
    assert {r.event_type for r in records} >= {"workspace.created", "pipeline.created"}

    # A JetStream consumer of the stream sees the positions strictly increasing.
    sub = await js.pull_subscribe(f"{engine.settings.nats_prefix}.events.>", stream=stream)
    seen: list[int] = []
    while len(seen) < len(records):
        for msg in await sub.fetch(500, timeout=5):
            seen.append(int(msg.headers["Leadlog-Position"]))  # type: ignore[index]
            await msg.ack()
    await sub.unsubscribe()
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert seen == [r.position for r in records]


async def test_restarts_and_crashes_publish_each_event_once(
    engine: Engine, js: JetStreamContext, relays: Callable[..., Awaitable[NatsRelay]]
) -> None:
    stream = events_stream_name(engine.settings.nats_prefix)
    first = await relays(batch_size=20, max_in_flight=8)
    writing = asyncio.create_task(add_workspaces(engine, 150, concurrency=5))

    async def midway() -> bool:
        return first.position > 50

    await wait_until(midway, what="the relay to get going")
    await first.stop()  # midway through a stream of appends
    await writing
    assert first.position < await engine.log.max_position()

    second = await relays(batch_size=20, max_in_flight=8)
    await add_workspaces(engine, 20)
    await caught_up(engine, second)
    await second.stop()
    await assert_stream_is_log(engine, js, stream)

    # A crash after the acks but before the checkpoint: the checkpoint is 7 events behind.
    end = second.position
    await engine.pool.execute(
        "UPDATE tracking SET position = position - 7 WHERE consumer = $1", CONSUMER
    )
    third = await relays(batch_size=3, max_in_flight=2, resume_from_stream=False)
    await caught_up(engine, third)
    assert third.duplicates == 7 and third.published == 0  # the server deduped them all
    await add_workspaces(engine, 5)
    await caught_up(engine, third)
    assert third.published > 0
    await third.stop()
    await assert_stream_is_log(engine, js, stream)

    # By default a restarted relay resumes from the end of the stream instead.
    await engine.pool.execute(
        "UPDATE tracking SET position = position - 9 WHERE consumer = $1", CONSUMER
    )
    fourth = await relays()
    await caught_up(engine, fourth)
    assert fourth.duplicates == 0 and fourth.published == 0 and fourth.position > end
    await assert_stream_is_log(engine, js, stream)


# ---- a NATS outage ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateNats:
    """A nats-server of the test's own, to stop and start again on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.binary = Path(sysconfig.get_path("scripts")) / "nats-server"
        self.store = store
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                *("-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    with tempfile.TemporaryDirectory(prefix="leadlog-relay-nats-") as store:
        server = PrivateNats(Path(store))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def private_client(private_nats: PrivateNats) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(
        private_nats.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        allow_reconnect=True,
    )
    try:
        yield nc
    finally:
        await nc.close()


async def test_nats_outage_mid_stream_every_event_arrives_once(
    engine: Engine, private_nats: PrivateNats, private_client: NatsClient
) -> None:
    relay = NatsRelay(
        engine,
        nats=private_client,
        batch_size=50,
        max_in_flight=16,
        publish_timeout=0.5,
        max_backoff=0.3,
    )
    await relay.start()
    try:
        stop_writing = asyncio.Event()

        async def keep_writing() -> None:
            while not stop_writing.is_set():
                await add_workspaces(engine, 4, concurrency=4)
                await asyncio.sleep(0.01)

        writer = asyncio.create_task(keep_writing())

        async def midway() -> bool:
            return relay.position > 60

        await wait_until(midway, what="the relay to get going")
        private_nats.stop()  # mid-stream, while events keep being committed
        await asyncio.sleep(1.5)
        assert relay.last_error is not None
        during = await engine.log.max_position()
        assert during > relay.position  # events committed while NATS was away

        private_nats.start()  # same port, same store
        await asyncio.sleep(0.5)
        stop_writing.set()
        await writer
        await caught_up(engine, relay, timeout=20)
        assert relay.last_error is None
        assert await engine.log.max_tracking_id(CONSUMER) == relay.position
    finally:
        await relay.stop()

    js = private_client.jetstream()
    await assert_stream_is_log(engine, js, events_stream_name(engine.settings.nats_prefix))
