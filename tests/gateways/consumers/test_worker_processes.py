"""End to end: one `leadlog serve api` and several `leadlog serve workers` processes on one
schema divide the consumers; one is SIGKILLed mid-load and another joins; afterwards every
view matches the log, every trigger was decided once, every event is on NATS once, and the
live processes share the partitions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from gateways.bootstrap import Engine, start_engine
from gateways.nats.relay import events_stream_name
from gateways.status import engine_status, worker_leases
from tests.conftest import Servers, delete_streams, drop_schema, settings_for
from tests.engine_process import LEADLOG, free_port
from tests.gateways.nats.test_relay import assert_stream_is_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TOKEN = f"op-{uuid.uuid4().hex}"
CLIENTS = 4
LOAD_SECONDS = 16.0


@dataclass
class Cluster:
    """The processes of one deployment: their environment, and where each one logs."""

    env: dict[str, str]
    base: Path
    port: int
    processes: dict[str, subprocess.Popen[str]] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> subprocess.Popen[str]:
        with (self.base / f"{name}.log").open("w") as stderr:
            process = subprocess.Popen(
                [LEADLOG, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-3000:]}" for name in self.processes)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LEADLOG, *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )


@pytest.fixture
async def observer(servers: Servers) -> AsyncIterator[tuple[Cluster, Engine]]:
    """A deployment's environment (its own schema, NATS prefix and data folder) with its API
    process serving, and an engine of this test process on the same schema and prefix
    that runs nothing: it reads status, the log and the stream. Afterwards every process
    is stopped, then the streams and the schema removed."""
    base = Path(tempfile.mkdtemp(prefix="leadlog-workers-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLOG_")}
    env.update(
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
        LEADLOG_DATABASE_SCHEMA=f"t_{uuid.uuid4().hex[:16]}",
        LEADLOG_NATS_PREFIX=f"t{uuid.uuid4().hex[:12]}",
        LEADLOG_DATA_DIR=str(base / "data"),
        LEADLOG_HTTP_PORT=str(free_port()),
        LEADLOG_ADMIN_TOKEN=TOKEN,
        LEADLOG_LOG_LEVEL="info",
        LEADLOG_TIMER_INTERVAL="1",
        COLUMNS="250",
    )
    cluster = Cluster(env, base, int(env["LEADLOG_HTTP_PORT"]))
    settings = settings_for(env["LEADLOG_DATABASE_SCHEMA"], env["LEADLOG_NATS_PREFIX"])
    engine: Engine | None = None
    try:
        api = cluster.spawn("api", "serve", "api")
        await wait_healthy(cluster, api)
        engine = await start_engine(settings, servers.database_url, servers.nats_url, TOKEN)
        yield cluster, engine
    finally:
        await asyncio.to_thread(cluster.stop_all)
        if engine is not None:
            await delete_streams(engine, settings.nats_prefix)
            await engine.close()
        await drop_schema(servers.database_url, settings.database_schema)
        shutil.rmtree(base, ignore_errors=True)


async def wait_healthy(cluster: Cluster, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the API exited early:\n{cluster.log('api')}")
            try:
                answer = await client.get(f"http://127.0.0.1:{cluster.port}/healthz", timeout=2)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"the API did not become healthy:\n{cluster.log('api')}")


async def until(check: Callable[[], Any], timeout: float, what: str, cluster: Cluster) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")
        await asyncio.sleep(0.25)


def holders_by_process(leases: dict[str, Any]) -> dict[int, list[str]]:
    """The partitions each worker holds, by its OS pid (members are `<pid>.<random>@<host>`)."""
    return {int(w["member"].split(".", 1)[0]): w["partitions"] for w in leases["workers"]}


async def post_leads(
    client: httpx.AsyncClient, headers: dict[str, str], stop: asyncio.Event, created: list[UUID]
) -> None:
    while not stop.is_set():
        answer = await client.post(
            "/v1/leads", json={"name": f"Lead {uuid.uuid4().hex[:8]}"}, headers=headers
        )
        if answer.status_code == 201:
            created.append(UUID(answer.json()["id"]))
        else:  # a 503 while the database is busy is allowed; anything else is not
            assert answer.status_code == 503, answer.text
            await asyncio.sleep(0.1)


async def test_worker_processes_divide_the_consumers_and_survive_a_kill(
    observer: tuple[Cluster, Engine],
) -> None:
    cluster, engine = observer
    operator = {"Authorization": f"Bearer {TOKEN}"}
    base = f"http://127.0.0.1:{cluster.port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        workspace = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=operator)
        assert workspace.status_code == 201, workspace.text
        workspace_id = workspace.json()["id"]
        token = await client.post(
            f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=operator
        )
        manager = {"Authorization": f"Bearer {token.json()['token']}"}
        alice = await client.post(
            "/v1/users", json={"name": "Alice", "email": "alice@acme.example"}, headers=manager
        )
        assert alice.status_code == 201, alice.text
        # Every lead received is assigned to Alice by an action: one decision per lead.
        lead_type = await client.post(
            "/v1/lead-types",
            json={
                "name": "Inbound",
                "actions": [
                    {"type": "assign_user", "trigger": "received", "userId": alice.json()["id"]}
                ],
            },
            headers=manager,
        )
        assert lead_type.status_code == 201, lead_type.text

        workers = [cluster.spawn(f"worker{i}", "serve", "workers") for i in (1, 2, 3)]

        async def spread_over(pids: set[int]) -> bool:
            leases = await worker_leases(engine)
            held = holders_by_process(leases)
            return leases["free"] == [] and set(held) == pids and all(held.values())

        await until(
            lambda: spread_over({w.pid for w in workers}), 60, "three workers to share", cluster
        )
        shares = [len(p) for p in holders_by_process(await worker_leases(engine)).values()]
        assert max(shares) - min(shares) <= 1, shares

        created: list[UUID] = []
        stop = asyncio.Event()
        load = [
            asyncio.create_task(post_leads(client, manager, stop, created)) for _ in range(CLIENTS)
        ]
        try:
            await asyncio.sleep(LOAD_SECONDS / 4)
            victim = workers[1]
            victim_held = holders_by_process(await worker_leases(engine))[victim.pid]
            assert victim_held
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            killed_at = len(created)
            survivors = {workers[0].pid, workers[2].pid}
            await until(lambda: spread_over(survivors), 30, "the survivors to take over", cluster)
            takeover = time.monotonic() - killed
            await asyncio.sleep(max(LOAD_SECONDS / 4 - takeover, 0))
            workers.append(cluster.spawn("worker4", "serve", "workers"))
            joined = time.monotonic()

            async def fair_with_newcomer() -> bool:
                held = holders_by_process(await worker_leases(engine))
                sizes = [len(p) for p in held.values()]
                return set(held) == survivors | {workers[3].pid} and max(sizes) - min(sizes) <= 1

            await until(fair_with_newcomer, 60, "the newcomer to get its share", cluster)
            share = time.monotonic() - joined
            await asyncio.sleep(max(LOAD_SECONDS / 2 - share, 0))
        finally:
            stop.set()
            await asyncio.gather(*load)
        assert killed_at > 0 and len(created) > killed_at, (killed_at, len(created))

        live = {workers[0].pid, workers[2].pid, workers[3].pid}
        await until(lambda: spread_over(live), 60, "the live workers to share", cluster)

        async def at_head() -> bool:
            report = await engine_status(engine)
            consumers = report["consumers"]
            assert isinstance(consumers, list)
            return all(c["lagEvents"] == 0 and c["lastError"] is None for c in consumers)

        async def all_decided() -> bool:
            done = await engine.pool.fetchval(
                """SELECT count(DISTINCT originator_id) FROM events
                    WHERE event_type = 'lead.action_taken' AND workspace_id = $1""",
                UUID(workspace_id),
            )
            return bool(done == len(created))

        await until(all_decided, 120, "every trigger to be decided", cluster)
        await until(at_head, 120, "every consumer to reach the head", cluster)

    # Every view is exactly what the log says (replayed from 0 and compared row by row).
    audit = await asyncio.to_thread(cluster.cli, "audit", "verify", "--json")
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-3000:]
    report = json.loads(audit.stdout)
    assert report["clean"] and report["differences"] == 0

    # Every trigger decided exactly once: one action taken and one assignment per lead.
    rows = await engine.pool.fetch(
        """
        SELECT originator_id,
               count(*) FILTER (WHERE event_type = 'lead.action_taken') AS decided,
               count(*) FILTER (WHERE event_type = 'lead.assigned') AS assigned
          FROM events WHERE workspace_id = $1 AND event_type IN
               ('lead.received', 'lead.action_taken', 'lead.assigned')
         GROUP BY originator_id
        """,
        UUID(workspace_id),
    )
    counts = {row["originator_id"]: (row["decided"], row["assigned"]) for row in rows}
    assert set(counts) == set(created)
    wrong = {lead: pair for lead, pair in counts.items() if pair != (1, 1)}
    assert wrong == {}, list(wrong.items())[:10]

    # Every event on NATS once, in log order, whichever process relayed it.
    js = engine.nats.jetstream()
    await assert_stream_is_log(engine, js, events_stream_name(engine.settings.nats_prefix))

    # The partitions are spread over the live processes, each holding some; the killed one
    # holds none, and `leadlog status --json` names the holder of each consumer.
    leases = await worker_leases(engine)
    held = holders_by_process(leases)
    assert set(held) == live and all(held.values()), held
    assert victim.pid not in held
    shown = await asyncio.to_thread(cluster.cli, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    members = {w["member"] for w in status["leases"]["workers"]}
    by_name = {c["name"]: c for c in status["consumers"]}
    for name in ("projection:leads", "reaction:release-pending-leads", "actions:0/4", "relay:nats"):
        assert by_name[name]["heldBy"] in members, by_name[name]
    print(
        f"\n{len(created)} leads ({killed_at} before the kill); survivors held every partition "
        f"{takeover:.2f} s after the SIGKILL; the fourth worker (process start included) had "
        f"its share {share:.2f} s after it was spawned; partitions per live worker: "
        f"{sorted(len(p) for p in held.values())}"
    )
