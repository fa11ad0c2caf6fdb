"""The engine as users run it: `leadlog up` (HTTP and every worker) under wrk, leads to an
inbound webhook, until they are on the board.

wrk (Debian's, installed by `make bench`) keeps 64 keep-alive connections busy for a fixed
time posting distinct leads to one inbound webhook; its Lua script numbers each request so
no two leads share an email or phone. Reported: leads accepted per second (2xx answers),
p50/p99 latency, how long after the load ended the last lead reached the board (the board's
lag), leads per second visible on the board (accepted leads over load time plus lag), and
the ratio to the eventsourcing library's own application saving one aggregate per lead on
the same database in the same run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
import psutil

from bench.ingest import TOKEN, delete_run_streams, start_api
from bench.report import Report

CONNECTIONS = 64
SECONDS = 10
THREADS = 2
# The paced run: each connection waits this long before each request (wrk's `delay` hook;
# wrk has no rate option and Debian has no wrk2), so PACED_CONNECTIONS / (delay + latency)
# comes out near 1,000 requests/s while latency stays low. The rate reached is reported.
PACED_CONNECTIONS = 64
PACED_DELAY_MS = 45

LUA = r"""
local counter = 0
local thread_id = 0
local base = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = id
  base = tonumber(args[1] or "0")
end

request = function()
  counter = counter + 1
  local n = base + thread_id * 100000000 + counter
  local body = string.format(
    '{"name":"Load %d","email":"load%d@bench.test","phone":"+1%010d","company":"Bench Co",' ..
    '"customFields":{"budget":%d}}', n, n, 2000000000 + n, n % 5000)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format("BENCH p50=%f p99=%f requests=%d errors_status=%d\n",
    latency:percentile(50), latency:percentile(99), summary.requests, summary.errors.status))
end
"""

PACED = (
    LUA
    + f"""
function delay()
  return {PACED_DELAY_MS}
end
"""
)


def _script(text: str) -> str:
    """A Lua script in a file of its own (wrk reads it by path)."""
    fd, path = tempfile.mkstemp(suffix=".lua")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


@dataclass(frozen=True)
class _Run:
    p50_ms: float
    p99_ms: float
    accepted: int
    failed: int
    seconds: float


async def _load(wrk: str, script: str, url: str, connections: int, numbering: int) -> _Run:
    """One wrk run of SECONDS against `url`; leads numbered from `numbering` (distinct)."""
    started = time.monotonic()
    run = await asyncio.to_thread(
        subprocess.run,
        [
            wrk,
            f"-t{THREADS}",
            f"-c{connections}",
            f"-d{SECONDS}s",
            "--latency",
            "-s",
            script,
            url,
            "--",
            str(numbering),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.monotonic() - started
    found = re.search(
        r"BENCH p50=([\d.]+) p99=([\d.]+) requests=(\d+) errors_status=(\d+)", run.stdout
    )
    if found is None:
        raise RuntimeError(f"wrk said nothing usable:\n{run.stdout}\n{run.stderr}")
    requests, failed = int(found.group(3)), int(found.group(4))
    return _Run(
        float(found.group(1)) / 1000,
        float(found.group(2)) / 1000,
        requests - failed,
        failed,
        seconds,
    )


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by `leadlog up` and its API processes."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _servers_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this machine's PostgreSQL and NATS processes (shared or
    embedded alike), by program; a server elsewhere counts nothing."""
    totals: dict[str, float] = {}
    for process in psutil.process_iter(["name"]):
        name = process.info["name"] or ""
        program = next((p for p in ("postgres", "nats-server") if name.startswith(p)), None)
        if program is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        totals[program] = totals.get(program, 0.0) + times.user + times.system
    return totals


async def _board_total(conn: asyncpg.Connection, schema: str, workspace: str) -> int:
    value = await conn.fetchval(
        f"SELECT count(*) FROM {schema}.leads WHERE workspace_id = $1::uuid", workspace
    )
    return int(value or 0)


