"""Routes for outbound deliveries (`/v1/deliveries`): list, one with its attempts, redeliver."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Query, Request

from domain.base import LoggedEvent
from domain.deliveries import Delivery, DeliveryKind, DeliveryState, InvalidRedelivery
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from gateways.http.timeline import await_view
from gateways.http.views import After
from handlers.deliveries import DeliveryNotFound, get_delivery, request_redelivery
from handlers.workspaces import Principal
from projections.deliveries import DeliveriesView

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

VIEW = DeliveriesView.name
TABLE = "deliveries"  # the view the projector keeps pointing at the live copy
LIST_COLUMNS = (
    "id, workspace_id, lead_id, lead_type_id, action_id, kind, target, event_code, state, "
    "attempts, last_status, last_error, next_attempt_at, created_at, updated_at"
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def delivery_row_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "leadId": str(row["lead_id"]),
        "leadTypeId": str(row["lead_type_id"]),
        "actionId": str(row["action_id"]),
        "kind": row["kind"],
        "target": row["target"],
        "eventCode": row["event_code"],
        "state": row["state"],
        "attempts": row["attempts"],
        "lastStatus": row["last_status"],
        "lastError": row["last_error"],
        "nextAttemptAt": _iso(row["next_attempt_at"]),
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }


def delivery_json(delivery: Delivery, history: list[LoggedEvent]) -> dict[str, Any]:
    """One delivery read from its events: always current, with every attempt and
    redelivery. Custom header values are not shown (they often carry credentials)."""
    attempts: list[dict[str, Any]] = []
    redeliveries: list[dict[str, Any]] = []
    for logged in history:
        event = logged.event
        if isinstance(event, Delivery.Attempted):
            attempts.append(
                {
                    "attempt": event.attempt,
                    "at": event.timestamp.isoformat(),
                    "statusCode": event.status_code,
                    "latencyMs": event.latency_ms,
                    "error": event.error,
                    "outcome": str(event.outcome),
                    "nextAttemptAt": _iso(event.next_attempt_at),
                    "position": logged.position,
                }
            )
        elif isinstance(event, Delivery.RedeliveryRequested):
            redeliveries.append(
                {
                    "at": event.timestamp.isoformat(),
                    "actor": event.actor,
                    "position": logged.position,
                }
            )
    return {
        "id": str(delivery.id),
        "webhookId": delivery.message_id,
        "workspaceId": str(delivery.workspace_id),
        "leadId": str(delivery.lead_id),
        "leadTypeId": str(delivery.lead_type_id),
        "actionId": str(delivery.action_id),
        "trigger": str(delivery.trigger),
        "eventCode": delivery.event_code,
        "kind": str(delivery.kind),
        "target": delivery.target,
        "format": delivery.format,
        "payload": delivery.payload,
        "headers": sorted(delivery.headers),
        "maxAttempts": delivery.max_attempts,
        "timeoutSeconds": delivery.timeout_seconds,
        "state": str(delivery.state),
        "attempts": attempts,
        "redeliveries": redeliveries,
        "lastStatus": delivery.last_status,
        "lastError": delivery.last_error,
        "nextAttemptAt": _iso(delivery.next_attempt_at),
        "createdAt": delivery.created_on.isoformat(),
        "updatedAt": delivery.modified_on.isoformat(),
    }


async def list_rows(
    engine: Engine,
    workspace_id: UUID | None,
    *,
    lead_id: UUID | None = None,
    state: str | None = None,
    kind: str | None = None,
    page: int = 1,
    limit: int = 50,
) -> tuple[list[asyncpg.Record], int]:
    """A page of the deliveries view, newest first (`workspace_id` None: every workspace)."""
    args: list[Any] = []
    conditions: list[str] = []
    for column, value in (
        ("workspace_id", workspace_id),
        ("lead_id", lead_id),
        ("state", state),
        ("kind", kind),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {TABLE} {where}", *args)
        rows = await conn.fetch(
            f"""SELECT {LIST_COLUMNS} FROM {TABLE} {where}
                 ORDER BY created_at DESC, id DESC
                 LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
        )
    return list(rows), int(total)


@router.get("", dependencies=[StrictQuery])
async def list_deliveries(
    request: Request,
    caller: Viewer,
    lead_id: Annotated[UUID | None, Query(alias="leadId")] = None,
    state: DeliveryState | None = None,
    kind: DeliveryKind | None = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's webhook and email deliveries, newest first."""
    workspace_id = workspace_of(caller, request)
    await await_view(request, VIEW, after)
    rows, total = await list_rows(
        engine_of(request),
        workspace_id,
        lead_id=lead_id,
        state=str(state) if state else None,
        kind=str(kind) if kind else None,
        page=page,
        limit=limit,
    )
    return {
        "items": [delivery_row_json(r) for r in rows],
        "total": total,
        "page": page,
        "limit": limit,
    }


@router.get("/{delivery_id}", dependencies=[StrictQuery])
async def get_one(delivery_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    """One delivery with its attempts, read from its events (always current)."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        delivery = await get_delivery(engine.store, workspace_id, delivery_id)
    except DeliveryNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    return delivery_json(delivery, list(await engine.store.history(delivery_id)))


@router.post("/{delivery_id}/redeliver", status_code=202)
async def redeliver(delivery_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Send it again with the same `webhook-id` (a new round of attempts); 409 while it is
    still pending."""
    workspace_id = workspace_of(caller, request)
    try:
        delivery, position = await request_redelivery(
            engine_of(request).store, workspace_id, delivery_id, actor_of(caller)
        )
    except DeliveryNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except InvalidRedelivery as error:
        raise ApiError(409, "still_pending", str(error)) from None
    return {"id": str(delivery.id), "state": str(delivery.state), "position": position}
