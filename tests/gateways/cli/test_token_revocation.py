"""A token revoked by the CLI (another process) is refused by a running API at once."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateways.bootstrap import Engine
from gateways.settings import Settings
from tests.conftest import OPERATOR, Servers, bearer, leadlog_cli, make_workspace

pytestmark = pytest.mark.timeout(120)


async def test_a_cli_revocation_reaches_a_running_api_at_once(
    engine: Engine, client: httpx.AsyncClient, servers: Servers, settings: Settings
) -> None:
    # Remembered principals would stay valid for a minute: only the revocation check ends it.
    engine.authenticator.ttl = 60.0
    ws = await make_workspace(client)
    issued = await client.post(
        f"/v1/workspaces/{ws['id']}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    token = issued.json()
    keep = bearer(ws["h"]["Authorization"].removeprefix("Bearer "))
    for _ in range(3):  # cached now
        assert (await client.get("/v1/lead-pipelines", headers=bearer(token["token"]))).is_success

    revoked = await asyncio.to_thread(
        leadlog_cli,
        servers,
        settings,
        "tokens",
        "revoke",
        token["id"],
        "--workspace",
        ws["id"],
    )
    assert revoked.returncode == 0, revoked.stderr

    refused, kept = await asyncio.gather(
        client.get("/v1/lead-pipelines", headers=bearer(token["token"])),
        client.get("/v1/lead-pipelines", headers=keep),
    )
    assert refused.status_code == 401, refused.text
    assert kept.status_code == 200  # the workspace's other token is untouched
    assert (await client.get("/v1/leads", headers=bearer(token["token"]))).status_code == 401


async def test_concurrent_requests_share_the_revocation_read(
    engine: Engine, client: httpx.AsyncClient
) -> None:
    engine.authenticator.ttl = 60.0
    ws = await make_workspace(client)
    assert (await client.get("/v1/lead-pipelines", headers=ws["h"])).is_success
    reads = 0
    real = engine.store.read

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal reads
        reads += 1
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    engine.store.read = counting  # type: ignore[method-assign,assignment]
    try:
        answers = await asyncio.gather(
            *(engine.authenticator.authenticate(ws["h"]["Authorization"][7:]) for _ in range(50))
        )
    finally:
        engine.store.read = real  # type: ignore[method-assign]
    assert all(a is not None and str(a.workspace_id) == ws["id"] for a in answers)
    assert reads <= 4  # not one each
