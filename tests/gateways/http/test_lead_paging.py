"""Reads that stay fast as a workspace grows: the per-stage counts the leads view keeps
(exact under concurrent moves, deletes and restores), keyset paging of the lead list, and
the index-backed searches."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from gateways.bootstrap import Engine
from gateways.consumers.read_models import Cursor
from tests.conftest import sign_in_manager
from tests.gateways.http.test_lead_commands import add, stage
from tests.gateways.http.test_lead_filters import leads


async def board(client: httpx.AsyncClient, ws: dict[str, Any], after: int) -> dict[str, int]:
    response = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"after": after, "limit": 1},
        headers=ws["h"],
    )
    assert response.status_code == 200, response.text
    return {c["stageId"]: c["count"] for c in response.json()["columns"]}


async def counted(engine: Engine, workspace_id: str) -> dict[str, int]:
    """Each stage's live leads, counted row by row (what the kept counts must equal)."""
    rows = await engine.pool.fetch(
        "SELECT stage_id::text, count(*) FROM leads WHERE workspace_id = $1::uuid "
        "AND NOT deleted GROUP BY stage_id",
        workspace_id,
    )
    return {row[0]: row[1] for row in rows}


async def test_stage_counts_stay_exact_under_concurrent_moves_deletes_and_restores(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    created = await asyncio.gather(*(add(client, ws, name=f"Lead {i}") for i in range(40)))
    ids = [lead["id"] for lead in created]
    stages = [s["id"] for s in ws["pipeline"]["stages"]]
    rng = random.Random(7)
    positions: list[int] = []

    async def churn(lead_id: str) -> None:
        for _ in range(4):
            roll = rng.random()
            if roll < 0.6:
                response = await client.patch(
                    f"/v1/leads/{lead_id}/stage",
                    json={"stageId": rng.choice(stages)},
                    headers=ws["h"],
                )
            elif roll < 0.8:
                response = await client.delete(f"/v1/leads/{lead_id}", headers=ws["h"])
            else:
                response = await client.post(f"/v1/leads/{lead_id}/restore", headers=ws["h"])
            if response.status_code == 200:
                positions.append(response.json()["position"])

    # Two writers per lead, forty leads at once: moves, deletes and restores race.
    await asyncio.gather(*(churn(i) for i in ids + ids))
    on_board = await board(client, ws, max(positions))
    truth = await counted(engine, ws["id"])
    assert on_board == {s: truth.get(s, 0) for s in stages}
    live = (await leads(client, ws, after=max(positions)))["total"]
    trash = (await leads(client, ws, deleted="true"))["total"]
    assert live == sum(truth.values()) and live + trash == 40
    assert 0 < trash < 40, "the churn deleted some leads and left some"
    kept = await engine.pool.fetch(
        "SELECT stage_id::text, deleted, leads FROM lead_counts WHERE workspace_id = $1::uuid",
        ws["id"],
    )
    assert all(row["leads"] > 0 for row in kept), "a row that came down to nothing is gone"
    assert sum(row["leads"] for row in kept if row["deleted"]) == trash


async def test_a_filtered_total_is_counted_and_one_stage_uses_the_kept_count(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for i in range(6):
        last = await add(client, ws, name=f"Lead {i}", tags=["hot"] if i % 2 else [])
    contacted = stage(ws, "Contacted")
    moved = await client.patch(
        f"/v1/leads/{last['id']}/stage", json={"stageId": contacted}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    after = moved.json()["position"]
    assert (await leads(client, ws, after=after, tag="hot"))["total"] == 3
    assert (await leads(client, ws, after=after, stageId=contacted))["total"] == 1
    both = await leads(client, ws, after=after, stageId=[contacted, stage(ws, "New")])
    assert both["total"] == 6


async def walk(
    client: httpx.AsyncClient, ws: dict[str, Any], **params: Any
) -> tuple[list[str], int]:
    """Every lead, page after page by `nextCursor`; the number of pages it took."""
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = await leads(client, ws, **params, **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen += [item["id"] for item in page["items"]]
        assert page["total"] == 23
        cursor = page["nextCursor"]
        if cursor is None:
            return seen, pages


async def test_cursor_pages_walk_every_lead_once_in_the_offset_order(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    names = ["bea", "Al", "cy", "Al", "dee"]  # repeated names: ties the id must break
    for i in range(23):
        last = await add(client, ws, name=f"{names[i % 5]} {i // 10}", company="Co")
    for sort_by in ("createdAt", "updatedAt", "name", "requestId", "status"):
        for order in ("desc", "asc"):
            params = {
                "sortBy": sort_by,
                "sortOrder": order,
                "limit": 5,
                "after": last["position"],
            }
            walked, pages = await walk(client, ws, **params)
            assert pages == 5 and len(set(walked)) == 23, (sort_by, order)
            by_offset = [
                item["id"]
                for n in range(1, 6)
                for item in (await leads(client, ws, **params, page=n))["items"]
            ]
            assert walked == by_offset, (sort_by, order)
    exact = await leads(client, ws, limit=23, after=last["position"])
    assert exact["nextCursor"] is None  # no page after the last one


async def test_a_cursor_goes_on_past_leads_added_meanwhile_without_repeating(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for i in range(6):
        last = await add(client, ws, name=f"Lead {i}")
    first = await leads(client, ws, limit=3, after=last["position"])
    newer = await add(client, ws, name="Newer")
    second = await leads(client, ws, limit=3, cursor=first["nextCursor"], after=newer["position"])
    shown = [i["name"] for i in first["items"] + second["items"]]
    assert shown == [f"Lead {i}" for i in range(5, -1, -1)]  # the newer one is not slipped in
    assert second["total"] == 7


async def test_bad_cursors_are_4xx_naming_the_problem(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for i in range(3):
        last = await add(client, ws, name=f"Lead {i}")
    given = (await leads(client, ws, limit=1, after=last["position"]))["nextCursor"]
    assert Cursor.decode(given) is not None
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"cursor": "not-a-cursor"}, 400, "bad_cursor"),
        ({"cursor": "W10"}, 400, "bad_cursor"),  # valid base64 of `[]`
        ({"cursor": given, "sortBy": "name"}, 400, "bad_cursor"),
        ({"cursor": given, "sortOrder": "asc"}, 400, "bad_cursor"),
        ({"cursor": given, "page": 2}, 422, "validation_failed"),
        ({"cursor": "x" * 1001}, 422, "validation_failed"),
    ]
    for params, status, code in cases:
        response = await client.get("/v1/leads", params=params, headers=ws["h"])
        assert response.status_code == status, (params, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (params, error)
        assert "cursor" in error["message"], error


def test_a_cursor_round_trips_and_refuses_what_it_did_not_make() -> None:
    lead_id = uuid.uuid4()
    at = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    for cursor in (
        Cursor("createdAt", True, at, lead_id),
        Cursor("requestId", False, 42, lead_id),
        Cursor("name", True, "ann", lead_id),
    ):
        assert Cursor.decode(cursor.encode()) == cursor
    refused = [
        Cursor("createdAt", True, "yesterday", lead_id),
        Cursor("requestId", True, "42", lead_id),
        Cursor("requestId", True, True, lead_id),
        Cursor("name", True, 3, lead_id),
        Cursor("color", True, "red", lead_id),
    ]
    for cursor in refused:
        assert Cursor.decode(cursor.encode()) is None, cursor
    naive = Cursor("createdAt", True, datetime(2026, 1, 1), lead_id).encode()
    assert Cursor.decode(naive) is None


async def index_plan(engine: Engine, query: str, *args: Any) -> str:
    """The plan of `query` when the planner may not read the whole table."""
    async with engine.pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        try:
            return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {query}", *args))
        finally:
            await conn.execute("RESET enable_seqscan")


async def test_searches_use_the_trigram_indexes(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(30):
        last = await add(
            client, ws, name=f"Person {i}", email=f"p{i}@example.com", phone="+1 415 555 0100"
        )
    plan = await index_plan(
        engine,
        # No other index can answer these: only the trigram ones can
        "SELECT id FROM leads WHERE search LIKE '%p17@example%' OR phone_digits LIKE '%4155550%'",
    )
    assert "_search" in plan and "_phone_digits" in plan, plan
    found = await leads(client, ws, search="P17@Example", after=last["position"])
    assert [i["email"] for i in found["items"]] == ["p17@example.com"]
    assert found["total"] == 1


async def test_a_whole_email_address_is_looked_up_exactly_by_its_index(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(12):
        last = await add(client, ws, name=f"Mail {i}", email=f"m{i}@mail.example.com")
    plan = await index_plan(
        engine,
        "SELECT id FROM leads WHERE workspace_id = $1::uuid "
        "AND lower(email) = 'm11@mail.example.com'",
        ws["id"],
    )
    assert "_email" in plan, plan
    after = last["position"]
    found = await leads(client, ws, search="  M11@Mail.Example.COM ", after=after)
    assert [i["email"] for i in found["items"]] == ["m11@mail.example.com"]
    # Exactly that address: not every address that ends with it…
    assert (await leads(client, ws, search="1@mail.example.com", after=after))["total"] == 0
    # …while part of an address is still looked for inside every lead's text.
    partial = await leads(client, ws, search="m1", after=after)
    assert {i["email"] for i in partial["items"]} == {
        "m1@mail.example.com",
        "m10@mail.example.com",
        "m11@mail.example.com",
    }


async def test_while_the_counts_are_missing_reads_answer_503_and_the_dashboard_waits(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    """As between an upgrade to this version of the leads view and the end of its rebuild:
    the counts' table is not there yet. Lists and the board say so (503), the dashboard
    shows what it has and that the leads view is catching up; nothing is a 500."""
    last = await add(client, ws, name="Ann")
    await leads(client, ws, after=last["position"])
    await engine.pool.execute("DROP VIEW lead_counts")
    try:
        listed = await client.get("/v1/leads", headers=ws["h"])
        assert listed.status_code == 503, listed.text
        assert listed.json()["error"]["code"] == "view_rebuild_needed"
        board = await client.get(
            f"/v1/lead-pipelines/{ws['pipeline']['id']}/board", headers=ws["h"]
        )
        assert board.status_code == 503, board.text
        await sign_in_manager(client, engine, ws["id"], "mia@acme.example")
        dashboard = await client.get("/dashboard")
        assert dashboard.status_code == 200, dashboard.text[:500]
        assert "Still catching up" in dashboard.text and "leads" in dashboard.text
        assert (await client.get("/")).status_code == 503
    finally:
        await engine.pool.execute(
            "CREATE VIEW lead_counts AS SELECT * FROM "
            + engine.projector.tables("leads")["lead_counts"]
        )


async def test_a_board_column_refuses_a_cursor_it_did_not_hand_out(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for i in range(3):
        last = await add(client, ws, name=f"Lead {i}")
    ascending = await leads(client, ws, limit=1, sortOrder="asc", after=last["position"])
    board = f"/v1/lead-pipelines/{ws['pipeline']['id']}/board"
    new = stage(ws, "New")
    for cursor in ("garbage", ascending["nextCursor"]):
        response = await client.get(
            board, params={"stageId": new, "cursor": cursor}, headers=ws["h"]
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_cursor"
    first = await client.get(board, params={"stageId": new, "limit": 2}, headers=ws["h"])
    [column] = first.json()["columns"]
    following = await client.get(
        board, params={"stageId": new, "limit": 2, "cursor": column["nextCursor"]}, headers=ws["h"]
    )
    assert [c["name"] for c in following.json()["columns"][0]["cards"]] == ["Lead 0"]
