"""Quick sends, audiences and broadcasts (`/v1/leads/broadcast/...`, `/v1/broadcasts`)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from domain.automations import Template
from domain.broadcasts import MAX_AUDIENCE, Audience, Broadcast
from domain.channels import ChannelType, UnknownChannel
from domain.message_templates import template_problems
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["messaging"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
MAX_QUICK_SEND = 1000


def _no_nul(value: Any, where: str = "") -> Any:
    """PostgreSQL text cannot hold NUL: a body carrying one is refused (422), not stored."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where or 'a value'} contains a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key, where)
            _no_nul(item, f"{where}.{key}" if where else str(key))
    if isinstance(value, list):
        for index, item in enumerate(value):
            _no_nul(item, f"{where}.{index}" if where else str(index))
    return value


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return _no_nul(data)


class QuickSend(Body):
    lead_ids: list[UUID] = Field(min_length=1, max_length=MAX_QUICK_SEND)
    channel: ChannelType
    channel_id: UUID | None = None
    # A plain text (SMS, the email's body) or a whole template.
    message: str | None = Field(default=None, min_length=1, max_length=5000)
    subject: str | None = Field(default=None, max_length=500)
    template: Template | None = None

    @model_validator(mode="after")
    def _one(self) -> QuickSend:
        if (self.message is None) == (self.template is None):
            raise ValueError("give `message` or `template`, one of them")
        return self

    def as_template(self) -> Template:
        if self.template is not None:
            return self.template
        return Template(body=self.message, subject=self.subject)


class AudienceFilter(Body):
    status: str | None = Field(default=None, max_length=100)
    source: str | None = Field(default=None, max_length=100)
    tag: str | None = Field(default=None, max_length=100)
    pipeline_id: UUID | None = None
    stage_id: UUID | None = None
    campaign_id: UUID | None = None


class CreateAudience(Body):
    name: str = Field(default="Audience", min_length=1, max_length=200)
    lead_ids: list[UUID] | None = Field(default=None, min_length=1, max_length=MAX_AUDIENCE)
    filter: AudienceFilter | None = None

    @model_validator(mode="after")
    def _one(self) -> CreateAudience:
        if (self.lead_ids is None) == (self.filter is None):
            raise ValueError("give `leadIds` or `filter`, one of them")
        return self


class CreateBroadcast(Body):
    name: str = Field(default="Broadcast", min_length=1, max_length=200)
    audience_id: UUID
    channel: ChannelType
    channel_id: UUID | None = None
    template: Template


def _check(template: Template, channel: ChannelType, where: str) -> None:
    problems = template_problems(template, channel)
    if problems:
        raise ApiError(
            422,
            "validation_failed",
            f"the {where} is not valid: {problems[0]}",
            [{"location": where, "message": p} for p in problems],
        )


@router.post("/leads/broadcast/quick-send")
async def quick_send(body: QuickSend, request: Request, caller: Manager) -> dict[str, Any]:
    """One message to each lead now; each lead's result on its own: `queued` with the
    message id, or `skipped` with the reason (no phone or email for that channel, an
    unsubscribed address, a placeholder with no value, no such channel)."""
    template = body.as_template()
    _check(template, body.channel, "template")
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    results = await engine.messaging.quick_send(
        ws, body.lead_ids, body.channel, body.channel_id, template, actor_of(caller)
    )
    return {
        "queued": sum(r["status"] == "queued" for r in results),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "results": results,
    }


