"""Bulk intake through NATS: pre-published leads drained by the engine's JetStream consumer,
in this process and then in two processes sharing the consumer (as worker processes do)."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import uvloop
from nats.js.client import JetStreamContext

from bench.ingest import delete_streams
from bench.report import Report
from gateways.bootstrap import start_engine
from gateways.cli.common import settle_garbage_collector
from gateways.nats.intake import NatsIntake
from gateways.settings import Settings
from handlers.intake import request_counter
from handlers.workspaces import create_workspace

MESSAGES = 20_000
PROCESSES = 2


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


async def _publish(js: JetStreamContext, subject: str, first: int, count: int) -> None:
    for start in range(first, first + count, 1000):
        await asyncio.gather(
            *(
                js.publish(
                    subject,
                    orjson.dumps({"name": f"N{n}", "email": f"n{n}@bench.test"}),
                    headers={"Nats-Msg-Id": f"bench-{n}"},
                )
                for n in range(start, min(start + 1000, first + count))
            )
        )


def _drainers(
    database_url: str, nats_url: str, settings: Settings
) -> list[subprocess.Popen[bytes]]:
    """Processes each running the engine's NATS intake on the same stream and consumer, ready
    and waiting for a line on stdin to start (and for stdin to close to stop)."""
    env = {
        **os.environ,
        "LEADLOG_DATABASE_URL": database_url,
        "LEADLOG_NATS_URL": nats_url,
        "LEADLOG_DATABASE_SCHEMA": settings.database_schema,
        "LEADLOG_NATS_PREFIX": settings.nats_prefix,
        "LEADLOG_LOG_LEVEL": "warning",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.nats_bulk"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("a NATS intake process did not start")
    return children


async def bench_nats_bulk(report: Report, database_url: str, nats_url: str) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(database_schema=f"bench_{uuid.uuid4().hex[:8]}", nats_prefix=prefix)
    engine = await start_engine(settings, database_url, nats_url, None)
    intake = NatsIntake(engine)
    children: list[subprocess.Popen[bytes]] = []
    try:
        workspace = (await create_workspace(engine.store, "bench")).id
        await intake.ensure_stream()
        js = engine.nats.jetstream()
        subject = f"{prefix}.intake.{workspace}.bench"
        counter = request_counter(workspace)
        await _publish(js, subject, 0, MESSAGES)
        with engine_gc():
            started = time.perf_counter()
            await intake.start()
            while await engine.log.counter(counter) < MESSAGES:
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
        await intake.stop()
        await _publish(js, subject, MESSAGES, MESSAGES)
        children = _drainers(database_url, nats_url, settings)
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        while await engine.log.counter(counter) < 2 * MESSAGES:
            await asyncio.sleep(0.1)
        shared = time.perf_counter() - started
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            child.wait(30)
        await intake.stop()
        await delete_streams(engine.nats.jetstream(), prefix)
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    report.add(
        "NATS bulk intake (20k published leads)", MESSAGES / elapsed, "leads/s", at_least=20_000
    )
    report.add(
        f"NATS bulk intake, {PROCESSES} processes sharing the consumer",
        MESSAGES / shared,
        "leads/s",
        note=f"{elapsed / shared:.2f}x one process; each process is one worker's intake",
    )


async def _drain() -> None:
    """A child of `bench_nats_bulk`: the intake of one worker process, started on cue."""
    settings = Settings()
    assert settings.database_url is not None and settings.nats_url is not None
    engine = await start_engine(settings, settings.database_url, settings.nats_url, None)
    intake = NatsIntake(engine)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    try:
        with engine_gc():
            await intake.start()
            await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await intake.stop()
        await engine.close()


if __name__ == "__main__":
    uvloop.run(_drain())
