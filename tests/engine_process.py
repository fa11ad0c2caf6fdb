"""`leadlog up` as a separate process against the test servers, for tests that need a real one."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from tests.conftest import Servers, drop_schema

LEADLOG = str(Path(sys.executable).parent / "leadlog")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def remove_streams(nats_url: str, prefix: str) -> None:
    """The JetStream streams a test's `leadlog` process made on a shared server."""

    async def remove() -> None:
        client = await nats.connect(nats_url)
        try:
            jsm = client.jetstream()
            for stream in await jsm.streams_info():
                name = stream.config.name or ""
                if name.upper().startswith(prefix.upper()):
                    await jsm.delete_stream(name)
        finally:
            await client.close()

    asyncio.run(remove())


@dataclass(frozen=True)
class EngineProcess:
    process: subprocess.Popen[str]
    base_url: str
    admin_token: str
    env: dict[str, str]

    def stderr(self) -> str:
        """What the process has logged so far (JSON lines)."""
        return (Path(self.env["LEADLOG_DATA_DIR"]) / "stderr.log").read_text(errors="replace")


def wait_healthy(process: subprocess.Popen[str], port: int, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"leadlog up exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("leadlog up did not become healthy")


def leadlog_env(
    servers: Servers, data_dir: Path, port: int, token: str, **extra: str
) -> dict[str, str]:
    """The environment of a `leadlog` process on the test servers: its own data folder,
    port, schema and subject prefix, this operator token; none of the caller's LEADLOG_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLOG_")}
    env.update(
        LEADLOG_DATA_DIR=str(data_dir),
        LEADLOG_HTTP_PORT=str(port),
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
        LEADLOG_DATABASE_SCHEMA=f"t_{uuid.uuid4().hex[:16]}",
        LEADLOG_NATS_PREFIX=f"t{uuid.uuid4().hex[:12]}",
        LEADLOG_ADMIN_TOKEN=token,
        LEADLOG_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


@contextmanager
def engine_process(servers: Servers, **extra: str) -> Iterator[EngineProcess]:
    """`leadlog up` on the test servers, in its own schema and NATS prefix; stopped, and its
    schema and streams removed, on exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="leadlog-proc-"))
    port = free_port()
    token = f"op-{uuid.uuid4().hex}"
    # One process: these tests exercise the app, not the process count
    # (tests/gateways/cli/test_processes.py does); more would multiply each test engine's
    # CPU and connections on a 2-core runner.
    env = leadlog_env(servers, data_dir, port, token, LEADLOG_PROCESSES="1", **extra)
    log = data_dir / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [LEADLOG, "up"], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
    try:
        wait_healthy(process, port, log)
        yield EngineProcess(process, f"http://127.0.0.1:{port}", token, env)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        asyncio.run(drop_schema(servers.database_url, env["LEADLOG_DATABASE_SCHEMA"]))
        remove_streams(servers.nats_url, env["LEADLOG_NATS_PREFIX"])
        shutil.rmtree(data_dir, ignore_errors=True)
