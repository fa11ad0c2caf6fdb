"""HTTP ingest: a real `leadlog serve api` process under 64 concurrent keep-alive clients."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import nats
import orjson
from nats.js.client import JetStreamContext

from bench.http_load import run_load
from bench.report import Report

CLIENTS = 64
SECONDS = 10.0
TOKEN = "bench-operator-token"


async def delete_streams(js: JetStreamContext, prefix: str) -> None:
    """A run's JetStream streams (named after its NATS prefix): the server keeps them on disk
    after the run's schema is dropped."""
    for stream in await js.streams_info():
        name = stream.config.name or ""
        if name.upper().startswith(prefix.upper()):
            await js.delete_stream(name)


async def delete_run_streams(nats_url: str, prefix: str) -> None:
    """`delete_streams` for a run whose engine ran in another process."""
    nc = await nats.connect(nats_url)
    try:
        await delete_streams(nc.jetstream(), prefix)
    finally:
        await nc.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def leadlog_env(database_url: str, nats_url: str, schema: str) -> dict[str, str]:
    """The environment of a `leadlog` command on these servers, in a schema of its own."""
    return {
        **os.environ,
        "LEADLOG_DATABASE_URL": database_url,
        "LEADLOG_NATS_URL": nats_url,
        "LEADLOG_DATABASE_SCHEMA": schema,
        "LEADLOG_NATS_PREFIX": schema,
        "LEADLOG_DATA_DIR": str(Path(".bench") / schema),
        "LEADLOG_LOG_LEVEL": "warning",
    }


def start_api(
    database_url: str, nats_url: str, schema: str, *command: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`leadlog serve api` (or `command`, e.g. `up`) on a free port against these servers."""
    port = _free_port()
    env = {
        **leadlog_env(database_url, nats_url, schema),
        "LEADLOG_HTTP_PORT": str(port),
        "LEADLOG_ADMIN_TOKEN": TOKEN,
    }
    leadlog = str(Path(sys.executable).parent / "leadlog")
    process = subprocess.Popen(
        [leadlog, *(command or ("serve", "api"))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    raise RuntimeError(f"the API did not start: {errors}")


def lead_body(connection: int, sequence: int) -> bytes:
    # One in ten repeats an earlier email, so duplicate detection does real work.
    n = sequence if sequence % 10 else max(sequence - 5, 0)
    return orjson.dumps(
        {
            "name": f"Bench {connection}-{sequence}",
            "email": f"c{connection}-{n}@bench.test",
            "phone": f"+1415555{connection % 10}{n % 1000:03d}",
            "company": "Bench Co",
            "customFields": {"budget": sequence % 5000, "source_detail": "bench"},
        }
    )


async def bench_ingest(
    report: Report, database_url: str, nats_url: str, library_rate: float
) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    process, port = start_api(database_url, nats_url, schema)
    try:
        base = f"http://127.0.0.1:{port}"
        operator = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base, headers=operator) as client:
            workspace = (await client.post("/v1/workspaces", json={"name": "bench"})).json()["id"]
            token = (
                await client.post(f"/v1/workspaces/{workspace}/tokens", json={"role": "manager"})
            ).json()["token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        await run_load(
            "127.0.0.1", port, "/v1/leads", headers, lead_body, connections=CLIENTS, seconds=2
        )
        result = await run_load(
            "127.0.0.1", port, "/v1/leads", headers, lead_body, connections=CLIENTS, seconds=SECONDS
        )
    finally:
        process.terminate()
        process.wait(30)
        conn = await __import__("asyncpg").connect(database_url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    print(f"    statuses: {result.statuses}", flush=True)
    report.add(
        "HTTP ingest, 64 clients (dedup + request numbers)", result.rate, "leads/s", at_least=3000
    )
    report.add("HTTP ingest p50 latency", result.percentile(0.50) * 1000, "ms")
    report.add("HTTP ingest p99 latency", result.percentile(0.99) * 1000, "ms", at_most=50)
    report.add(
        "ratio: HTTP ingest / eventsourcing application saves",
        result.rate / library_rate,
        "x",
        at_least=4,
    )


if __name__ == "__main__":

    async def _main() -> None:
        report = Report()
        await bench_ingest(
            report, os.environ["LEADLOG_DATABASE_URL"], os.environ["LEADLOG_NATS_URL"], 500.0
        )
        report.print()

    asyncio.run(_main())
