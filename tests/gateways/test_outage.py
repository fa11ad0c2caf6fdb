"""PostgreSQL and NATS outages while the engine runs: only 2xx or 503, nothing lost or doubled,
every consumer resumes by itself; a consumer that cannot resume is loud."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from domain.base import LoggedEvent
from domain.leads import Lead, LeadDetails, Source, Status
from gateways.bootstrap import Engine, start_engine
from gateways.consumers.projector import Projector
from gateways.http.app import create_app
from gateways.nats.intake import intake_subject
from gateways.nats.relay import events_stream_name
from gateways.postgres.errors import is_unavailable
from gateways.settings import Settings
from gateways.status import engine_status
from gateways.workers import Worker, build_workers
from handlers.intake import Intake, LeadIntake, activate_customer, register_customer
from projections.base import Projection, ProjectionDb, Tables
from tests.conftest import ADMIN_TOKEN, Servers, delete_streams, drop_schema, make_workspace
from tests.gateways.nats.test_relay import assert_stream_is_log
from tests.private_servers import PrivateNats, PrivatePostgres, started_nats, started_postgres

pytestmark = pytest.mark.timeout(300)


# ---- private servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with started_postgres("leadlog-outage-pg-") as server:
        yield server


@pytest.fixture
def private_nats() -> Iterator[PrivateNats]:
    with started_nats("leadlog-outage-nats-") as server:
        yield server


# ---- the engine under test ------------------------------------------------------------------


@dataclass
class Running:
    engine: Engine
    client: httpx.AsyncClient
    workers: list[Worker]


@contextlib.asynccontextmanager
async def running_engine(
    settings: Settings, database_url: str, nats_url: str
) -> AsyncIterator[Running]:
    """An engine with every worker `leadlog up` runs, and an HTTP client on its app that
    turns any exception the app lets out into the 500 a server would answer."""
    engine = await start_engine(settings, database_url, nats_url, ADMIN_TOKEN)
    workers = build_workers(engine)
    transport = httpx.ASGITransport(app=create_app(engine), raise_app_exceptions=False)
    try:
        for worker in workers:
            await worker.start()
        async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
            yield Running(engine, client, workers)
    finally:
        for worker in reversed(workers):
            with contextlib.suppress(Exception):
                await worker.stop()
        with contextlib.suppress(Exception):
            await delete_streams(engine, settings.nats_prefix)
        await engine.close()
        with contextlib.suppress(Exception):
            await drop_schema(database_url, settings.database_schema)


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, pause: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except Exception as error:
            if not is_unavailable(error):
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(pause)


@dataclass
class Traffic:
    """What the clients were answered, request by request."""

    answers: list[tuple[str, int, str]] = field(default_factory=list)
    created: list[UUID] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, status: int) -> int:
        return sum(1 for _, code, _ in self.answers if code == status)

    def record(self, what: str, response: httpx.Response) -> None:
        self.answers.append((what, response.status_code, response.text[:300]))
        if response.status_code == 503:
            if "retry-after" not in response.headers:
                self.problems.append(f"{what}: 503 without Retry-After")
            if what != "healthz":
                code = response.json()["error"]["code"]
                if code not in ("database_unavailable", "view_behind"):
                    self.problems.append(f"{what}: 503 {code}")
        elif not 200 <= response.status_code < 300:
            self.problems.append(f"{what}: {response.status_code} {response.text[:300]}")


async def ingest(
    client: httpx.AsyncClient, headers: dict[str, str], traffic: Traffic, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        response = await client.post(
            "/v1/leads", json={"name": f"Lead {uuid.uuid4().hex[:8]}"}, headers=headers
        )
        traffic.record("POST /v1/leads", response)
        if response.status_code == 201:
            traffic.created.append(UUID(response.json()["id"]))
        else:
            await asyncio.sleep(0.05)


async def read(
    client: httpx.AsyncClient, ws: dict[str, Any], traffic: Traffic, stop: asyncio.Event
) -> None:
    pipeline = ws["pipeline"]["id"]
    routes = [
        ("GET /v1/leads", "/v1/leads"),
        ("GET board", f"/v1/lead-pipelines/{pipeline}/board"),
        ("GET /v1/lead-pipelines", "/v1/lead-pipelines"),
        ("metrics", "/metrics"),
        ("healthz", "/healthz"),
    ]
    while not stop.is_set():
        for what, path in routes:
            traffic.record(what, await client.get(path, headers=ws["h"]))
        await asyncio.sleep(0.05)


async def pending_lead(engine: Engine, workspace_id: UUID, customer_id: UUID) -> UUID:
    receipt = await engine.intake.receive(
        Intake(
            workspace_id=workspace_id,
            details=LeadDetails(name="Waiting for the customer", customer_id=customer_id),
            source=Source.MANUAL,
            actor="test",
        )
    )
    assert receipt.status == Status.PENDING
    return receipt.lead_id


async def lead_status(engine: Engine, lead_id: UUID) -> str:
    lead = await engine.store.load(Lead, lead_id)
    assert lead is not None
    return lead.status


async def all_resumed(engine: Engine) -> bool:
    """Every consumer at the head with no error (lazy checkpoints included)."""
    report = await engine_status(engine)
    consumers = report["consumers"]
    assert isinstance(consumers, list)
    return (
        not report["stopped"]
        and len(consumers) > 0
        and all(c["lagEvents"] == 0 and c["lastError"] is None for c in consumers)
    )


async def outage(
    private_postgres: PrivatePostgres,
    servers: Servers,
    settings: Settings,
    break_it: Callable[[], None],
    down_for: float,
) -> None:
    """Ingest and read over HTTP while PostgreSQL goes away (by `break_it`) for about
    `down_for` seconds and comes back, the engine running throughout."""
    async with running_engine(settings, private_postgres.url, servers.nats_url) as run:
        engine, client = run.engine, run.client
        ws = await make_workspace(client)
        workspace = UUID(ws["id"])
        customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
        waiting = [await pending_lead(engine, workspace, customer) for _ in range(3)]

        traffic = Traffic()
        stop = asyncio.Event()
        clients = [
            *(asyncio.create_task(ingest(client, ws["h"], traffic, stop)) for _ in range(4)),
            asyncio.create_task(read(client, ws, traffic, stop)),
        ]
        try:

            async def some_created(n: int) -> bool:
                return len(traffic.created) >= n

            await wait_until(lambda: some_created(20), 30, "leads before the outage")
            await asyncio.to_thread(break_it)
            before = len(traffic.created)

            async def refused() -> bool:
                return traffic.count(503) >= 10

            await wait_until(refused, 20, "503s while the database is down")
            await asyncio.sleep(down_for)
            # Nothing can have been created while it was down.
            assert len(traffic.created) - before <= 4
            await asyncio.to_thread(private_postgres.start)
            after = len(traffic.created)
            await wait_until(lambda: some_created(after + 30), 60, "leads after the outage")
        finally:
            stop.set()
            await asyncio.gather(*clients)

        assert traffic.problems == [], traffic.problems[:10]
        assert traffic.count(500) == 0

        await wait_until(lambda: all_resumed(engine), 60, "every consumer to resume")

        # Every lead answered 2xx is in the leads view; nothing is there twice.
        rows = await engine.pool.fetch(
            "SELECT id, request_id FROM leads WHERE workspace_id = $1", workspace
        )
        in_view = {row["id"] for row in rows}
        assert set(traffic.created) <= in_view
        assert len(traffic.created) == len(set(traffic.created))
        numbers = [row["request_id"] for row in rows]
        assert len(numbers) == len(set(numbers))
        received = await engine.pool.fetchval(
            "SELECT count(*) FROM events WHERE event_type = 'lead.received' AND workspace_id = $1",
            workspace,
        )
        assert received == len(rows)

        # The reaction kept running: activating the customer releases their pending leads.
        await activate_customer(engine.store, workspace, customer)

        async def released() -> bool:
            return [await lead_status(engine, i) for i in waiting] == [Status.BACKLOG] * 3

        await wait_until(released, 20, "the pending leads to be released")

        # Every event reached NATS once, in log order.
        await wait_until(lambda: all_resumed(engine), 30, "the consumers to catch up again")
        js = engine.nats.jetstream()
        await assert_stream_is_log(engine, js, events_stream_name(settings.nats_prefix))

        health = await client.get("/healthz")
        assert health.status_code == 200, health.text


async def test_postgres_fast_shutdown_while_ingesting(
    private_postgres: PrivatePostgres, servers: Servers, settings: Settings
) -> None:
    await outage(private_postgres, servers, settings, private_postgres.stop_fast, down_for=1.0)


@pytest.mark.slow
async def test_postgres_crash_while_ingesting(
    private_postgres: PrivatePostgres, servers: Servers, settings: Settings
) -> None:
    await outage(private_postgres, servers, settings, private_postgres.crash, down_for=5.0)


@pytest.mark.slow
async def test_postgres_long_fast_shutdown_while_ingesting(
    private_postgres: PrivatePostgres, servers: Servers, settings: Settings
) -> None:
    await outage(private_postgres, servers, settings, private_postgres.stop_fast, down_for=15.0)


async def test_every_route_answers_503_while_postgres_is_down(
    private_postgres: PrivatePostgres, servers: Servers, settings: Settings
) -> None:
    async with running_engine(settings, private_postgres.url, servers.nats_url) as run:
        client = run.client
        ws = await make_workspace(client)
        await asyncio.to_thread(private_postgres.stop_fast)
        try:
            pipeline = ws["pipeline"]["id"]
            calls: Sequence[tuple[str, str, dict[str, Any] | None]] = [
                ("GET", "/v1/leads", None),
                ("POST", "/v1/leads", {"name": "Ada"}),
                ("GET", f"/v1/leads/{uuid.uuid4()}", None),
                ("GET", f"/v1/lead-pipelines/{pipeline}/board", None),
                ("GET", "/v1/lead-pipelines", None),
                ("POST", "/v1/workspaces", {"name": "Other"}),
            ]
            for method, path, body in calls:
                response = await client.request(method, path, json=body, headers=ws["h"])
                assert response.status_code == 503, (method, path, response.text)
                assert response.headers["retry-after"].isdigit()
                assert response.json()["error"]["code"] == "database_unavailable"
            health = await client.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "leadlog_database_up 0.0" in metrics.text
        finally:
            await asyncio.to_thread(private_postgres.start)

        # The pool hands out fresh connections: the same calls succeed again.
        async def works() -> bool:
            response = await client.post("/v1/leads", json={"name": "Back"}, headers=ws["h"])
            return response.status_code == 201

        await wait_until(works, 30, "ingest to work again")
        await wait_until(lambda: all_resumed(run.engine), 30, "every consumer to resume")


# ---- NATS outage ----------------------------------------------------------------------------


async def test_nats_outage_relay_and_intake_resume_nothing_lost_or_doubled(
    private_nats: PrivateNats, servers: Servers, settings: Settings
) -> None:
    async with running_engine(settings, servers.database_url, private_nats.url) as run:
        engine, client = run.engine, run.client
        ws = await make_workspace(client)
        workspace = UUID(ws["id"])
        publisher = await nats.connect(
            private_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )
        try:
            js = publisher.jetstream()
            subject = intake_subject(settings.nats_prefix, workspace, "crm")

            async def publish(names: Sequence[str]) -> None:
                for name in names:
                    await js.publish(
                        subject, orjson.dumps({"name": name}), headers={"Nats-Msg-Id": name}
                    )

            first = [f"before-{i}" for i in range(20)]
            await publish(first)
            private_nats.stop()
            # While NATS is away: leads over HTTP are committed, the relay cannot publish.
            during = []
            for i in range(10):
                response = await client.post(
                    "/v1/leads", json={"name": f"during-{i}"}, headers=ws["h"]
                )
                assert response.status_code == 201, response.text
                during.append(response.json()["id"])
            await asyncio.sleep(1.0)
            private_nats.start()
            second = [f"after-{i}" for i in range(20)]
            await wait_until(_connected(publisher), 20, "the publisher to reconnect")
            await publish(second)

            async def all_in() -> bool:
                names = await engine.pool.fetch(
                    "SELECT name FROM leads WHERE workspace_id = $1", workspace
                )
                return len(names) >= len(first) + len(second) + len(during)

            await wait_until(all_in, 60, "every lead in the view")
            await wait_until(lambda: all_resumed(engine), 60, "every consumer to resume")
            rows = await engine.pool.fetch(
                "SELECT name FROM leads WHERE workspace_id = $1", workspace
            )
            names = sorted(row["name"] for row in rows)
            assert names == sorted([*first, *second, *(f"during-{i}" for i in range(10))])
            letters = await engine.pool.fetchval(
                "SELECT count(*) FROM events WHERE event_type LIKE 'dead_letter.%'"
            )
            assert letters == 0
            await assert_stream_is_log(
                engine, engine.nats.jetstream(), events_stream_name(settings.nats_prefix)
            )
        finally:
            await publisher.close()


def _connected(nc: NatsClient) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(nc.is_connected)

    return check


# ---- a consumer that cannot resume is loud --------------------------------------------------


class BrokenLeads(Projection):
    """A view whose code cannot fold a received lead."""

    name = "broken_leads"
    version = 1
    table_names = ("broken_leads",)
    event_types = frozenset({"lead.received"})

    def create_sql(self, tables: Tables) -> str:
        return f"CREATE TABLE IF NOT EXISTS {tables['broken_leads']} (id uuid PRIMARY KEY)"

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        raise RuntimeError("cannot fold this")


async def test_a_stopped_consumer_is_in_status_healthz_and_metrics(
    engine: Engine, client: httpx.AsyncClient, running: None
) -> None:
    ws = await make_workspace(client)
    created = await client.post("/v1/leads", json={"name": "Ada"}, headers=ws["h"])
    assert created.status_code == 201
    # Another process runs a projection that fails at the lead: only the log tells us.
    elsewhere = Projector(engine.pool, engine.log, engine.store, [BrokenLeads()])
    await elsewhere.start()
    try:
        consumer = "projection:broken_leads"

        async def stopped() -> bool:
            report = await engine_status(engine)
            stopped = report["stopped"]
            assert isinstance(stopped, dict)
            return consumer in stopped

        await wait_until(stopped, 20, "the projection to stop")
        report = await engine_status(engine)
        consumers = report["consumers"]
        assert isinstance(consumers, list)
        entry = next(c for c in consumers if c["name"] == consumer)
        assert entry["stopped"] is True
        assert "cannot fold this" in entry["lastError"]

        health = await client.get("/healthz")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert consumer in body["checks"]["consumers"]["stopped"]
        assert health.headers["retry-after"].isdigit()

        metrics = await client.get("/metrics")
        assert f'leadlog_consumer_stopped{{consumer="{consumer}"}} 1.0' in metrics.text
        assert 'leadlog_consumer_stopped{consumer="projection:leads"} 0.0' in metrics.text
    finally:
        await elsewhere.stop()


async def test_idle_consumers_show_no_lag_and_leads_from_any_process_are_counted(
    engine: Engine, client: httpx.AsyncClient, running: None
) -> None:
    ws = await make_workspace(client)
    for name in ("A", "B", "C"):
        response = await client.post("/v1/leads", json={"name": name}, headers=ws["h"])
        assert response.status_code == 201
    # As the CLI's import does: an intake of its own, counted by no metric of this process.
    await LeadIntake(engine.store).receive(
        Intake(
            workspace_id=UUID(ws["id"]),
            details=LeadDetails(name="Imported"),
            source=Source.IMPORT,
            actor="cli",
        )
    )
    # Action shards and reactions read few event types: they must still reach the head.
    await wait_until(lambda: all_resumed(engine), 20, "every consumer to show no lag")

    async def counted() -> bool:
        text = (await client.get("/metrics")).text
        return 'leadlog_leads_received_total{source="import"} 1.0' in text

    await wait_until(counted, 20, "the imported lead to be counted")
    text = (await client.get("/metrics")).text
    assert 'leadlog_leads_received_total{source="manual"} 3.0' in text
    assert 'leadlog_consumer_lag_events{consumer="actions:0/4"} 0.0' in text