async def bench_end_to_end(
    report: Report, database_url: str, nats_url: str, library_rate: float
) -> float:
    """Leads/s visible on the board under wrk against `leadlog up`; the figure returned."""
    wrk = _wrk()
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    process, port = start_api(database_url, nats_url, schema, "up")
    saturating, paced = _script(LUA), _script(PACED)
    conn = await asyncpg.connect(database_url)
    try:
        base = f"http://127.0.0.1:{port}"
        operator = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base, headers=operator, timeout=30) as client:
            workspace = (await client.post("/v1/workspaces", json={"name": "bench"})).json()["id"]
            token = (
                await client.post(f"/v1/workspaces/{workspace}/tokens", json={"role": "manager"})
            ).json()["token"]
            hook = (
                await client.post(
                    "/v1/lead-webhooks",
                    json={"name": "Load"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).json()
        url = f"{base}/webhooks/leads/{hook['apiKey']}"
        cpu_before = _cpu_seconds(process.pid)
        servers_before = _servers_cpu_seconds()
        full = await _load(wrk, saturating, url, CONNECTIONS, 0)
        load_ended = time.monotonic()
        while await _board_total(conn, schema, workspace) < full.accepted:
            if time.monotonic() - load_ended > 120:
                raise RuntimeError("the board did not catch up within 120 s")
            await asyncio.sleep(0.05)
        visible_at = time.monotonic()
        cpu = _cpu_seconds(process.pid) - cpu_before
        servers_cpu = {
            name: seconds - servers_before.get(name, 0.0)
            for name, seconds in _servers_cpu_seconds().items()
        }
        steady = await _load(wrk, paced, url, PACED_CONNECTIONS, 1_000_000_000)
    finally:
        process.terminate()
        process.wait(30)
        await delete_run_streams(nats_url, schema)  # `leadlog up` named them after it
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
        os.unlink(saturating)
        os.unlink(paced)
    accepted_rate = full.accepted / full.seconds
    visible_rate = full.accepted / (visible_at - load_ended + full.seconds)
    lag = visible_at - load_ended
    note = (
        f"leadlog up, wrk {CONNECTIONS} connections, {full.accepted:,} leads, {full.failed} non-2xx"
    )
    report.add(
        "End to end: leads accepted (wrk → inbound webhook)", accepted_rate, "leads/s", note=note
    )
    report.add("End to end: leads visible on the board", visible_rate, "leads/s", at_least=3000)
    report.add("End to end: board lag after the load", lag * 1000, "ms")
    report.add(
        "End to end: engine CPU per lead (intake and every consumer)",
        cpu / full.accepted * 1e6,
        "µs",
        note="user + system time of every `leadlog up` process, load start to the board",
    )
    report.add(
        "End to end: server CPU per lead (PostgreSQL and NATS on this machine)",
        sum(servers_cpu.values()) / full.accepted * 1e6,
        "µs",
        note=", ".join(
            f"{name} {seconds / full.accepted * 1e6:,.0f} µs"
            for name, seconds in sorted(servers_cpu.items())
        ),
    )
    report.add("End to end: HTTP p50 at full load", full.p50_ms, "ms")
    report.add("End to end: HTTP p99 at full load", full.p99_ms, "ms")
    report.add(
        "End to end: HTTP p99 near 1,000 leads/s",
        steady.p99_ms,
        "ms",
        at_most=50,
        note=(
            f"{steady.accepted / steady.seconds:,.0f} leads/s reached, p50 "
            f"{steady.p50_ms:.1f} ms ({PACED_CONNECTIONS} connections, {PACED_DELAY_MS} ms "
            f"apart)"
        ),
    )
    report.add(
        "ratio: end to end on the board / eventsourcing application saves",
        visible_rate / library_rate,
        "x",
        at_least=4,
    )
    return visible_rate


if __name__ == "__main__":  # against LEADLOG_DATABASE_URL / LEADLOG_NATS_URL

    async def _main() -> None:
        report = Report()
        await bench_end_to_end(
            report, os.environ["LEADLOG_DATABASE_URL"], os.environ["LEADLOG_NATS_URL"], 700.0
        )
        report.print()

    asyncio.run(_main())
