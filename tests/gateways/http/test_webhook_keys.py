"""Inbound webhook keys from memory: every change counts at once here, within moments elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.base import DomainEvent, snake
from domain.inbound_webhooks import InboundWebhook
from domain.workspaces import Role
from gateways.bootstrap import Engine, start_engine
from gateways.http.app import create_app
from gateways.settings import Settings
from gateways.web.passwords import Argon2Hasher
from gateways.webhook_keys import WebhookKeys
from handlers import inbound_webhooks as commands
from handlers.inbound_webhooks import WEBHOOK_EVENT_TYPES, hash_key
from handlers.users import create_user
from tests.conftest import ADMIN_TOKEN, OPERATOR, Servers, bearer, drop_schema
from tests.private_servers import PrivatePostgres, started_postgres

Workspace = dict[str, str]

# How long another process may take to see a change (the follower is woken by NOTIFY and
# reads within ~10 ms; this leaves room for a loaded CI machine).
ELSEWHERE = 2.0


@pytest.fixture
async def workspace(client: httpx.AsyncClient) -> Workspace:
    created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
    workspace_id = created.json()["id"]
    token = await client.post(
        f"/v1/workspaces/{workspace_id}/tokens", json={"role": "manager"}, headers=OPERATOR
    )
    return {"id": workspace_id, "token": token.json()["token"]}


@contextlib.asynccontextmanager
async def http_client(
    engine: Engine, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(
        app=create_app(engine), raise_app_exceptions=raise_app_exceptions
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client


@pytest.fixture
async def second(servers: Servers, settings: Settings, engine: Engine) -> AsyncIterator[Engine]:
    """Another process on the same schema: an engine of its own (pool, log, listener)."""
    other = await start_engine(settings, servers.database_url, servers.nats_url, ADMIN_TOKEN)
    try:
        yield other
    finally:
        await other.close()


async def create(client: httpx.AsyncClient, workspace: Workspace, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/lead-webhooks",
        json={"name": "Landing page", **body},
        headers=bearer(workspace["token"]),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def post(client: httpx.AsyncClient, api_key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(f"/webhooks/leads/{api_key}", json=body)


async def becomes(check: Callable[[], Awaitable[bool]], within: float = ELSEWHERE) -> float:
    """Seconds until `check` holds; fails the test past `within`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "not seen in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def status_is(
    client: httpx.AsyncClient, api_key: str, status: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await post(client, api_key, {"name": "probe"})).status_code == status

    return check


async def remember(engine: Engine, api_key: str) -> None:
    """Have the engine's cache hold this key's answer (lookups before the follower knows
    where the log stands are not kept)."""
    keys, digest = engine.webhook_keys, hash_key(api_key)
    while keys.position is None:
        await keys.resolve(digest)
        await asyncio.sleep(0.005)
    await keys.resolve(digest)
    assert digest in keys


# ---- this process: at once ------------------------------------------------------------------


