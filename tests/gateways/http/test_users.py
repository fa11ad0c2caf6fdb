"""The user directory (users and groups) over HTTP, and assignment checked against it."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from gateways.bootstrap import Engine
from handlers.users import UnknownGroup, UnknownUser, assignable_user, group_members
from tests.conftest import make_user
from tests.gateways.http.test_lead_commands import add, history, listed, of_type


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The JSON error envelope with this status and code."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert set(error) == {"code", "message", "details"}
    return error


async def assign(
    client: httpx.AsyncClient, ws: dict[str, Any], lead_id: str, user: str | None
) -> httpx.Response:
    return await client.patch(
        f"/v1/leads/{lead_id}/assign", json={"assignedTo": user}, headers=ws["h"]
    )


async def make_group(
    client: httpx.AsyncClient, ws: dict[str, Any], name: str, members: list[str]
) -> dict[str, Any]:
    created = await client.post(
        "/v1/user-groups", json={"name": name, "memberIds": members}, headers=ws["h"]
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_user_crud(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    ann = await make_user(client, ws["h"], " Ann Lee ", "  Ann@Example.COM ")
    assert ann["name"] == "Ann Lee" and ann["email"] == "ann@example.com"
    assert ann["active"] is True and ann["position"] > 0
    UUID(ann["id"])
    await make_user(client, other["h"], "Globex Ann", "ann@example.com")  # other workspace
    bob = await make_user(client, ws["h"], "Bob", "bob@example.com")
    listed_users = await client.get("/v1/users", headers=ws["viewer"])
    assert listed_users.status_code == 200
    assert [u["name"] for u in listed_users.json()["items"]] == ["Ann Lee", "Bob"]
    assert listed_users.json()["total"] == 2

    url = f"/v1/users/{ann['id']}"
    got = await client.get(url, headers=ws["viewer"])
    assert got.status_code == 200 and got.json()["email"] == "ann@example.com"
    changed = await client.patch(
        url, json={"name": "Ann B", "email": "ANN.B@example.com"}, headers=ws["h"]
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Ann B" and changed.json()["email"] == "ann.b@example.com"
    assert changed.json()["position"] > ann["position"]
    same = await client.patch(url, json={"email": "Ann.B@Example.com"}, headers=ws["h"])
    assert same.status_code == 200 and same.json()["position"] == 0
    # the old email is free again, the new one is taken
    await make_user(client, ws["h"], "New Ann", "ann@example.com")
    taken = await client.patch(
        f"/v1/users/{bob['id']}", json={"email": "ann.b@example.com"}, headers=ws["h"]
    )
    assert_error(taken, 409, "already_exists")
    assert "ann.b@example.com" in taken.json()["error"]["message"]

    deactivated = await client.delete(url, headers=ws["h"])
    assert deactivated.status_code == 200 and deactivated.json()["active"] is False
    assert (await client.get(url, headers=ws["h"])).json()["active"] is False
    active = await client.get("/v1/users", params={"active": "true"}, headers=ws["h"])
    assert [u["name"] for u in active.json()["items"]] == ["Bob", "New Ann"]
    inactive = await client.get("/v1/users", params={"active": "false"}, headers=ws["h"])
    assert [u["name"] for u in inactive.json()["items"]] == ["Ann B"]
    again = await client.delete(url, headers=ws["h"])
    assert again.status_code == 200 and again.json()["position"] == 0
    reactivated = await client.post(f"{url}/reactivate", headers=ws["h"])
    assert reactivated.status_code == 200 and reactivated.json()["active"] is True
    assert reactivated.json()["position"] > 0

    # another workspace sees nothing of it, exactly as if it did not exist
    missing = f"/v1/users/{uuid4()}"
    for target in (url, missing):
        assert_error(await client.get(target, headers=other["h"]), 404, "not_found")
        assert_error(
            await client.patch(target, json={"name": "x"}, headers=other["h"]), 404, "not_found"
        )
        assert_error(await client.delete(target, headers=other["h"]), 404, "not_found")
        assert_error(
            await client.post(f"{target}/reactivate", headers=other["h"]), 404, "not_found"
        )
    assert [
        u["name"] for u in (await client.get("/v1/users", headers=other["h"])).json()["items"]
    ] == ["Globex Ann"]
    # viewers read, never write
    viewer_post = await client.post(
        "/v1/users", json={"name": "V", "email": "v@example.com"}, headers=ws["viewer"]
    )
    assert_error(viewer_post, 403, "forbidden")
    assert (await client.delete(url, headers=ws["viewer"])).status_code == 403


async def test_bad_user_input_is_422_with_the_error_envelope(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    bad_bodies: list[Any] = [
        {},
        {"name": "No Email"},
        {"email": "x@example.com"},
        {"name": "A", "email": "not-an-email"},
        {"name": "A", "email": "a@"},
        {"name": "   ", "email": "blank@example.com"},
        {"name": "A", "email": "   "},
        {"name": "A", "email": "a@example.com", "role": "admin"},
        {"name": 7, "email": "a@example.com"},
        {"name": "x" * 201, "email": "a@example.com"},
        [],
    ]
    for body in bad_bodies:
        response = await client.post("/v1/users", json=body, headers=ws["h"])
        assert_error(response, 422, "validation_failed")
    user = await make_user(client, ws["h"], "Cy", "cy@example.com")
    url = f"/v1/users/{user['id']}"
    for patch in ({"name": None}, {"email": None}, {"email": "nope"}, {"active": False}):
        assert_error(await client.patch(url, json=patch, headers=ws["h"]), 422, "validation_failed")
    assert (await client.get("/v1/users/not-a-uuid", headers=ws["h"])).status_code == 422
    malformed = await client.post(
        "/v1/users",
        content=b"{not json",
        headers={**ws["h"], "Content-Type": "application/json"},
    )
    assert_error(malformed, 400, "malformed_json")
    # nothing of it was written
    listed_users = (await client.get("/v1/users", headers=ws["h"])).json()["items"]
    assert [(u["name"], u["email"]) for u in listed_users] == [("Cy", "cy@example.com")]


async def test_duplicate_email_is_409_even_when_concurrent(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    await make_user(client, ws["h"], "First", "dup@example.com")
    again = await client.post(
        "/v1/users", json={"name": "Second", "email": " DUP@example.com"}, headers=ws["h"]
    )
    assert_error(again, 409, "already_exists")

    async def create(i: int) -> httpx.Response:
        return await client.post(
            "/v1/users", json={"name": f"Racer {i}", "email": "race@example.com"}, headers=ws["h"]
        )

    responses = await asyncio.gather(*(create(i) for i in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, statuses
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "already_exists")
    users = (await client.get("/v1/users", headers=ws["h"])).json()["items"]
    assert [u["email"] for u in users].count("race@example.com") == 1
    # the same email is free in another workspace
    await make_user(client, other["h"], "Elsewhere", "race@example.com")


async def test_assignment_needs_an_active_user_of_the_workspace(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    dee = await make_user(client, ws["h"], "Dee")
    foreign = await make_user(client, other["h"], "Foreign")
    lead = await add(client, ws, name="Lead")
    assigned = await assign(client, ws, lead["id"], dee["id"].upper())
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignedTo"] == dee["id"]  # the user's id, in its canonical form

    for unknown in (foreign["id"], str(uuid4()), "dee", "x" * 200):
        refused = assert_error(await assign(client, ws, lead["id"], unknown), 422, "unknown_user")
        assert unknown in refused["message"]
    deactivated = await client.delete(f"/v1/users/{dee['id']}", headers=ws["h"])
    assert deactivated.status_code == 200
    refused = assert_error(await assign(client, ws, lead["id"], dee["id"]), 422, "unknown_user")
    assert dee["id"] in refused["message"] and "deactivated" in refused["message"]
    bulk = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "assign", "leadIds": [lead["id"]], "assignedTo": dee["id"]},
        headers=ws["h"],
    )
    assert_error(bulk, 422, "unknown_user")
    # the lead stays theirs, and unassigning needs no user
    assert (await client.get(f"/v1/leads/{lead['id']}", headers=ws["h"])).status_code == 200
    cleared = await assign(client, ws, lead["id"], None)
    assert cleared.status_code == 200 and cleared.json()["assignedTo"] is None
    await client.post(f"/v1/users/{dee['id']}/reactivate", headers=ws["h"])
    back = await assign(client, ws, lead["id"], dee["id"])
    assert back.status_code == 200 and back.json()["assignedTo"] == dee["id"]
    events = of_type(await history(engine, lead["id"]), "lead.assigned")
    assert [e.new for e in events] == [dee["id"], None, dee["id"]]

    store = engine.store
    ws_id = UUID(ws["id"])
    assert (await assignable_user(store, ws_id, dee["id"])).name == "Dee"
    for bad in ("nobody", foreign["id"], str(uuid4())):
        with pytest.raises(UnknownUser, match=bad):
            await assignable_user(store, ws_id, bad)
    assert issubclass(UnknownUser, LookupError)


async def test_the_lead_list_filters_by_assigned_user(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    one = await make_user(client, ws["h"], "One")
    two = await make_user(client, ws["h"], "Two")
    a = await add(client, ws, name="A")
    b = await add(client, ws, name="B")
    await add(client, ws, name="C")
    await assign(client, ws, a["id"], one["id"])
    last = await assign(client, ws, b["id"], two["id"])
    after = last.json()["position"]
    assert [i["name"] for i in await listed(client, ws, after, assignedTo=one["id"])] == ["A"]
    assert [i["name"] for i in await listed(client, ws, after, assignedTo=two["id"])] == ["B"]
    items = await listed(client, ws, after, assignedTo=one["id"])
    assert items[0]["assignedTo"] == one["id"]


async def test_group_crud_and_members(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any], engine: Engine
) -> None:
    ann, bob, cy = [await make_user(client, ws["h"], n) for n in ("Ann", "Bob", "Cy")]
    foreign = await make_user(client, other["h"], "Foreign")
    team = await make_group(client, ws, "Sales", [bob["id"], ann["id"], bob["id"]])
    assert team["memberIds"] == [bob["id"], ann["id"]] and team["position"] > 0
    await make_group(client, other, "Sales", [foreign["id"]])  # names are per workspace
    dup = await client.post("/v1/user-groups", json={"name": " sales "}, headers=ws["h"])
    assert_error(dup, 409, "already_exists")

    url = f"/v1/user-groups/{team['id']}"
    got = await client.get(url, headers=ws["viewer"])
    assert got.status_code == 200 and got.json()["name"] == "Sales"
    listed_groups = await client.get("/v1/user-groups", headers=ws["viewer"])
    assert [g["name"] for g in listed_groups.json()["items"]] == ["Sales"]
    changed = await client.patch(
        url, json={"name": "Sales EU", "memberIds": [cy["id"], ann["id"]]}, headers=ws["h"]
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Sales EU"
    assert changed.json()["memberIds"] == [cy["id"], ann["id"]]
    unchanged = await client.patch(url, json={"name": "Sales EU"}, headers=ws["h"])
    assert unchanged.status_code == 200 and unchanged.json()["position"] == 0
    await make_group(client, ws, "Sales", [])  # the old name is free again
    recased = await client.patch(url, json={"name": "SALES eu"}, headers=ws["h"])
    assert recased.status_code == 200 and recased.json()["name"] == "SALES eu"
    clash = await client.patch(url, json={"name": "SALES"}, headers=ws["h"])
    assert_error(clash, 409, "already_exists")

    # members must be active users of this workspace
    nobody = str(uuid4())
    for members in ([nobody], [foreign["id"]], [ann["id"], nobody]):
        error = assert_error(
            await client.patch(url, json={"memberIds": members}, headers=ws["h"]),
            422,
            "invalid_members",
        )
        assert ann["id"] not in error["details"]["memberIds"]
        assert all(m in error["message"] for m in error["details"]["memberIds"])
    created_bad = await client.post(
        "/v1/user-groups", json={"name": "Ghosts", "memberIds": [nobody]}, headers=ws["h"]
    )
    assert_error(created_bad, 422, "invalid_members")
    await client.delete(f"/v1/users/{bob['id']}", headers=ws["h"])
    assert_error(
        await client.patch(url, json={"memberIds": [bob["id"]]}, headers=ws["h"]),
        422,
        "invalid_members",
    )
    for body in ({"memberIds": ["not-a-uuid"]}, {"name": None}, {"name": ""}, {"owner": "x"}):
        assert_error(await client.patch(url, json=body, headers=ws["h"]), 422, "validation_failed")
    assert_error(
        await client.post("/v1/user-groups", json={"memberIds": []}, headers=ws["h"]),
        422,
        "validation_failed",
    )

    # group_members: the active members, in the group's order
    store = engine.store
    ws_id = UUID(ws["id"])
    members = await group_members(store, ws_id, UUID(team["id"]))
    assert [u.name for u in members] == ["Cy", "Ann"]
    await client.delete(f"/v1/users/{cy['id']}", headers=ws["h"])
    assert [u.name for u in await group_members(store, ws_id, UUID(team["id"]))] == ["Ann"]
    assert (await client.get(url, headers=ws["h"])).json()["memberIds"] == [cy["id"], ann["id"]]

    # another workspace's group does not exist for this one
    for method, payload in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        response = await client.request(method, url, json=payload, headers=other["h"])
        assert_error(response, 404, "not_found")
    with pytest.raises(UnknownGroup, match=team["id"]):
        await group_members(store, UUID(other["id"]), UUID(team["id"]))
    assert (
        await client.post("/v1/user-groups", json={"name": "V"}, headers=ws["viewer"])
    ).status_code == 403

    deleted = await client.delete(url, headers=ws["h"])
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert_error(await client.get(url, headers=ws["h"]), 404, "not_found")
    assert_error(await client.delete(url, headers=ws["h"]), 404, "not_found")
    with pytest.raises(UnknownGroup):
        await group_members(store, ws_id, UUID(team["id"]))
    with pytest.raises(UnknownGroup):
        await group_members(store, ws_id, uuid4())
    names = [
        g["name"] for g in (await client.get("/v1/user-groups", headers=ws["h"])).json()["items"]
    ]
    assert names == ["Sales"]
    await make_group(client, ws, "sales eu", [ann["id"]])  # a deleted group's name is free
