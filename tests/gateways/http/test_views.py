"""Pipelines, the Kanban board and lead lists through HTTP, with the projections running."""

from __future__ import annotations

from typing import Any

import httpx


async def add(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/leads", json=fields, headers=ws["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_default_pipeline_is_listed(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    pipeline = ws["pipeline"]
    assert pipeline["isDefault"] and pipeline["isActive"]
    assert [(s["name"], s["color"], s["type"]) for s in pipeline["stages"]] == [
        ("New", "#3B82F6", "open"),
        ("Contacted", "#F59E0B", "open"),
        ("Qualified", "#8B5CF6", "open"),
        ("Proposal", "#EC4899", "open"),
        ("Won", "#22C55E", "won"),
        ("Lost", "#EF4444", "lost"),
    ]


async def test_intake_arrives_on_the_board(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    receipts = [await add(client, ws, name=f"Lead {i}", email=f"l{i}@x.test") for i in range(5)]
    last = max(r["position"] for r in receipts)
    board = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"after": last},
        headers=ws["viewer"],
    )
    assert board.status_code == 200, board.text
    columns = board.json()["columns"]
    assert [c["name"] for c in columns] == [
        "New",
        "Contacted",
        "Qualified",
        "Proposal",
        "Won",
        "Lost",
    ]
    assert [c["count"] for c in columns] == [5, 0, 0, 0, 0, 0]
    assert [card["name"] for card in columns[0]["cards"]] == [
        f"Lead {i}" for i in reversed(range(5))
    ]


async def test_board_filters_and_column_paging(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for i in range(7):
        await add(
            client,
            ws,
            name=f"Ann {i}",
            company="Solar Ltd" if i % 2 else "Wind Co",
            tags=["hot"] if i < 3 else [],
        )
    last = (await add(client, ws, name="Zed", email="ZED@example.com"))["position"]
    url = f"/v1/lead-pipelines/{ws['pipeline']['id']}/board"
    solar = await client.get(url, params={"search": "sOlAr", "after": last}, headers=ws["h"])
    assert solar.json()["columns"][0]["count"] == 3
    by_email = await client.get(url, params={"search": "zed@EX"}, headers=ws["h"])
    assert [c["name"] for c in by_email.json()["columns"][0]["cards"]] == ["Zed"]
    hot = await client.get(url, params={"tag": "hot"}, headers=ws["h"])
    assert hot.json()["columns"][0]["count"] == 3

    first = (await client.get(url, params={"limit": 3}, headers=ws["h"])).json()["columns"][0]
    assert first["count"] == 8 and len(first["cards"]) == 3
    seen = [c["id"] for c in first["cards"]]
    cursor = first["nextCursor"]
    while cursor:
        page = await client.get(
            url, params={"limit": 3, "stageId": first["stageId"], "cursor": cursor}, headers=ws["h"]
        )
        column = page.json()["columns"][0]
        seen.extend(c["id"] for c in column["cards"])
        cursor = column["nextCursor"]
    assert len(seen) == len(set(seen)) == 8
    bad = await client.get(
        url, params={"stageId": first["stageId"], "cursor": "garbage"}, headers=ws["h"]
    )
    assert bad.status_code == 400


async def test_lead_list_filters_sorting_paging(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    await add(client, ws, name="Bob", email="same@x.test", tags=["a"])
    await add(client, ws, name="alice", email="same@x.test")
    last = (await add(client, ws, name="Carol", phone="+1 415 555 2671"))["position"]
    listed = await client.get(
        "/v1/leads",
        params={"after": last, "sortBy": "name", "sortOrder": "asc"},
        headers=ws["viewer"],
    )
    body = listed.json()
    assert body["total"] == 3
    assert [i["name"] for i in body["items"]] == ["alice", "Bob", "Carol"]
    dupes = await client.get("/v1/leads", params={"isDuplicate": "true"}, headers=ws["h"])
    assert [i["name"] for i in dupes.json()["items"]] == ["alice"]
    tagged = await client.get("/v1/leads", params={"tag": "a"}, headers=ws["h"])
    assert [i["name"] for i in tagged.json()["items"]] == ["Bob"]
    by_phone = await client.get("/v1/leads", params={"search": "4155552671"}, headers=ws["h"])
    assert [i["name"] for i in by_phone.json()["items"]] == ["Carol"]
    paged = await client.get(
        "/v1/leads",
        params={"limit": 2, "page": 2, "sortBy": "requestId", "sortOrder": "asc"},
        headers=ws["h"],
    )
    assert [i["requestId"] for i in paged.json()["items"]] == [3]
    assert (
        await client.get("/v1/leads", params={"sortBy": "evil;drop"}, headers=ws["h"])
    ).status_code == 422
    literal = await client.get("/v1/leads", params={"search": "%"}, headers=ws["h"])
    assert literal.json()["total"] == 0


async def test_view_behind_is_a_bounded_503(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    response = await client.get("/v1/leads", params={"after": 10**9}, headers=ws["h"])
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "view_behind"


async def test_pipeline_lifecycle(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    created = await client.post(
        "/v1/lead-pipelines",
        json={
            "name": "Partners",
            "stages": [{"name": "In"}, {"name": "Out", "type": "won", "color": "#00FF00"}],
        },
        headers=ws["h"],
    )
    assert created.status_code == 201, created.text
    pipeline = created.json()
    assert not pipeline["isDefault"] and not pipeline["isActive"]
    one_stage = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}", json={"stages": [{"name": "Only"}]}, headers=ws["h"]
    )
    assert one_stage.status_code == 422
    stages = pipeline["stages"]
    renamed = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}",
        json={
            "name": "Partner deals",
            "stages": [
                {"id": stages[1]["id"], "name": "Done", "type": "won", "color": "#00FF00"},
                {"id": stages[0]["id"], "name": "Inbox"},
                {"name": "Lost", "type": "lost", "color": "#FF0000"},
            ],
        },
        headers=ws["h"],
    )
    assert renamed.status_code == 200, renamed.text
    assert [s["name"] for s in renamed.json()["stages"]] == ["Done", "Inbox", "Lost"]
    listed = await client.get("/v1/lead-pipelines", headers=ws["h"])
    assert {p["name"] for p in listed.json()["items"]} == {"Sales", "Partner deals"}
    deleted = await client.delete(f"/v1/lead-pipelines/{pipeline['id']}", headers=ws["h"])
    assert deleted.status_code == 200
    default = await client.delete(f"/v1/lead-pipelines/{ws['pipeline']['id']}", headers=ws["h"])
    assert default.status_code == 422
    ensured = await client.post("/v1/lead-pipelines/ensure-default", headers=ws["h"])
    assert ensured.json()["id"] == ws["pipeline"]["id"]
    assert (
        await client.post(
            "/v1/lead-pipelines", json={"name": "x", "stages": []}, headers=ws["viewer"]
        )
    ).status_code == 403


async def test_removing_a_stage_with_leads_needs_a_destination(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    pipeline = ws["pipeline"]
    leads = [await add(client, ws, name=f"L{i}") for i in range(3)]
    stages = pipeline["stages"]
    without_new = [
        {"id": s["id"], "name": s["name"], "color": s["color"], "type": s["type"]}
        for s in stages[1:]
    ]
    refused = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}", json={"stages": without_new}, headers=ws["h"]
    )
    assert refused.status_code == 422
    assert "moveLeadsTo" in refused.json()["error"]["message"]
    moved = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}",
        json={"stages": without_new, "moveLeadsTo": {stages[0]["id"]: stages[1]["id"]}},
        headers=ws["h"],
    )
    assert moved.status_code == 200, moved.text
    board = await client.get(
        f"/v1/lead-pipelines/{pipeline['id']}/board",
        params={"after": moved.json()["position"]},
        headers=ws["h"],
    )
    columns = board.json()["columns"]
    assert columns[0]["name"] == "Contacted" and columns[0]["count"] == 3
    lead = await client.get(f"/v1/leads/{leads[0]['id']}", headers=ws["h"])
    assert lead.json()["stageId"] == stages[1]["id"]
    # new leads now land in the new first stage
    fresh = await add(client, ws, name="Fresh")
    assert (await client.get(f"/v1/leads/{fresh['id']}", headers=ws["h"])).json()[
        "stageId"
    ] == stages[1]["id"]
