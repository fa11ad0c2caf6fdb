"""`leadlog audit verify`: clean, exact about tampered rows, no false positives, nothing left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from domain.base import LoggedEvent
from domain.forms import HONEYPOT, SUBMISSION_TOKEN
from gateways.bootstrap import PROJECTIONS, Engine
from gateways.consumers import audit as audit_module
from gateways.consumers.audit import AuditReport, verify
from gateways.settings import Settings
from projections.base import ProjectionDb, Tables
from projections.campaigns import CampaignsView
from projections.leads import LeadList
from projections.submissions import SubmissionsView
from projections.timeline import LeadTimeline
from tests.conftest import OPERATOR, Servers, leadlog_cli, make_campaign
from tests.gateways.http.test_forms import QUOTE_FORM, token_of

pytestmark = pytest.mark.timeout(240)

CSV = (
    "First Name,Last Name,E-mail,Company Name\r\n"
    "Csv,One,csv1@x.test,Csv Co\r\n"
    "Csv,Two,csv2@x.test,\r\n"
    "Csv,Again,CSV1@x.test,\r\n"  # a duplicate of the first row
)


async def ok(response: httpx.Response | Any, *codes: int) -> dict[str, Any]:
    if not isinstance(response, httpx.Response):
        response = await response
    assert response.status_code in (codes or (200, 201)), response.text
    body: dict[str, Any] = response.json()
    return body


async def add(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return await ok(client.post("/v1/leads", json=fields, headers=ws["h"]), 201)


def stage(ws: dict[str, Any], name: str) -> str:
    found: str = next(s["id"] for s in ws["pipeline"]["stages"] if s["name"] == name)
    return found


async def broad_workload(client: httpx.AsyncClient, ws: dict[str, Any]) -> list[dict[str, Any]]:
    """Leads through every channel (duplicates included), then the ways people work them
    (except assignment, which is being reworked). Returns the leads made through the API."""
    h = ws["h"]
    leads = [
        await add(
            client,
            ws,
            name=f"Lead {i}",
            email=f"lead{i}@x.test",
            company=f"Co {i}",
            tags=["a", "b"] if i % 2 else [],
            customFields={"budget": i * 10},
        )
        for i in range(8)
    ]
    duplicate = await add(client, ws, name="Lead 0 again", email="LEAD0@x.test")
    assert duplicate["isDuplicate"] and duplicate["duplicateOf"] == leads[0]["id"]

    # an inbound webhook (a duplicate too), the partner submit API, a hosted form, a CSV file
    hook = await ok(client.post("/v1/lead-webhooks", json={"name": "Landing page"}, headers=h))
    for _ in range(2):
        await ok(
            client.post(
                f"/webhooks/leads/{hook['apiKey']}",
                json={"name": "Web Lead", "email": "web@x.test", "phone": "+1 415 555 2671"},
            )
        )
    campaign = await make_campaign(client, h)
    for _ in range(2):
        await ok(
            client.post(
                "/api/v1/leads/submit",
                json={"campaignId": campaign, "lead": {"name": "Sub", "email": "sub@x.test"}},
                headers=h,
            ),
            201,
        )
    form = await ok(
        client.post("/v1/lead-forms", json={**QUOTE_FORM, "campaignId": campaign}, headers=h), 201
    )
    page = await client.get(form["url"])
    posted = await client.post(
        form["url"],
        data={
            "name": "Form Lead",
            "email": "form@x.test",
            "roofType": "flat",
            HONEYPOT: "",
            SUBMISSION_TOKEN: token_of(page.text),
        },
    )
    assert posted.status_code == 200, posted.text
    imported = await ok(
        client.post(
            "/v1/leads/import", content=CSV.encode(), headers={**h, "Content-Type": "text/csv"}
        )
    )
    assert imported["accepted"] == 3 and imported["duplicates"] == 1

    # a lead waiting for its customer, who then registers; the workspace's abandon-after
    customer = await ok(client.post("/v1/customers", json={"name": "Newco"}, headers=h), 201)
    pending = await add(client, ws, name="Pending", customerId=customer["id"])
    assert pending["status"] == "pending"
    await ok(
        client.patch(
            f"/v1/workspaces/{ws['id']}/settings", json={"abandonAfterHours": 48}, headers=OPERATOR
        )
    )
    await ok(client.post(f"/v1/customers/{customer['id']}/activate", headers=h))

    # working the leads
    for lead, name in zip(leads[:4], ("Contacted", "Won", "Contacted", "Lost"), strict=True):
        await ok(
            client.patch(
                f"/v1/leads/{lead['id']}/stage", json={"stageId": stage(ws, name)}, headers=h
            )
        )
    await ok(
        client.post(
            "/v1/leads/bulk-action",
            json={
                "action": "move_stage",
                "leadIds": [x["id"] for x in leads[4:7]],
                "stageId": stage(ws, "Contacted"),
            },
            headers=h,
        )
    )
    for lead in leads[:3]:
        await ok(
            client.post(f"/v1/leads/{lead['id']}/notes", json={"value": "called"}, headers=h),
            201,
        )
    await ok(
        client.patch(
            f"/v1/leads/{leads[1]['id']}",
            json={
                "name": "Lead One",
                "company": "New Co",
                "phone": "+1 415 555 0000",
                "addTags": ["hot"],
                "removeTags": ["a"],
                "customFields": {"budget": 99, "size": "L"},
            },
            headers=h,
        )
    )
    for status in ("contacted", "qualified"):
        await ok(
            client.patch(f"/v1/leads/{leads[2]['id']}/status", json={"status": status}, headers=h)
        )
    await ok(client.delete(f"/v1/leads/{leads[5]['id']}", headers=h))
    await ok(client.delete(f"/v1/leads/{leads[6]['id']}", headers=h))
    await ok(client.post(f"/v1/leads/{leads[6]['id']}/restore", headers=h))
    await ok(client.post(f"/v1/leads/{leads[3]['id']}/convert", headers=h))
    partner = await ok(
        client.post(
            "/v1/partners",
            json={"name": "P1", "email": "ops@p.test", "webhookUrl": "https://p.test/hook"},
            headers=h,
        ),
        201,
    )
    url = f"/v1/leads/{leads[7]['id']}"
    await ok(client.post(f"{url}/refer", json={"partnerId": partner["id"]}, headers=h))
    await ok(client.post(f"{url}/returns", json={"reason": "bad number"}, headers=h))
    await ok(client.post(f"{url}/returns/decline", json={"reason": "works"}, headers=h))
    return leads


def summary(report: AuditReport) -> str:
    return json.dumps(report.json(), indent=1, default=str)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["projection"]: p for p in report["projections"]}


async def caught_up(engine: Engine) -> int:
    head = await engine.store.max_position()
    for projection in PROJECTIONS:
        assert await engine.projector.wait_for(projection.name, head, 15), projection.name
    return head


async def scratch_left(engine: Engine) -> int:
    """Temporary tables named like the audit's scratch copies, in any session."""
    count: int = await engine.pool.fetchval(
        """
        SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname LIKE 'pg\\_temp\\_%' AND c.relname LIKE '%\\_audit%'
        """
    )
    return count


