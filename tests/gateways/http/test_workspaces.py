"""Workspaces, tokens and permissions through the HTTP API, against real Postgres and NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from gateways.bootstrap import Engine
from tests.conftest import OPERATOR, bearer


async def create_workspace(client: httpx.AsyncClient, name: str = "Acme") -> str:
    response = await client.post("/v1/workspaces", json={"name": name}, headers=OPERATOR)
    assert response.status_code == 201, response.text
    workspace_id: str = response.json()["id"]
    return workspace_id


async def create_token(client: httpx.AsyncClient, workspace_id: str, role: str) -> str:
    response = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": role}, headers=OPERATOR
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_operator_creates_workspace_and_token(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/workspaces", json={"name": "  Acme Leads ", "defaultRegion": "GB"}, headers=OPERATOR
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Acme Leads"
    assert body["defaultRegion"] == "GB"
    assert body["position"] > 0

    token_response = await client.post(
        f"/v1/workspaces/{body['id']}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    assert token_response.status_code == 201
    issued = token_response.json()
    assert issued["token"].startswith("llt_")
    assert issued["workspaceId"] == body["id"]

    me = await client.get("/v1/me", headers=bearer(issued["token"]))
    assert me.status_code == 200
    assert me.json() == {
        "workspaceId": body["id"],
        "role": "manager",
        "operator": False,
        "permissions": ["leads:manage", "leads:view", "returns:start"],
        "actor": f"token:{issued['id']}",
        "user": None,
        "token": {"id": issued["id"], "name": "api", "role": "manager"},
    }


async def test_token_secret_is_stored_only_as_hash(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    workspace_id = await create_workspace(client)
    token = await create_token(client, workspace_id, "viewer")
    rows = await engine.pool.fetch("SELECT state FROM events")
    assert rows
    assert all(token.encode() not in row["state"] for row in rows)
    assert all(token[4:].encode() not in row["state"] for row in rows)


async def test_roles_map_to_permissions(client: httpx.AsyncClient) -> None:
    workspace_id = await create_workspace(client)
    expected = {
        "super_admin": ["leads:manage", "leads:view", "returns:start"],
        "admin": ["leads:manage", "leads:view", "returns:start"],
        "manager": ["leads:manage", "leads:view", "returns:start"],
        "marketer": ["leads:manage", "leads:view", "returns:start"],
        "viewer": ["leads:view"],
    }
    for role, permissions in expected.items():
        token = await create_token(client, workspace_id, role)
        me = await client.get("/v1/me", headers=bearer(token))
        assert me.json()["permissions"] == permissions, role


async def test_requests_are_scoped_to_the_tokens_workspace(client: httpx.AsyncClient) -> None:
    mine = await create_workspace(client, "Mine")
    theirs = await create_workspace(client, "Theirs")
    token = await create_token(client, mine, "admin")

    listed = await client.get("/v1/workspaces", headers=bearer(token))
    assert [w["id"] for w in listed.json()["items"]] == [mine]

    other = await client.get(f"/v1/workspaces/{theirs}", headers=bearer(token))
    assert other.status_code == 404
    missing = await client.get(
        "/v1/workspaces/00000000-0000-0000-0000-000000000000", headers=bearer(token)
    )
    assert missing.status_code == 404
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"

    minted = await client.post(
        f"/v1/workspaces/{theirs}/tokens", json={"role": "viewer"}, headers=bearer(token)
    )
    assert minted.status_code == 404

    everything = await client.get("/v1/workspaces", headers=OPERATOR)
    assert {w["id"] for w in everything.json()["items"]} == {mine, theirs}


async def test_only_operator_creates_workspaces(client: httpx.AsyncClient) -> None:
    workspace_id = await create_workspace(client)
    token = await create_token(client, workspace_id, "super_admin")
    response = await client.post("/v1/workspaces", json={"name": "x"}, headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


async def test_admin_cannot_mint_super_admin_and_viewer_cannot_mint(
    client: httpx.AsyncClient,
) -> None:
    workspace_id = await create_workspace(client)
    admin = await create_token(client, workspace_id, "admin")
    viewer = await create_token(client, workspace_id, "viewer")
    url = f"/v1/workspaces/{workspace_id}/tokens"
    assert (
        await client.post(url, json={"role": "super_admin"}, headers=bearer(admin))
    ).status_code == 403
    assert (
        await client.post(url, json={"role": "manager"}, headers=bearer(admin))
    ).status_code == 201
    assert (
        await client.post(url, json={"role": "viewer"}, headers=bearer(viewer))
    ).status_code == 403


async def test_revoked_token_stops_at_once(client: httpx.AsyncClient) -> None:
    workspace_id = await create_workspace(client)
    response = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "viewer"}, headers=OPERATOR
    )
    issued = response.json()
    assert (await client.get("/v1/me", headers=bearer(issued["token"]))).status_code == 200
    revoked = await client.delete(
        f"/v1/workspaces/{workspace_id}/tokens/{issued['id']}", headers=OPERATOR
    )
    assert revoked.status_code == 200
    after = await client.get("/v1/me", headers=bearer(issued["token"]))
    assert after.status_code == 401


async def test_unknown_and_malformed_tokens_get_the_same_401(client: httpx.AsyncClient) -> None:
    workspace_id = await create_workspace(client)
    token = await create_token(client, workspace_id, "viewer")
    answers = []
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        bearer("nonsense"),
        bearer("llt_" + "A" * 43),
        bearer(token[:-1] + ("A" if token[-1] != "A" else "B")),
    ):
        response = await client.get("/v1/me", headers=headers)
        assert response.status_code == 401
        answers.append(response.json()["error"]["code"])
    assert set(answers) == {"unauthorized"}


async def test_bad_input_gets_clear_errors_and_writes_nothing(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    before = await engine.store.max_position()
    cases = [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"[1,2]", "application/json", 422, "validation_failed"),
        (b'{"name": ""}', "application/json", 422, "validation_failed"),
        (b'{"name": "a\\u0000b"}', "application/json", 422, "validation_failed"),
        (b'{"name": "x", "surprise": 1}', "application/json", 422, "validation_failed"),
        (b'{"name": "x", "defaultRegion": "usa"}', "application/json", 422, "validation_failed"),
        (b"\xff\xfe", "application/json", 400, "malformed_json"),
    ]
    for body, content_type, status, code in cases:
        response = await client.post(
            "/v1/workspaces",
            content=body,
            headers={**OPERATOR, "Content-Type": content_type},
        )
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["code"] == code, body
        assert response.json()["error"]["message"]
    bad_role = await client.post(
        "/v1/workspaces/00000000-0000-0000-0000-000000000000/tokens",
        json={"role": "emperor"},
        headers=OPERATOR,
    )
    assert bad_role.status_code == 422
    assert await engine.store.max_position() == before


async def test_body_over_the_limit_is_refused(client: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * (70 * 1024) + b'"}'
    response = await client.post(
        "/v1/workspaces", content=big, headers={**OPERATOR, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 8192

    streamed = await client.post(
        "/v1/workspaces", content=chunks(), headers={**OPERATOR, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


async def test_healthz_names_both_servers_and_the_consumers(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "postgres": {"ok": True},
            "nats": {"ok": True},
            "consumers": {"ok": True, "stopped": {}},
        },
    }
    assert response.headers["x-request-id"]


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert "/v1/workspaces" in response.json()["paths"]


async def test_concurrent_workspace_creation(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/v1/workspaces", json={"name": f"w{i}"}, headers=OPERATOR)
            for i in range(50)
        )
    )
    assert all(r.status_code == 201 for r in responses)
    listed = await client.get("/v1/workspaces", headers=OPERATOR)
    assert listed.json()["total"] == 50
