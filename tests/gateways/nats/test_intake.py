"""NATS intake end to end: real JetStream and PostgreSQL, restarts, retries and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest
from nats.js.api import ConsumerInfo
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from domain.customers import Customer
from domain.dead_letters import MAX_BODY_BYTES, Reason, body_excerpt, clean_headers
from domain.leads import Lead
from gateways.bootstrap import Engine, connect_nats
from gateways.nats.intake import (
    NatsIntake,
    Rejected,
    intake_subject,
    parse_subject,
    pull,
    stream_name,
)
from gateways.postgres.event_store import PostgresEventStore
from handlers.dead_letters import Letter, list_dead_letters, record_dead_letter
from handlers.intake import Intake, LeadIntake, Receipt
from handlers.ports import Append, Appended
from handlers.workspaces import create_workspace
from tests.conftest import Servers

pytestmark = pytest.mark.timeout(240)

Factory = Callable[..., Awaitable[NatsIntake]]


# ---- pure parts ---------------------------------------------------------------------------


def test_subjects_and_stream_names() -> None:
    workspace = uuid.uuid4()
    assert stream_name("leadlog") == "LEADLOG_INTAKE"
    assert stream_name("acme.leads") == "ACME_LEADS_INTAKE"
    assert parse_subject("leadlog", intake_subject("leadlog", workspace, "crm-1")) == (
        workspace,
        "crm-1",
    )
    for subject in (
        f"leadlog.intake.{workspace}",
        f"leadlog.intake.{workspace}.crm.extra",
        "leadlog.intake.not-a-uuid.crm",
        f"other.intake.{workspace}.crm",
        f"leadlog.intake.{workspace}.{'x' * 65}",
        f"leadlog.intake.{workspace}.cr%m",
    ):
        with pytest.raises(Rejected) as refused:
            parse_subject("leadlog", subject)
        assert refused.value.reason is Reason.BAD_SUBJECT


def test_body_excerpt_never_splits_a_character() -> None:
    assert body_excerpt(b"abc") == ("abc", False)
    assert body_excerpt(b"a\xffb") == ("a\ufffdb", False)
    text, cut = body_excerpt("é".encode() * 10, limit=5)
    assert (text, cut) == ("éé", True)
    text, cut = body_excerpt(b"x" * (MAX_BODY_BYTES + 10))
    assert cut and len(text) == MAX_BODY_BYTES
    headers = clean_headers({f"h{i}": "v\x00" for i in range(80)})
    assert len(headers) == 50 and headers["h0"] == "v\ufffd"
    assert clean_headers({"Authorization": "Bearer x", "X-Api-Key": "k", "Nats-Msg-Id": "1"}) == {
        "Authorization": "[redacted]",
        "X-Api-Key": "[redacted]",
        "Nats-Msg-Id": "1",
    }


# ---- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
async def workspace_id(engine: Engine) -> UUID:
    return (await create_workspace(engine.store, "Acme", "US")).id


@pytest.fixture
async def js(engine: Engine) -> AsyncIterator[JetStreamContext]:
    """The test's JetStream context; deletes the test's intake stream at the end."""
    context = engine.nats.jetstream()
    yield context
    with contextlib.suppress(NotFoundError):
        await context.delete_stream(stream_name(engine.settings.nats_prefix))


@pytest.fixture
async def make_worker(engine: Engine) -> AsyncIterator[Factory]:
    """Starts NatsIntake workers (on `engine` or a variant of it); aborts leftovers at the end."""
    started: list[NatsIntake] = []

    async def make(on: Engine | None = None, **options: Any) -> NatsIntake:
        options.setdefault("ack_wait", 5.0)
        worker = NatsIntake(on or engine, **options)
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.abort()


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 60, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def lead_count(engine: Engine, workspace_id: UUID) -> int:
    count: int = await engine.pool.fetchval(
        "SELECT count(*) FROM events WHERE event_type = 'lead.received' AND workspace_id = $1",
        workspace_id,
    )
    return count


async def received(engine: Engine, workspace_id: UUID) -> list[Lead.Received]:
    events: list[Lead.Received] = []
    after = 0
    while page := await engine.store.read(after, 1000, ["lead.received"]):
        events.extend(
            e.event
            for e in page
            if isinstance(e.event, Lead.Received) and e.workspace_id == workspace_id
        )
        after = page[-1].position
    return events


async def consumer(js: JetStreamContext, worker: NatsIntake) -> ConsumerInfo:
    info: ConsumerInfo = await js.consumer_info(worker.stream, worker.durable)
    return info


def deliveries(info: ConsumerInfo) -> tuple[int, int]:
    """(messages delivered, deliveries made): they differ by the number of redeliveries."""
    assert info.delivered is not None
    return info.delivered.stream_seq, info.delivered.consumer_seq


async def settled(js: JetStreamContext, worker: NatsIntake) -> bool:
    """Everything in the stream delivered and acked (or terminated)."""
    info = await consumer(js, worker)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def publish(
    js: JetStreamContext,
    subject: str,
    body: bytes | dict[str, Any],
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    all_headers = {**(headers or {}), **({"Nats-Msg-Id": msg_id} if msg_id else {})}
    await js.publish(subject, data, headers=all_headers or None)


async def publish_many(
    js: JetStreamContext, messages: list[tuple[str, dict[str, Any], str | None]], chunk: int = 500
) -> None:
    for start in range(0, len(messages), chunk):
        await asyncio.gather(
            *(publish(js, s, b, msg_id=m) for s, b, m in messages[start : start + chunk])
        )


# ---- valid messages ------------------------------------------------------------------------


async def test_valid_messages_become_leads_acked_after_commit(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    worker = await make_worker()
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish_many(
        js,
        [(subject, {"name": f"Person {i}", "email": "SAME@example.com"}, None) for i in range(200)],
    )
    await wait_until(lambda: settled(js, worker), what="every message acked")

    leads = await received(engine, workspace_id)
    assert len(leads) == 200
    originals = [lead for lead in leads if not lead.is_duplicate]
    assert len(originals) == 1
    assert all(
        lead.duplicate_of == originals[0].originator_id for lead in leads if lead.is_duplicate
    )
    assert sorted(lead.request_id for lead in leads) == list(range(1, 201))
    assert {lead.source for lead in leads} == {"nats"}
    assert {lead.channel for lead in leads} == {"nats:crm"}
    assert {lead.status for lead in leads} == {"backlog"}
    # without Nats-Msg-Id, the stream sequence is the idempotency key
    assert len({lead.idempotency_key for lead in leads}) == 200
    assert all((lead.idempotency_key or "").startswith(f"js:{worker.stream}:") for lead in leads)

    info = await consumer(js, worker)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert deliveries(info) == (200, 200)
    assert info.config.max_deliver == 10 and info.config.backoff
    assert worker.acked == 200 and worker.dead_lettered == 0
    await worker.stop()


async def test_control_characters_are_cleaned_not_refused(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    worker = await make_worker()
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "web")
    await publish(
        js,
        subject,
        {"name": "Ann\x00 Lee\x07", "email": "not-an-email", "phone": "12"},
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    await wait_until(lambda: settled(js, worker))
    (lead,) = await received(engine, workspace_id)
    assert lead.name == "Ann Lee"
    assert lead.details.email == "not-an-email" and lead.email_valid is False
    assert lead.phone_valid is False
    await worker.stop()


async def test_nats_msg_id_dedupes_at_the_server_and_in_the_log(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    # A tiny duplicate window, so the second copy reaches the engine and its key must dedupe.
    worker = await make_worker(duplicate_window=0.2)
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    body = orjson.dumps({"name": "Ann", "email": "ann@example.com"})
    first = await js.publish(subject, body, headers={"Nats-Msg-Id": "order-1"})
    again = await js.publish(subject, body, headers={"Nats-Msg-Id": "order-1"})
    assert again.duplicate and again.seq == first.seq
    await asyncio.sleep(0.5)
    late = await js.publish(subject, body, headers={"Nats-Msg-Id": "order-1"})
    assert not late.duplicate and late.seq > first.seq

    async def both_acked() -> bool:
        # The server sees an ack a moment before the worker counts it: wait for both.
        return worker.acked == 2 and await settled(js, worker)

    await wait_until(both_acked, what="both copies acked")
    leads = await received(engine, workspace_id)
    assert len(leads) == 1
    assert leads[0].idempotency_key == "nats:order-1"
    assert worker.acked == 2
    assert await list_dead_letters(engine.store) == []
    await worker.stop()


# ---- bad messages --------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return {"name": "Deep", "customFields": value}


async def test_bad_messages_are_dead_lettered_and_terminated(
    engine: Engine,
    workspace_id: UUID,
    js: JetStreamContext,
    make_worker: Factory,
    servers: Servers,
) -> None:
    prefix = engine.settings.nats_prefix
    worker = await make_worker(ack_wait=1.0)
    good = intake_subject(prefix, workspace_id, "crm")
    stranger = uuid.uuid4()
    cases: list[tuple[str, str, bytes, dict[str, str] | None]] = [
        ("bad_subject", f"{prefix}.intake.{workspace_id}.crm.extra", b'{"name": "A"}', None),
        ("bad_subject", f"{prefix}.intake.nope.crm", b'{"name": "A"}', None),
        ("unknown_workspace", intake_subject(prefix, stranger, "crm"), b'{"name": "A"}', None),
        ("malformed_json", good, b'{"name": ', None),
        ("not_an_object", good, b"[1, 2]", None),
        ("not_an_object", good, b"42", None),
        ("empty_body", good, b"", None),
        ("too_deep", good, orjson.dumps(_nested(40)), None),
        (
            "too_many_fields",
            good,
            orjson.dumps({"name": "A", "customFields": {f"f{i}": i for i in range(600)}}),
            None,
        ),
        ("invalid_utf8", good, b'{"name": "\xff\xfe"}', None),
        ("validation_failed", good, b'{"name": "A", "attachments": "nope"}', None),
        ("validation_failed", good, b'{"name": "A", "unknownField": 1}', None),
        ("name_required", good, b'{"company": "Acme"}', None),
        (
            "unknown_customer",
            good,
            orjson.dumps({"name": "A", "customerId": str(uuid.uuid4())}),
            None,
        ),
        ("unsupported_media_type", good, b"name=A", {"Content-Type": "text/plain"}),
        ("bad_msg_id", good, b'{"name": "A"}', {"Nats-Msg-Id": "x" * 300}),
    ]
    for _, subject, body, headers in cases:
        await js.publish(subject, body, headers=headers)
    await js.publish(good, b'{"name": "Fine"}')
    # over the limit: refused at publish time by the stream, nothing stored
    with pytest.raises(APIError):
        await js.publish(good, b"x" * (engine.settings.max_body_bytes + 1))

    await wait_until(lambda: settled(js, worker), what="every message terminated or acked")
    letters = await list_dead_letters(engine.store, limit=100)
    assert sorted(v.event.reason for v in letters) == sorted(reason for reason, *_ in cases)
    assert {v.event.reason for v in letters} <= set(Reason)
    assert await lead_count(engine, workspace_id) == 1

    by_reason = {v.event.reason: v.event for v in letters}
    assert by_reason["invalid_utf8"].body == '{"name": "\ufffd\ufffd"}'
    assert by_reason["unknown_workspace"].workspace_id is None
    assert by_reason["bad_subject"].workspace_id is None
    assert by_reason["malformed_json"].workspace_id == workspace_id
    assert by_reason["unsupported_media_type"].headers == {"Content-Type": "text/plain"}
    assert by_reason["too_many_fields"].stream == worker.stream
    assert all(v.event.deliveries == 1 and v.event.channel == "nats" for v in letters)
    # newest first
    assert [v.position for v in letters] == sorted((v.position for v in letters), reverse=True)

    # terminated, so never redelivered: wait past several ack waits
    await asyncio.sleep(2.5)
    info = await consumer(js, worker)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert deliveries(info) == (len(cases) + 1, len(cases) + 1)
    assert len(await list_dead_letters(engine.store, limit=100)) == len(cases)
    await worker.stop()

    # the operator's view
    env = {
        "LEADLOG_DATABASE_URL": servers.database_url,
        "LEADLOG_NATS_URL": servers.nats_url,
        "LEADLOG_DATABASE_SCHEMA": engine.settings.database_schema,
    }
    shown = await run_cli(env, "dead-letters", "--json", "--limit", "100")
    rows = json.loads(shown)
    assert len(rows) == len(cases)
    assert rows[0]["id"] == str(letters[0].id)
    assert [r["position"] for r in rows] == [v.position for v in letters]
    assert {r["reason"] for r in rows} == {reason for reason, *_ in cases}
    mine = json.loads(
        await run_cli(env, "dead-letters", "--json", "--workspace", str(workspace_id))
    )
    assert len(mine) == len(cases) - 3
    assert json.loads(await run_cli(env, "dead-letters", "--json", "--limit", "2")) == rows[:2]
    table = await run_cli(env, "dead-letters")
    for text in ("malformed_json", "invalid_utf8", "too_deep", "received", "subject"):
        assert text in table


async def run_cli(env: dict[str, str], *args: str) -> str:
    """`leadlog intake …` in its own process, as an operator runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from gateways.cli.intake import intake_app; intake_app()",
        *args,
        env={**os.environ, **env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_dead_letters_list_newest_first_across_windows(
    engine: Engine, workspace_id: UUID
) -> None:
    other = (await create_workspace(engine.store, "Other", "US")).id
    for i in range(30):
        await record_dead_letter(
            engine.store,
            Letter(
                channel="nats",
                subject=f"s.{i}",
                reason="malformed_json",
                detail="x",
                body=b"{",
                received_at=datetime.now(UTC),
                workspace_id=workspace_id if i % 3 else other,
                key=f"k{i}",
            ),
        )
        # other events between the letters, so that listing takes more than one window
        filler = [
            Customer(workspace_id=other, name="c", email=None, active=True) for _ in range(200)
        ]
        await engine.store.append(
            Append(other, events=[e for c in filler for e in c.collect_events()])
        )
    again = await record_dead_letter(
        engine.store,
        Letter(
            channel="nats",
            subject="s.0",
            reason="malformed_json",
            detail="x",
            body=b"{",
            received_at=datetime.now(UTC),
            key="k0",
        ),
    )
    assert again.replayed
    letters = await list_dead_letters(engine.store, limit=100)
    assert [v.event.subject for v in letters] == [f"s.{i}" for i in reversed(range(30))]
    assert [v.event.subject for v in await list_dead_letters(engine.store, limit=4)] == [
        "s.29",
        "s.28",
        "s.27",
        "s.26",
    ]
    theirs = await list_dead_letters(engine.store, other, limit=100)
    assert [v.event.subject for v in theirs] == [f"s.{i}" for i in reversed(range(0, 30, 3))]


async def test_a_fetched_batch_commits_together_and_refused_messages_go_alone(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await (await make_worker()).stop()  # the stream, so that everything waits in it
    bad = {
        7: (b'{"company": "Acme"}', Reason.NAME_REQUIRED),
        19: (orjson.dumps({"name": "X", "customerId": str(uuid.uuid4())}), Reason.UNKNOWN_CUSTOMER),
        33: (b'{"name": ', Reason.MALFORMED_JSON),
    }
    for i in range(120):
        body = (
            bad[i][0] if i in bad else orjson.dumps({"name": f"P{i}", "email": f"p{i % 40}@x.io"})
        )
        await publish(js, subject, body, msg_id=f"b-{i}")
    batches_before, commands_before = engine.log.batches, engine.log.commands
    worker = await make_worker(fetch_batch=64)
    await wait_until(lambda: settled(js, worker), what="every message acked or terminated")
    leads = await received(engine, workspace_id)
    assert sorted(lead.name for lead in leads) == sorted(
        f"P{i}" for i in range(120) if i not in bad
    )
    assert sorted(lead.request_id for lead in leads) == list(range(1, 118))
    assert sum(not lead.is_duplicate for lead in leads) == 40  # one original per address
    letters = await list_dead_letters(engine.store)
    assert sorted((letter.event.msg_id, letter.event.reason) for letter in letters) == sorted(
        (f"b-{i}", reason) for i, (_, reason) in bad.items()
    )
    assert (worker.acked, worker.dead_lettered, worker.retried) == (117, 3, 0)
    assert deliveries(await consumer(js, worker)) == (120, 120)  # nothing redelivered
    # the leads went in a few shared commits (the three dead letters, one each)
    assert engine.log.commands - commands_before == 120
    assert engine.log.batches - batches_before <= 10
    await worker.stop()


async def test_pull_takes_what_is_there_and_waits_for_what_comes(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    worker = await make_worker()
    await worker.stop()
    sub = await js.pull_subscribe_bind(consumer=worker.durable, stream=worker.stream)
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pull(sub, 10, 0.3)  # nothing there: a lingering request that expires
        assert 0.25 < time.monotonic() - started < 2
        for i in range(5):
            await publish(js, subject, {"name": f"P{i}"})
        started = time.monotonic()
        first = await pull(sub, 3, 5.0)
        rest = await pull(sub, 10, 5.0)  # fewer than asked: answered at once, not at 5 s
        assert time.monotonic() - started < 2
        assert [m.metadata.sequence.stream for m in first + rest] == [1, 2, 3, 4, 5]
        for msg in first + rest:
            await msg.ack()

        async def later() -> None:
            await asyncio.sleep(0.2)
            await publish(js, subject, {"name": "Late"})

        publisher = asyncio.create_task(later())
        (late,) = await pull(sub, 10, 1.0)
        await publisher
        assert orjson.loads(late.data) == {"name": "Late"}
        await late.ack()
        assert sub.pending_bytes == 0  # what was taken is off nats-py's slow-consumer count
    finally:
        await sub.unsubscribe()


# ---- restarts ------------------------------------------------------------------------------


class CommitThenHang(LeadIntake):
    """Commits every lead (or batch of leads), then never returns for every 7th call: a
    crash between commit and ack."""

    def __init__(self, store: PostgresEventStore) -> None:
        super().__init__(store)
        self.calls = 0
        self.hung = 0

    async def _hang_now_and_then(self) -> None:
        self.calls += 1
        if self.calls % 7 == 0:
            self.hung += 1
            await asyncio.Event().wait()

    async def receive(self, intake: Intake) -> Receipt:
        receipt = await super().receive(intake)
        await self._hang_now_and_then()
        return receipt

    async def receive_many(self, intakes: Sequence[Intake]) -> list[Receipt | Exception]:
        receipts = await super().receive_many(intakes)
        await self._hang_now_and_then()
        return receipts


async def test_restart_mid_stream_loses_and_duplicates_nothing(
    engine: Engine,
    workspace_id: UUID,
    js: JetStreamContext,
    make_worker: Factory,
    servers: Servers,
) -> None:
    total = 2000
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    messages = [
        (subject, {"name": f"P{i}", "email": f"p{i}@example.com"}, f"m-{i}" if i % 4 else None)
        for i in range(total)
    ]
    options: dict[str, Any] = {"ack_wait": 2.0, "concurrency": 64, "fetch_batch": 32}

    first = await make_worker(**options)
    publisher = asyncio.create_task(publish_many(js, messages, chunk=100))
    await wait_until(lambda: _at_least(engine, workspace_id, 300), what="300 leads")
    await first.stop()
    # a clean stop acks everything it fetched
    assert (await consumer(js, first)).num_ack_pending == 0

    # The first worker may pass well beyond 300 before it stops: count from where it got.
    base = await lead_count(engine, workspace_id)
    assert base < total - 300, "the first worker took nearly everything: publish more"
    crashing_nats = await connect_nats(servers.nats_url, name="crashing")
    hanging = CommitThenHang(engine.store)
    # hung attempts stay hung (no timeout, no nak) until the crash
    second = await make_worker(
        dataclasses.replace(engine, nats=crashing_nats, intake=hanging),
        **options,
        process_timeout=60.0,
    )
    await wait_until(lambda: _at_least(engine, workspace_id, base + 300), what="300 more leads")
    await second.abort()
    await crashing_nats.close()
    assert hanging.hung > 0
    assert ((await consumer(js, second)).num_ack_pending or 0) > 0

    third = await make_worker(**options)
    await publisher
    await wait_until(lambda: _at_least(engine, workspace_id, total), what=f"{total} leads")
    await wait_until(lambda: settled(js, third), what="every message acked")

    leads = await received(engine, workspace_id)
    assert len(leads) == total
    keys = [lead.idempotency_key for lead in leads]
    assert len(set(keys)) == total
    assert {k for k in keys if k and k.startswith("nats:")} == {
        f"nats:m-{i}" for i in range(total) if i % 4
    }
    assert sorted(lead.request_id for lead in leads) == list(range(1, total + 1))
    assert sorted(lead.name for lead in leads) == sorted(f"P{i}" for i in range(total))
    assert await list_dead_letters(engine.store) == []
    delivered, made = deliveries(await consumer(js, third))
    assert delivered == total and made > total
    await third.stop()


async def _at_least(engine: Engine, workspace_id: UUID, count: int) -> bool:
    return await lead_count(engine, workspace_id) >= count


# ---- transient failures --------------------------------------------------------------------


class FlakyStore(PostgresEventStore):
    """Postgres "unreachable" for the first `failures` appends of leads (or of dead letters);
    with `error`, failing with that instead (a fault that is not the database's absence)."""

    def __init__(
        self,
        engine: Engine,
        failures: int | None,
        *,
        letters: bool = False,
        error: type[Exception] = ConnectionError,
    ) -> None:
        super().__init__(engine.log)
        self.failures = failures
        self.letters = letters
        self.error = error
        self.failed = 0

    async def append(self, append: Append) -> Appended:
        is_lead = append.build is not None
        if is_lead != self.letters and (self.failures is None or self.failed < self.failures):
            self.failed += 1
            raise self.error("connection refused (simulated)")
        return await super().append(append)

    async def append_many(self, appends: Sequence[Append]) -> list[Appended | Exception]:
        answers: list[Appended | Exception] = []
        for outcome in await asyncio.gather(
            *(self.append(append) for append in appends), return_exceptions=True
        ):
            assert not isinstance(outcome, BaseException) or isinstance(outcome, Exception)
            answers.append(outcome)
        return answers


async def test_transient_failures_are_retried_not_dead_lettered(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    flaky = FlakyStore(engine, failures=40)
    worker = await make_worker(
        dataclasses.replace(engine, store=flaky, intake=LeadIntake(flaky)),
        retry_delays=(0.05, 0.1, 0.2),
    )
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish_many(js, [(subject, {"name": f"P{i}"}, None) for i in range(50)])
    await wait_until(lambda: _at_least(engine, workspace_id, 50), what="50 leads")
    await wait_until(lambda: settled(js, worker))
    # The database away: each message is held and tried again in place, spending none of
    # its deliveries (so a long outage can never push it to a dead letter).
    assert flaky.failed == 40 and worker.waiting == 40 and worker.retried == 0
    assert await lead_count(engine, workspace_id) == 50
    assert await list_dead_letters(engine.store) == []
    assert deliveries(await consumer(js, worker)) == (50, 50)
    await worker.stop()


async def test_an_outage_outlasting_every_retry_delay_is_never_dead_lettered(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    down = FlakyStore(engine, failures=None)
    worker = await make_worker(
        dataclasses.replace(engine, store=down, intake=LeadIntake(down)),
        max_deliver=2,
        retry_delays=(0.05,),
        ack_wait=1.0,
    )
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish(js, subject, {"name": "Ann"}, msg_id="a-1")

    async def several_tries() -> bool:
        return down.failed >= 6  # past max_deliver and several ack waits' worth of backoff

    await wait_until(several_tries, what="the outage to outlast the deliveries")
    assert await list_dead_letters(engine.store) == []
    assert deliveries(await consumer(js, worker)) == (1, 1)  # held, never redelivered
    down.failures = down.failed  # the database is back
    await wait_until(lambda: settled(js, worker))
    assert await lead_count(engine, workspace_id) == 1
    assert await list_dead_letters(engine.store) == []
    await worker.stop()


async def test_a_failure_outlasting_every_retry_is_dead_lettered(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    down = FlakyStore(engine, failures=None, error=RuntimeError)
    worker = await make_worker(
        dataclasses.replace(engine, store=down, intake=LeadIntake(down)),
        max_deliver=3,
        retry_delays=(0.05,),
        # the server adds BackOff[1] - BackOff[0] (= ack_wait) to the second nak's delay
        ack_wait=1.0,
    )
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish(js, subject, {"name": "Ann"}, msg_id="a-1")
    await wait_until(lambda: settled(js, worker))
    (letter,) = await list_dead_letters(engine.store)
    assert letter.event.reason == Reason.RETRIES_EXHAUSTED
    assert letter.event.deliveries == 3
    assert letter.event.msg_id == "a-1"
    assert letter.event.workspace_id == workspace_id
    assert "RuntimeError" in letter.event.detail
    assert down.failed == 3
    await worker.stop()


async def test_a_refused_message_waits_until_its_dead_letter_is_recorded(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    flaky = FlakyStore(engine, failures=2, letters=True)
    worker = await make_worker(
        dataclasses.replace(engine, store=flaky, intake=LeadIntake(flaky)),
        max_deliver=2,
        retry_delays=(0.05,),
    )
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish(js, subject, b"{oops")
    await wait_until(lambda: settled(js, worker))
    # recording it failed twice (the database away): the message was held, not spent, and
    # recorded on its first delivery once the database answered, with the real reason
    (letter,) = await list_dead_letters(engine.store)
    assert letter.event.reason == Reason.MALFORMED_JSON
    assert letter.event.deliveries == 1
    assert flaky.failed == 2 and worker.waiting == 2
    await worker.stop()


class Hang(LeadIntake):
    """Never answers until released, then fails: a worker stuck past every ack wait."""

    def __init__(self, store: PostgresEventStore) -> None:
        super().__init__(store)
        self.release = asyncio.Event()
        self.calls = 0

    async def receive(self, intake: Intake) -> Receipt:
        self.calls += 1
        await self.release.wait()
        raise ConnectionError("gave up (simulated)")

    async def receive_many(self, intakes: Sequence[Intake]) -> list[Receipt | Exception]:
        return [await self.receive(intake) for intake in intakes]


async def test_a_message_the_server_stops_redelivering_leaves_a_dead_letter(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    hang = Hang(engine.store)
    worker = await make_worker(
        dataclasses.replace(engine, intake=hang),
        ack_wait=0.5,
        max_deliver=2,
        process_timeout=60.0,
    )
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "crm")
    await publish(js, subject, {"name": "Ann"})

    async def recorded() -> bool:
        return len(await list_dead_letters(engine.store)) == 1

    await wait_until(recorded, what="the max-deliveries dead letter")
    (letter,) = await list_dead_letters(engine.store)
    assert letter.event.reason == Reason.MAX_DELIVERIES
    assert letter.event.body == '{"name":"Ann"}'
    assert letter.event.workspace_id == workspace_id
    assert hang.calls == 2
    # the stuck attempts then fail on their last delivery: the same dead letter, not another
    hang.release.set()
    await worker.stop()
    assert len(await list_dead_letters(engine.store)) == 1


# ---- throughput ----------------------------------------------------------------------------


async def test_throughput(
    engine: Engine, workspace_id: UUID, js: JetStreamContext, make_worker: Factory
) -> None:
    total = int(os.environ.get("LEADLOG_NATS_BENCH", "5000"))
    subject = intake_subject(engine.settings.nats_prefix, workspace_id, "bulk")
    # the stream exists before the worker starts: create it by starting and stopping one
    await (await make_worker()).stop()
    await publish_many(
        js,
        [
            (
                subject,
                {"name": f"P{i}", "email": f"p{i}@example.com", "phone": "+14155552671"},
                None,
            )
            for i in range(total)
        ],
        chunk=1000,
    )
    started = time.perf_counter()
    worker = await make_worker()
    await wait_until(lambda: _at_least(engine, workspace_id, total), timeout=180)
    elapsed = time.perf_counter() - started
    await wait_until(lambda: settled(js, worker))
    await worker.stop()
    print(f"\nNATS intake: {total} leads in {elapsed:.2f}s = {total / elapsed:,.0f} leads/s")
    assert await lead_count(engine, workspace_id) == total
