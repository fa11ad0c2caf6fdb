"""The embedded stack starts a real PostgreSQL and NATS JetStream, owns its folder, persists."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import nats
import psutil
import pytest

from gateways.embedded.stack import EmbeddedStack, StackAlreadyRunning, StackInfo

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[3]
STANDARD_PORTS = {5432, 4222}


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data folder, deliberately outside /tmp/pytest-of-<user>.

    As root, PostgreSQL runs as an unprivileged user that must traverse the folders above
    its data; every pytest session resets /tmp/pytest-of-<user> to 0700, so a concurrent
    session would briefly lock it out. The stack survives that (it retries), but the tests
    should not depend on it.
    """
    path = Path(tempfile.mkdtemp(prefix="leadlog-embedded-test-"))
    try:
        yield path / "data"
    finally:
        shutil.rmtree(path, ignore_errors=True)


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    """A zombie is dead: this machine's pid 1 reaps orphans lazily."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def gone(pid: int, timeout: float = 5.0) -> bool:
    """The process exits within `timeout` (pg_ctl returns just before the postmaster exits)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def recorded(folder: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((folder / "stack.json").read_text())
    return state


def server_pids(folder: Path) -> tuple[int, int]:
    postmaster = int((folder / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    nats_pid = int((folder / "nats" / "nats.pid").read_text().strip())
    return postmaster, nats_pid


async def select_one(info: StackInfo) -> None:
    conn = await asyncpg.connect(info.database_url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "leadlog"
    finally:
        await conn.close()


async def nats_round_trip(info: StackInfo) -> None:
    nc = await nats.connect(info.nats_url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        sub = await nc.subscribe("leadlog.test.ping")
        await nc.publish("leadlog.test.ping", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
        account = await nc.jetstream().account_info()
        assert account.limits is not None
    finally:
        await nc.close()


SECOND_OWNER = """
import sys
from pathlib import Path
from gateways.embedded.stack import EmbeddedStack, StackAlreadyRunning
try:
    EmbeddedStack(Path(sys.argv[1])).start()
except StackAlreadyRunning as exc:
    print("REFUSED", exc)
else:
    print("STARTED")
"""


def run_second_owner(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SECOND_OWNER, str(folder)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_start_serves_postgres_and_jetstream(data_dir: Path) -> None:
    with EmbeddedStack(data_dir) as stack:
        info = stack.start()
        assert stack.start() is info, "start() is idempotent within a process"
        assert info.postgres_port not in STANDARD_PORTS
        assert info.nats_port not in STANDARD_PORTS
        assert info.postgres_port != info.nats_port
        assert info.database_url == f"postgresql://postgres@127.0.0.1:{info.postgres_port}/leadlog"
        assert info.nats_url == f"nats://127.0.0.1:{info.nats_port}"

        await select_one(info)
        await nats_round_trip(info)

        for path in ("postgres/PG_VERSION", "nats", "logs/postgres.log", "logs/nats.log"):
            assert (data_dir / path).exists(), path
        state = recorded(data_dir)
        assert state["postgres_port"] == info.postgres_port
        assert state["nats_port"] == info.nats_port
        assert state["database_url"] == info.database_url
        assert state["nats_url"] == info.nats_url
        assert (data_dir / "stack.lock").read_text().strip() == str(os.getpid())
        postmaster, nats_pid = server_pids(data_dir)
        assert state["postgres_pid"] == postmaster
        assert state["nats_pid"] == nats_pid

    assert not port_open(info.postgres_port)
    assert not port_open(info.nats_port)
    assert gone(postmaster)
    assert gone(nats_pid)


async def test_restart_reuses_ports_and_keeps_data(data_dir: Path) -> None:
    stack = EmbeddedStack(data_dir)
    first = stack.start()
    conn = await asyncpg.connect(first.database_url)
    await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, name text)")
    await conn.execute("INSERT INTO kept VALUES (1, 'Zoë')")
    await conn.close()
    nc = await nats.connect(first.nats_url)
    js = nc.jetstream()
    await js.add_stream(name="KEPT", subjects=["kept.>"])
    await js.publish("kept.one", b"still here")
    await nc.close()
    stack.stop()
    stack.stop()  # a second stop is a no-op

    assert not port_open(first.postgres_port)
    assert not port_open(first.nats_port)

    again = EmbeddedStack(data_dir)
    second = again.start()
    try:
        assert second == first, "the recorded ports are reused"
        conn = await asyncpg.connect(second.database_url)
        assert await conn.fetchval("SELECT name FROM kept WHERE id = 1") == "Zoë"
        await conn.close()
        nc = await nats.connect(second.nats_url)
        stream = await nc.jetstream().stream_info("KEPT")
        assert stream.state.messages == 1
        await nc.close()
    finally:
        again.stop()


async def test_second_owner_is_refused_and_changes_nothing(data_dir: Path) -> None:
    with EmbeddedStack(data_dir) as stack:
        info = stack.start()
        watched = ["stack.json", "stack.lock", "postgres/postmaster.pid", "nats/nats.pid"]
        before = {name: (data_dir / name).read_bytes() for name in watched}

        result = await asyncio.to_thread(run_second_owner, data_dir)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("REFUSED"), result.stdout + result.stderr
        assert f"process {os.getpid()}" in result.stdout
        assert "kill -TERM" in result.stdout

        # A second object in this process is refused too: one owner per folder.
        with pytest.raises(StackAlreadyRunning, match=str(os.getpid())):
            EmbeddedStack(data_dir).start()

        assert {name: (data_dir / name).read_bytes() for name in watched} == before
        await select_one(info)
        await nats_round_trip(info)


CRASHING_OWNER = """
import asyncio, sys, time
from collections.abc import Iterator
from pathlib import Path
import asyncpg
from gateways.embedded.stack import EmbeddedStack
info = EmbeddedStack(Path(sys.argv[1])).start()
async def write() -> None:
    conn = await asyncpg.connect(info.database_url)
    await conn.execute("CREATE TABLE survived AS SELECT 42 AS answer")
    await conn.close()
asyncio.run(write())
print("READY", flush=True)
time.sleep(120)
"""


async def test_leftovers_of_a_crashed_owner_are_stopped(data_dir: Path) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_OWNER,
        str(data_dir),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), timeout=60)
        assert line.strip() == b"READY"
        old_postmaster, old_nats = server_pids(data_dir)
    finally:
        # SIGKILL: no stop(), no atexit; the servers outlive their owner.
        if owner.returncode is None:
            owner.send_signal(signal.SIGKILL)
        await owner.wait()

    try:
        assert alive(old_postmaster)
        assert alive(old_nats)

        with EmbeddedStack(data_dir) as stack:
            info = stack.start()
            assert gone(old_nats)
            assert gone(old_postmaster)
            assert server_pids(data_dir) != (old_postmaster, old_nats)
            conn = await asyncpg.connect(info.database_url)
            assert await conn.fetchval("SELECT answer FROM survived") == 42
            await conn.close()
            await nats_round_trip(info)
            log = (data_dir / "logs" / "postgres.log").read_text()
            assert "received fast shutdown request" in log, "the leftover was stopped cleanly"
            assert "not properly shut down" not in log
    finally:
        # Whatever failed above, leave no orphaned servers behind.
        with EmbeddedStack(data_dir):
            pass


async def test_a_recorded_port_taken_by_someone_else_is_replaced(data_dir: Path) -> None:
    with EmbeddedStack(data_dir) as stack:
        first = stack.start()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", first.nats_port))
        squatter.listen()
        with EmbeddedStack(data_dir) as stack:
            second = stack.start()
            assert second.postgres_port == first.postgres_port
            assert second.nats_port != first.nats_port
            assert second.nats_port not in STANDARD_PORTS
            assert recorded(data_dir)["nats_port"] == second.nats_port
            await nats_round_trip(second)


async def test_a_deep_data_folder_gets_a_short_socket_dir(data_dir: Path) -> None:
    deep = data_dir / ("a-rather-long-folder-name-" * 4) / "data"
    with EmbeddedStack(deep) as stack:
        info = stack.start()
        socket_dir = Path(str(recorded(deep)["socket_dir"]))
        assert not socket_dir.is_relative_to(deep)
        assert (socket_dir / f".s.PGSQL.{info.postgres_port}").is_socket()
        await select_one(info)
    assert not await asyncio.to_thread(socket_dir.exists), "removed on stop"
