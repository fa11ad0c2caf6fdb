"""Bulk intake through CSV import: a 20k-row file streamed through the engine's CsvImport."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from bench.nats_bulk import engine_gc
from bench.report import Report
from gateways.bootstrap import start_engine
from gateways.settings import Settings
from handlers.imports import CsvImport
from handlers.intake import request_counter
from handlers.workspaces import create_workspace

ROWS = 20_000
# What an HTTP upload hands the import at a time, about.
CHUNK_BYTES = 64 * 1024


def csv_file(rows: int) -> bytes:
    """The same leads the NATS bench publishes, as a file with a header row."""
    lines = ["name,email\n", *(f"N{n},n{n}@bench.test\n" for n in range(rows))]
    return "".join(lines).encode()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


async def bench_csv_import(report: Report, database_url: str, nats_url: str) -> None:
    settings = Settings(database_schema=f"bench_{uuid.uuid4().hex[:8]}")
    engine = await start_engine(settings, database_url, nats_url, None)
    try:
        workspace = (await create_workspace(engine.store, "bench")).id
        data = csv_file(ROWS)
        job = CsvImport(engine.intake, workspace, actor="bench")
        with engine_gc():
            started = time.perf_counter()
            imported = await job.run(chunks(data))
            elapsed = time.perf_counter() - started
        written = await engine.log.counter(request_counter(workspace))
        if imported.accepted != ROWS or written != ROWS:
            raise RuntimeError(f"imported {imported.accepted} rows, wrote {written}, not {ROWS}")
    finally:
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    report.add("CSV import (20k rows)", ROWS / elapsed, "rows/s", at_least=20_000)
