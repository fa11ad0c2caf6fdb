"""Append throughput: our store vs the eventsourcing Postgres application vs raw asyncpg."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse
from uuid import UUID

import asyncpg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as LibraryAggregate
from eventsourcing.domain import event

from bench.report import Report
from domain.base import Aggregate
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog
from handlers.ports import Append

CONCURRENCY = 64
DURATION = 8.0


class Note(Aggregate):
    """One small aggregate per command: a single-event append, like a received lead."""

    @event("Written")
    def __init__(self, text: str) -> None:
        self.text = text


class LibraryNote(LibraryAggregate):
    @event("Written")
    def __init__(self, text: str) -> None:
        self.text = text


async def _drive(work: Callable[[], Awaitable[None]], seconds: float) -> tuple[int, float]:
    """Run `work` from CONCURRENCY tasks for `seconds`; returns (count, elapsed)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await work()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done, time.perf_counter() - started


async def bench_our_store(database_url: str, schema: str) -> float:
    pool = await open_pool(database_url, schema, min_size=4, max_size=8)
    log = PostgresLog(pool, schema)
    store = PostgresEventStore(log)

    async def append_one() -> None:
        note = Note(text="hello")
        await store.append(Append(None, events=note.collect_events()))

    await _drive(append_one, 1.0)
    count, elapsed = await _drive(append_one, DURATION)
    print(f"    (batches: {log.batches}, commands: {log.commands})")
    await log.close()
    await pool.close()
    return count / elapsed


async def bench_raw_insert(database_url: str, schema: str) -> float:
    pool = await asyncpg.create_pool(database_url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    assert pool is not None
    await pool.execute(f"CREATE TABLE {schema}.raw_insert (id bigserial PRIMARY KEY, body bytea)")

    async def insert_one() -> None:
        await pool.execute(f"INSERT INTO {schema}.raw_insert (body) VALUES ($1)", b"hello")

    await _drive(insert_one, 1.0)
    count, elapsed = await _drive(insert_one, DURATION)
    await pool.close()
    return count / elapsed


def bench_library_application(database_url: str, schema: str) -> float:
    """The same single-event saves through eventsourcing's own Postgres application."""
    url = urlparse(database_url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_PASSWORD": url.password or "",
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(CONCURRENCY),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    }
    application: Application[UUID] = Application(env=env)
    stop = threading.Event()
    counts = [0] * CONCURRENCY

    def worker(index: int) -> None:
        while not stop.is_set():
            application.save(LibraryNote(text="hello"))
            counts[index] += 1

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for i in range(CONCURRENCY):
            pool.submit(worker, i)
        time.sleep(1.0)
        baseline = sum(counts)
        started = time.perf_counter()
        time.sleep(DURATION)
        measured = sum(counts) - baseline
        elapsed = time.perf_counter() - started
        stop.set()
    application.close()
    return measured / elapsed


async def run_store_benchmarks(report: Report, database_url: str, schema: str) -> float:
    """Runs the store benchmarks; returns the library application's saves/s (a baseline)."""
    print(f"store appends, {CONCURRENCY} concurrent writers, {DURATION:.0f}s each", flush=True)
    setup = await asyncpg.connect(database_url)
    await setup.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await setup.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}_lib")
    try:
        ours = await bench_our_store(database_url, schema)
        library = await asyncio.to_thread(bench_library_application, database_url, f"{schema}_lib")
        raw = await bench_raw_insert(database_url, schema)
    finally:
        await setup.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await setup.execute(f"DROP SCHEMA IF EXISTS {schema}_lib CASCADE")
        await setup.close()
    report.add("store: single-event appends (64 writers)", ours, "appends/s")
    report.add("eventsourcing Postgres application (64 threads)", library, "saves/s")
    report.add("raw asyncpg single-row INSERT (64 tasks)", raw, "inserts/s")
    report.add("ratio: store / eventsourcing application", ours / library, "x", at_least=4)
    report.add("ratio: store / raw INSERT", ours / raw, "x")
    return library
