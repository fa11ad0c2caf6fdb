"""Blue/green rebuilds: readers never see an empty or partial view, the live runner follows
the swap (in this process and from another one), interrupted rebuilds resume, --verify."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest

from gateways.bootstrap import Engine
from gateways.consumers.consumer_state import State
from gateways.consumers.projector import Projector
from gateways.consumers.rebuild import RebuildError, analyze_log_if_stale, rebuild
from gateways.settings import Settings
from projections.leads import LeadList
from tests.conftest import Servers, leadlog_cli

V = LeadList.version
"""The live tables of a fresh engine are `leads_v<V>`; each rebuild adds one."""


def generation(n: int) -> dict[str, str]:
    """The leads view's tables of generation `n`."""
    return {"leads": f"leads_v{n}", "lead_counts": f"lead_counts_v{n}"}


pytestmark = pytest.mark.timeout(180)


async def add(client: httpx.AsyncClient, ws: dict[str, Any], name: str) -> dict[str, Any]:
    response = await client.post("/v1/leads", json={"name": name}, headers=ws["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def board_count(client: httpx.AsyncClient, ws: dict[str, Any], after: int = 0) -> int:
    response = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"after": after} if after else {},
        headers=ws["h"],
    )
    assert response.status_code == 200, response.text
    return sum(int(c["count"]) for c in response.json()["columns"])


async def view_target(engine: Engine, view: str) -> str:
    definition: str = await engine.pool.fetchval(
        "SELECT definition FROM pg_views WHERE schemaname = current_schema() AND viewname = $1",
        view,
    )
    return definition