async def test_regenerated_key_is_refused_on_the_very_next_request(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    old = webhook["apiKey"]
    await remember(engine, old)
    assert (await post(client, old, {"name": "before"})).status_code == 201
    regenerated = await client.post(
        f"/v1/lead-webhooks/{webhook['id']}/regenerate-key", headers=bearer(workspace["token"])
    )
    assert regenerated.status_code == 200
    refused = await post(client, old, {"name": "after"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert (await post(client, regenerated.json()["apiKey"], {"name": "new"})).status_code == 201


async def test_deactivate_delete_and_mapping_count_on_the_very_next_request(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    await remember(engine, webhook["apiKey"])
    key, path, auth = (
        webhook["apiKey"],
        f"/v1/lead-webhooks/{webhook['id']}",
        bearer(workspace["token"]),
    )
    unmapped = await post(client, key, {"name": "A", "zq": "a@mapped.test"})
    lead = await client.get(f"/v1/leads/{unmapped.json()['id']}", headers=auth)
    assert lead.json()["email"] is None  # and the webhook is remembered now

    await client.patch(path, json={"fieldMapping": {"zq": "email"}}, headers=auth)
    mapped = await post(client, key, {"name": "B", "zq": "b@mapped.test"})
    lead = await client.get(f"/v1/leads/{mapped.json()['id']}", headers=auth)
    assert lead.json()["email"] == "b@mapped.test"

    await client.patch(path, json={"active": False}, headers=auth)
    assert (await post(client, key, {"name": "C"})).status_code == 401
    assert (await post(client, key, {"name": "C"})).status_code == 401  # remembered inactive
    await client.patch(path, json={"active": True}, headers=auth)
    assert (await post(client, key, {"name": "D"})).status_code == 201

    await client.delete(path, headers=auth)
    assert (await post(client, key, {"name": "E"})).status_code == 401


async def test_a_change_made_beside_the_routes_is_followed_from_the_log(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    """A handler called on the store directly tells the cache nothing: the follower sees it."""
    webhook = await create(client, workspace)
    await remember(engine, webhook["apiKey"])
    assert (await post(client, webhook["apiKey"], {"name": "A"})).status_code == 201
    await commands.update_webhook(
        engine.store, UUID(workspace["id"]), UUID(webhook["id"]), active=False
    )
    await becomes(status_is(client, webhook["apiKey"], 401))


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found is not None, html[:500]
    return found.group(1)


async def test_changes_made_in_the_web_settings_count_on_the_very_next_request(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    email, password = "mia@acme.example", "a long passphrase"
    await create_user(
        engine.store, UUID(workspace["id"]), "Mia", email, "operator", Role.MANAGER,
        password, Argon2Hasher(),
    )  # fmt: skip
    form = await client.get("/login")
    signed_in = await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": _csrf(form.text), "next": "/"},
    )
    assert signed_in.status_code == 303, signed_in.text
    webhook = await create(client, workspace)
    page = f"/settings/webhooks/{webhook['id']}"
    token = _csrf((await client.get(page)).text)

    await remember(engine, webhook["apiKey"])
    regenerated = await client.post(f"{page}/regenerate", data={"csrf_token": token})
    assert regenerated.status_code == 200, regenerated.text
    assert (await post(client, webhook["apiKey"], {"name": "old"})).status_code == 401
    new_key = re.search(r"/webhooks/leads/(whk_[A-Za-z0-9_-]+)", regenerated.text)
    assert new_key is not None
    await remember(engine, new_key.group(1))
    saved = await client.post(page, data={"name": "Landing page", "csrf_token": token})
    assert saved.status_code == 303, saved.text  # saved without `active`: switched off
    assert (await post(client, new_key.group(1), {"name": "off"})).status_code == 401
    saved = await client.post(page, data={"name": "Landing", "active": "on", "csrf_token": token})
    assert (await post(client, new_key.group(1), {"name": "on"})).status_code == 201
    deleted = await client.post(f"{page}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert (await post(client, new_key.group(1), {"name": "gone"})).status_code == 401


# ---- another process: within moments --------------------------------------------------------


async def test_changes_made_in_another_process_are_refused_within_moments(
    client: httpx.AsyncClient, workspace: Workspace, second: Engine
) -> None:
    auth = bearer(workspace["token"])
    async with http_client(second) as elsewhere:
        regenerated = await create(client, workspace)
        deactivated = await create(client, workspace)
        deleted = await create(client, workspace)
        for hook in (regenerated, deactivated, deleted):
            await remember(second, hook["apiKey"])
            assert (await post(elsewhere, hook["apiKey"], {"name": "A"})).status_code == 201

        await client.post(f"/v1/lead-webhooks/{regenerated['id']}/regenerate-key", headers=auth)
        took = await becomes(status_is(elsewhere, regenerated["apiKey"], 401))
        await client.patch(
            f"/v1/lead-webhooks/{deactivated['id']}", json={"active": False}, headers=auth
        )
        took = max(took, await becomes(status_is(elsewhere, deactivated["apiKey"], 401)))
        await client.delete(f"/v1/lead-webhooks/{deleted['id']}", headers=auth)
        took = max(took, await becomes(status_is(elsewhere, deleted["apiKey"], 401)))
        assert took < 0.5, took

        # and back: reactivation counts elsewhere too
        await client.patch(
            f"/v1/lead-webhooks/{deactivated['id']}", json={"active": True}, headers=auth
        )
        await becomes(status_is(elsewhere, deactivated["apiKey"], 201))


async def test_a_mapping_changed_in_another_process_applies_within_moments(
    client: httpx.AsyncClient, workspace: Workspace, second: Engine
) -> None:
    auth = bearer(workspace["token"])
    webhook = await create(client, workspace)
    async with http_client(second) as elsewhere:
        await remember(second, webhook["apiKey"])
        first = await post(elsewhere, webhook["apiKey"], {"name": "A", "zq": "a@mapped.test"})
        lead = await client.get(f"/v1/leads/{first.json()['id']}", headers=auth)
        assert lead.json()["email"] is None
        await client.patch(
            f"/v1/lead-webhooks/{webhook['id']}",
            json={"fieldMapping": {"zq": "email"}},
            headers=auth,
        )

        async def mapped() -> bool:
            sent = await post(elsewhere, webhook["apiKey"], {"name": "B", "zq": "b@mapped.test"})
            got = await client.get(f"/v1/leads/{sent.json()['id']}", headers=auth)
            return bool(got.json()["email"] == "b@mapped.test")

        await becomes(mapped)


async def test_an_unknown_key_is_not_remembered_past_its_creation_elsewhere(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine, second: Engine
) -> None:
    api_key = commands.new_api_key()
    await remember(engine, api_key)  # unknown, and remembered as such
    assert (await post(client, api_key, {"name": "early"})).status_code == 401
    await commands.create_webhook(
        second.store, UUID(workspace["id"]), "Later", generate=lambda: api_key
    )
    await becomes(status_is(client, api_key, 201))


# ---- the cache itself -----------------------------------------------------------------------


def test_the_follower_reads_every_kind_of_webhook_event() -> None:
    declared = {
        f"{snake(InboundWebhook.__name__)}.{snake(name)}"
        for name, cls in vars(InboundWebhook).items()
        if isinstance(cls, type) and issubclass(cls, DomainEvent) and name != "Event"
    }
    assert declared == set(WEBHOOK_EVENT_TYPES)


async def test_unknown_keys_are_bounded_and_known_ones_bounded_by_the_webhooks(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    keys = WebhookKeys(engine.store, max_unknown=5)
    try:
        webhooks = [await create(client, workspace) for _ in range(2)]
        while keys.position is None:
            await keys.resolve(hash_key("whk_nothing"))
            await asyncio.sleep(0.005)
        for _ in range(20):
            assert await keys.resolve(hash_key(commands.new_api_key())) is None
        for hook in webhooks:
            for _ in range(3):
                found = await keys.resolve(hash_key(hook["apiKey"]))
                assert found is not None and str(found.id) == hook["id"]
        assert len(keys) == 5 + 2
    finally:
        await keys.close()


async def test_changed_forgets_at_once_and_waits_for_the_follower(
    client: httpx.AsyncClient, workspace: Workspace, engine: Engine
) -> None:
    webhook = await create(client, workspace)
    workspace_id, webhook_id = UUID(workspace["id"]), UUID(webhook["id"])
    old = hash_key(webhook["apiKey"])

    # A follower that will not read again for a minute: `changed` forgets all the same.
    idle = WebhookKeys(engine.store, min_interval=60)
    try:
        while idle.position is None:
            await idle.resolve(old)
            await asyncio.sleep(0.005)
        assert (await idle.resolve(old)) is not None and old in idle
        regenerated = await commands.regenerate_key(engine.store, workspace_id, webhook_id)
        assert old in idle  # nothing told it yet
        await idle.changed(webhook_id, regenerated.position, timeout=0.05)
        assert old not in idle and await idle.resolve(old) is None
        assert idle.position is not None and idle.position < regenerated.position
    finally:
        await idle.close()

    # The engine's own: once `changed` returns, the follower has read the change.
    keys = engine.webhook_keys
    new = hash_key(regenerated.api_key)
    await remember(engine, regenerated.api_key)
    again = await commands.regenerate_key(engine.store, workspace_id, webhook_id)
    await keys.changed(webhook_id, again.position)
    assert keys.position is not None and keys.position >= again.position
    assert new not in keys and await keys.resolve(new) is None


async def test_the_follower_stops_with_the_engine(
    servers: Servers, settings: Settings, engine: Engine, client: httpx.AsyncClient
) -> None:
    assert (await post(client, "whk_" + "x" * 43, {"name": "x"})).status_code == 401
    follower = [t for t in asyncio.all_tasks() if t.get_name() == "webhook-keys"]
    assert len(follower) == 1 and not follower[0].done()
    await engine.close()
    assert follower[0].done()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "webhook-keys"]


# ---- a database outage ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    with started_postgres("leadlog-keys-pg-") as server:
        yield server


async def test_outage_a_remembered_key_gets_503_and_the_follower_resumes(
    private_postgres: PrivatePostgres, servers: Servers, settings: Settings
) -> None:
    engine = await start_engine(settings, private_postgres.url, servers.nats_url, ADMIN_TOKEN)
    other: Engine | None = None
    try:
        async with http_client(engine, raise_app_exceptions=False) as client:
            created = await client.post("/v1/workspaces", json={"name": "Acme"}, headers=OPERATOR)
            workspace_id = UUID(created.json()["id"])
            webhook = await commands.create_webhook(engine.store, workspace_id, "Hook")
            key = webhook.api_key
            await remember(engine, key)
            assert (await post(client, key, {"name": "before"})).status_code == 201

            await asyncio.to_thread(private_postgres.stop_fast)
            try:
                for api_key in (key, commands.new_api_key()):
                    down = await post(client, api_key, {"name": "during"})
                    assert down.status_code == 503, down.text
                    assert down.json()["error"]["code"] == "database_unavailable"
                    assert down.headers["retry-after"].isdigit()
                assert (await post(client, "nonsense", {"name": "x"})).status_code == 401
                await asyncio.sleep(1.0)  # the follower fails a few times meanwhile
            finally:
                await asyncio.to_thread(private_postgres.start)

            await becomes(status_is(client, key, 201), within=30)
            # The follower reads the log again: another process's change is seen here.
            other = await start_engine(
                settings, private_postgres.url, servers.nats_url, ADMIN_TOKEN
            )
            await commands.regenerate_key(other.store, workspace_id, webhook.webhook.id)
            await becomes(status_is(client, key, 401), within=10)
    finally:
        if other is not None:
            await other.close()
        await engine.close()
        with contextlib.suppress(Exception):
            await drop_schema(private_postgres.url, settings.database_schema)
