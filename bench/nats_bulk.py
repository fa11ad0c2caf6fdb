"""Bulk intake through NATS: pre-published leads drained by the engine's JetStream consumer."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from bench.report import Report
from gateways.bootstrap import start_engine
from gateways.cli.common import settle_garbage_collector
from gateways.nats.intake import NatsIntake
from gateways.settings import Settings
from handlers.intake import request_counter
from handlers.workspaces import create_workspace

MESSAGES = 20_000


@contextmanager
def engine_gc() -> Iterator[None]:
    """The garbage collector as the engine's own processes run it (`leadlog up` and `serve`
    settle it once the engine has started: full collections over the start-up heap were a
    quarter of bulk intake's CPU here); put back afterwards for the benchmarks that follow."""
    thresholds = gc.get_threshold()
    settle_garbage_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def bench_nats_bulk(report: Report, database_url: str, nats_url: str) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(database_schema=f"bench_{uuid.uuid4().hex[:8]}", nats_prefix=prefix)
    engine = await start_engine(settings, database_url, nats_url, None)
    intake = NatsIntake(engine)
    try:
        workspace = (await create_workspace(engine.store, "bench")).id
        await intake.ensure_stream()
        js = engine.nats.jetstream()
        subject = f"{prefix}.intake.{workspace}.bench"
        for start in range(0, MESSAGES, 1000):
            await asyncio.gather(
                *(
                    js.publish(
                        subject,
                        orjson.dumps({"name": f"N{n}", "email": f"n{n}@bench.test"}),
                        headers={"Nats-Msg-Id": f"bench-{n}"},
                    )
                    for n in range(start, min(start + 1000, MESSAGES))
                )
            )
        with engine_gc():
            started = time.perf_counter()
            await intake.start()
            counter = request_counter(workspace)
            while await engine.log.counter(counter) < MESSAGES:
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
    finally:
        await intake.stop()
        jsm = engine.nats.jetstream()
        for stream in await jsm.streams_info():
            if (stream.config.name or "").upper().startswith(prefix.upper()):
                await jsm.delete_stream(stream.config.name or "")
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    report.add(
        "NATS bulk intake (20k published leads)", MESSAGES / elapsed, "leads/s", at_least=20_000
    )
