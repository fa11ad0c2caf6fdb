"""The messages view from Message events appended through the store: statuses and their
history exactly as the aggregate keeps them, the list and one message over HTTP, and the same
rows when the view is rebuilt from the log in one pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from domain.messages import Message, MessageStatus, Origin
from domain.workspaces import Role
from gateways.bootstrap import Engine
from gateways.http.app import create_app
from handlers.messages import apply_status, provider_claim
from handlers.ports import Append, Claim
from handlers.workspaces import create_workspace, issue_token
from projections.base import Tables
from projections.messages import MessagesView
from tests.conftest import bearer


@pytest.fixture
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app with only the projections running: no message worker sends what this
    module queues by hand."""
    await engine.projector.start()
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://leadlog.test") as client:
        yield client
    await engine.projector.stop()


@dataclass
class Tenant:
    id: UUID
    h: dict[str, str]
    sms: UUID
    whatsapp: UUID


async def tenant(engine: Engine, name: str) -> Tenant:
    workspace = await create_workspace(engine.store, name)
    token = await issue_token(engine.store, workspace.id, Role.VIEWER)
    return Tenant(workspace.id, bearer(token.token), uuid4(), uuid4())


def queued(
    t: Tenant,
    channel: str = "sms",
    lead_id: UUID | None = None,
    origin: Origin = Origin.QUICK_SEND,
    origin_id: UUID | None = None,
    step: int | None = None,
) -> Message:
    content: dict[str, Any] = (
        {"template": {"name": "welcome", "language": "en", "parameters": ["Ann"]}}
        if channel == "whatsapp"
        else {"body": "Hello Ann"}
    )
    return Message(  # type: ignore[call-arg]
        id=uuid4(),
        workspace_id=t.id,
        lead_id=lead_id or uuid4(),
        channel_id=t.whatsapp if channel == "whatsapp" else t.sms,
        channel=channel,
        to="+14155552671",
        content=content,
        origin=origin,
        origin_id=origin_id,
        step=step,
    )


async def save(engine: Engine, *messages: Message) -> int:
    """Each message's new events in one append each, a send with its provider claim."""
    position = 0
    for m in messages:
        events = m.collect_events()
        claims = [
            Claim(provider_claim(m.channel_id, e.provider_id), m.id)
            for e in events
            if isinstance(e, Message.Sent)
        ]
        appended = await engine.store.append(Append(m.workspace_id, events=events, claims=claims))
        position = appended.position
    return position


