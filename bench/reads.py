"""Reads as a workspace grows: board, list, searches and bytes per lead at 10k, 100k and 1M leads.

The leads go straight into the log (`COPY`), each one a `lead.received` event in the
codec's own encoding (a template encoded by the codec, with each lead's fields put in), and
`leadlog rebuild leads` builds the view from the log as an operator would: a million leads
through the intake and every worker would take this machine most of an hour, and what is
measured here is the read side. Reads go through `leadlog serve api` over HTTP, as a
signed-in API client and a person signed in to the web app get them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from bench.ingest import TOKEN, leadlog_env, start_api
from bench.report import Report
from domain.leads import Lead, LeadDetails, Source, Status
from gateways.postgres.codec import EventCodec
from gateways.postgres.database import open_pool
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog, event_id_for
from gateways.web.passwords import Argon2Hasher
from handlers.intake import request_counter
from handlers.users import create_user

SIZES = (10_000, 100_000, 1_000_000)
SAMPLES = 40
PASSWORD = "bench passphrase"
CHUNK = 20_000


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST = _words(
    """
    James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
    Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy
    Matthew Betty Anthony Sandra Mark Margaret Donald Ashley Steven Kimberly Andrew Emily
    Paul Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah
    Timothy Stephanie Ronald Rebecca Jason Sharon Edward Laura Jeffrey Cynthia Ryan Dorothy
    Jacob Amy Gary Kathleen Nicholas Angela Eric Shirley Jonathan Emma Stephen Brenda
    Larry Pamela Justin Nicole Scott Anna Brandon Samantha Benjamin Katherine Samuel Christine
    Gregory Debra Alexander Rachel Patrick Carolyn Frank Janet Raymond Maria Jack Olivia
    Dennis Heather Jerry Helen Tyler Catherine Aaron Diane Jose Julie Adam Victoria
    Nathan Joyce Henry Lauren Zachary Kelly Douglas Christina Peter Ruth Kyle Joan
    Noah Virginia
    """
)
LAST = _words(
    """
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
    Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White
    Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott
    Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell
    Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes
    Stewart Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey
    Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks Chavez Wood
    James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers
    Long Ross Foster Jimenez Powell
    """
)
COMPANIES = _words(
    """
    Acme Globex Initech Umbrella Hooli Vandelay Stark Wayne Wonka Tyrell Cyberdyne Soylent
    Aperture Massive Gringotts Oceanic Monarch Dunder Pied Sterling
    """
)
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.com", "mail.test")


@dataclass
class Person:
    name: str
    email: str
    phone: str
    company: str


def person(n: int) -> Person:
    """The nth lead: realistic names (about 15,000 first/last pairs), a unique email and
    phone; deterministic, so a search can aim at one that exists."""
    first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
    return Person(
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}{n}@{DOMAINS[n % len(DOMAINS)]}",
        phone=f"+1{200 + n // 10_000_000 % 800:03d}{n % 10_000_000:07d}",
        company=f"{COMPANIES[n % len(COMPANIES)]} {n % 97}",
    )


def _template(workspace: uuid.UUID, pipeline: uuid.UUID, stage: uuid.UUID) -> dict[str, Any]:
    """A `lead.received` state as the codec writes it, to put each lead's fields into."""
    lead = Lead(  # type: ignore[call-arg]  # `id` comes from the library's metaclass
        id=uuid.uuid4(),
        workspace_id=workspace,
        request_id=1,
        source=Source.API,
        channel=None,
        actor="bench",
        by_user=False,
        name="Template",
        details=LeadDetails(name="Template", email="t@example.com", phone="+14155550100"),
        email_normal="t@example.com",
        email_valid=True,
        phone_normal="+14155550100",
        phone_valid=True,
        is_duplicate=False,
        duplicate_of=None,
        status=Status.NEW,
        pipeline_id=pipeline,
        stage_id=stage,
        lead_type_id=None,
    )
    [received] = lead.collect_events()
    record = EventCodec().encode(received)
    state: dict[str, Any] = orjson.loads(record.state)
    for key in ("request_id", "name", "email_normal", "phone_normal", "stage_id", "timestamp"):
        assert key in state, f"lead.received no longer has {key}: update the bench"
    for key in ("name", "email", "phone", "company"):
        assert key in state["details"], f"lead details no longer have {key}: update the bench"
    state["_topic"], state["_type"] = record.topic, record.event_type
    return state


