"""The board's first paint with 100,000 leads in the pipeline, as a signed-in person gets it."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
import uuid

import asyncpg
import httpx

from bench.ingest import TOKEN, start_api
from bench.report import Report
from domain.leads import LeadDetails, Source
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from gateways.web.passwords import Argon2Hasher
from handlers.intake import Intake, LeadIntake
from handlers.users import create_user

LEADS = 100_000
CONCURRENCY = 256
SAMPLES = 40
PASSWORD = "bench passphrase"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def _fill(database_url: str, schema: str, workspace: uuid.UUID) -> None:
    """100,000 leads through the intake every channel uses, straight into the log."""
    pool = await open_pool(database_url, schema, min_size=2, max_size=20)
    log = PostgresLog(pool, schema)
    intake = LeadIntake(PostgresEventStore(log))
    try:
        await create_user(
            PostgresEventStore(log),
            workspace,
            "Bench",
            "bench@bench.example.com",
            "bench",
            "manager",
            PASSWORD,
            Argon2Hasher(),
        )
        queue = iter(range(LEADS))

        async def worker() -> None:
            for n in queue:
                await intake.receive(
                    Intake(
                        workspace_id=workspace,
                        details=LeadDetails(
                            name=f"Board {n}", email=f"b{n}@bench.example.com", company="Co"
                        ),
                        source=Source.API,
                        actor="bench",
                    )
                )

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        await log.close()
        await pool.close()


async def _timed(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[float]:
    took = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = await client.get(url, headers=headers)
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
    return took


async def bench_board(report: Report, database_url: str, nats_url: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    process, port = start_api(database_url, nats_url, schema, "up")
    try:
        operator = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            created = await client.post("/v1/workspaces", json={"name": "bench"}, headers=operator)
            workspace = created.json()["id"]
            started = time.perf_counter()
            await _fill(database_url, schema, uuid.UUID(workspace))
            as_ws = {**operator, "X-Workspace-Id": workspace}
            pipeline = (await client.get("/v1/lead-pipelines", headers=as_ws)).json()["items"][0]
            board = f"/v1/lead-pipelines/{pipeline['id']}/board"
            while True:
                columns = (await client.get(board, headers=as_ws)).json()["columns"]
                if sum(c["count"] for c in columns) >= LEADS:
                    break
                await asyncio.sleep(1)
            print(f"    {LEADS} leads on the board in {time.perf_counter() - started:.0f}s")
            page = await client.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert csrf, "no CSRF token on /login"
            signed = await client.post(
                "/login",
                data={
                    "email": "bench@bench.example.com",
                    "password": PASSWORD,
                    "csrf_token": csrf.group(1),
                },
            )
            assert signed.status_code in (200, 303), signed.text[:300]
            await _timed(client, "/", {})  # warm the caches a person's first visit warms
            html = await _timed(client, "/", {})
            api = await _timed(client, board, as_ws)
    finally:
        process.terminate()
        process.wait(60)
        conn = await asyncpg.connect(database_url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    report.add(
        "board first paint (web page /), 100k leads, p95",
        percentile(html, 0.95) * 1000,
        "ms",
        at_most=300,
        note=f"p50 {statistics.median(html) * 1000:.0f} ms",
    )
    report.add(
        "board first page (API), 100k leads, p95",
        percentile(api, 0.95) * 1000,
        "ms",
        at_most=300,
        note=f"p50 {statistics.median(api) * 1000:.0f} ms",
    )


if __name__ == "__main__":
    import os

    async def _main() -> None:
        report = Report()
        await bench_board(
            report, os.environ["LEADLOG_DATABASE_URL"], os.environ["LEADLOG_NATS_URL"]
        )
        report.print()

    asyncio.run(_main())
