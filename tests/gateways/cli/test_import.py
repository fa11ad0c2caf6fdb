"""CSV import over HTTP and the CLI: report, mapping, status `new`, retries, limits, memory."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from domain.csv_mapping import Kind, MappingError, Target, parse_mapping, plan_columns, row_data
from domain.leads import Lead
from gateways.bootstrap import Engine, start_engine
from gateways.cli import imports as cli_import
from gateways.http.middleware import IMPORT_PATH, STREAMED_LIMITS
from gateways.settings import Settings
from handlers.imports import Record, RecordSplitter
from handlers.workspaces import create_workspace
from tests.conftest import OPERATOR, Servers, bearer, drop_schema

CSV = {"Content-Type": "text/csv"}

MIXED = (
    "First Name,Last Name,E-mail,Mobile,Company Name,Job Title,Roof Type,utm_source\r\n"
    "Ann,Lee,ann@example.com,(415) 555-2671,Lee & Co,CEO,flat,news\r\n"  # 1
    ",,,,Nameless Inc,,,\r\n"  # 2: no name, email or phone
    'Bo,"Smith, Jr.",bo@example.com,,,,"pitched\nwith ""tiles""",\r\n'  # 3: quoted, multi-line
    "\r\n"  # blank: not a row
    "Cy,,ANN@example.com,,,,,\r\n"  # 4: duplicate of row 1
    'Di,"broken"quote,di@example.com,,,,,\r\n'  # 5: malformed
    "Ed,,ed@example.com,,,,,,,extra\r\n"  # 6: more cells than the header
    "Flo,,not-an-email,12,,,,\r\n"  # 7: kept, flagged
)


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "Importco"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"]}


def auth(workspace: dict[str, str], **extra: str) -> dict[str, str]:
    return {**bearer(workspace["token"]), **CSV, **extra}


async def leads_of(engine: Engine) -> list[Lead]:
    logged = await engine.store.read(0, 100_000, ["lead.received"])
    leads = [await engine.store.load(Lead, e.event.originator_id) for e in logged]
    return [lead for lead in leads if lead is not None]


