"""Routes reading messages (`/v1/messages`): every message sent to a lead, with its statuses."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request

from domain.messages import Message
from domain.workspaces import Permission
from gateways.http.auth import engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from gateways.http.timeline import await_view, table_of
from gateways.http.views import After
from handlers.workspaces import Principal
from projections.messages import MessagesView

router = APIRouter(prefix="/v1", tags=["messages"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

MESSAGES = MessagesView.name
COLUMNS = (
    "id, lead_id, channel, channel_id, to_address, status, provider_id, status_history,"
    " origin, origin_id, step, error_code, error, content, created_at, updated_at"
)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _id(value: UUID | None) -> str | None:
    return str(value) if value is not None else None


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "leadId": _id(row["lead_id"]),
        "channel": row["channel"],
        "channelId": str(row["channel_id"]),
        "to": row["to_address"],
        "status": row["status"],
        "providerId": row["provider_id"],
        "statusHistory": _json(row["status_history"]),
        "origin": row["origin"],
        "originId": _id(row["origin_id"]),
        "step": row["step"],
        "errorCode": row["error_code"],
        "error": row["error"],
        "content": _json(row["content"]),
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


@router.get("/messages", dependencies=[StrictQuery])
async def list_messages(
    request: Request,
    caller: Viewer,
    lead_id: Annotated[UUID | None, Query(alias="leadId")] = None,
    channel: Annotated[str | None, Query(max_length=100)] = None,
    channel_id: Annotated[UUID | None, Query(alias="channelId")] = None,
    status: Annotated[str | None, Query(max_length=100)] = None,
    origin: Annotated[str | None, Query(max_length=100)] = None,
    origin_id: Annotated[UUID | None, Query(alias="originId")] = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's messages, newest first, by lead, channel (`sms`, `whatsapp`,
    `email`) or channel id, status (`pending`, `sent`, `delivered`, `read`, `failed`,
    `undelivered`), origin (`automation`, `quick_send`, `broadcast`, `action`) and origin
    id (the automation run, broadcast or action)."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    await await_view(request, MESSAGES, after)
    table = table_of(engine, MESSAGES, "messages")
    args: list[Any] = [workspace_id]
    conditions = ["workspace_id = $1"]
    filters = (
        ("lead_id", lead_id),
        ("channel", channel),
        ("channel_id", channel_id),
        ("status", status),
        ("origin", origin),
        ("origin_id", origin_id),
    )
    for column, value in filters:
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = " AND ".join(conditions)
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM {table} WHERE {where}
                 ORDER BY created_at DESC, id DESC
                 LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
        )
    return {
        "items": [message_json(r) for r in rows],
        "total": int(total),
        "page": page,
        "limit": limit,
    }


@router.get("/messages/{message_id}", dependencies=[StrictQuery])
async def get_message(
    message_id: UUID, request: Request, caller: Viewer, after: After = None
) -> dict[str, Any]:
    """One message as the view holds it once it has every event the log has for it."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    history = await engine.store.history(message_id)
    first = history[0].event if history else None
    if not isinstance(first, Message.Queued) or first.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"message {message_id} does not exist")
    await await_view(request, MESSAGES, max(after or 0, history[-1].position))
    table = table_of(engine, MESSAGES, "messages")
    async with engine.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {COLUMNS} FROM {table} WHERE id = $1 AND workspace_id = $2",
            message_id,
            workspace_id,
        )
    if row is None:
        raise ApiError(404, "not_found", f"message {message_id} does not exist")
    return message_json(row)
