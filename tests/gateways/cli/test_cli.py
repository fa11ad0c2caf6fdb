"""`leadlog` as a user runs it: `up` in a real process, admin verbs, clean shutdown, bad input."""

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
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from domain.leads import Lead, LeadDetails, Source
from gateways.bootstrap import start_engine
from gateways.settings import Settings
from handlers.intake import Intake, activate_customer, register_customer
from handlers.workspaces import create_workspace
from tests.conftest import Servers, drop_schema
from tests.engine_process import free_port, remove_streams

pytestmark = pytest.mark.timeout(240)

LEADLOG = str(Path(sys.executable).parent / "leadlog")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's temp folder: the embedded PostgreSQL runs as another user (see conftest).
    path = Path(tempfile.mkdtemp(prefix="leadlog-cli-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def environment(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLOG_")}
    env.update(
        LEADLOG_DATA_DIR=str(data_dir),
        LEADLOG_HTTP_PORT=str(port),
        LEADLOG_DATABASE_SCHEMA=f"t_{uuid.uuid4().hex[:16]}",
        LEADLOG_NATS_PREFIX=f"t{uuid.uuid4().hex[:12]}",
        **extra,
    )
    return env


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEADLOG, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_healthy(process: subprocess.Popen[str], port: int, timeout: float = 90) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"leadlog up exited early:\n{process.stderr.read() if process.stderr else ''}"
            )
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("leadlog up did not become healthy")


def stop(process: subprocess.Popen[str], timeout: float = 30) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=timeout)
    return stderr