async def live_state(engine: Engine) -> tuple[Any, ...]:
    """What the audit must never change: the registry, the views' targets, and which tables
    exist in the engine's schema; and no checkpoint of its own (live runners may record
    theirs meanwhile)."""
    registry = await engine.pool.fetch(
        "SELECT name, live_version, live_tables::text FROM projection_versions ORDER BY name"
    )
    views = await engine.pool.fetch(
        """SELECT viewname, definition FROM pg_views
            WHERE schemaname = current_schema() ORDER BY viewname"""
    )
    tables = await engine.pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    )
    consumers = {str(r[0]) for r in await engine.pool.fetch("SELECT consumer FROM tracking")}
    projections = {f"projection:{p.name}" for p in PROJECTIONS}
    assert {c for c in consumers if c.startswith("projection:")} <= projections
    assert not any("audit" in c for c in consumers)
    return tuple(tuple(map(tuple, rows)) for rows in (registry, views, tables))


async def test_audit_is_clean_for_every_view_after_a_broad_workload(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    leads = await broad_workload(client, ws)
    before = await live_state(engine)
    seen: dict[str, int] = {}

    def progress(name: str, position: int, target: int) -> None:
        seen[name] = position
        assert position <= target

    report = await verify(engine.projector, PROJECTIONS, on_progress=progress)

    assert report.clean, summary(report)
    assert [p.name for p in report.projections] == [p.name for p in PROJECTIONS]
    assert set(seen) == {p.name for p in PROJECTIONS}
    for audit in report.projections:
        assert audit.compared and audit.differences == 0, summary(report)
        assert audit.behind == 0 and audit.note is None, summary(report)
        assert audit.position >= report.head
        assert [t.logical for t in audit.tables] == list(audit.scratch_tables)
        for table in audit.tables:
            assert table.live_rows == table.rebuilt_rows == table.rows
            assert table.rebuilt_table.startswith("pg_temp.")
    audits = {a.name: a for a in report.projections}
    # the workload reached the views that matter here (so the comparison compared something)
    api_leads = await engine.pool.fetchval("SELECT count(*) FROM leads")
    assert api_leads >= len(leads) + 8
    assert audits[LeadList.name].tables[0].rows == api_leads
    assert audits[LeadList.name].events > api_leads
    assert audits[LeadTimeline.name].rows > api_leads
    # two through the submit API, one through the form; imported leads make none
    assert audits[SubmissionsView.name].rows == 3
    assert audits[CampaignsView.name].rows == 1
    assert report.json()["clean"] is True and report.json()["differences"] == 0
    assert await scratch_left(engine) == 0
    assert await live_state(engine) == before


cli = leadlog_cli


async def test_cli_reports_exactly_the_tampered_rows_and_exits_1(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    engine: Engine,
    servers: Servers,
    settings: Settings,
) -> None:
    leads = await broad_workload(client, ws)
    await caught_up(engine)
    victim = leads[1]["id"]
    leads_table = engine.projector.tables(LeadList.name)["leads"]
    entries = engine.projector.tables(LeadTimeline.name)["timeline_entries"]
    original = await engine.pool.fetchval(
        f"SELECT name FROM {leads_table} WHERE id = $1::uuid", victim
    )
    assert original == "Lead One"
    await engine.pool.execute(
        f"UPDATE {leads_table} SET name = 'tampered' WHERE id = $1::uuid", victim
    )
    lost = await engine.pool.fetchrow(
        f"""DELETE FROM {entries}
             WHERE (lead_id, position) = (SELECT lead_id, position FROM {entries}
                                           WHERE lead_id = $1::uuid ORDER BY position LIMIT 1)
            RETURNING lead_id, position""",
        leads[2]["id"],
    )
    assert lost is not None

    done = await asyncio.to_thread(cli, servers, settings, "audit", "verify", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] is False and report["differences"] == 2
    audits = by_name(report)
    assert set(audits) == {p.name for p in PROJECTIONS}
    for name, audit in audits.items():
        assert audit["compared"], audit
        if name not in (LeadList.name, LeadTimeline.name):
            assert audit["differences"] == 0, audit

    leads_diff, counts_diff = audits[LeadList.name]["tables"]
    assert counts_diff["table"] == "lead_counts" and counts_diff["differing"] == 0
    assert (leads_diff["missing"], leads_diff["extra"], leads_diff["changed"]) == (0, 0, 1)
    assert leads_diff["liveRows"] == leads_diff["rebuiltRows"]
    [changed] = leads_diff["examples"]
    assert json.loads(changed["key"]) == [victim]
    assert changed["kind"] == "changed" and changed["columns"] == ["name"]
    assert changed["live"] == {"name": "tampered"} and changed["rebuilt"] == {"name": original}

    timeline = {t["table"]: t for t in audits[LeadTimeline.name]["tables"]}
    assert set(timeline) == set(LeadTimeline.table_names)
    assert timeline["timeline_leads"]["differing"] == 0
    gone = timeline["timeline_entries"]
    assert (gone["missing"], gone["extra"], gone["changed"], gone["differing"]) == (1, 0, 0, 1)
    assert gone["liveRows"] + 1 == gone["rebuiltRows"]
    [missing] = gone["examples"]
    assert missing["kind"] == "missing" and missing["live"] is None
    assert json.loads(missing["key"]) == [str(lost["lead_id"]), lost["position"]]
    assert missing["rebuilt"]["event_type"] == "lead.received"

    # the people's view: the same, in tables, and still exit code 1
    human = await asyncio.to_thread(cli, servers, settings, "audit", "verify")
    assert human.returncode == 1, human.stderr
    assert '"tampered" (live) → "Lead One" (log)' in human.stdout
    assert "missing from the live view" in human.stdout
    assert "2 differing row(s)" in human.stdout

    # nothing was repaired or changed by the audit; a view left alone passes on its own
    assert (
        await engine.pool.fetchval(f"SELECT name FROM {leads_table} WHERE id = $1::uuid", victim)
        == "tampered"
    )
    alone = await asyncio.to_thread(
        cli, servers, settings, "audit", "verify", "-p", "workspaces", "--json"
    )
    assert alone.returncode == 0, alone.stderr
    assert [p["projection"] for p in json.loads(alone.stdout)["projections"]] == ["workspaces"]
    unknown = await asyncio.to_thread(cli, servers, settings, "audit", "verify", "-p", "nosuch")
    assert unknown.returncode == 1 and "no projection named 'nosuch'" in unknown.stderr
    assert await scratch_left(engine) == 0


async def test_no_false_positives_while_leads_keep_arriving(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(40):
        await add(client, ws, name=f"Before {i}", email=f"b{i % 25}@x.test")
    engine.projector.batch_size = 5  # a slow replay: the live views move all through it
    stop = asyncio.Event()
    written: list[int] = []
    errors: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                lead = await add(client, ws, name=f"During {i}", email=f"d{i % 9}@x.test")
                if i % 3 == 0:
                    await ok(
                        client.patch(
                            f"/v1/leads/{lead['id']}/stage",
                            json={"stageId": stage(ws, "Contacted")},
                            headers=ws["h"],
                        )
                    )
                if i % 4 == 0:
                    await ok(
                        client.patch(
                            f"/v1/leads/{lead['id']}",
                            json={"company": f"Co {i}", "addTags": ["t"]},
                            headers=ws["h"],
                        )
                    )
                written.append(lead["position"])
            except Exception as error:  # the test fails on any, after the audit
                errors.append(repr(error))
            i += 1
            await asyncio.sleep(0.005)

    writers = [asyncio.create_task(writer()) for _ in range(2)]
    try:
        report = await verify(engine.projector, PROJECTIONS)
        during = len(written)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert errors == []
    assert during >= 10
    assert report.clean, summary(report)
    # the views were compared past the head the audit started at: they moved during it
    assert max(p.position for p in report.projections) > report.head
    # and once the writers stopped, again
    again = await verify(engine.projector, PROJECTIONS)
    assert again.clean, summary(again)


@pytest.mark.parametrize(
    "tail", [0, audit_module.TAIL], ids=["while-catching-up", "inside-the-snapshot"]
)
async def test_interrupted_audit_leaves_nothing_behind(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    engine: Engine,
    tail: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(audit_module, "TAIL", tail)
    for i in range(30):
        await add(client, ws, name=f"Lead {i}")
    await caught_up(engine)
    before = await live_state(engine)
    engine.projector.batch_size = 2
    cancelled_at: list[tuple[int, int]] = []

    def progress(name: str, position: int, target: int) -> None:
        # Halfway through the leads' replay, cancel (as Ctrl-C does): the audit stops at its
        # next await, with the scratch copy of the leads half filled.
        if name == LeadList.name and target // 2 <= position < target:
            cancelled_at.append((position, target))
            task.cancel()

    task = asyncio.create_task(verify(engine.projector, PROJECTIONS, on_progress=progress))
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 60)
    assert cancelled_at
    assert await scratch_left(engine) == 0
    assert await live_state(engine) == before
    # every pooled connection is back to the engine's schema alone
    size = engine.pool.get_idle_size()
    held = [await engine.pool.acquire() for _ in range(size)]
    try:
        paths = {str(await c.fetchval("SELECT current_setting('search_path')")) for c in held}
    finally:
        for conn in held:
            await engine.pool.release(conn)
    assert paths == {engine.settings.database_schema}
    engine.projector.batch_size = 500
    assert (await verify(engine.projector, [LeadList()])).clean


class NewerLeads(LeadList):
    version = LeadList.version + 1


class BrokenLeads(LeadList):
    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        raise RuntimeError("cannot fold this")


async def test_a_view_behind_of_another_version_or_failing_is_reported(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(5):
        await add(client, ws, name=f"Lead {i}")
    await caught_up(engine)
    await engine.projector.stop()  # as when no engine runs: the live views stay where they are
    try:
        late = await add(client, ws, name="Not in the view yet")
        report = await verify(engine.projector, [LeadList(), NewerLeads(), BrokenLeads()], wait=0.3)
    finally:
        await engine.projector.start()
    current, newer, broken = report.projections
    assert current.compared and current.matches and current.differences == 0
    assert not current.clean  # behind the head: stopped views must not pass the audit
    assert current.position < late["position"] <= report.head
    assert current.behind == report.head - current.position > 0
    assert report.behind == {"leads": current.behind}
    assert report.json()["projections"][0]["clean"] is False
    assert current.note is not None and "behind" in current.note
    assert current.tables[0].live_rows == 5
    assert not newer.compared and not newer.clean and newer.tables == []
    assert newer.note is not None and f"version {LeadList.version}" in newer.note
    assert not broken.compared and broken.tables == []
    assert broken.note == "not compared: the replay failed: RuntimeError: cannot fold this"
    assert not report.clean and report.differences == 0
    assert await scratch_left(engine) == 0
