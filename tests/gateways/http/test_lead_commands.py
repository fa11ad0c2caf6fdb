"""Working a lead through HTTP: stage, assignment, notes, fields and tags, delete/restore,
bulk, status and milestones; each command's event, its view and its timeline entry."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.base import LoggedEvent
from domain.leads import Lead, LeadPatch
from gateways.bootstrap import Engine
from handlers import lead_commands as commands
from tests.conftest import make_user


async def add(client: httpx.AsyncClient, ws: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/leads", json=fields, headers=ws["h"])
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def history(engine: Engine, lead_id: str) -> list[LoggedEvent]:
    return list(await engine.store.history(UUID(lead_id)))


def of_type(events: list[LoggedEvent], event_type: str) -> list[Any]:
    return [e.event for e in events if e.event_type == event_type]


async def listed(
    client: httpx.AsyncClient, ws: dict[str, Any], after: int, **params: Any
) -> list[dict[str, Any]]:
    response = await client.get("/v1/leads", params={"after": after, **params}, headers=ws["h"])
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def stage(ws: dict[str, Any], name: str) -> str:
    found: str = next(s["id"] for s in ws["pipeline"]["stages"] if s["name"] == name)
    return found


async def timeline_entry(logged: LoggedEvent) -> Any:
    """The lead timeline's entry for an event, when the timeline projection is present."""
    timeline = pytest.importorskip("projections.timeline")
    return timeline.describe(logged, None)


async def test_move_stage_shows_on_the_board_and_in_history(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Ann", email="ann@x.test")
    contacted = stage(ws, "Contacted")
    moved = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": contacted}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["stageId"] == contacted and body["changed"] and body["position"] > 0
    board = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"after": body["position"]},
        headers=ws["viewer"],
    )
    counts = {c["name"]: c["count"] for c in board.json()["columns"]}
    assert counts["New"] == 0 and counts["Contacted"] == 1

    again = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": contacted}, headers=ws["h"]
    )
    assert again.status_code == 200 and not again.json()["changed"]
    assert again.json()["position"] == 0

    events = await history(engine, lead["id"])
    [changed] = of_type(events, "lead.stage_changed")
    assert changed.old_stage_id == UUID(stage(ws, "New"))
    assert changed.new_stage_id == UUID(contacted)
    assert changed.actor.startswith("token:")

    # a stage of another pipeline is refused with the reason
    foreign = other["pipeline"]["stages"][1]["id"]
    refused = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": foreign}, headers=ws["h"]
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_transition"
    assert "pipeline" in refused.json()["error"]["message"]
    # another workspace's lead is a 404, like a missing one; viewers cannot move
    hidden = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": foreign}, headers=other["h"]
    )
    assert hidden.status_code == 404
    missing = await client.patch(
        f"/v1/leads/{UUID(int=1)}/stage", json={"stageId": contacted}, headers=ws["h"]
    )
    assert missing.status_code == 404
    viewer = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": contacted}, headers=ws["viewer"]
    )
    assert viewer.status_code == 403


