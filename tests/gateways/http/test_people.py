"""Tokens that belong to a person: `userId` on issue, `GET /v1/me`, the token list, and the
person's name where the timeline and the history show who did something (issue 13)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import OPERATOR, bearer, make_user


async def _user_token(
    client: httpx.AsyncClient, ws: dict[str, Any], name: str = "Pat Person"
) -> tuple[dict[str, Any], dict[str, Any]]:
    user = await make_user(client, ws["h"], name)
    issued = await client.post(
        f"/v1/workspaces/{ws['id']}/tokens",
        json={"role": "manager", "name": "pat's laptop", "userId": user["id"]},
        headers=OPERATOR,
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["userId"] == user["id"]
    return user, issued.json()


async def test_a_token_of_a_user_says_who_it_is(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    user, issued = await _user_token(client, ws)
    me = (await client.get("/v1/me", headers=bearer(issued["token"]))).json()
    assert me["user"] == {"id": user["id"], "name": "Pat Person", "email": user["email"]}
    assert me["token"] == {"id": issued["id"], "name": "pat's laptop", "role": "manager"}
    assert me["actor"] == f"token:{issued['id']}"
    # A token of no one, and the operator.
    plain = (await client.get("/v1/me", headers=ws["h"])).json()
    assert plain["user"] is None and plain["token"]["role"] == "manager"
    operator = (await client.get("/v1/me", headers=OPERATOR)).json()
    assert operator["operator"] is True and operator["user"] is None and operator["token"] is None


async def test_the_timeline_and_the_history_name_the_person(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    user, issued = await _user_token(client, ws)
    pat = bearer(issued["token"])
    lead = await client.post("/v1/leads", json={"name": "Lee"}, headers=ws["h"])
    assert lead.status_code == 201, lead.text
    lead_id = lead.json()["id"]
    note = await client.post(f"/v1/leads/{lead_id}/notes", json={"value": "called"}, headers=pat)
    assert note.status_code in (200, 201), note.text
    timeline = await client.get(
        f"/v1/leads/{lead_id}/timeline",
        params={"after": note.json()["position"]},
        headers=ws["h"],
    )
    assert timeline.status_code == 200, timeline.text
    by_pat = [e for e in timeline.json()["items"] if e["actor"] == f"token:{issued['id']}"]
    assert by_pat, timeline.json()
    for entry in by_pat:
        assert entry["actorName"] == "Pat Person"
        assert entry["actorUser"] == {"type": "user", "id": user["id"], "name": "Pat Person"}
    # The other entries were made by a token of no one: the raw actor, no name.
    others = [e for e in timeline.json()["items"] if e not in by_pat]
    assert others and all(e["actorName"] is None for e in others)
    history = await client.get(f"/v1/leads/{lead_id}/history", headers=ws["h"])
    assert history.status_code == 200, history.text
    named = [e for e in history.json()["items"] if e["actorName"] == "Pat Person"]
    assert [e["actor"] for e in named] == [f"token:{issued['id']}"]


async def test_the_token_list_shows_no_secrets(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    user, issued = await _user_token(client, ws)
    revoked = await client.delete(
        f"/v1/workspaces/{ws['id']}/tokens/{issued['id']}", headers=OPERATOR
    )
    assert revoked.status_code == 200, revoked.text
    listed = await client.get(f"/v1/workspaces/{ws['id']}/tokens", headers=OPERATOR)
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert listed.json()["total"] == len(items) == 3  # manager, viewer, Pat's
    pats = next(t for t in items if t["id"] == issued["id"])
    assert pats["userId"] == user["id"] and pats["revoked"] is True
    assert pats["name"] == "pat's laptop" and pats["role"] == "manager" and pats["createdAt"]
    assert issued["token"] not in listed.text
    assert all(len(t["hint"]) < 12 for t in items)
    # Workspace managers may not list tokens; another workspace's list is not found.
    assert (
        await client.get(f"/v1/workspaces/{ws['id']}/tokens", headers=ws["h"])
    ).status_code == 403


async def test_a_token_for_someone_not_in_the_workspace_is_refused(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    stranger = await make_user(client, other["h"], "Sam Stranger")
    for user_id in (stranger["id"], str(uuid.uuid4())):
        refused = await client.post(
            f"/v1/workspaces/{ws['id']}/tokens",
            json={"role": "viewer", "userId": user_id},
            headers=OPERATOR,
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"][0]["location"] == "userId"
    bad = await client.post(
        f"/v1/workspaces/{ws['id']}/tokens",
        json={"role": "viewer", "userId": "not-a-uuid"},
        headers=OPERATOR,
    )
    assert bad.status_code == 422, bad.text