async def _fill(
    pool: asyncpg.Pool,
    schema: str,
    workspace: uuid.UUID,
    pipeline: uuid.UUID,
    stages: list[uuid.UUID],
    start: int,
    end: int,
) -> None:
    """Leads `start`..`end` into the log: most in the first stage, the rest spread out."""
    template = _template(workspace, pipeline, stages[0])
    topic, kind = template.pop("_topic"), template.pop("_type")
    base = datetime(2025, 1, 1, tzinfo=UTC)
    rng = random.Random(start)
    for chunk in range(start, end, CHUNK):
        records = []
        for n in range(chunk, min(chunk + CHUNK, end)):
            p = person(n)
            lead_id = uuid.uuid4()
            state = dict(template)
            state["details"] = {
                **template["details"],
                "name": p.name,
                "email": p.email,
                "phone": p.phone,
                "company": p.company,
            }
            state["request_id"] = n + 1
            state["name"] = p.name
            state["email_normal"] = p.email
            state["phone_normal"] = p.phone
            state["stage_id"] = str(stages[0] if rng.random() < 0.7 else rng.choice(stages))
            state["timestamp"] = (base + timedelta(seconds=n * 30)).isoformat()
            records.append(
                (
                    event_id_for(lead_id, 1),
                    lead_id,
                    1,
                    topic,
                    kind,
                    workspace,
                    orjson.dumps(state),
                )
            )
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "events",
                schema_name=schema,
                records=records,
                columns=[
                    "event_id",
                    "originator_id",
                    "originator_version",
                    "topic",
                    "event_type",
                    "workspace_id",
                    "state",
                ],
            )
    async with pool.acquire() as conn:
        await conn.execute(
            f"""INSERT INTO {schema}.counters (name, value) VALUES ($1, $2)
                ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value""",
            request_counter(workspace),
            end,
        )


def _rebuild(database_url: str, nats_url: str, schema: str) -> float:
    """`leadlog rebuild leads` as an operator runs it; the events per second it reports."""
    env = leadlog_env(database_url, nats_url, schema)
    leadlog = str(Path(sys.executable).parent / "leadlog")
    done = subprocess.run(
        [leadlog, "rebuild", "leads", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"leadlog rebuild leads failed: {done.stderr}")
    [result] = json.loads(done.stdout)
    return float(result["events"]) / float(result["seconds"])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def _timed(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], params: dict[str, Any]
) -> tuple[list[float], dict[str, Any] | None]:
    took = []
    body: dict[str, Any] | None = None
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = await client.get(url, headers=headers, params=params)
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
    return took, body


async def _sign_in(client: httpx.AsyncClient) -> None:
    page = await client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf, "no CSRF token on /login"
    signed = await client.post(
        "/login",
        data={"email": "bench@bench.example.com", "password": PASSWORD, "csrf_token": csrf[1]},
    )
    assert signed.status_code in (200, 303), signed.text[:300]


async def _bytes_per_lead(pool: asyncpg.Pool, schema: str, leads: int) -> tuple[float, float]:
    """The log's bytes per lead (events and their indexes) and the live leads view's (its
    tables and their indexes; not the generation a rebuild keeps beside it)."""
    async with pool.acquire() as conn:
        await conn.execute(f"VACUUM ANALYZE {schema}.events")
        log_bytes = await conn.fetchval(f"SELECT pg_total_relation_size('{schema}.events')")
        live = await conn.fetchval(
            f"SELECT live_tables FROM {schema}.projection_versions WHERE name = 'leads'"
        )
        view_bytes = 0
        for table in json.loads(live).values():
            view_bytes += await conn.fetchval(f"SELECT pg_total_relation_size('{schema}.{table}')")
    return log_bytes / leads, view_bytes / leads