async def test_http_import_reports_every_row(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    response = await client.post(
        IMPORT_PATH, content=MIXED.encode(), headers=auth(workspace), params={"importId": "batch1"}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["importId"] == "batch1"
    assert report["complete"] is True
    assert report["rowsTotal"] == 7
    assert report["accepted"] == 4
    assert report["rejected"] == 3
    assert report["duplicates"] == 1
    assert report["replayed"] == 0
    assert report["rejectionsOmitted"] == 0
    reasons = {r["row"]: r for r in report["rejections"]}
    assert sorted(reasons) == [2, 5, 6]
    assert reasons[2]["reason"] == "no name, email or phone"
    assert "malformed CSV" in reasons[5]["reason"] and reasons[5]["line"] == 8
    assert "10 cells" in reasons[6]["reason"]
    assert report["columns"]["First Name"] == "firstName"
    assert report["columns"]["E-mail"] == "email"
    assert report["columns"]["Roof Type"] == "customFields.roofType"
    assert report["columns"]["utm_source"] == "attribution.utm_source"

    leads = {lead.name: lead for lead in await leads_of(engine)}
    assert sorted(leads) == ["Ann Lee", "Bo Smith, Jr.", "Cy", "Flo"]
    assert {lead.status for lead in leads.values()} == {"new"}
    assert {lead.source for lead in leads.values()} == {"import"}
    ann = leads["Ann Lee"]
    assert ann.details.phone == "(415) 555-2671" and ann.phone_valid is True
    assert ann.details.company == "Lee & Co" and ann.details.title == "CEO"
    assert ann.details.custom_fields == {"roofType": "flat"}
    assert ann.details.display_names == {"roofType": "Roof Type"}
    assert ann.details.attribution == {"utm_source": "news"}
    assert leads["Bo Smith, Jr."].details.custom_fields == {"roofType": 'pitched\nwith "tiles"'}
    assert leads["Cy"].is_duplicate and leads["Cy"].duplicate_of == ann.id
    assert leads["Flo"].email_valid is False and leads["Flo"].details.email == "not-an-email"
    assert position_of(report) == await engine.store.max_position()

    fetched = await client.get(f"/v1/leads/{ann.id}", headers=bearer(workspace["token"]))
    assert fetched.json()["status"] == "new"


def position_of(report: dict[str, Any]) -> int:
    position: int = report["position"]
    return position


async def test_retried_import_writes_nothing_twice(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    body = MIXED.encode()
    first = await client.post(
        IMPORT_PATH, content=body, headers=auth(workspace, **{"Idempotency-Key": "upload-7"})
    )
    before = await engine.store.max_position()
    again = await client.post(
        IMPORT_PATH, content=body, headers=auth(workspace, **{"Idempotency-Key": "upload-7"})
    )
    assert again.status_code == 200
    assert again.json()["importId"] == first.json()["importId"] == "upload-7"
    assert again.json()["accepted"] == 4 and again.json()["replayed"] == 4
    assert await engine.store.max_position() == before
    assert len(await leads_of(engine)) == 4
    # a later chunk of the same import numbers its rows on from startRow
    chunk = b"name,email\nGus,gus@example.com\n"
    later = await client.post(
        IMPORT_PATH,
        content=chunk,
        headers=auth(workspace),
        params={"importId": "upload-7", "startRow": 8},
    )
    assert later.json()["accepted"] == 1 and later.json()["replayed"] == 0
    assert len(await leads_of(engine)) == 5


async def test_explicit_mapping_overrides_the_guess(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    body = "Contact,Reach me at,Notes,Internal\nAnn Lee,ann@example.com,hello,secret\n"
    response = await client.post(
        IMPORT_PATH,
        content=body.encode(),
        headers=auth(workspace),
        params={"mapping": "Contact=name, reach me at=email,Notes=custom:remarks,Internal=ignore"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    (lead,) = await leads_of(engine)
    assert lead.name == "Ann Lee" and lead.details.email == "ann@example.com"
    assert lead.details.custom_fields == {"remarks": "hello"}
    assert lead.details.description is None


async def test_invalid_utf8_rows_are_rejected_not_fatal(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    body = b"\xef\xbb\xbfname,email\nAnn,ann@x.test\nCaf\xe9,cafe@x.test\nBo,bo@x.test\n"
    response = await client.post(IMPORT_PATH, content=body, headers=auth(workspace))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["accepted"] == 2 and report["rejected"] == 1
    assert report["rejections"] == [{"row": 2, "line": 3, "reason": "column 1 is not valid UTF-8"}]
    assert sorted(lead.name for lead in await leads_of(engine)) == ["Ann", "Bo"]


async def test_refused_files_write_nothing(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    before = await engine.store.max_position()
    cases: list[tuple[bytes, dict[str, str], dict[str, str], int, str]] = [
        (b"name\nAnn\n", {"Content-Type": "application/json"}, {}, 415, "unsupported_media_type"),
        (
            b"name\nAnn\n",
            {"Content-Type": "text/csv; charset=latin-1"},
            {},
            415,
            "unsupported_charset",
        ),
        (b"", CSV, {}, 400, "empty_file"),
        (b"\n\n", CSV, {}, 400, "empty_file"),
        (b",,\nAnn,a@x.test\n", CSV, {}, 422, "bad_header"),
        (b"Ann Lee,ann@example.com\nBo,bo@example.com\n", CSV, {}, 422, "bad_header"),
        (b"na\xefme,email\nAnn,a@x.test\n", CSV, {}, 400, "invalid_utf8"),
        (b'"name,email\n', CSV, {}, 400, "malformed_csv"),
        (b"name\nAnn\n", CSV, {"mapping": "name=nonsense"}, 422, "bad_mapping"),
        (b"name\nAnn\n", CSV, {"mapping": "nameonly"}, 422, "bad_mapping"),
        (b"name\nAnn\n", CSV, {"mapping": "Missing=email"}, 422, "bad_header"),
        (b"name\nAnn\n", CSV, {"importId": "no spaces please"}, 400, "bad_import_id"),
        (b"name\nAnn\n", CSV, {"startRow": "0"}, 422, "validation_failed"),
    ]
    for body, headers, params, status, code in cases:
        response = await client.post(
            IMPORT_PATH,
            content=body,
            headers={**bearer(workspace["token"]), **headers},
            params=params,
        )
        assert response.status_code == status, (body[:30], params, response.text)
        assert response.json()["error"]["code"] == code, (body[:30], params, response.text)
    assert await engine.store.max_position() == before
    viewer = await client.post(
        f"/v1/workspaces/{workspace['id']}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    before = await engine.store.max_position()
    refused = await client.post(
        IMPORT_PATH, content=b"name\nA\n", headers={**bearer(viewer.json()["token"]), **CSV}
    )
    assert refused.status_code == 403
    anonymous = await client.post(IMPORT_PATH, content=b"name\nA\n", headers=CSV)
    assert anonymous.status_code == 401
    assert await engine.store.max_position() == before


def generated_csv(rows: int, *, start: int = 0) -> Iterator[bytes]:
    yield b"Full Name,Email,Phone,Company,Plan\n"
    batch: list[str] = []
    for i in range(start, start + rows):
        batch.append(f"Person {i},p{i}@example.com,+1415555{i % 10000:04d},Co {i % 97},gold\n")
        if len(batch) == 1000:
            yield "".join(batch).encode()
            batch.clear()
    if batch:
        yield "".join(batch).encode()


async def streamed(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_body_limit_does_not_apply_but_the_import_limit_does(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    body = b"".join(generated_csv(3000))
    assert len(body) > 64 * 1024  # over this test app's ordinary body limit
    response = await client.post(IMPORT_PATH, content=body, headers=auth(workspace))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 3000

    declared = await client.post(
        IMPORT_PATH,
        content=b"name\n",
        headers=auth(workspace, **{"Content-Length": str(STREAMED_LIMITS[IMPORT_PATH] + 1)}),
    )
    assert declared.status_code == 413

    STREAMED_LIMITS[IMPORT_PATH], limit = 100_000, STREAMED_LIMITS[IMPORT_PATH]
    try:
        # chunked (no Content-Length): the limit is found while streaming
        cut = await client.post(
            IMPORT_PATH,
            content=streamed(generated_csv(5000, start=10_000)),
            headers=auth(workspace),
            params={"importId": "too-big"},
        )
    finally:
        STREAMED_LIMITS[IMPORT_PATH] = limit
    assert cut.status_code == 413, cut.text
    error = cut.json()["error"]
    assert error["code"] == "payload_too_large" and error["details"]["maxBytes"] == 100_000
    report = error["details"]["report"]
    assert report["complete"] is False
    assert 0 < report["accepted"] == report["rowsTotal"] < 5000
    written = await engine.store.read(0, 100_000, ["lead.received"])
    assert len(written) == 3000 + report["accepted"]  # exactly the rows the report names


async def test_twenty_thousand_rows(
    client: httpx.AsyncClient, workspace: dict[str, str], engine: Engine
) -> None:
    started = time.perf_counter()
    response = await client.post(
        IMPORT_PATH, content=streamed(generated_csv(20_000)), headers=auth(workspace)
    )
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["rowsTotal"] == report["accepted"] == 20_000
    assert report["duplicates"] == 10_000  # the phone numbers repeat every 10,000 rows
    count = await engine.pool.fetchval(
        "SELECT count(*) FROM events WHERE event_type = $1", "lead.received"
    )
    assert count == 20_000
    requests = await engine.pool.fetchval(
        "SELECT value FROM counters WHERE name LIKE '%request_id'"
    )
    assert requests == 20_000
    print(f"\nimported 20,000 rows over HTTP in {elapsed:.2f}s: {20_000 / elapsed:,.0f} rows/s")


# ---- the CLI --------------------------------------------------------------------------


@pytest.fixture
def cli_env(servers: Servers, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A schema of its own and a workspace in it, for a command run outside the test's loop."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    settings = Settings(database_schema=schema)

    async def setup() -> str:
        engine = await start_engine(settings, servers.database_url, servers.nats_url, None)
        try:
            return str((await create_workspace(engine.store, "Cli", "GB")).id)
        finally:
            await engine.close()

    workspace_id = asyncio.run(setup())
    env = {
        "LEADLOG_DATABASE_URL": servers.database_url,
        "LEADLOG_NATS_URL": servers.nats_url,
        "LEADLOG_DATABASE_SCHEMA": schema,
        "LEADLOG_DATA_DIR": str(tmp_path / "data"),
        "WORKSPACE": workspace_id,
    }
    try:
        yield env
    finally:
        asyncio.run(drop_schema(servers.database_url, schema))


def count_leads(servers: Servers, schema: str) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        settings = Settings(database_schema=schema)
        engine = await start_engine(settings, servers.database_url, servers.nats_url, None)
        try:
            leads = await leads_of(engine)
            return [
                {"name": lead.name, "status": lead.status, "phone": lead.phone_valid}
                for lead in leads
            ]
        finally:
            await engine.close()

    return asyncio.run(fetch())


def test_cli_import_with_cli_runner(
    cli_env: dict[str, str], servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in cli_env.items():
        monkeypatch.setenv(name, value)
    file = tmp_path / "leads.csv"
    file.write_text(MIXED.replace("(415) 555-2671", "020 7946 0018"), encoding="utf-8")
    result = CliRunner().invoke(
        cli_import.app, [str(file), "--workspace", cli_env["WORKSPACE"], "--import-id", "cli-1"]
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps at the terminal width
    assert "import cli-1 complete: 7 rows, 4 accepted (1 duplicates" in output
    assert "3 rejected" in output
    assert "no name, email or phone" in output
    leads = count_leads(servers, cli_env["LEADLOG_DATABASE_SCHEMA"])
    assert len(leads) == 4
    assert {lead["status"] for lead in leads} == {"new"}
    # read with the workspace's region (GB)
    assert [lead["phone"] for lead in leads if lead["name"] == "Ann Lee"] == [True]

    again = CliRunner().invoke(
        cli_import.app,
        [str(file), "--workspace", cli_env["WORKSPACE"], "--import-id", "cli-1", "--json"],
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["replayed"] == 4
    assert len(count_leads(servers, cli_env["LEADLOG_DATABASE_SCHEMA"])) == 4


def test_cli_import_as_a_process(cli_env: dict[str, str], servers: Servers, tmp_path: Path) -> None:
    file = tmp_path / "big.csv"
    with file.open("wb") as out:
        for part in generated_csv(5000):
            out.write(part)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLOG_")}
    env.update(cli_env)
    command = [
        sys.executable,
        "-m",
        "gateways.cli.imports",
        str(file),
        "--workspace",
        cli_env["WORKSPACE"],
    ]
    done = subprocess.run(
        [*command, "--json", "--mapping", "Plan=custom:plan"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rowsTotal"] == report["accepted"] == 5000
    assert report["columns"]["Plan"] == "customFields.plan"
    print(f"\nCLI imported 5,000 rows in {report['seconds']}s")

    bad = [
        (
            [*command[:3], str(tmp_path / "missing.csv"), "--workspace", cli_env["WORKSPACE"]],
            "does not exist",
        ),
        ([*command, "--mapping", "Plan=bogus"], "unknown field"),
        ([*command[:4], "--workspace", str(uuid.uuid4())], "does not exist"),
        ([*command, "--import-id", "bad id!"], "importId"),
    ]
    for args, message in bad:
        refused = subprocess.run(
            args,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=Path(__file__).parents[3],
        )
        assert refused.returncode != 0, args
        assert message in " ".join((refused.stderr + refused.stdout).split()), args
    header_only = tmp_path / "data.csv"
    header_only.write_text("Ann,ann@example.com\n")
    refused = subprocess.run(
        [*command[:3], str(header_only), "--workspace", cli_env["WORKSPACE"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[3],
    )
    assert refused.returncode == 1
    message = " ".join(refused.stderr.split())
    assert "header row" in message and "nothing was imported" in message


# ---- pure parts -----------------------------------------------------------------------


def test_mapping_rules() -> None:
    plan = plan_columns(["Name", "Email", "email", "Roof type", "roof_type", "", "Tags"])
    assert plan.describe() == {
        "Name": "name",
        "Email": "email",
        "email": "customFields.email",  # a second email column is kept, not dropped
        "Roof type": "customFields.roofType",
        "roof_type": "customFields.roofType2",
        "(column 6)": "customFields.column6",
        "Tags": "tags",
    }
    data = row_data(plan, ["Ann", "a@x.test", "b@x.test", "flat", "", "", "vip, solar"])
    assert data == {
        "name": "Ann",
        "email": "a@x.test",
        "tags": "vip, solar",
        "customFields": {"email": "b@x.test", "roofType": "flat"},
        "displayNames": {"email": "email", "roofType": "Roof type"},
    }
    assert parse_mapping("A=email, B = first_name,C=custom:x,D=-") == {
        "A": Target(Kind.FIELD, "email"),
        "B": Target(Kind.FIRST_NAME),
        "C": Target(Kind.CUSTOM, "x"),
        "D": Target(Kind.IGNORE),
    }
    for bad in ["A", "A=", "=email", "A=email,A=phone", "A=custom:1x"]:
        with pytest.raises(MappingError):
            parse_mapping(bad)


def test_splitter_is_independent_of_chunk_boundaries() -> None:
    data = MIXED.encode() + b"Gus,,g@x.test,,,,,\r"
    expected = None
    for size in (1, 2, 3, 7, 64, len(data)):
        splitter = RecordSplitter()
        records: list[Record] = []
        for i in range(0, len(data), size):
            records.extend(splitter.feed(data[i : i + size]))
        records.extend(splitter.finish())
        expected = expected or records
        assert records == expected, size
    assert expected is not None
    assert [r.line for r in expected] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]


# ---- memory -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_hundred_thousand_rows_in_flat_memory(
    client: httpx.AsyncClient, workspace: dict[str, str]
) -> None:
    process = psutil.Process()
    warm = await client.post(
        IMPORT_PATH, content=streamed(generated_csv(5000, start=500_000)), headers=auth(workspace)
    )
    assert warm.status_code == 200
    baseline = process.memory_info().rss
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        response = await client.post(
            IMPORT_PATH, content=streamed(generated_csv(100_000)), headers=auth(workspace)
        )
    finally:
        done.set()
        await sampler
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 100_000
    growth = (peak - baseline) / 2**20
    print(
        f"\n100,000 rows in {elapsed:.1f}s ({100_000 / elapsed:,.0f} rows/s); RSS +{growth:.1f} MiB"
    )
    # The file alone is ~6 MiB and 100k parsed leads would be hundreds: this is flat.
    assert growth < 32
