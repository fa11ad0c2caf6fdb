"""A webhook to an IPv6 address that embeds a loopback IPv4 one is refused, not sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.lead_types import LeadType, Referral, Webhook
from domain.triggers import Trigger
from gateways.bootstrap import Engine
from gateways.settings import Settings
from handlers.ports import Append
from tests.conftest import make_workspace, settings_for

pytestmark = pytest.mark.timeout(120)

EMBEDDED = "::127.0.0.1"


@pytest.fixture
def settings(schema_name: str, nats_prefix: str) -> Settings:
    return settings_for(
        schema_name,
        nats_prefix,
        allow_private_webhook_targets=False,
        webhook_retry_base_seconds=0.1,
    )


class Listener:
    """Counts every connection made to it, on IPv4 and IPv6 loopback alike."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self.servers: list[asyncio.Server] = []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> Listener:
        first = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        self.servers.append(first)
        with contextlib.suppress(OSError):  # the same port on IPv6 too, where possible
            self.servers.append(await asyncio.start_server(self._accept, "::", self.port))
        return self

    async def __aexit__(self, *_: object) -> None:
        for server in self.servers:
            server.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    async with Listener() as listener:
        yield listener


async def test_an_embedded_loopback_target_is_refused_when_configured(
    client: httpx.AsyncClient, running: None, listener: Listener
) -> None:
    ws = await make_workspace(client)
    for host in (EMBEDDED, "64:ff9b::7f00:1", "2002:7f00:1::1", "::ffff:0:127.0.0.1"):
        url = f"http://[{host}]:{listener.port}/hook"
        answer = await client.post(
            "/v1/lead-types",
            json={"name": "T", "actions": [{"type": "webhook", "trigger": "received", "url": url}]},
            headers=ws["h"],
        )
        assert answer.status_code == 422, (host, answer.text)
        assert "loopback or private" in answer.json()["error"]["message"]


async def test_a_lead_type_webhook_to_an_embedded_loopback_is_refused_without_connecting(
    engine: Engine, client: httpx.AsyncClient, running: None, listener: Listener
) -> None:
    ws = await make_workspace(client)
    workspace_id = UUID(ws["id"])
    url = f"http://[{EMBEDDED}]:{listener.port}/hook"
    # Configured before the guard knew better (or under another name): the sender decides.
    action = Webhook(trigger=Trigger.RECEIVED, url=url)
    lead_type = LeadType(
        workspace_id=workspace_id, name="Solar", referral=Referral(), actions=[action], actor="t"
    )
    lead_type.issue_secret(action.id, timedelta(0), "t")
    await engine.store.append(Append(workspace_id, events=lead_type.collect_events()))
    made = await client.post(f"/v1/lead-types/{lead_type.id}/default", headers=ws["h"])
    assert made.status_code == 200, made.text
    lead = await client.post("/v1/leads", json={"name": "Ada"}, headers=ws["h"])
    assert lead.status_code == 201, lead.text

    async def failed() -> dict[str, Any] | None:
        listed = await client.get("/v1/deliveries", headers=ws["h"])
        for row in listed.json()["items"]:
            one: dict[str, Any] = (
                await client.get(f"/v1/deliveries/{row['id']}", headers=ws["h"])
            ).json()
            if one["state"] == "failed":
                return one
        return None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    done = await failed()
    while done is None and loop.time() < deadline:
        await asyncio.sleep(0.1)
        done = await failed()
    assert done is not None, "the delivery never failed"
    assert done["target"] == url
    assert done["lastStatus"] is None and len(done["attempts"]) == 1
    assert done["lastError"].startswith("refused:"), done["lastError"]
    assert "::127.0.0.1" in done["lastError"] or "::7f00:1" in done["lastError"]
    assert listener.connections == 0


async def test_a_partner_webhook_url_to_an_internal_address_is_refused(
    client: httpx.AsyncClient, running: None, listener: Listener
) -> None:
    """Referrals are sent to a partner's `webhookUrl`: the same guard as a lead type's."""
    ws = await make_workspace(client)
    for host in ("127.0.0.1", f"[{EMBEDDED}]", "localhost"):
        url = f"http://{host}:{listener.port}/hook"
        created = await client.post(
            "/v1/partners", json={"name": "P", "webhookUrl": url}, headers=ws["h"]
        )
        assert created.status_code == 422, (host, created.text)
        assert "webhookUrl" in created.json()["error"]["message"]
        assert "loopback or private" in created.json()["error"]["message"]
    partner = await client.post("/v1/partners", json={"name": "Q"}, headers=ws["h"])
    changed = await client.patch(
        f"/v1/partners/{partner.json()['id']}",
        json={"webhookUrl": f"http://127.0.0.1:{listener.port}/hook"},
        headers=ws["h"],
    )
    assert changed.status_code == 422, changed.text
    public = await client.patch(
        f"/v1/partners/{partner.json()['id']}",
        json={"webhookUrl": "https://partner.example.com/hook"},
        headers=ws["h"],
    )
    assert public.status_code == 200 and public.json()["webhookSecret"].startswith("whsec_")
    assert listener.connections == 0
