"""Stages meet progress and leads move between pipelines: won/lost stages record the
Converted/Closed milestones, conversion moves a lead to the won stage (once, however many
converts race), a pipeline is activated (exactly one active, whatever races), and leads move
between pipelines, one at a time and in bulk, with the boards following."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.workspaces import Workspace
from gateways.bootstrap import Engine
from gateways.consumers.read_models import LeadsInStagesView, ViewBehind, ViewNeedsRebuild
from tests.conftest import sign_in_manager
from tests.gateways.http.test_lead_commands import add, history, of_type, stage


async def board_counts(
    client: httpx.AsyncClient, ws: dict[str, Any], pipeline_id: str, after: int
) -> dict[str, int]:
    response = await client.get(
        f"/v1/lead-pipelines/{pipeline_id}/board", params={"after": after}, headers=ws["viewer"]
    )
    assert response.status_code == 200, response.text
    return {c["name"]: c["count"] for c in response.json()["columns"]}


async def summaries(
    client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str, after: int
) -> list[str]:
    response = await client.get(
        f"/v1/leads/{lead_id}/timeline", params={"after": after}, headers=ws["viewer"]
    )
    assert response.status_code == 200, response.text
    return [item["summary"] for item in response.json()["items"]]


async def new_pipeline(
    client: httpx.AsyncClient, ws: dict[str, Any], name: str, won: bool = True
) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [{"name": "In"}, {"name": "Working"}]
    if won:
        stages += [{"name": "Signed", "type": "won"}, {"name": "Dropped", "type": "lost"}]
    created = await client.post(
        "/v1/lead-pipelines", json={"name": name, "stages": stages}, headers=ws["h"]
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def stage_of(pipeline: dict[str, Any], name: str) -> str:
    found: str = next(s["id"] for s in pipeline["stages"] if s["name"] == name)
    return found


async def move(
    client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str, stage_id: str
) -> dict[str, Any]:
    response = await client.patch(
        f"/v1/leads/{lead_id}/stage", json={"stageId": stage_id}, headers=ws["h"]
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def read_lead(client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/leads/{lead_id}", headers=ws["h"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refusal(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    message: str = error["message"]
    return message


# ---- stages and milestones ----------------------------------------------------------------


async def test_won_and_lost_stages_record_their_milestones_once(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    winner = await add(client, ws, name="Winner")
    loser = await add(client, ws, name="Loser")
    won = await move(client, ws, winner["id"], stage(ws, "Won"))
    assert won["milestones"] == ["converted"] and won["stageId"] == stage(ws, "Won")
    # out and back in: the milestone is not recorded again
    await move(client, ws, winner["id"], stage(ws, "Proposal"))
    again = await move(client, ws, winner["id"], stage(ws, "Won"))
    assert again["milestones"] == ["converted"]
    # a status carrying the same milestone does not record it a second time either
    status = await client.patch(
        f"/v1/leads/{winner['id']}/status", json={"status": "converted"}, headers=ws["h"]
    )
    assert status.json()["milestones"] == ["converted"]
    reached = of_type(await history(engine, winner["id"]), "lead.milestone_reached")
    assert [(m.milestone, m.stage_id) for m in reached] == [("converted", UUID(stage(ws, "Won")))]

    lost = await move(client, ws, loser["id"], stage(ws, "Lost"))
    assert lost["milestones"] == ["closed"]
    # an open stage records nothing
    opened = await move(client, ws, loser["id"], stage(ws, "Qualified"))
    assert opened["milestones"] == ["closed"]

    texts = await summaries(client, ws, loser["id"], opened["position"])
    assert "Milestone reached: closed (entered Lost)" in texts
    assert "Moved from New to Lost" in texts
    counts = await board_counts(client, ws, ws["pipeline"]["id"], opened["position"])
    assert (counts["Won"], counts["Qualified"], counts["Lost"]) == (1, 1, 0)


async def test_convert_moves_the_lead_to_the_won_stage_once(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Ivy", email="ivy@x.test")
    converted = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert converted.status_code == 200, converted.text
    body = converted.json()
    assert body["stageId"] == stage(ws, "Won")
    events = await history(engine, lead["id"])
    [moved] = of_type(events, "lead.stage_changed")
    assert moved.new_stage_id == UUID(stage(ws, "Won")) and moved.reason == "converted"
    # Converted, its milestone and the move are one append: the answer's position is the last
    assert body["position"] == events[-1].position
    assert [m.milestone for m in of_type(events, "lead.milestone_reached")] == ["converted"]

    counts = await board_counts(client, ws, ws["pipeline"]["id"], body["position"])
    assert counts["New"] == 0 and counts["Won"] == 1
    texts = await summaries(client, ws, lead["id"], body["position"])
    assert "Moved from New to Won — converted" in texts

    # moved out by hand, then converted again: a replay, the lead stays where it is
    await move(client, ws, lead["id"], stage(ws, "Proposal"))
    again = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert again.json()["replayed"] and again.json()["position"] == body["position"]
    assert again.json()["stageId"] == stage(ws, "Proposal")
    assert len(of_type(await history(engine, lead["id"]), "lead.stage_changed")) == 2


async def test_convert_leaves_a_won_lead_and_a_pipeline_without_won_stage_alone(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    already = await add(client, ws, name="Already won", email="won@x.test")
    await move(client, ws, already["id"], stage(ws, "Won"))
    converted = await client.post(f"/v1/leads/{already['id']}/convert", headers=ws["h"])
    assert converted.json()["stageId"] == stage(ws, "Won")
    assert len(of_type(await history(engine, already["id"]), "lead.stage_changed")) == 1

    plain = await new_pipeline(client, ws, "No wins", won=False)
    lead = await add(client, ws, name="Plain", email="plain@x.test")
    placed = await client.patch(
        f"/v1/leads/{lead['id']}/pipeline", json={"pipelineId": plain["id"]}, headers=ws["h"]
    )
    assert placed.status_code == 200, placed.text
    converted = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
    assert converted.status_code == 200, converted.text
    assert converted.json()["stageId"] == stage_of(plain, "In")


async def test_ten_concurrent_converts_move_the_lead_once(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Jo", email="jo@x.test")
    responses = await asyncio.gather(
        *(client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"]) for _ in range(10))
    )
    assert [r.status_code for r in responses] == [200] * 10, {r.text for r in responses}
    assert len({r.json()["contactId"] for r in responses}) == 1
    assert len({r.json()["position"] for r in responses}) == 1
    assert {r.json()["stageId"] for r in responses} == {stage(ws, "Won")}
    events = await history(engine, lead["id"])
    assert len(of_type(events, "lead.converted")) == 1
    assert len(of_type(events, "lead.stage_changed")) == 1
    assert len(of_type(events, "lead.milestone_reached")) == 1


# ---- the active pipeline ------------------------------------------------------------------


async def test_activate_a_new_pipeline_and_new_leads_land_there(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    sales = ws["pipeline"]
    before = await add(client, ws, name="Before")
    partners = await new_pipeline(client, ws, "Partners")
    activated = await client.post(f"/v1/lead-pipelines/{partners['id']}/activate", headers=ws["h"])
    assert activated.status_code == 200, activated.text
    body = activated.json()
    assert body["isActive"] and body["isDefault"] and body["position"] > 0
    listed = (await client.get("/v1/lead-pipelines", headers=ws["viewer"])).json()["items"]
    assert [p["name"] for p in listed if p["isActive"]] == ["Partners"]
    assert [p["name"] for p in listed if p["isDefault"]] == ["Partners"]

    after = await add(client, ws, name="After")
    landed = await read_lead(client, ws, after["id"])
    assert (landed["pipelineId"], landed["stageId"]) == (partners["id"], stage_of(partners, "In"))
    # the previous pipeline keeps its leads
    old = await board_counts(client, ws, sales["id"], after["position"])
    new = await board_counts(client, ws, partners["id"], after["position"])
    assert old["New"] == 1 and new["In"] == 1
    assert (await read_lead(client, ws, before["id"]))["pipelineId"] == sales["id"]

    again = await client.post(f"/v1/lead-pipelines/{partners['id']}/activate", headers=ws["h"])
    assert again.status_code == 200 and again.json()["position"] == 0
    # the active pipeline cannot be deleted; one holding leads neither
    message = refusal(
        await client.delete(f"/v1/lead-pipelines/{partners['id']}", headers=ws["h"]),
        422,
        "invalid_pipeline",
    )
    assert "active" in message
    message = refusal(
        await client.delete(f"/v1/lead-pipelines/{sales['id']}", headers=ws["h"]),
        422,
        "invalid_pipeline",
    )
    assert "holds 1 lead" in message
    # another workspace's pipeline, a missing one, a viewer
    foreign = other["pipeline"]["id"]
    refusal(
        await client.post(f"/v1/lead-pipelines/{foreign}/activate", headers=ws["h"]),
        404,
        "not_found",
    )
    refusal(
        await client.post(f"/v1/lead-pipelines/{UUID(int=7)}/activate", headers=ws["h"]),
        404,
        "not_found",
    )
    viewer = await client.post(f"/v1/lead-pipelines/{sales['id']}/activate", headers=ws["viewer"])
    assert viewer.status_code == 403
    # ensure-default answers with the active pipeline
    ensured = await client.post("/v1/lead-pipelines/ensure-default", headers=ws["h"])
    assert ensured.json()["id"] == partners["id"]
    # the first pipeline, once empty and no longer active, can be deleted
    moved = await client.patch(
        f"/v1/leads/{before['id']}/pipeline", json={"pipelineId": partners["id"]}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    deleted = await client.delete(f"/v1/lead-pipelines/{sales['id']}", headers=ws["h"])
    assert deleted.status_code == 200, deleted.text


async def test_concurrent_activations_leave_exactly_one_active(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    second = await new_pipeline(client, ws, "Second")
    third = await new_pipeline(client, ws, "Third")
    ids = [ws["pipeline"]["id"], second["id"], third["id"]]
    responses = await asyncio.gather(
        *(
            client.post(f"/v1/lead-pipelines/{ids[i % 3]}/activate", headers=ws["h"])
            for i in range(10)
        )
    )
    assert [r.status_code for r in responses] == [200] * 10, {r.text for r in responses}
    listed = (await client.get("/v1/lead-pipelines", headers=ws["h"])).json()["items"]
    active = [p["id"] for p in listed if p["isActive"]]
    assert len(active) == 1
    # the one active is the last activation the log holds
    activations = await engine.store.read(0, 10_000, ["workspace.pipeline_activated"])
    mine = [
        e.event
        for e in activations
        if isinstance(e.event, Workspace.PipelineActivated) and e.workspace_id == UUID(ws["id"])
    ]
    assert str(mine[-1].pipeline_id) == active[0]
    lead = await add(client, ws, name="Lands")
    assert (await read_lead(client, ws, lead["id"]))["pipelineId"] == active[0]


async def test_activate_racing_delete_never_leaves_a_deleted_pipeline_active(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    for round_ in range(5):
        doomed = await new_pipeline(client, ws, f"Doomed {round_}")
        activated, deleted = await asyncio.gather(
            client.post(f"/v1/lead-pipelines/{doomed['id']}/activate", headers=ws["h"]),
            client.delete(f"/v1/lead-pipelines/{doomed['id']}", headers=ws["h"]),
        )
        # exactly one wins: activated and the delete refused, or deleted and no activation
        assert {activated.status_code, deleted.status_code} in ({200, 422}, {200, 404})
        listed = (await client.get("/v1/lead-pipelines", headers=ws["h"])).json()["items"]
        active = [p for p in listed if p["isActive"]]
        assert len(active) == 1
        if deleted.status_code == 200:
            assert active[0]["id"] != doomed["id"]
        else:
            assert active[0]["id"] == doomed["id"]
            back = await client.post(
                f"/v1/lead-pipelines/{ws['pipeline']['id']}/activate", headers=ws["h"]
            )
            assert back.status_code == 200


# ---- moving leads between pipelines -------------------------------------------------------


async def test_move_leads_between_pipelines_one_and_in_bulk(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    sales = ws["pipeline"]
    target = await new_pipeline(client, ws, "Renewals")
    leads = [await add(client, ws, name=f"M{i}") for i in range(5)]
    ids = [lead["id"] for lead in leads]

    # one lead, to the first stage
    first = await client.patch(
        f"/v1/leads/{ids[0]}/pipeline", json={"pipelineId": target["id"]}, headers=ws["h"]
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["pipelineId"], body["stageId"]) == (target["id"], stage_of(target, "In"))
    assert body["changed"] and body["position"] > 0
    # repeated: nothing moves (the lead is in the pipeline already)
    repeated = await client.patch(
        f"/v1/leads/{ids[0]}/pipeline", json={"pipelineId": target["id"]}, headers=ws["h"]
    )
    assert not repeated.json()["changed"] and repeated.json()["position"] == 0
    texts = await summaries(client, ws, ids[0], body["position"])
    assert "Moved from Sales / New to Renewals / In" in texts
    # then within its new pipeline, by stage
    working = await move(client, ws, ids[0], stage_of(target, "Working"))
    assert working["pipelineId"] == target["id"]

    # one lead, to a named stage (a won one: the milestone follows)
    signed = await client.patch(
        f"/v1/leads/{ids[1]}/pipeline",
        json={"pipelineId": target["id"], "stageId": stage_of(target, "Signed")},
        headers=ws["h"],
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["milestones"] == ["converted"]

    # in bulk, with a deleted lead and another workspace's lead reported on their own
    await client.delete(f"/v1/leads/{ids[4]}", headers=ws["h"])
    foreign = await add(client, other, name="Foreign")
    bulk = await client.post(
        "/v1/leads/bulk-action",
        json={
            "action": "move_pipeline",
            "leadIds": [ids[2], ids[3], ids[4], foreign["id"]],
            "pipelineId": target["id"],
            "stageId": stage_of(target, "Working"),
        },
        headers=ws["h"],
    )
    assert bulk.status_code == 200, bulk.text
    report = bulk.json()
    assert report["action"] == "move_pipeline"
    assert (report["succeeded"], report["failed"]) == (2, 2)
    results = {r["id"]: r for r in report["results"]}
    assert results[ids[2]]["ok"] and results[ids[3]]["changed"]
    assert results[ids[4]]["error"]["code"] == "invalid_transition"
    assert "deleted" in results[ids[4]]["error"]["message"]
    assert results[foreign["id"]]["error"]["code"] == "not_found"

    position = report["position"]
    old = await board_counts(client, ws, sales["id"], position)
    new = await board_counts(client, ws, target["id"], position)
    assert sum(old.values()) == 0
    assert (new["In"], new["Working"], new["Signed"], new["Dropped"]) == (0, 3, 1, 0)
    listed = await client.get(
        "/v1/leads", params={"pipelineId": target["id"], "after": position}, headers=ws["h"]
    )
    assert listed.json()["total"] == 4
    # the other workspace's board is untouched
    theirs = await board_counts(client, other, other["pipeline"]["id"], position)
    assert theirs["New"] == 1

    # a pipeline holding leads still cannot be deleted
    held = refusal(
        await client.delete(f"/v1/lead-pipelines/{target['id']}", headers=ws["h"]),
        422,
        "invalid_pipeline",
    )
    assert "holds 4 lead" in held


async def test_pipeline_moves_refuse_with_the_reason(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    target = await new_pipeline(client, ws, "Elsewhere")
    lead = await add(client, ws, name="Stay")
    url = f"/v1/leads/{lead['id']}/pipeline"
    foreign_pipeline = other["pipeline"]["id"]
    foreign_stage = other["pipeline"]["stages"][1]["id"]

    # another workspace's pipeline looks like a missing one
    message = refusal(
        await client.patch(url, json={"pipelineId": foreign_pipeline}, headers=ws["h"]),
        422,
        "unknown_pipeline",
    )
    assert foreign_pipeline in message
    # a stage that is not the target pipeline's (here: another workspace's)
    message = refusal(
        await client.patch(
            url, json={"pipelineId": target["id"], "stageId": foreign_stage}, headers=ws["h"]
        ),
        422,
        "invalid_transition",
    )
    assert foreign_stage in message and "Elsewhere" in message
    # the board's stage move names the pipeline the stage belongs to, and the route to use
    message = refusal(
        await client.patch(
            f"/v1/leads/{lead['id']}/stage",
            json={"stageId": stage_of(target, "Working")},
            headers=ws["h"],
        ),
        422,
        "invalid_transition",
    )
    assert "Elsewhere" in message and "/pipeline" in message
    # another workspace's stage on the stage route tells nothing about that workspace
    message = refusal(
        await client.patch(
            f"/v1/leads/{lead['id']}/stage", json={"stageId": foreign_stage}, headers=ws["h"]
        ),
        422,
        "invalid_transition",
    )
    assert "not a stage of the lead's pipeline" in message
    # another workspace's lead, a viewer, a malformed body
    refusal(
        await client.patch(url, json={"pipelineId": target["id"]}, headers=other["h"]),
        404,
        "not_found",
    )
    viewer = await client.patch(url, json={"pipelineId": target["id"]}, headers=ws["viewer"])
    assert viewer.status_code == 403
    missing = await client.patch(url, json={}, headers=ws["h"])
    assert missing.status_code == 422

    # bulk: the destination is checked once, for the whole request
    bulk = "/v1/leads/bulk-action"
    no_pipeline = refusal(
        await client.post(
            bulk, json={"action": "move_pipeline", "leadIds": [lead["id"]]}, headers=ws["h"]
        ),
        422,
        "invalid_transition",
    )
    assert "pipelineId" in no_pipeline
    refusal(
        await client.post(
            bulk,
            json={
                "action": "move_pipeline",
                "leadIds": [lead["id"]],
                "pipelineId": foreign_pipeline,
            },
            headers=ws["h"],
        ),
        422,
        "unknown_pipeline",
    )
    message = refusal(
        await client.post(
            bulk,
            json={
                "action": "move_pipeline",
                "leadIds": [lead["id"]],
                "pipelineId": target["id"],
                "stageId": foreign_stage,
            },
            headers=ws["h"],
        ),
        422,
        "invalid_transition",
    )
    assert foreign_stage in message
    # nothing moved
    assert (await read_lead(client, ws, lead["id"]))["pipelineId"] == ws["pipeline"]["id"]


async def test_changing_stages_while_the_leads_view_is_not_ready_is_a_503(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing a stage asks the leads view which leads it holds. A view behind (or stopped
    at a failing event, or waiting for its rebuild) cannot say: 503, nothing changed; in
    the API and on the settings page alike."""
    pipeline = ws["pipeline"]
    kept = [{"id": s["id"], "name": s["name"]} for s in pipeline["stages"][:-1]]
    for error, code in (
        (ViewBehind("leads has not reached position 9"), "view_behind"),
        (ViewNeedsRebuild("leads needs a rebuild"), "view_rebuild_needed"),
    ):

        async def not_ready(*_: Any, error: Exception = error) -> list[UUID]:
            raise error

        monkeypatch.setattr(LeadsInStagesView, "in_stages", not_ready)
        answer = await client.patch(
            f"/v1/lead-pipelines/{pipeline['id']}", json={"stages": kept}, headers=ws["h"]
        )
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == code
        assert answer.headers["Retry-After"]
    await sign_in_manager(client, engine, ws["id"], "pia@acme.example")
    page = await client.get("/settings/pipelines")
    token = re.search(r'"X-CSRF-Token": ?"([^"]+)"', page.text.replace("&#34;", '"'))
    assert token is not None, page.text[:2000]
    removed = await client.post(
        f"/settings/pipelines/{pipeline['id']}/stages/{pipeline['stages'][-1]['id']}/remove",
        data={"csrf_token": token[1]},
    )
    assert removed.status_code == 503, removed.text[:500]
    assert "catching up; nothing was changed" in removed.text
    monkeypatch.undo()
    listed = await client.get("/v1/lead-pipelines", headers=ws["h"])
    [after] = [p for p in listed.json()["items"] if p["id"] == pipeline["id"]]
    assert [s["id"] for s in after["stages"]] == [s["id"] for s in pipeline["stages"]]