async def test_readers_never_see_an_empty_or_partial_view_during_a_rebuild(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(60):
        last = await add(client, ws, f"Lead {i}")
    before = await board_count(client, ws, last["position"])
    assert before == 60
    # Many small batches: the readers get many looks in.
    engine.projector.batch_size = engine.projector.build_batch_size = 5
    rebuilding = asyncio.Event()
    done = asyncio.Event()
    seen: list[tuple[int, int, bool]] = []  # board count, view count, during the rebuild
    errors: list[str] = []

    async def reader() -> None:
        while not done.is_set():
            try:
                on_board = await board_count(client, ws)
                in_view = await engine.pool.fetchval(
                    "SELECT count(*) FROM leads WHERE workspace_id = $1::uuid AND NOT deleted",
                    ws["id"],
                )
            except Exception as error:  # any failure is what this test is looking for
                errors.append(repr(error))
            else:
                seen.append((on_board, int(in_view), rebuilding.is_set()))
            await asyncio.sleep(0)

    async def writer() -> None:
        i = 0
        while not done.is_set():
            await add(client, ws, f"During {i}")
            i += 1
            await asyncio.sleep(0.01)

    def progress(position: int, head: int) -> None:
        rebuilding.set()

    tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
    try:
        result = await rebuild(engine.projector, LeadList(), on_progress=progress)
        await asyncio.sleep(0.2)  # readers keep looking after the swap too
    finally:
        done.set()
        await asyncio.gather(*tasks)

    assert errors == []
    assert sum(1 for s in seen if s[2]) >= 5, seen
    for earlier, later in itertools.pairwise(seen):
        assert later[0] >= earlier[0] and later[1] >= earlier[1], (earlier, later)
    assert all(on_board >= before and in_view >= before for on_board, in_view, _ in seen)

    assert dict(result.old_tables) == generation(V)
    assert dict(result.new_tables) == generation(V + 1)
    assert sorted(result.kept) == sorted(generation(V).values())
    assert engine.projector.tables("leads")["leads"] == f"leads_v{V + 1}"
    assert f"leads_v{V + 1}" in await view_target(engine, "leads")
    live = await engine.pool.fetchrow(
        "SELECT live_version, live_tables FROM projection_versions WHERE name = 'leads'"
    )
    assert live is not None
    assert live["live_version"] == V and json.loads(live["live_tables"]) == generation(V + 1)
    # Filled first, then indexed and analysed: the new tables have every index the live
    # copy had, and statistics before they serve.
    indexes = await engine.pool.fetch(
        "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema() "
        "AND tablename = ANY($1::text[])",
        [f"leads_v{V}", f"leads_v{V + 1}"],
    )
    by_table = {
        t: {i["indexname"].removeprefix(t) for i in indexes if i["tablename"] == t}
        for t in (f"leads_v{V}", f"leads_v{V + 1}")
    }
    assert by_table[f"leads_v{V + 1}"] == by_table[f"leads_v{V}"]
    assert {"_search", "_phone_digits", "_board"} <= by_table[f"leads_v{V + 1}"]
    analysed = await engine.pool.fetchval(
        "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables "
        "WHERE schemaname = current_schema() AND relname = $1",
        f"leads_v{V + 1}",
    )
    assert analysed
    # The log too, before the build read it (it had no statistics, or only old ones).
    log_analysed = await engine.pool.fetchval(
        "SELECT coalesce(last_analyze, last_autoanalyze) IS NOT NULL FROM pg_stat_user_tables "
        "WHERE schemaname = current_schema() AND relname = 'events'"
    )
    assert log_analysed
    assert (
        await engine.pool.fetchval(
            f"SELECT count(*) FROM tracking WHERE consumer = 'projection:leads:v{V + 1}'"
        )
        == 0
    )

    # New events keep flowing into the new version (and not into the old one).
    after = await add(client, ws, "After the swap")
    total = await board_count(client, ws, after["position"])
    assert total == await engine.pool.fetchval(
        f"SELECT count(*) FROM leads_v{V + 1} WHERE workspace_id = $1::uuid", ws["id"]
    )
    assert (
        await engine.pool.fetchval(
            f"SELECT count(*) FROM leads_v{V + 1} WHERE id = $1::uuid", after["id"]
        )
        == 1
    )
    assert (
        await engine.pool.fetchval(
            f"SELECT count(*) FROM leads_v{V} WHERE id = $1::uuid", after["id"]
        )
        == 0
    )
    [status] = [s for s in await engine.projector.status() if s.name == "leads"]
    assert status.state == "running" and status.lag == 0


async def test_an_interrupted_rebuild_resumes_or_restarts(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(30):
        await add(client, ws, f"Lead {i}")
    engine.projector.batch_size = engine.projector.build_batch_size = 3
    halfway = asyncio.Event()
    reached: list[int] = []

    def progress(position: int, head: int) -> None:
        reached.append(position)
        if position >= head // 2:
            halfway.set()

    task = asyncio.create_task(rebuild(engine.projector, LeadList(), on_progress=progress))
    await asyncio.wait_for(halfway.wait(), 30)
    task.cancel()  # as Ctrl-C does
    with pytest.raises(asyncio.CancelledError):
        await task
    interrupted = await engine.pool.fetchval(
        f"SELECT position FROM tracking WHERE consumer = 'projection:leads:v{V + 1}'"
    )
    assert interrupted and interrupted > 0
    assert engine.projector.tables("leads")["leads"] == f"leads_v{V}"
    assert f"leads_v{V}" in await view_target(engine, "leads")

    resumed = await rebuild(engine.projector, LeadList(), verify=True)
    assert resumed.resumed_from == interrupted
    assert resumed.differences == 0 and resumed.verified is not None
    assert engine.projector.tables("leads")["leads"] == f"leads_v{V + 1}"

    # Interrupt the next one, then throw it away and start over.
    halfway.clear()
    task = asyncio.create_task(rebuild(engine.projector, LeadList(), on_progress=progress))
    await asyncio.wait_for(halfway.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await engine.pool.fetchval(
        f"SELECT position FROM tracking WHERE consumer = 'projection:leads:v{V + 2}'"
    )
    again = await rebuild(engine.projector, LeadList(), restart=True, verify=True)
    assert again.resumed_from == 0 and again.differences == 0
    assert dict(again.new_tables) == generation(V + 2)
    assert sorted(again.dropped) == sorted(generation(V).values())
    assert sorted(again.kept) == sorted(generation(V + 1).values())


async def test_verify_reports_a_tampered_row_and_the_swap_repairs_it(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    leads = [await add(client, ws, f"Lead {i}") for i in range(10)]
    await board_count(client, ws, leads[-1]["position"])
    healthy = await rebuild(engine.projector, LeadList(), verify=True)
    assert healthy.verified is not None
    diff, counts = healthy.verified
    assert (diff.logical, counts.logical) == ("leads", "lead_counts")
    assert counts.differing == 0 and counts.live_rows == counts.rebuilt_rows == 1
    assert diff.differing == 0 and diff.live_rows == diff.rebuilt_rows == 10

    victim = leads[3]["id"]
    await engine.pool.execute(
        f"UPDATE leads_v{V + 1} SET name = 'tampered' WHERE id = $1::uuid", victim
    )
    await engine.pool.execute(f"DELETE FROM leads_v{V + 1} WHERE id = $1::uuid", leads[5]["id"])
    checked = await rebuild(engine.projector, LeadList(), verify=True)
    assert checked.verified is not None
    diff, counts = checked.verified
    assert counts.differing == 0  # the counts come from the log, not from the rows
    assert (diff.live_rows, diff.rebuilt_rows, diff.differing) == (9, 10, 2)
    assert sorted(diff.first_keys) == sorted([json.dumps([victim]), json.dumps([leads[5]["id"]])])
    assert await engine.pool.fetchval("SELECT name FROM leads WHERE id = $1::uuid", victim) == (
        "Lead 3"
    )
    assert await engine.pool.fetchval("SELECT count(*) FROM leads") == 10


async def test_a_second_rebuild_at_the_same_time_is_refused(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(20):
        await add(client, ws, f"Lead {i}")
    engine.projector.batch_size = engine.projector.build_batch_size = 2
    started = asyncio.Event()
    first = asyncio.create_task(
        rebuild(engine.projector, LeadList(), on_progress=lambda p, h: started.set())
    )
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(RebuildError, match="already running"):
        await rebuild(engine.projector, LeadList())
    await first


cli = leadlog_cli


async def test_cli_rebuild_in_another_process_while_this_one_serves(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    engine: Engine,
    servers: Servers,
    settings: Settings,
) -> None:
    for i in range(10):
        last = await add(client, ws, f"Lead {i}")
    await board_count(client, ws, last["position"])
    done = await asyncio.to_thread(cli, servers, settings, "rebuild", "leads", "--verify", "--json")
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["newTables"] == generation(V + 1)
    assert report["verify"]["differences"] == 0

    # This process's live runner follows the swap made elsewhere at its next batch.
    after = await add(client, ws, "After the swap")
    assert await board_count(client, ws, after["position"]) == 11
    assert engine.projector.tables("leads")["leads"] == f"leads_v{V + 1}"
    assert (
        await engine.pool.fetchval(
            f"SELECT count(*) FROM leads_v{V + 1} WHERE id = $1::uuid", after["id"]
        )
        == 1
    )

    human = await asyncio.to_thread(cli, servers, settings, "rebuild", "--all")
    assert human.returncode == 0, human.stderr
    assert "rebuilt leads" in human.stdout and f"leads_v{V + 2}" in human.stdout
    assert "rebuilt workspaces" in human.stdout

    for bad, message in (
        ((), "name one projection or use --all"),
        (("nosuch",), "no projection named 'nosuch'"),
        (("leads", "--all"), "name one projection or use --all"),
    ):
        failed = await asyncio.to_thread(cli, servers, settings, "rebuild", *bad)
        assert failed.returncode == 1, failed.stdout
        assert message in failed.stderr


class NewerLeads(LeadList):
    version = LeadList.version + 1


async def wait_until(check: Any, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_new_version_waiting_elsewhere_takes_over_after_the_rebuild(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(5):
        last = await add(client, ws, f"Lead {i}")
    await board_count(client, ws, last["position"])
    # Another process already runs the new code: it waits for the rebuild.
    waiting = Projector(engine.pool, engine.log, engine.store, [NewerLeads()])
    await waiting.start()
    try:
        [before] = await waiting.status()
        assert before.state == State.NEEDS_REBUILD
        builder = Projector(engine.pool, engine.log, engine.store, [NewerLeads()])
        result = await rebuild(builder, NewerLeads(), verify=True)
        assert result.verify_note and f"version {V}" in result.verify_note
        live = await engine.pool.fetchrow(
            "SELECT live_version, live_tables FROM projection_versions WHERE name = 'leads'"
        )
        assert live is not None and live["live_version"] == V + 1

        async def taken_over() -> bool:
            [status] = await waiting.status()
            return status.state == State.RUNNING

        assert await wait_until(taken_over)
        assert waiting.tables("leads")["leads"] == f"leads_v{V + 1}"
        after = await add(client, ws, "After the swap")
        assert await waiting.wait_for("leads", after["position"], 10)
        assert (
            await engine.pool.fetchval(
                "SELECT count(*) FROM leads WHERE id = $1::uuid", after["id"]
            )
            == 1
        )

        # The old code's runner in this engine stops rather than write to the new tables.
        async def stood_down() -> bool:
            statuses = await engine.projector.status()
            return [s.state for s in statuses if s.name == "leads"] == [State.NEEDS_REBUILD]

        assert await wait_until(stood_down)
        assert engine.projector.tables("leads")["leads"] == f"leads_v{V}"
    finally:
        await waiting.stop()


async def test_a_rebuild_analyses_a_log_without_statistics_first(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for n in range(5):
        await add(client, ws, f"Stats {n}")
    await engine.pool.execute("ANALYZE events")
    async with engine.pool.acquire() as conn:
        assert await analyze_log_if_stale(conn) is False  # fresh statistics: left alone
    # A log without statistics (as after a bulk load with autovacuum off) is analysed.
    await engine.pool.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'events'::regclass")
    async with engine.pool.acquire() as conn:
        assert await analyze_log_if_stale(conn) is True
    assert await engine.pool.fetchval(
        "SELECT reltuples >= 0 FROM pg_class WHERE oid = 'events'::regclass"
    )