async def _filtered(request: Request, ws: UUID, wanted: AudienceFilter) -> list[UUID]:
    engine = engine_of(request)
    # The lead list as it is now: the view first catches up with everything committed.
    if not await engine.lead_views.wait_for(await engine.log.max_position(), 10.0):
        raise ApiError(503, "view_behind", "the lead list is catching up; try again shortly")
    conditions = ["workspace_id = $1", "NOT deleted"]
    args: list[Any] = [ws]
    for column, value in (
        ("status", wanted.status),
        ("source", wanted.source),
        ("pipeline_id", wanted.pipeline_id),
        ("stage_id", wanted.stage_id),
        ("campaign_id", wanted.campaign_id),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if wanted.tag is not None:
        args.append(wanted.tag.casefold())
        conditions.append(f"${len(args)} = ANY(tag_keys)")
    args.append(MAX_AUDIENCE)
    sql = (
        f"SELECT id FROM leads WHERE {' AND '.join(conditions)} "
        f"ORDER BY created_at, id LIMIT ${len(args)}"
    )
    async with engine.pool.acquire() as conn:
        return [row["id"] for row in await conn.fetch(sql, *args)]


@router.post("/leads/broadcast/create-audience", status_code=201)
async def create_audience(
    body: CreateAudience, request: Request, caller: Manager
) -> dict[str, Any]:
    """A snapshot of leads, by id or by a filter on the lead list as it is now."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    lead_ids = body.lead_ids
    if lead_ids is None:
        assert body.filter is not None
        lead_ids = await _filtered(request, ws, body.filter)
    shown = body.filter.model_dump(mode="json", by_alias=True) if body.filter else None
    audience, position = await engine.messaging.create_audience(
        ws, body.name, lead_ids, shown, actor_of(caller)
    )
    return {
        "id": str(audience.id),
        "name": audience.name,
        "size": len(audience.lead_ids),
        "leadIds": [str(i) for i in audience.lead_ids],
        "position": position,
    }


@router.post("/broadcasts", status_code=201)
async def create_broadcast(
    body: CreateBroadcast, request: Request, caller: Manager
) -> dict[str, Any]:
    """Send a template to an audience on a channel, at the channel's pace (`ratePerSecond`),
    resumable after a restart; progress and delivery from `GET /v1/broadcasts/{id}`."""
    _check(body.template, body.channel, "template")
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        broadcast, position = await engine.messaging.create_broadcast(
            ws,
            body.name,
            body.audience_id,
            body.channel,
            body.channel_id,
            body.template,
            actor_of(caller),
        )
    except UnknownChannel as error:
        raise ApiError(422, "unknown_channel", str(error)) from None
    except LookupError as error:
        raise ApiError(422, "unknown_audience", str(error)) from None
    return {**await _broadcast_json(request, broadcast), "position": position}


async def _broadcast_json(request: Request, broadcast: Broadcast) -> dict[str, Any]:
    async with engine_of(request).pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT status, count(*) AS n FROM messages
                WHERE origin = 'broadcast' AND origin_id = $1 GROUP BY status""",
            broadcast.id,
        )
    counts = {row["status"]: int(row["n"]) for row in rows}
    return {
        "id": str(broadcast.id),
        "name": broadcast.name,
        "audienceId": str(broadcast.audience_id),
        "channel": str(broadcast.channel),
        "channelId": str(broadcast.channel_id),
        "audienceSize": len(broadcast.lead_ids),
        "queued": broadcast.queued,
        "skipped": broadcast.skipped,
        "finishedQueuing": broadcast.finished,
        "messages": counts,
        "sent": sum(counts.get(s, 0) for s in ("sent", "delivered", "read")),
        "delivered": sum(counts.get(s, 0) for s in ("delivered", "read")),
        "failed": sum(counts.get(s, 0) for s in ("failed", "undelivered")),
        "createdAt": broadcast.created_on.isoformat(),
    }


@router.get("/broadcasts/{broadcast_id}", dependencies=[StrictQuery])
async def get_broadcast(broadcast_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    broadcast = await engine_of(request).store.load(Broadcast, broadcast_id)
    if broadcast is None or broadcast.workspace_id != ws:
        raise ApiError(404, "not_found", f"broadcast {broadcast_id} does not exist")
    return await _broadcast_json(request, broadcast)


@router.get("/audiences/{audience_id}", dependencies=[StrictQuery])
async def get_audience(audience_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    audience = await engine_of(request).store.load(Audience, audience_id)
    if audience is None or audience.workspace_id != ws:
        raise ApiError(404, "not_found", f"audience {audience_id} does not exist")
    return {
        "id": str(audience.id),
        "name": audience.name,
        "size": len(audience.lead_ids),
        "leadIds": [str(i) for i in audience.lead_ids],
        "filter": audience.filter,
    }
