"""`make bench`: runs every benchmark in one process against one PostgreSQL and prints a table."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop

from bench.csv_import import bench_csv_import
from bench.deliveries import bench_deliveries
from bench.end_to_end import bench_end_to_end
from bench.ingest import bench_ingest
from bench.messages import bench_messages
from bench.nats_bulk import bench_nats_bulk
from bench.projections import run_projection_benchmarks
from bench.reads import bench_reads
from bench.report import Report
from bench.store import run_store_benchmarks
from bench.submissions import bench_submissions
from gateways.embedded.stack import EmbeddedStack


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """LEADLOG_DATABASE_URL / LEADLOG_NATS_URL when set, else a private embedded stack."""
    database_url = os.environ.get("LEADLOG_DATABASE_URL")
    nats_url = os.environ.get("LEADLOG_NATS_URL")
    if database_url and nats_url:
        yield database_url, nats_url
        return
    with EmbeddedStack(Path(".bench") / "stack") as stack:
        yield stack.info.database_url, stack.info.nats_url


def main() -> int:
    report = Report()
    with servers() as (database_url, nats_url):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        library_rate = asyncio.run(run_store_benchmarks(report, database_url, schema))
        asyncio.run(bench_ingest(report, database_url, nats_url, library_rate))
        asyncio.run(bench_end_to_end(report, database_url, nats_url, library_rate))
        asyncio.run(bench_nats_bulk(report, database_url, nats_url))
        asyncio.run(bench_csv_import(report, database_url, nats_url))
        asyncio.run(run_projection_benchmarks(report, database_url))
        # on uvloop, as `leadlog up` and `leadlog serve` run the engine
        uvloop.run(bench_deliveries(report, database_url, nats_url))
        uvloop.run(bench_submissions(report, database_url, nats_url))
        uvloop.run(bench_messages(report, database_url, nats_url))
        asyncio.run(bench_reads(report, database_url, nats_url))
    report.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
