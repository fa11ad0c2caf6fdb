"""`leadlog up --processes N`: one port served by N processes, stopped and kept together."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from gateways.cli.processes import PortInUse, claim, listen
from tests.conftest import Servers, drop_schema
from tests.engine_process import LEADLOG, free_port, leadlog_env, remove_streams

pytestmark = pytest.mark.timeout(180)

CHILD_MODULE = "gateways.cli.api_process"


@dataclass(frozen=True)
class Up:
    process: subprocess.Popen[str]
    port: int
    token: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        """The live API children serving beside the parent (not the embedded servers, none
        here; not a killed child the parent has yet to reap)."""
        found = []
        for child in psutil.Process(self.process.pid).children():
            try:
                if CHILD_MODULE in child.cmdline():
                    found.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return found


@contextmanager
def leadlog_up(servers: Servers, *args: str, **extra: str) -> Iterator[Up]:
    """`leadlog up ARGS` on the test servers in its own schema and prefix, once it says it
    is up; on exit it is stopped if still running, every child of it killed, and its
    schema and streams removed."""
    data_dir = Path(tempfile.mkdtemp(prefix="leadlog-processes-"))
    port = free_port()
    token = f"op-{uuid.uuid4().hex}"
    env = leadlog_env(servers, data_dir, port, token, **extra)
    log = data_dir / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [LEADLOG, "up", *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
    up = Up(process, port, token, log)
    spawned: set[psutil.Process] = set()
    try:
        wait_until(lambda: "leadlog is up" in up.stderr() or process.poll() is not None, 90)
        assert process.poll() is None, f"leadlog up exited:\n{up.stderr()}"
        spawned.update(up.children())
        yield up
    finally:
        if process.poll() is None:
            spawned.update(up.children())
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in spawned:
            if child.is_running():
                child.kill()
        asyncio.run(drop_schema(servers.database_url, env["LEADLOG_DATABASE_SCHEMA"]))
        remove_streams(servers.nats_url, env["LEADLOG_NATS_PREFIX"])
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def listening(port: int) -> set[int]:
    """The processes with a socket listening on `port` (every process on the machine)."""
    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }


def accepted_by(pids: set[int], port: int) -> dict[int, int]:
    """How many open server-side connections on `port` each of `pids` holds."""
    counts: dict[int, int] = {}
    for pid in pids:
        connections = psutil.Process(pid).net_connections(kind="tcp")
        counts[pid] = sum(
            1
            for c in connections
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
        )
    return counts


def port_free(port: int) -> bool:
    """Whether a new server could listen on `port` now (as `leadlog up` checks)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_claim_refuses_a_port_another_socket_shares() -> None:
    # SO_REUSEPORT would let a second `up` bind beside the first without an error.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortInUse):
            claim("127.0.0.1", port)
        # The children's way in does not check: it joins the port on purpose.
        joined = listen("127.0.0.1", port)
        for sock in joined:
            sock.close()
    alone = claim("127.0.0.1", port)
    try:
        assert [s.getsockname()[1] for s in alone] == [port]
    finally:
        for sock in alone:
            sock.close()


def test_every_process_serves_and_each_lead_lands_once(servers: Servers) -> None:
    with leadlog_up(servers, "--processes", "3") as up:
        assert "3 processes serve HTTP" in up.stderr()
        children = up.children()
        assert len(children) == 2
        pids = {up.process.pid, *(c.pid for c in children)}
        assert listening(up.port) == pids

        # Fresh connections are spread over every process, each answering on its own.
        spread = asyncio.run(answered_by(up, pids, connections=40))
        assert sum(spread.values()) == 40, spread
        assert all(count > 0 for count in spread.values()), spread

        manager = asyncio.run(workspace_manager(up))
        posted = asyncio.run(post_leads_concurrently(up, manager, clients=16, each=8))
        assert len(posted) == 16 * 8

        # Read from every process: each sees every lead, each exactly once.
        seen = asyncio.run(read_board(up, manager, max(posted.values()), readers=12))
        for ids in seen:
            assert sorted(ids) == sorted(posted), "a lead is missing or on the board twice"

        children_before = set(children)
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(20) == 0, up.stderr()
        assert wait_until(lambda: all(gone(c) for c in children_before), 5)
        assert wait_until(lambda: not listening(up.port) and port_free(up.port), 5)


