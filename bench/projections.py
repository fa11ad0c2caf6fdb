"""Projection catch-up throughput, memory while catching up, and commit → visible latency."""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil

from bench.nats_bulk import engine_gc
from bench.report import Report
from domain.leads import Lead, LeadDetails, Source, Status
from gateways.consumers.projector import Projector
from gateways.postgres.codec import EventCodec
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import NewRecord, PostgresLog, RecordAppend
from handlers.intake import Intake, LeadIntake
from handlers.workspaces import create_workspace
from projections.leads import LeadList

CATCH_UP_EVENTS = 100_000
LEADS_PER_APPEND = 500
VISIBLE_RATE = 1000.0
VISIBLE_SECONDS = 10.0


async def _fill(log: PostgresLog, workspace_id: uuid.UUID, count: int) -> None:
    codec = EventCodec()
    details = LeadDetails(name="Bench", company="Bench Co", tags=("bench",))

    def records(start: int) -> RecordAppend:
        out: list[NewRecord] = []
        for n in range(start, min(start + LEADS_PER_APPEND, count)):
            lead = Lead(  # type: ignore[call-arg]
                id=uuid.uuid4(),
                workspace_id=workspace_id,
                request_id=n + 1,
                source=Source.IMPORT,
                channel=None,
                actor="bench",
                by_user=False,
                name=f"Bench {n}",
                details=details,
                email_normal=f"b{n}@bench.test",
                email_valid=True,
                phone_normal=None,
                phone_valid=None,
                is_duplicate=False,
                duplicate_of=None,
                status=Status.NEW,
            )
            out.extend(codec.encode(e) for e in lead.collect_events())
        return RecordAppend(workspace_id, records=out)

    starts = range(0, count, LEADS_PER_APPEND)
    for chunk in range(0, len(starts), 8):
        await asyncio.gather(*(log.append(records(s)) for s in starts[chunk : chunk + 8]))


async def bench_catch_up(report: Report, database_url: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pool = await open_pool(database_url, schema, min_size=2, max_size=10)
    log = PostgresLog(pool, schema)
    store = PostgresEventStore(log)
    try:
        workspace = (await create_workspace(store, "bench")).id
        started = time.perf_counter()
        await _fill(log, workspace, CATCH_UP_EVENTS)
        print(
            f"    filled {CATCH_UP_EVENTS} events in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        head = await log.max_position()
        process = psutil.Process()
        projector = Projector(pool, log, store, [LeadList()], batch_size=2000)
        rss_before = process.memory_info().rss
        peak = rss_before
        with engine_gc():
            started = time.perf_counter()
            await projector.start()
            while not await projector.wait_for("leads", head, timeout=0.5):
                peak = max(peak, process.memory_info().rss)
            elapsed = time.perf_counter() - started
        peak = max(peak, process.memory_info().rss)
        await projector.stop()
        rate = head / elapsed
        report.add("projection catch-up (leads view, from 0)", rate, "events/s", at_least=30_000)
        report.add(
            "memory growth while catching up 100k events",
            (peak - rss_before) / 2**20,
            "MiB",
            note="flat = independent of log length",
        )
    finally:
        await log.close()
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()


async def bench_commit_to_visible(report: Report, database_url: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    pool = await open_pool(database_url, schema, min_size=2, max_size=20)
    log = PostgresLog(pool, schema)
    store = PostgresEventStore(log)
    intake = LeadIntake(store)
    projector = Projector(pool, log, store, [LeadList()])
    latencies: list[float] = []
    try:
        workspace = (await create_workspace(store, "bench")).id
        await projector.start()

        async def one(n: int) -> None:
            receipt = await intake.receive(
                Intake(
                    workspace_id=workspace,
                    details=LeadDetails(name=f"V{n}", email=f"v{n}@bench.test"),
                    source=Source.API,
                    actor="bench",
                )
            )
            committed = time.perf_counter()
            if await projector.wait_for("leads", receipt.position, timeout=10):
                latencies.append(time.perf_counter() - committed)

        tasks = []
        interval = 1 / VISIBLE_RATE
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < VISIBLE_SECONDS:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, started + n * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
        achieved = n / (time.perf_counter() - started)
    finally:
        await projector.stop()
        await log.close()
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    report.add(
        f"commit -> visible on the board, p99 at {achieved:,.0f} leads/s", p99, "ms", at_most=50
    )


async def run_projection_benchmarks(report: Report, database_url: str) -> None:
    print("projections", flush=True)
    await bench_catch_up(report, database_url)
    await bench_commit_to_visible(report, database_url)


__all__ = ["run_projection_benchmarks"]