def test_up_on_embedded_servers(data_dir: Path) -> None:
    port = free_port()
    env = environment(data_dir, port)
    process = subprocess.Popen(
        [LEADLOG, "up"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        health = wait_healthy(process, port)
        checks = health.json()["checks"]
        assert checks["postgres"] == {"ok": True} and checks["nats"] == {"ok": True}
        assert all(check["ok"] for check in checks.values()), checks

        stack = json.loads((data_dir / "stack.json").read_text())
        assert stack["postgres_port"] not in (5432, 4222)
        assert stack["nats_port"] != 4222
        token = (data_dir / "admin-token").read_text().strip()
        assert (data_dir / "admin-token").stat().st_mode & 0o077 == 0

        created = httpx.post(
            f"http://127.0.0.1:{port}/v1/workspaces",
            json={"name": "Acme"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201

        # admin verbs use the running engine's servers
        listed = run(env, "workspaces", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [w["name"] for w in json.loads(listed.stdout)] == ["Acme"]

        issued = run(
            env,
            "tokens",
            "create",
            "--workspace",
            created.json()["id"],
            "--role",
            "viewer",
            "--json",
        )
        assert issued.returncode == 0, issued.stderr
        viewer = json.loads(issued.stdout)["token"]
        me = httpx.get(
            f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {viewer}"}
        )
        assert me.json()["permissions"] == ["leads:view"]

        # status names every consumer with its lag, and the NATS intake backlog
        deadline = time.monotonic() + 30
        while True:
            shown = run(env, "status", "--json")
            assert shown.returncode == 0, shown.stderr
            report = json.loads(shown.stdout)
            names = {c["name"]: c for c in report["consumers"]}
            caught_up = all(
                names.get(f"projection:{n}", {}).get("lagEvents") == 0
                for n in ("leads", "timeline", "workspaces")
            )
            if caught_up or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert caught_up, report
        assert all(c["lastError"] is None for c in report["consumers"])
        assert report["natsIntake"] == {"pending": 0, "ackPending": 0, "redelivered": 0}
        assert report["deliveries"]["pending"] == 0 and report["deliveries"]["failed"] == 0

        # a second `up` on the same data folder refuses, and harms nothing
        second = run(environment(data_dir, free_port()), "up", timeout=60)
        assert second.returncode != 0
        assert "already in use" in second.stderr
        assert str(process.pid) in second.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        stderr = stop(process)
    assert process.returncode == 0, stderr
    for pid_key in ("postgres_pid", "nats_pid"):
        pid = stack[pid_key]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    # the next start reuses the data: the workspace is still there
    again = run(
        environment(data_dir, free_port())
        | {"LEADLOG_DATABASE_SCHEMA": env["LEADLOG_DATABASE_SCHEMA"]},
        "workspaces",
        "list",
        "--json",
    )
    assert again.returncode == 0, again.stderr
    assert [w["name"] for w in json.loads(again.stdout)] == ["Acme"]


def test_up_with_configured_servers_starts_none(data_dir: Path, servers: Servers) -> None:
    port = free_port()
    env = environment(
        data_dir,
        port,
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
        LEADLOG_ADMIN_TOKEN="configured-token",
    )
    process = subprocess.Popen(
        [LEADLOG, "up"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_healthy(process, port)
        me = httpx.get(
            f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": "Bearer configured-token"}
        )
        assert me.json()["operator"] is True
        assert not (data_dir / "postgres").exists()
        assert not (data_dir / "stack.json").exists()
    finally:
        stderr = stop(process)
        asyncio.run(drop_schema(servers.database_url, env["LEADLOG_DATABASE_SCHEMA"]))
        remove_streams(servers.nats_url, env["LEADLOG_NATS_PREFIX"])
    assert process.returncode == 0, stderr


def test_cli_bad_input_gets_clear_messages(data_dir: Path, servers: Servers) -> None:
    env = environment(
        data_dir,
        free_port(),
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
    )
    try:
        bad_role = run(
            env, "tokens", "create", "--workspace", str(uuid.uuid4()), "--role", "emperor"
        )
        assert bad_role.returncode != 0
        assert "emperor" in bad_role.stderr

        missing = run(env, "tokens", "create", "--workspace", str(uuid.uuid4()), "--role", "viewer")
        assert missing.returncode == 1
        assert "does not exist" in missing.stderr

        empty = run(env, "workspaces", "create", "   ")
        assert empty.returncode == 1
        assert "must not be empty" in empty.stderr

        region = run(env, "workspaces", "create", "Acme", "--region", "usa")
        assert region.returncode == 1
        assert "--region" in region.stderr

        listed = run(env, "workspaces", "list", "--json")
        assert json.loads(listed.stdout) == []
    finally:
        asyncio.run(drop_schema(servers.database_url, env["LEADLOG_DATABASE_SCHEMA"]))


def test_up_refuses_a_port_in_use(data_dir: Path, servers: Servers) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = environment(
            data_dir,
            port,
            LEADLOG_DATABASE_URL=servers.database_url,
            LEADLOG_NATS_URL=servers.nats_url,
        )
        result = run(env, "up", timeout=60)
    assert result.returncode == 1
    assert "already in use" in result.stderr


def test_serve_workers_reacts_to_what_another_process_writes(
    data_dir: Path, servers: Servers
) -> None:
    env = environment(
        data_dir,
        free_port(),
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
    )
    schema = env["LEADLOG_DATABASE_SCHEMA"]
    process = subprocess.Popen(
        [LEADLOG, "serve", "workers"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(_release_through_the_workers_process(servers, schema, process))
    finally:
        stderr = stop(process)
        asyncio.run(drop_schema(servers.database_url, schema))
        remove_streams(servers.nats_url, env["LEADLOG_NATS_PREFIX"])
    assert process.returncode == 0, stderr
    assert "workers are running" in stderr


async def _release_through_the_workers_process(
    servers: Servers, schema: str, process: subprocess.Popen[str]
) -> None:
    settings = Settings(database_schema=schema, nats_prefix="unused")
    engine = await start_engine(settings, servers.database_url, servers.nats_url, None)
    try:
        workspace = (await create_workspace(engine.store, "Acme")).id
        customer, _ = await register_customer(engine.store, workspace, "Newco", None, active=False)
        receipt = await engine.intake.receive(
            Intake(
                workspace_id=workspace,
                details=LeadDetails(name="Waiting", customer_id=customer),
                source=Source.MANUAL,
                actor="test",
            )
        )
        await activate_customer(engine.store, workspace, customer)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, "serve workers exited"
            lead = await engine.store.load(Lead, receipt.lead_id)
            if lead is not None and lead.status == "backlog":
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the workers process did not release the pending lead")
    finally:
        await engine.close()


def test_a_configuration_value_that_does_not_parse_is_named_not_a_traceback(
    tmp_path: Path,
) -> None:
    for variable, verb in (("LEADLOG_PROCESSES", "up"), ("LEADLOG_HTTP_PORT", "status")):
        env = {**environment(tmp_path / variable, free_port()), variable: "many"}
        result = run(env, verb, timeout=30)
        assert result.returncode == 1, result
        assert f"bad configuration: {variable}: Input should be a valid integer" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        assert not (tmp_path / variable).exists(), "nothing started, nothing written"