async def answered_by(up: Up, pids: set[int], connections: int) -> dict[int, int]:
    """How many of `connections` fresh connections, each answered once and still open
    (together, well within the keep-alive timeout), each of `pids` holds."""
    clients = [httpx.AsyncClient(base_url=up.base_url, timeout=10) for _ in range(connections)]
    try:
        answers = await asyncio.gather(*(client.get("/healthz") for client in clients))
        assert [a.status_code for a in answers] == [200] * connections
        return accepted_by(pids, up.port)
    finally:
        for client in clients:
            await client.aclose()


async def workspace_manager(up: Up) -> dict[str, str]:
    """A new workspace's manager, as request headers."""
    operator = {"Authorization": f"Bearer {up.token}"}
    async with httpx.AsyncClient(base_url=up.base_url, headers=operator, timeout=30) as admin:
        workspace = (await admin.post("/v1/workspaces", json={"name": "Acme"})).json()["id"]
        created = await admin.post(f"/v1/workspaces/{workspace}/tokens", json={"role": "manager"})
        assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


async def post_leads_concurrently(
    up: Up, manager: dict[str, str], clients: int, each: int
) -> dict[str, int]:
    """`clients` clients, each on its own connection, post `each` leads and read each one
    back at once through the API; the ids posted, with their log positions."""

    async def one_client(number: int) -> dict[str, int]:
        mine: dict[str, int] = {}
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(
            base_url=up.base_url, headers=manager, timeout=30, limits=limits
        ) as client:
            for sequence in range(each):
                email = f"c{number}-{sequence}@processes.example"
                response = await client.post(
                    "/v1/leads", json={"name": f"Lead {number}-{sequence}", "email": email}
                )
                assert response.status_code == 201, response.text
                receipt = response.json()
                found = await client.get(
                    "/v1/leads", params={"after": receipt["position"], "search": email}
                )
                assert found.status_code == 200, found.text
                assert [item["id"] for item in found.json()["items"]] == [receipt["id"]]
                mine[receipt["id"]] = receipt["position"]
        return mine

    results = await asyncio.gather(*(one_client(n) for n in range(clients)))
    return {lead: position for result in results for lead, position in result.items()}


async def read_board(up: Up, manager: dict[str, str], after: int, readers: int) -> list[list[str]]:
    """The lead ids on the board as each of `readers` fresh connections reads them."""

    async def read() -> list[str]:
        ids: list[str] = []
        async with httpx.AsyncClient(base_url=up.base_url, headers=manager, timeout=30) as client:
            page = 1
            while True:
                response = await client.get(
                    "/v1/leads", params={"after": after, "limit": 200, "page": page}
                )
                assert response.status_code == 200, response.text
                items = response.json()["items"]
                ids.extend(item["id"] for item in items)
                if len(items) < 200:
                    return ids
                page += 1

    return list(await asyncio.gather(*(read() for _ in range(readers))))


def test_a_child_that_dies_is_started_again(servers: Servers) -> None:
    with leadlog_up(servers, "--processes", "3") as up:
        victim, survivor = up.children()
        victim.kill()

        def replaced() -> bool:
            children = up.children()
            return (
                len(children) == 2
                and victim not in children
                and listening(up.port) == {up.process.pid, *(c.pid for c in children)}
            )

        assert wait_until(replaced, 20), up.stderr()
        assert survivor in up.children()
        assert f'"pid": {victim.pid}' in up.stderr()
        assert "api_process_exited" in up.stderr()
        for _ in range(10):
            with httpx.Client(base_url=up.base_url, timeout=10) as client:
                assert client.get("/healthz").status_code == 200


def test_nothing_serves_after_the_parent_is_killed(servers: Servers) -> None:
    with leadlog_up(servers, "--processes", "3") as up:
        children = up.children()
        assert len(children) == 2
        up.process.kill()
        up.process.wait(10)
        # Nothing serves the port within seconds; the children finish their graceful stop.
        assert wait_until(lambda: not listening(up.port), 5), listening(up.port)
        assert wait_until(lambda: all(gone(c) for c in children), 10), [
            c.pid for c in children if not gone(c)
        ]


def test_one_process_when_asked(servers: Servers) -> None:
    with leadlog_up(servers, LEADLOG_PROCESSES="1") as up:
        # One process says it is up just before it listens, as `leadlog up` always has.
        assert wait_until(lambda: listening(up.port) == {up.process.pid}, 10)
        assert httpx.get(f"{up.base_url}/healthz", timeout=10).status_code == 200
        assert "processes serve HTTP" not in up.stderr()
        assert up.children() == []
