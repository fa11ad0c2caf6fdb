"""Email tracking and what comes back from mail systems: opens, clicks, unsubscribes, bounces.

The open pixel, click redirects and the unsubscribe link are signed URLs the message worker
puts in each email (`gateways.outbound.message_worker.TrackingLinks`): the signature names
the message (and a click's target), so a link cannot be forged or re-pointed (an open
redirect). A bad signature records nothing; the pixel still answers (mail clients show
broken images otherwise) and a click with a bad signature is a 404, never a redirect.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import Field

from domain.channels import Channel, ChannelType
from domain.messages import Message, MessageStatus
from domain.workspaces import Permission
from gateways.http.auth import engine_of, requires, workspace_of
from gateways.http.broadcasts import Body
from gateways.http.errors import ApiError
from gateways.outbound.message_worker import CLICK, OPEN, UNSUBSCRIBE, TrackingLinks
from handlers.workspaces import Principal

router = APIRouter(tags=["tracking"])
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
Signature = Annotated[str, Query(alias="s", min_length=1, max_length=200)]

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private"}


def _links(request: Request) -> TrackingLinks:
    return TrackingLinks(engine_of(request))


@router.get("/t/o/{message_id}", include_in_schema=False)
async def opened(message_id: UUID, request: Request, s: Signature) -> Response:
    """The open pixel: the email was shown (`emailopened`, once per message)."""
    if _links(request).valid(OPEN, str(message_id), s):
        await engine_of(request).messaging.message_happened(
            message_id, "email_opened", status=MessageStatus.READ
        )
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/t/c/{message_id}", include_in_schema=False)
async def clicked(
    message_id: UUID,
    request: Request,
    s: Signature,
    u: Annotated[str, Query(min_length=1, max_length=4096)],
) -> Response:
    """A tracked link: recorded (`emailclicked`, every time), then on to the target."""
    if not _links(request).valid(CLICK, f"{message_id}\x00{u}", s):
        raise ApiError(404, "not_found", "this link is not valid")
    messaging = engine_of(request).messaging
    await messaging.message_happened(message_id, "email_opened", status=MessageStatus.READ)
    await messaging.message_happened(message_id, "email_clicked", detail=u, every_time=True)
    return RedirectResponse(u, status_code=302, headers=NO_STORE)


async def _unsubscribe(message_id: UUID, request: Request, s: str) -> Message:
    if not _links(request).valid(UNSUBSCRIBE, str(message_id), s):
        raise ApiError(404, "not_found", "this unsubscribe link is not valid")
    engine = engine_of(request)
    message = await engine.store.load(Message, message_id)
    if message is None:
        raise ApiError(404, "not_found", "this unsubscribe link is not valid")
    await engine.messaging.suppress(
        message.workspace_id,
        message.to,
        "unsubscribed by link",
        message.channel,
        message.lead_id,
        "system:unsubscribe",
        activity=("email_unsubscribed", message.id),
    )
    return message


@router.get("/t/u/{message_id}", include_in_schema=False)
async def unsubscribe_page(message_id: UUID, request: Request, s: Signature) -> HTMLResponse:
    """The unsubscribe link followed in a browser: done at once, and said so."""
    message = await _unsubscribe(message_id, request, s)
    return HTMLResponse(
        "<!doctype html><title>Unsubscribed</title><main><h1>You are unsubscribed</h1>"
        f"<p>{_escape(message.to)} will get no more messages from us.</p></main>",
        headers=NO_STORE,
    )


@router.post("/t/u/{message_id}", include_in_schema=False)
async def one_click_unsubscribe(message_id: UUID, request: Request, s: Signature) -> Response:
    """RFC 8058 one-click unsubscribe (`List-Unsubscribe=One-Click`, POSTed by the mail
    client itself)."""
    await _unsubscribe(message_id, request, s)
    return Response(status_code=200, headers=NO_STORE)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class EmailEvent(Body):
    type: Literal["bounce", "complaint", "reply"]
    message_id: UUID
    # A hard bounce (the address does not exist) also suppresses it.
    permanent: bool = True
    code: str | None = Field(default=None, max_length=50)
    description: str | None = Field(default=None, max_length=2000)
    text: str | None = Field(default=None, max_length=20_000)


@router.post("/v1/channels/{channel_id}/email-events")
async def email_event(
    channel_id: UUID, body: EmailEvent, request: Request, caller: Manager
) -> dict[str, Any]:
    """What a mail system reports back about an email of this channel: a bounce (the
    message `failed`/`undelivered`, `emailfailed`, a hard bounce suppresses the address), a
    spam complaint (`emailspam`, suppressed) or a reply (`emailreplied`, every time)."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    channel = await engine.store.load(Channel, channel_id)
    if channel is None or channel.workspace_id != ws or channel.config.type != ChannelType.EMAIL:
        raise ApiError(404, "not_found", f"email channel {channel_id} does not exist")
    message = await engine.store.load(Message, body.message_id)
    if message is None or message.workspace_id != ws or message.channel_id != channel_id:
        raise ApiError(422, "unknown_message", f"message {body.message_id} is not of this channel")
    messaging = engine.messaging
    detail = body.description or body.code
    if body.type == "bounce":
        status = MessageStatus.FAILED if body.permanent else MessageStatus.UNDELIVERED
        await messaging.message_happened(message.id, "email_failed", status=status, detail=detail)
        if body.permanent:
            await messaging.suppress(
                ws,
                message.to,
                f"bounced: {detail or 'hard bounce'}",
                "email",
                message.lead_id,
                "system:bounce",
            )
    elif body.type == "complaint":
        await messaging.suppress(
            ws,
            message.to,
            "reported as spam",
            "email",
            message.lead_id,
            "system:complaint",
            activity=("email_spam", message.id),
        )
    else:
        await messaging.message_happened(
            message.id, "email_replied", detail=(body.text or "")[:2000], every_time=True
        )
    return {"messageId": str(message.id), "type": body.type, "recorded": True}
