"""Campaign submissions through the whole pipeline to a local buyer that accepts every lead."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid

import uvloop

from bench.ingest import delete_streams
from bench.receiver import receiver, reply
from bench.report import Report
from domain.campaigns import CampaignConfig
from domain.leads import LeadDetails, Source
from gateways.bootstrap import Engine, start_engine
from gateways.settings import Settings
from gateways.workers import Worker, build_workers
from handlers.campaigns import create_campaign
from handlers.intake import Intake
from handlers.workspaces import create_workspace

SUBMISSIONS = 5_000
CONCURRENCY = 256
TARGET = 1_000
# Past this the run is reported as stuck rather than left to hang `make bench`.
DEADLINE_SECONDS = 120.0
POLL_SECONDS = 0.05
FINISHED = ("accepted", "rejected", "failed", "disqualified", "capped", "returned")

_ANSWER = reply(json.dumps({"status": "accepted", "price": "5"}).encode(), "application/json")


def campaign_config(url: str) -> CampaignConfig:
    """A direct campaign with every cheap step of the pipeline in play: a disqualification
    that never matches, a dynamic key, an email check, a mapped JSON payload and response
    rules that read the outcome and the price."""
    return CampaignConfig.model_validate(
        {
            "name": "Bench insurance",
            "endpoints": [
                {
                    "url": url,
                    "contentType": "json",
                    "fields": {
                        "email": "{{lead.email}}",
                        "name": "{{lead.name}}",
                        "phone": "{{key.phone}}",
                        "vendor": "leadlog-bench",
                    },
                    "responseRules": {
                        "successPath": "status",
                        "successMatch": "accepted",
                        "pricePath": "price",
                    },
                }
            ],
            "disqualify": [
                {
                    "field": "lead.customFields.state",
                    "op": "in",
                    "value": ["NY", "NJ"],
                    "reason": "excluded state",
                }
            ],
            "dynamicKeys": [{"name": "phone", "op": "phone_e164", "from": "lead.phone"}],
            "qualification": [{"field": "lead.email", "type": "email"}],
        }
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def _statuses(engine: Engine) -> dict[str, int]:
    rows = await engine.pool.fetch("SELECT status, count(*) AS n FROM submissions GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def _submit_all(
    engine: Engine, workspace: uuid.UUID, campaign: uuid.UUID, count: int
) -> None:
    """`count` distinct leads through the intake the partner submit API uses, `CONCURRENCY`
    in flight."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        async with gate:
            receipt = await engine.intake.receive(
                Intake(
                    workspace_id=workspace,
                    details=LeadDetails(
                        name=f"Bench Lead {n}",
                        email=f"lead{n}@bench.example.com",
                        phone=f"(415) {201 + n // 10_000:03d}-{n % 10_000:04d}",
                        custom_fields={"state": "CA"},
                        campaign_id=campaign,
                    ),
                    source=Source.API,
                    actor="bench",
                    channel="api:bench",
                    route=True,
                )
            )
            if receipt.submission_id is None:
                raise RuntimeError(f"lead {n} was taken without a submission")

    await asyncio.gather(*(one(n) for n in range(count)))


async def _until_accepted(engine: Engine, count: int, started: float) -> None:
    while True:
        statuses = await _statuses(engine)
        if statuses.get("accepted", 0) >= count:
            return
        others = {s: n for s, n in statuses.items() if s in FINISHED and s != "accepted"}
        if others:
            raise RuntimeError(f"submissions finished other than accepted: {statuses}")
        if time.perf_counter() - started > DEADLINE_SECONDS:
            raise RuntimeError(f"not every submission accepted in time: {statuses}")
        await asyncio.sleep(POLL_SECONDS)


async def _latencies(engine: Engine) -> list[float]:
    """Seconds from each submission's creation (the intake's commit) to its acceptance."""
    rows = await engine.pool.fetch(
        "SELECT extract(epoch FROM updated_at - created_at)::float8 AS took"
        " FROM submissions WHERE status = 'accepted'"
    )
    return [float(row["took"]) for row in rows]


async def _delete_streams(engine: Engine, prefix: str) -> None:
    """The run's JetStream streams: the server keeps them on disk."""
    if engine.nats.is_closed:
        return
    await delete_streams(engine.nats.jetstream(), prefix)


async def bench_submissions(
    report: Report, database_url: str, nats_url: str, count: int = SUBMISSIONS
) -> float:
    """Submissions per second from the first submit to the last `accepted` in the
    submissions view, with every worker `leadlog up` runs in the same process."""
    with receiver(_ANSWER) as port:
        return await _run(report, database_url, nats_url, count, port)


async def _run(report: Report, database_url: str, nats_url: str, count: int, port: int) -> float:
    settings = Settings(
        database_schema=f"bench_{uuid.uuid4().hex[:8]}",
        nats_prefix=f"bench{uuid.uuid4().hex[:8]}",
        allow_private_webhook_targets=True,
    )
    engine = await start_engine(settings, database_url, nats_url, None)
    workers: list[Worker] = []
    try:
        workspace = (await create_workspace(engine.store, "bench-submissions")).id
        campaign, _ = await create_campaign(
            engine.store, workspace, campaign_config(f"http://127.0.0.1:{port}/leads"), "bench"
        )
        for worker in build_workers(engine):
            await worker.start()
            workers.append(worker)
        started = time.perf_counter()
        await _submit_all(engine, workspace, campaign.id, count)
        submitted = time.perf_counter() - started
        await _until_accepted(engine, count, started)
        elapsed = time.perf_counter() - started
        took = await _latencies(engine)
    finally:
        for worker in reversed(workers):
            await worker.stop()
        await _delete_streams(engine, settings.nats_prefix)
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    rate = count / elapsed
    report.add(
        f"Submissions to accepted ({count:,}, direct campaign, local buyer)",
        rate,
        "submissions/s",
        at_least=TARGET,
        note=f"{rate / TARGET:.2f}x budget; every worker running; submitted in {submitted:.1f} s"
        f" of {elapsed:.1f} s",
    )
    report.add(
        "Submission created -> accepted, p99",
        percentile(took, 0.99) * 1000,
        "ms",
        note=f"p50 {statistics.median(took) * 1000:.0f} ms at {CONCURRENCY} submits in flight",
    )
    return rate


if __name__ == "__main__":  # `python -m bench.submissions` against LEADLOG_DATABASE_URL / _NATS_URL
    _report = Report()
    uvloop.run(
        bench_submissions(
            _report,
            os.environ["LEADLOG_DATABASE_URL"],
            os.environ["LEADLOG_NATS_URL"],
            int(sys.argv[1]) if len(sys.argv) > 1 else SUBMISSIONS,
        )
    )
    _report.print()
