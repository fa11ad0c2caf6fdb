"""Test servers and isolation: real PostgreSQL and NATS, one schema and subject prefix per test."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from domain.workspaces import Role
from gateways.bootstrap import Engine, start_engine
from gateways.embedded.stack import EmbeddedStack
from gateways.http.app import create_app
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.settings import Settings
from gateways.web.passwords import Argon2Hasher
from gateways.workers import build_workers
from handlers.users import create_user


def log_through_stdlib() -> None:
    """Logs go through stdlib logging, which pytest captures per test (caplog); structlog's
    default print logger would keep writing to a capture file pytest has closed."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


log_through_stdlib()


@pytest.fixture(autouse=True)
def _test_logging() -> None:
    # A CLI command run in-process configures logging for a terminal; undo that per test.
    log_through_stdlib()


@dataclass(frozen=True)
class Servers:
    database_url: str
    nats_url: str


def _start_servers(base: Path) -> Iterator[Servers]:
    database_url = os.environ.get("LEADLOG_TEST_DATABASE_URL")
    nats_url = os.environ.get("LEADLOG_TEST_NATS_URL")
    if database_url and nats_url:
        yield Servers(database_url, nats_url)
        return
    with EmbeddedStack(base / "stack") as stack:
        info = stack.start()
        yield Servers(database_url or info.database_url, nats_url or info.nats_url)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """This machine's servers when LEADLOG_TEST_* are set, otherwise a private embedded stack.

    The stack lives outside pytest's own temp folder: pytest resets that folder to 0700
    at every session start, which would lock out the unprivileged user PostgreSQL runs as.
    """
    base = Path(tempfile.mkdtemp(prefix="leadlog-test-"))
    try:
        yield from _start_servers(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def nats_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pool(servers: Servers, schema_name: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(servers.database_url, schema_name, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()
        await drop_schema(servers.database_url, schema_name)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def log(pool: asyncpg.Pool, schema_name: str) -> AsyncIterator[PostgresLog]:
    log = PostgresLog(pool, schema_name, poll_interval=0.2)
    try:
        yield log
    finally:
        await log.close()


@pytest.fixture
def store(log: PostgresLog) -> PostgresEventStore:
    return PostgresEventStore(log)


ADMIN_TOKEN = "test-operator-token"


def settings_for(schema_name: str, nats_prefix: str, **overrides: Any) -> Settings:
    """A test's settings: its schema and prefix, the test operator, fast timers."""
    values: dict[str, Any] = {"admin_token": ADMIN_TOKEN, "timer_interval": 0.1} | overrides
    return Settings(database_schema=schema_name, nats_prefix=nats_prefix, **values)


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    return settings_for(schema_name, nats_prefix, max_body_bytes=64 * 1024)


@pytest.fixture
async def engine(servers: Servers, settings: Settings) -> AsyncIterator[Engine]:
    engine = await start_engine(settings, servers.database_url, servers.nats_url, ADMIN_TOKEN)
    try:
        yield engine
    finally:
        await delete_streams(engine, settings.nats_prefix)
        await engine.close()
        await drop_schema(servers.database_url, settings.database_schema)


async def delete_streams(engine: Engine, prefix: str) -> None:
    """The test's JetStream streams: servers keep them on disk, so every test removes its own."""
    if engine.nats.is_closed:
        return
    jsm = engine.nats.jetstream()
    for stream in await jsm.streams_info():
        name = stream.config.name or ""
        if name.upper().startswith(prefix.upper()):
            await jsm.delete_stream(name)


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the real app (real Postgres and NATS behind it)."""
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


OPERATOR = bearer(ADMIN_TOKEN)


async def make_workspace(client: httpx.AsyncClient, name: str = "Acme") -> dict[str, Any]:
    """A workspace with a manager and a viewer token, and its default pipeline."""
    created = await client.post("/v1/workspaces", json={"name": name}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    manager = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    viewer = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    pipelines = await client.get("/v1/lead-pipelines", headers=bearer(manager.json()["token"]))
    return {
        "id": workspace_id,
        "h": bearer(manager.json()["token"]),
        "viewer": bearer(viewer.json()["token"]),
        "pipeline": pipelines.json()["items"][0],
    }


@pytest.fixture
async def running(engine: Engine) -> AsyncIterator[None]:
    """The background workers as `leadlog up` runs them (views, reactions, timers, NATS)."""
    workers = build_workers(engine)
    for worker in workers:
        await worker.start()
    yield
    for worker in reversed(workers):
        await worker.stop()


@pytest.fixture
async def ws(client: httpx.AsyncClient, running: None) -> dict[str, Any]:
    """A workspace (see `make_workspace`) with the workers running."""
    return await make_workspace(client)


@pytest.fixture
async def other(client: httpx.AsyncClient, running: None) -> dict[str, Any]:
    """A second workspace, for what must not leak between workspaces."""
    return await make_workspace(client, "Globex")


async def make_user(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, email: str | None = None
) -> dict[str, Any]:
    """A user of the headers' workspace (`POST /v1/users`); a fresh email unless given."""
    address = email or f"{uuid.uuid4().hex[:12]}@users.example.com"
    created = await client.post("/v1/users", json={"name": name, "email": address}, headers=headers)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def sign_in_manager(
    client: httpx.AsyncClient, engine: Engine, workspace_id: str, email: str
) -> None:
    """A manager of the workspace, signed in to the web app on `client` (its cookie kept)."""
    password = "a long passphrase"
    await create_user(
        engine.store, uuid.UUID(workspace_id), "Manager", email, email.partition("@")[0],
        Role.MANAGER, password, Argon2Hasher(),
    )  # fmt: skip
    form = await client.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert found is not None, form.text[:500]
    signed = await client.post(
        "/login", data={"email": email, "password": password, "csrf_token": found[1]}
    )
    assert signed.status_code == 303, signed.text


async def make_campaign(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str = "Campaign",
    url: str = "https://buyer.example/leads",
) -> str:
    """A minimal campaign of the headers' workspace (`POST /v1/campaigns`, one endpoint); its id."""
    created = await client.post(
        "/v1/campaigns", json={"name": name, "endpoints": [{"url": url}]}, headers=headers
    )
    assert created.status_code == 201, created.text
    campaign_id: str = created.json()["id"]
    return campaign_id


# Test receivers listen on 127.0.0.1, which the webhook sender refuses unless this is set;
# the test proving the refusal builds Settings with it off.
os.environ.setdefault("LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS", "1")


def leadlog_cli(
    servers: Servers,
    settings: Settings,
    *args: str,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`leadlog ARGS` in a subprocess, against the test's servers, schema and NATS prefix
    (and any other LEADLOG_* settings in `extra_env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLOG_")}
    env.update(
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
        LEADLOG_DATABASE_SCHEMA=settings.database_schema,
        LEADLOG_NATS_PREFIX=settings.nats_prefix,
        COLUMNS="250",
        **(extra_env or {}),
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "leadlog"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