async def _measure(
    report: Report, client: httpx.AsyncClient, headers: dict[str, str], size: int
) -> None:
    label = f"{size // 1000:,}k" if size < 1_000_000 else f"{size // 1_000_000}M"
    pipeline = (await client.get("/v1/lead-pipelines", headers=headers)).json()["items"][0]
    board = f"/v1/lead-pipelines/{pipeline['id']}/board"
    target = person(size // 2)
    local_phone = f"({target.phone[2:5]}) {target.phone[5:8]}-{target.phone[8:]}"
    await _timed(client, "/", {}, {})  # warm what a person's first visit warms
    cases: list[tuple[str, str, dict[str, Any], float]] = [
        ("board first paint (web page /)", "/", {}, 50),
        ("board first page (API)", board, {}, 50),
        ("list first page", "/v1/leads", {"limit": 50}, 50),
        ("list page 100 (offset)", "/v1/leads", {"limit": 50, "page": 100}, 50),
        ("exact email search", "/v1/leads", {"search": target.email}, 10),
        ("exact phone search", "/v1/leads", {"search": local_phone}, 10),
        ("name search", "/v1/leads", {"search": target.name}, 50),
        ("company search", "/v1/leads", {"search": target.company}, 50),
    ]
    for name, url, params, budget in cases:
        took, body = await _timed(client, url, headers if url != "/" else {}, params)
        if "search" in params:
            assert body is not None and body["total"] >= 1, (name, params, body)
        report.add(
            f"{name}, {label} leads, p95",
            percentile(took, 0.95) * 1000,
            "ms",
            at_most=budget,
            note=f"p50 {statistics.median(took) * 1000:.1f} ms",
        )
    cursor = None
    for _ in range(99):  # to the 100th page by cursor
        page = await client.get(
            "/v1/leads",
            headers=headers,
            params={"limit": 50, **({"cursor": cursor} if cursor else {})},
        )
        cursor = page.json()["nextCursor"]
    took, _ = await _timed(client, "/v1/leads", headers, {"limit": 50, "cursor": cursor})
    report.add(
        f"list page 100 (cursor), {label} leads, p95",
        percentile(took, 0.95) * 1000,
        "ms",
        at_most=50,
        note=f"p50 {statistics.median(took) * 1000:.1f} ms",
    )


async def bench_reads(
    report: Report,
    database_url: str,
    nats_url: str,
    sizes: tuple[int, ...] = SIZES,
    *,
    keep: bool = False,
) -> None:
    """`keep` leaves the schema behind (its name is printed), to look at query plans."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    process, port = start_api(database_url, nats_url, schema)
    pool = await open_pool(database_url, schema, min_size=1, max_size=4)
    log = PostgresLog(pool, schema)
    try:
        operator = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            created = await client.post("/v1/workspaces", json={"name": "bench"}, headers=operator)
            workspace = uuid.UUID(created.json()["id"])
            headers = {**operator, "X-Workspace-Id": str(workspace)}
            pipeline = (await client.get("/v1/lead-pipelines", headers=headers)).json()["items"][0]
            stages = [uuid.UUID(s["id"]) for s in pipeline["stages"]]
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
            await _sign_in(client)
            filled = 0
            for size in sizes:
                started = time.perf_counter()
                await _fill(
                    pool, schema, workspace, uuid.UUID(pipeline["id"]), stages, filled, size
                )
                fill_rate = (size - filled) / (time.perf_counter() - started)
                filled = size
                rate = await asyncio.to_thread(_rebuild, database_url, nats_url, schema)
                # What autovacuum does within a minute of a bulk load: without it the API's
                # statements keep the plans they were prepared with over an empty log.
                await pool.execute(f"ANALYZE {schema}.events")
                print(
                    f"    {size:,} leads: in the log at {fill_rate:,.0f}/s, "
                    f"the view rebuilt at {rate:,.0f} events/s"
                )
                if size == sizes[-1]:
                    report.add(
                        f"rebuild of the leads view, {size:,} events",
                        rate,
                        "events/s",
                        at_least=30_000,
                    )
                await _measure(report, client, headers, size)
                log_bytes, view_bytes = await _bytes_per_lead(pool, schema, size)
                report.add(
                    f"bytes per lead, {size:,} leads",
                    log_bytes + view_bytes,
                    "B",
                    note=f"log {log_bytes:,.0f} B, leads view {view_bytes:,.0f} B",
                )
    finally:
        process.terminate()
        process.wait(60)
        await log.close()
        await pool.close()
        if keep:
            print(f"    kept schema {schema}")
        else:
            conn = await asyncpg.connect(database_url)
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await conn.close()


if __name__ == "__main__":

    async def _main() -> None:
        report = Report()
        # python -m bench.reads [SIZE ...] [--keep]
        sizes = tuple(int(s) for s in sys.argv[1:] if s != "--keep") or SIZES
        await bench_reads(
            report,
            os.environ["LEADLOG_DATABASE_URL"],
            os.environ["LEADLOG_NATS_URL"],
            sizes,
            keep="--keep" in sys.argv,
        )
        report.print()

    asyncio.run(_main())