async def test_the_view_keeps_each_message_as_the_aggregate_does(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    t = await tenant(engine, "Acme")
    other = await tenant(engine, "Globex")
    lead = uuid4()
    run = uuid4()

    waiting = queued(t, lead_id=lead, origin=Origin.AUTOMATION, origin_id=run, step=0)
    read = queued(t, "whatsapp", lead_id=lead, origin=Origin.AUTOMATION, origin_id=run, step=1)
    read.sent("wamid.read")
    refused = queued(t, origin=Origin.BROADCAST, origin_id=uuid4())
    refused.fail("The 'To' number is not a valid phone number", "21211")
    bounced = queued(t, lead_id=lead)
    bounced.sent("SMbounced")
    delivered = queued(t)
    delivered.sent("SMdelivered")
    foreign = queued(other)
    foreign.sent("SMforeign")
    # Queued and sent in one append, then reported on in later ones: the view reads the
    # rows it wrote before and moves them on.
    await save(engine, waiting, read, refused, bounced, delivered, foreign)
    reported_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    reports: list[tuple[Message, str, MessageStatus, str | None, str | None]] = [
        (read, "wamid.read", MessageStatus.READ, None, None),  # read implies delivered
        (read, "wamid.read", MessageStatus.DELIVERED, None, None),  # late: ignored
        (bounced, "SMbounced", MessageStatus.UNDELIVERED, "30003", "Unreachable handset"),
        (bounced, "SMbounced", MessageStatus.DELIVERED, None, None),  # after a failure
        (delivered, "SMdelivered", MessageStatus.DELIVERED, None, None),
        (delivered, "SMdelivered", MessageStatus.SENT, None, None),  # never downgrades
        (delivered, "SMdelivered", MessageStatus.FAILED, "30008", "Unknown"),  # too late
    ]
    outcomes = [
        await apply_status(engine.store, m.channel_id, sid, status, code, error, reported_at)
        for m, sid, status, code, error in reports
    ]
    assert outcomes == [True, False, True, False, True, False, False]
    # A status for a provider id no send holds, or on another channel, changes nothing.
    assert not await apply_status(
        engine.store, t.sms, "SMnobody", MessageStatus.DELIVERED, None, None, None
    )
    assert not await apply_status(
        engine.store, t.whatsapp, "SMdelivered", MessageStatus.DELIVERED, None, None, None
    )
    head = await engine.log.max_position()
    assert await engine.projector.wait_for("messages", head, 10)

    rows = {
        r["id"]: dict(r)
        for r in await engine.pool.fetch("SELECT * FROM messages WHERE workspace_id = $1", t.id)
    }
    mine = (waiting, read, refused, bounced, delivered)
    assert set(rows) == {m.id for m in mine}
    for m in mine:
        stored = await engine.store.load(Message, m.id)
        assert stored is not None
        row = rows[m.id]
        assert json.loads(row["status_history"]) == stored.history, m.id
        assert row["status"] == str(stored.status)
        assert (row["provider_id"], row["error_code"], row["error"]) == (
            stored.provider_id,
            stored.error_code,
            stored.error,
        )
        assert row["updated_position"] > 0

    def history(m: Message) -> list[str]:
        return [e["status"] for e in json.loads(rows[m.id]["status_history"])]

    assert (rows[waiting.id]["status"], history(waiting)) == ("pending", [])
    assert rows[waiting.id]["updated_at"] == rows[waiting.id]["created_at"]
    assert history(read) == ["sent", "delivered", "read"]
    assert rows[read.id]["status"] == "read" and rows[read.id]["provider_id"] == "wamid.read"
    assert (rows[refused.id]["status"], rows[refused.id]["error_code"]) == ("failed", "21211")
    assert history(refused) == ["failed"]
    assert history(bounced) == ["sent", "undelivered"]
    assert rows[bounced.id]["error"] == "Unreachable handset"
    assert history(delivered) == ["sent", "delivered"]
    assert rows[delivered.id]["error_code"] is None
    w = rows[waiting.id]
    assert (w["lead_id"], w["channel"], w["channel_id"], w["to_address"]) == (
        lead,
        "sms",
        t.sms,
        "+14155552671",
    )
    assert (w["origin"], w["origin_id"], w["step"]) == ("automation", run, 0)

    # The list, newest first, by lead, channel, status, origin and origin id; paged.
    async def listed(**params: Any) -> list[str]:
        answered = await api.get("/v1/messages", params=params, headers=t.h)
        assert answered.status_code == 200, answered.text
        return [item["id"] for item in answered.json()["items"]]

    everything = await listed(after=head)
    assert sorted(everything) == sorted(str(m.id) for m in mine)
    assert sorted(await listed(leadId=str(lead))) == sorted(
        str(m.id) for m in (waiting, read, bounced)
    )
    assert await listed(channel="whatsapp") == [str(read.id)]
    assert await listed(channelId=str(t.whatsapp)) == [str(read.id)]
    assert await listed(status="undelivered") == [str(bounced.id)]
    assert sorted(await listed(origin="automation", originId=str(run))) == sorted(
        [str(waiting.id), str(read.id)]
    )
    assert await listed(status="pending", channel="sms") == [str(waiting.id)]
    first = await api.get("/v1/messages", params={"limit": 2}, headers=t.h)
    second = await api.get("/v1/messages", params={"limit": 2, "page": 2}, headers=t.h)
    assert first.json()["total"] == 5 and (first.json()["page"], first.json()["limit"]) == (1, 2)
    paged = [i["id"] for i in first.json()["items"] + second.json()["items"]]
    assert paged == everything[:4]
    theirs = await api.get("/v1/messages", headers=other.h)
    assert [i["id"] for i in theirs.json()["items"]] == [str(foreign.id)]
    unknown = await api.get("/v1/messages", params={"lead": str(lead)}, headers=t.h)
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_parameter"
    bad_id = await api.get("/v1/messages", params={"leadId": "nope"}, headers=t.h)
    assert bad_id.status_code == 422

    stored_read = await engine.store.load(Message, read.id)
    assert stored_read is not None
    one = await api.get(f"/v1/messages/{read.id}", headers=t.h)
    assert one.status_code == 200, one.text
    body = one.json()
    assert body == {
        "id": str(read.id),
        "leadId": str(lead),
        "channel": "whatsapp",
        "channelId": str(t.whatsapp),
        "to": "+14155552671",
        "status": "read",
        "providerId": "wamid.read",
        "statusHistory": stored_read.history,
        "origin": "automation",
        "originId": str(run),
        "step": 1,
        "errorCode": None,
        "error": None,
        "content": {"template": {"name": "welcome", "language": "en", "parameters": ["Ann"]}},
        "createdAt": body["createdAt"],
        "updatedAt": body["updatedAt"],
    }
    assert body["updatedAt"] > body["createdAt"]
    for missing in (foreign.id, uuid4(), lead, t.id):
        answer = await api.get(f"/v1/messages/{missing}", headers=t.h)
        assert answer.status_code == 404, (missing, answer.text)

    # Rebuilt from position 0 in one pass (every event of a message in one batch), the view
    # holds the same rows as the live one built event by event.
    projection = MessagesView()
    rebuilt = Tables.versioned(projection.table_names, projection.version + 1)
    reached = await engine.projector.build(projection, rebuilt, consumer="rebuild:messages")
    assert reached >= head
    live = engine.projector.tables(projection.name)
    query = "SELECT * FROM {} ORDER BY id"
    live_rows = [dict(r) for r in await engine.pool.fetch(query.format(live["messages"]))]
    new_rows = [dict(r) for r in await engine.pool.fetch(query.format(rebuilt["messages"]))]
    assert len(live_rows) == 6 and live_rows == new_rows


async def test_concurrent_reports_on_one_message_apply_once_each(
    engine: Engine, api: httpx.AsyncClient
) -> None:
    """Providers call back in parallel: every status lands once, in a monotonic history,
    whichever order the appends race in."""
    t = await tenant(engine, "Acme")
    m = queued(t)
    m.sent("SMrace")
    await save(engine, m)
    statuses = [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ] * 4
    outcomes = await asyncio.gather(
        *(
            apply_status(engine.store, t.sms, "SMrace", status, None, None, None)
            for status in statuses
        )
    )
    stored = await engine.store.load(Message, m.id)
    assert stored is not None and stored.status is MessageStatus.READ
    seen = [e["status"] for e in stored.history]
    assert seen == ["sent", "delivered", "read"]
    # `delivered` either landed on its own or came with `read`: at most two reports changed it.
    assert 1 <= sum(outcomes) <= 2
    head = await engine.log.max_position()
    assert await engine.projector.wait_for("messages", head, 10)
    answered = await api.get(f"/v1/messages/{m.id}", headers=t.h)
    assert [e["status"] for e in answered.json()["statusHistory"]] == seen