async def test_assign_and_unassign(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Bo")
    user = (await make_user(client, ws["h"], "Seven"))["id"]
    assigned = await client.patch(
        f"/v1/leads/{lead['id']}/assign", json={"assignedTo": user}, headers=ws["h"]
    )
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignedTo"] == user
    items = await listed(client, ws, assigned.json()["position"], assignedTo=user)
    assert [i["name"] for i in items] == ["Bo"]
    cleared = await client.patch(
        f"/v1/leads/{lead['id']}/assign", json={"assignedTo": None}, headers=ws["h"]
    )
    assert cleared.json()["assignedTo"] is None
    assert await listed(client, ws, cleared.json()["position"], assignedTo=user) == []
    events = await history(engine, lead["id"])
    first, second = of_type(events, "lead.assigned")
    assert (first.old, first.new, first.by_user) == (None, user, True)
    assert (second.old, second.new) == (user, None)
    entry = await timeline_entry(next(e for e in events if e.event_type == "lead.assigned"))
    assert entry.changes == [{"field": "assigned", "old": None, "new": user}]
    bad = await client.patch(
        f"/v1/leads/{lead['id']}/assign", json={"assignedTo": ""}, headers=ws["h"]
    )
    assert bad.status_code == 422
    unknown = await client.patch(
        f"/v1/leads/{lead['id']}/assign", json={"assignedTo": "user-7"}, headers=ws["h"]
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_user"


async def test_notes_carry_author_and_time(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Cy")
    note = await client.post(
        f"/v1/leads/{lead['id']}/notes", json={"value": "  called, no answer "}, headers=ws["h"]
    )
    assert note.status_code == 201, note.text
    body = note.json()
    assert body["value"] == "called, no answer"
    assert body["author"].startswith("token:") and body["createdAt"] and body["position"] > 0
    [added] = of_type(await history(engine, lead["id"]), "lead.note_added")
    assert added.value == "called, no answer" and str(added.note_id) == body["id"]
    empty = await client.post(
        f"/v1/leads/{lead['id']}/notes", json={"value": " \x00 "}, headers=ws["h"]
    )
    assert empty.status_code == 422


async def test_update_fields_and_tags_records_user_and_old_new(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(
        client, ws, name="Dee", company="Old Co", tags=["a", "b"], customFields={"budget": 10}
    )
    patched = await client.patch(
        f"/v1/leads/{lead['id']}",
        json={
            "name": "Dee Dee",
            "company": "New Co",
            "phone": "+1 415 555 2671",
            "addTags": ["hot"],
            "removeTags": ["a"],
            "customFields": {"budget": 20, "size": "L"},
        },
        headers=ws["h"],
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["name"] == "Dee Dee" and body["tags"] == ["b", "hot"]
    assert body["customFields"]["budget"] == 20 and body["customFields"]["size"] == "L"
    [updated] = of_type(await history(engine, lead["id"]), "lead.updated")
    assert updated.by_user is True
    assert updated.phone_normal == "+14155552671"
    assert updated.tags_added == ["hot"] and updated.tags_removed == ["a"]
    changes = {c.field: (c.old, c.new) for c in updated.changes}
    assert changes == {
        "name": ("Dee", "Dee Dee"),
        "phone": (None, "+1 415 555 2671"),
        "company": ("Old Co", "New Co"),
        "tags": (["a", "b"], ["b", "hot"]),
        "customFields.budget": (10, 20),
        "customFields.size": (None, "L"),
    }
    items = await listed(client, ws, body["position"], search="dee dee")
    assert len(items) == 1
    row = items[0]
    assert row["company"] == "New Co" and row["tags"] == ["b", "hot"]
    assert row["customFields"]["budget"] == 20
    assert [i["name"] for i in await listed(client, ws, 0, search="4155552671")] == ["Dee Dee"]
    assert [i["name"] for i in await listed(client, ws, 0, tag="hot")] == ["Dee Dee"]

    # nothing different: no event; clearing the name: refused
    same = await client.patch(
        f"/v1/leads/{lead['id']}", json={"company": "New Co"}, headers=ws["h"]
    )
    assert same.json()["changed"] is False and same.json()["position"] == 0
    cleared = await client.patch(f"/v1/leads/{lead['id']}", json={"name": None}, headers=ws["h"])
    assert cleared.status_code == 422
    unknown = await client.patch(f"/v1/leads/{lead['id']}", json={"nope": 1}, headers=ws["h"])
    assert unknown.status_code == 422

    # a system's change (an automation) is "Updated (Other)"
    done = await commands.update_lead(
        engine.store,
        UUID(ws["id"]),
        UUID(lead["id"]),
        LeadPatch(title="CEO"),
        "system:automation",
        by_user=False,
    )
    assert done.changed
    *_, by_system = of_type(await history(engine, lead["id"]), "lead.updated")
    assert by_system.by_user is False and by_system.actor == "system:automation"
    entry = await timeline_entry(
        next(e for e in await history(engine, lead["id"]) if e.event_type == "lead.updated")
    )
    assert {"field": "company", "old": "Old Co", "new": "New Co"} in entry.changes


async def test_a_custom_field_past_64_bits_survives_an_update_of_the_view(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    """`1e29` is a float in the event, but the view's `jsonb` gives it back as an integer
    orjson cannot write: the update that re-writes the lead's custom fields must not stop
    the leads view (the fuzzer found it did)."""
    lead = await add(client, ws, name="Big", customFields={"reach": 1.2345678901234568e29})
    patched = await client.patch(
        f"/v1/leads/{lead['id']}", json={"customFields": {"size": "L"}}, headers=ws["h"]
    )
    assert patched.status_code == 200, patched.text
    [row] = await listed(client, ws, patched.json()["position"], search="big")
    assert row["customFields"]["size"] == "L"
    assert row["customFields"]["reach"] == pytest.approx(1.2345678901234568e29)
    errors = await engine.pool.fetch(
        "SELECT error FROM consumer_errors WHERE consumer = 'projection:leads'"
    )
    assert [e["error"] for e in errors] == []


async def test_delete_hides_and_restore_brings_back(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Eve")
    deleted = await client.delete(f"/v1/leads/{lead['id']}", headers=ws["h"])
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert await listed(client, ws, deleted.json()["position"]) == []
    board = await client.get(f"/v1/lead-pipelines/{ws['pipeline']['id']}/board", headers=ws["h"])
    assert board.json()["columns"][0]["count"] == 0
    # still in the log, still readable by id; other commands are refused with the reason
    assert (await client.get(f"/v1/leads/{lead['id']}", headers=ws["h"])).status_code == 200
    refused = await client.patch(
        f"/v1/leads/{lead['id']}/stage", json={"stageId": stage(ws, "Won")}, headers=ws["h"]
    )
    assert refused.status_code == 422 and "deleted" in refused.json()["error"]["message"]
    convert = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert convert.status_code == 422
    twice = await client.delete(f"/v1/leads/{lead['id']}", headers=ws["h"])
    assert twice.status_code == 200 and twice.json()["changed"] is False
    restored = await client.post(f"/v1/leads/{lead['id']}/restore", headers=ws["h"])
    assert restored.status_code == 200 and restored.json()["deleted"] is False
    assert [i["name"] for i in await listed(client, ws, restored.json()["position"])] == ["Eve"]
    types = [e.event_type for e in await history(engine, lead["id"])]
    assert types == ["lead.received", "lead.deleted", "lead.restored"]


async def test_bulk_actions_report_per_lead(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    leads = [await add(client, ws, name=f"B{i}") for i in range(3)]
    foreign = await add(client, other, name="Foreign")
    ids = [lead["id"] for lead in leads]
    won = stage(ws, "Won")
    moved = await client.post(
        "/v1/leads/bulk-action",
        json={
            "action": "move_stage",
            "leadIds": [*ids, foreign["id"], str(UUID(int=5))],
            "stageId": won,
        },
        headers=ws["h"],
    )
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert body["succeeded"] == 3 and body["failed"] == 2
    outcome = {r["id"]: r for r in body["results"]}
    assert all(outcome[i]["ok"] and outcome[i]["changed"] for i in ids)
    assert outcome[foreign["id"]]["error"]["code"] == "not_found"
    assert outcome[str(UUID(int=5))]["error"]["code"] == "not_found"
    board = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"after": body["position"]},
        headers=ws["h"],
    )
    counts = {c["name"]: c["count"] for c in board.json()["columns"]}
    assert counts["Won"] == 3 and counts["New"] == 0
    foreign_lead = await client.get(f"/v1/leads/{foreign['id']}", headers=other["h"])
    assert foreign_lead.json()["stageId"] == other["pipeline"]["stages"][0]["id"]

    user = (await make_user(client, ws["h"], "One"))["id"]
    assigned = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "assign", "leadIds": ids[:2], "assignedTo": user},
        headers=ws["h"],
    )
    assert assigned.json()["succeeded"] == 2
    nobody = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "assign", "leadIds": ids[:2], "assignedTo": "user-1"},
        headers=ws["h"],
    )
    assert nobody.status_code == 422 and nobody.json()["error"]["code"] == "unknown_user"
    tagged = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "tag", "leadIds": ids, "addTags": ["vip"]},
        headers=ws["h"],
    )
    assert tagged.json()["succeeded"] == 3
    deleted = await client.post(
        "/v1/leads/bulk-action", json={"action": "delete", "leadIds": ids[2:]}, headers=ws["h"]
    )
    assert deleted.json()["succeeded"] == 1
    after = deleted.json()["position"]
    assert len(await listed(client, ws, after, assignedTo=user)) == 2
    assert {i["name"] for i in await listed(client, ws, after, tag="vip")} == {"B0", "B1"}
    # a move into a deleted lead fails alone
    again = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "move_stage", "leadIds": ids, "stageId": stage(ws, "Lost")},
        headers=ws["h"],
    )
    results = again.json()["results"]
    assert [r["ok"] for r in results] == [True, True, False]
    assert results[2]["error"]["code"] == "invalid_transition"
    bad = await client.post(
        "/v1/leads/bulk-action", json={"action": "move_stage", "leadIds": ids}, headers=ws["h"]
    )
    assert bad.status_code == 422
    unknown = await client.post(
        "/v1/leads/bulk-action", json={"action": "explode", "leadIds": ids}, headers=ws["h"]
    )
    assert unknown.status_code == 422


async def test_status_and_milestones_once(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    statuses = await client.get("/v1/lead-statuses", headers=ws["viewer"])
    names = {s["name"]: s["progress"] for s in statuses.json()["items"]}
    assert {"new", "pending", "backlog", "abandoned"} <= set(names)
    assert names["qualified"] == "qualified" and names["invalid"] == "invalidated"

    lead = await add(client, ws, name="Flo")
    url = f"/v1/leads/{lead['id']}/status"
    for status in ("contacted", "qualified", "contacted", "backlog", "qualified"):
        response = await client.patch(url, json={"status": status}, headers=ws["h"])
        assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "qualified" and body["milestones"] == ["contacted", "qualified"]
    events = await history(engine, lead["id"])
    assert len(of_type(events, "lead.status_changed")) == 5
    reached = of_type(events, "lead.milestone_reached")
    assert [m.milestone for m in reached] == ["contacted", "qualified"]
    items = await listed(client, ws, body["position"], status="qualified")
    assert [i["name"] for i in items] == ["Flo"]

    unknown = await client.patch(url, json={"status": "nirvana"}, headers=ws["h"])
    assert unknown.status_code == 422

    # a workspace's own statuses
    custom = [*statuses.json()["items"], {"name": "hot", "progress": "qualified"}]
    replaced = await client.put("/v1/lead-statuses", json={"statuses": custom}, headers=ws["h"])
    assert replaced.status_code == 200, replaced.text
    hot = await client.patch(url, json={"status": "HOT"}, headers=ws["h"])
    assert hot.json()["status"] == "hot" and hot.json()["milestones"] == ["contacted", "qualified"]
    missing_required = await client.put(
        "/v1/lead-statuses", json={"statuses": [{"name": "hot"}]}, headers=ws["h"]
    )
    assert missing_required.status_code == 422


async def test_milestone_is_recorded_once_under_concurrency(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    statuses = (await client.get("/v1/lead-statuses", headers=ws["h"])).json()["items"]
    statuses += [
        {"name": "warm", "progress": "qualified"},
        {"name": "hot", "progress": "qualified"},
    ]
    await client.put("/v1/lead-statuses", json={"statuses": statuses}, headers=ws["h"])
    lead = await add(client, ws, name="Gus")
    responses = await asyncio.gather(
        *(
            client.patch(
                f"/v1/leads/{lead['id']}/status",
                json={"status": "warm" if i % 2 else "hot"},
                headers=ws["h"],
            )
            for i in range(20)
        )
    )
    assert {r.status_code for r in responses} <= {200, 409}
    assert any(r.status_code == 200 for r in responses)
    reached = of_type(await history(engine, lead["id"]), "lead.milestone_reached")
    assert [m.milestone for m in reached] == ["qualified"]


async def test_simultaneous_stage_moves_all_land_in_some_order(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Hal")
    targets = [s["id"] for s in ws["pipeline"]["stages"][1:]] * 4
    responses = await asyncio.gather(
        *(
            client.patch(f"/v1/leads/{lead['id']}/stage", json={"stageId": target}, headers=ws["h"])
            for target in targets
        )
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [r.text for r in responses if r.status_code >= 500]
    changed = [r.json() for r in responses if r.status_code == 200 and r.json()["changed"]]
    moves = of_type(await history(engine, lead["id"]), "lead.stage_changed")
    # every move that answered "changed" is in the history, exactly once, in a chain
    assert len(moves) == len(changed) >= 1
    assert sorted(m["position"] for m in changed) == sorted(set(m["position"] for m in changed))
    for before, after in itertools.pairwise(moves):
        assert after.old_stage_id == before.new_stage_id
    final = await engine.store.load(Lead, UUID(lead["id"]))
    assert final is not None and final.stage_id == moves[-1].new_stage_id
    last = max(m["position"] for m in changed)
    [row] = await listed(client, ws, last)
    assert row["stageId"] == str(final.stage_id)
