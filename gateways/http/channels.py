"""Routes for messaging channels (`/v1/channels`) and their providers' callbacks.

A channel's JSON is its configuration with every secret shown as `[set]` (never its value),
its `id`, `createdAt`, `updatedAt`, and the two URLs to give the provider:
`statusCallbackUrl` (delivery statuses; Twilio's `StatusCallback`) and `inboundUrl` (replies
from leads), built on `LEADLOG_PUBLIC_URL` (else the address the API listens on).

The callbacks carry no bearer token: the provider's signature is the credential. Twilio's
`X-Twilio-Signature` signs the URL it posted to and the form fields with the channel's
`authToken`; Meta's `X-Hub-Signature-256` signs the body with the channel's `appSecret`.
A callback is answered 200 as soon as it is applied, including for a message the engine
does not know (yet): providers retry only what is not a 2xx.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar
from uuid import UUID

import orjson
import structlog
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from domain.channels import Channel, ChannelConfig, ChannelType, UnknownChannel
from domain.lead_types import private_target
from domain.leads import dedup_scope
from domain.messages import PROVIDER_STATUSES
from domain.normalize import normalise_phone
from domain.provider_signatures import hub_valid, twilio_valid
from domain.workspaces import Permission, Workspace
from gateways.bootstrap import Engine
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.inbound_webhooks import documented_body
from gateways.http.payloads import (
    parse_form,
    parse_json_object,
    parse_settings_object,
    validation_error,
)
from gateways.http.query import StrictQuery
from gateways.http.timeline import table_of
from gateways.settings import Settings
from handlers import channels as commands
from handlers.channels import InvalidCredentials
from handlers.messages import message_of, report_status
from handlers.payloads import is_form, is_json
from handlers.workspaces import Principal

log = structlog.get_logger(__name__)

router = APIRouter(tags=["channels"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

T = TypeVar("T")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# What a channel's JSON shows beside its configuration: sent back on a PATCH of what a GET
# returned, they are ignored rather than refused.
READ_ONLY = ("id", "createdAt", "updatedAt", "position", "statusCallbackUrl", "inboundUrl")
MAX_ID = 256
MAX_REPLY = 10_000


class InboundHandler(Protocol):
    """What takes a lead's reply further (the messaging engine): a timeline entry, the
    `smsreplied` trigger, a STOP. It may be called again for the same provider message id
    (providers retry), and must take it once."""

    async def inbound(
        self,
        workspace_id: UUID,
        channel: Channel,
        lead_id: UUID | None,
        from_: str,
        body: str,
        provider_message_id: str,
        /,
    ) -> object: ...


class _Wiring:
    inbound: InboundHandler | None = None


_wiring = _Wiring()


def set_inbound_handler(handler: InboundHandler | None) -> None:
    """Wire (or unwire, with None) what replies go to when the Engine has no `messaging`."""
    _wiring.inbound = handler


def inbound_handler(engine: Engine) -> InboundHandler | None:
    messaging = getattr(engine, "messaging", None)
    if messaging is not None and hasattr(messaging, "inbound"):
        found: InboundHandler = messaging
        return found
    return _wiring.inbound


# ---- the channels -------------------------------------------------------------------------


def public_base(settings: Settings) -> str:
    """Where providers reach the engine: `LEADLOG_PUBLIC_URL`, else the API's address."""
    return (settings.public_url or f"http://{settings.http_host}:{settings.http_port}").rstrip("/")


def callback_urls(settings: Settings, channel_id: UUID) -> dict[str, str]:
    base = f"{public_base(settings)}/v1/channels/{channel_id}"
    return {"statusCallbackUrl": f"{base}/status", "inboundUrl": f"{base}/inbound"}


def channel_json(channel: Channel, settings: Settings) -> dict[str, Any]:
    return {
        "id": str(channel.id),
        **channel.config.public(),
        **callback_urls(settings, channel.id),
        "createdAt": channel.created_on.isoformat(),
        "updatedAt": channel.modified_on.isoformat(),
    }


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_failed",
        f"the channel is not valid: {field}: {message}",
        [
            {
                "location": [int(p) if p.isdigit() else p for p in field.split(".")],
                "message": message,
                "type": "value",
            }
        ],
    )


async def _run(command: Callable[[], Awaitable[T]]) -> T:
    try:
        return await command()
    except UnknownChannel as error:
        raise ApiError(404, "not_found", str(error)) from None
    except InvalidCredentials as error:
        raise _invalid(error.field, error.message) from None
    except ValidationError as error:
        raise validation_error(error, "channel") from None


async def _body(request: Request) -> dict[str, Any]:
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the channel as application/json")
    data = parse_settings_object(await request.body(), "channel")
    return {k: v for k, v in data.items() if k not in READ_ONLY}


def _check_target(request: Request, config: ChannelConfig) -> None:
    """A literal internal provider address is refused as for a webhook: messages, with the
    channel's credentials, are sent there."""
    settings = engine_of(request).settings
    if settings.allow_private_webhook_targets or not config.base_url:
        return
    if private_target(config.base_url):
        raise _invalid(
            "baseUrl",
            f"{config.base_url} is a loopback or private address; providers there are off"
            " unless LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS=1",
        )


_CONFIG_BODY = documented_body(ChannelConfig)
_PATCH_BODY = orjson.loads(orjson.dumps(_CONFIG_BODY))
_PATCH_BODY["requestBody"]["content"]["application/json"]["schema"].pop("required", None)


@router.post("/v1/channels", status_code=201, openapi_extra=_CONFIG_BODY)
async def create_channel(request: Request, caller: Manager) -> dict[str, Any]:
    """A channel: `{type: sms|whatsapp|email, name, baseUrl, from, credentials, active,
    ratePerSecond}`. SMS (Twilio) needs `from` and credentials `accountSid`, `authToken`;
    WhatsApp (Cloud API) `phoneNumberId`, `accessToken`, `appSecret`, `verifyToken` (and
    `apiVersion`); email may name its own SMTP server (`host`, `port`, `username`,
    `password`, `starttls`). Secrets are never shown again: reads show `[set]`."""
    ws = workspace_of(caller, request)
    fields = await _body(request)
    engine = engine_of(request)
    try:
        config = commands.new_config(fields)
    except InvalidCredentials as error:
        raise _invalid(error.field, error.message) from None
    except ValidationError as error:
        raise validation_error(error, "channel") from None
    _check_target(request, config)
    channel, position = await _run(
        lambda: commands.create_channel(engine.store, ws, config, actor_of(caller))
    )
    return {**channel_json(channel, engine.settings), "position": position}


@router.get("/v1/channels", dependencies=[StrictQuery])
async def list_channels(
    request: Request,
    caller: Viewer,
    kind: Annotated[ChannelType | None, Query(alias="type")] = None,
) -> dict[str, Any]:
    """The workspace's channels, oldest first; `type=sms|whatsapp|email` keeps one kind."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    found = await commands.list_channels(engine.store, ws)
    items = [
        channel_json(c, engine.settings) for c in found if kind is None or c.config.type is kind
    ]
    return {"items": items, "total": len(items)}


@router.get("/v1/channels/{channel_id}", dependencies=[StrictQuery])
async def get_channel(channel_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    channel = await _run(lambda: commands.get_channel(engine.store, ws, channel_id))
    return channel_json(channel, engine.settings)


@router.patch("/v1/channels/{channel_id}", openapi_extra=_PATCH_BODY)
async def update_channel(channel_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Change the given top-level fields; `credentials` merge key by key (a secret left
    out, or sent back as `[set]`, stays as it is; `null` removes one). The result is
    checked as a whole channel."""
    ws = workspace_of(caller, request)
    fields = await _body(request)
    engine = engine_of(request)

    async def patched() -> tuple[Channel, int]:
        current = await commands.get_channel(engine.store, ws, channel_id)
        _check_target(request, commands.merged_config(current.config, fields))
        return await commands.update_channel(engine.store, ws, channel_id, fields, actor_of(caller))

    channel, position = await _run(patched)
    return {**channel_json(channel, engine.settings), "position": position}


@router.delete("/v1/channels/{channel_id}")
async def delete_channel(channel_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Nothing is sent through the channel any more; its messages keep their history and
    their providers' reports are still applied."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    position = await _run(lambda: commands.delete_channel(store, ws, channel_id, actor_of(caller)))
    return {"id": str(channel_id), "deleted": True, "position": position}


# ---- the providers' callbacks -------------------------------------------------------------


async def _callback_channel(request: Request, channel_id: UUID) -> Channel:
    # Read through the process's channel cache (a few seconds): callbacks come in bursts.
    channel = await engine_of(request).messaging_parts[1].get(channel_id)
    if channel is None:
        raise ApiError(404, "not_found", f"channel {channel_id} does not exist")
    if channel.config.type is ChannelType.EMAIL:
        raise ApiError(404, "not_found", f"channel {channel_id} takes no provider callbacks")
    return channel


def _signed_urls(request: Request) -> list[str]:
    """The URLs a provider may have signed: the one the engine handed out (public base,
    path and query) and the one this request reached (the same behind no proxy)."""
    query = f"?{request.url.query}" if request.url.query else ""
    handed_out = f"{public_base(engine_of(request).settings)}{request.url.path}{query}"
    reached = str(request.url)
    return [handed_out] if reached == handed_out else [handed_out, reached]


def _pairs(form: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (name, item)
        for name, value in form.items()
        for item in (value if isinstance(value, list) else [value])
    ]


async def _twilio_form(request: Request, channel: Channel) -> dict[str, Any]:
    """The callback's form fields once `X-Twilio-Signature` proves Twilio sent them."""
    if not is_form(request.headers.get("content-type")):
        raise ApiError(
            415, "unsupported_media_type", "Twilio posts application/x-www-form-urlencoded"
        )
    form = parse_form(await request.body())
    token = channel.config.credential("authToken")
    signature = request.headers.get("x-twilio-signature")
    pairs = _pairs(form)
    if not any(twilio_valid(token, url, pairs, signature) for url in _signed_urls(request)):
        log.warning("channel callback signature invalid", channel_id=str(channel.id))
        raise ApiError(403, "invalid_signature", "X-Twilio-Signature does not sign this request")
    return form


def _field(form: dict[str, Any], *names: str) -> str | None:
    """A form field by its name (or an older name Twilio also sends), as one short text."""
    for name in names:
        value = form.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > (MAX_REPLY if name == "Body" else MAX_ID):
            raise ApiError(
                422,
                "validation_failed",
                f"the callback is not valid: {name} must be one text",
                [{"location": [name], "message": "one text", "type": "value"}],
            )
        return value
    return None


def _required(form: dict[str, Any], *names: str) -> str:
    found = _field(form, *names)
    if found is None or not found.strip():
        raise ApiError(
            422,
            "validation_failed",
            f"the callback is not valid: {names[0]} is missing",
            [{"location": [names[0]], "message": "missing", "type": "missing"}],
        )
    return found


async def _meta_payload(request: Request, channel: Channel) -> dict[str, Any]:
    """The webhook's JSON once `X-Hub-Signature-256` proves Meta sent it."""
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "the Cloud API posts application/json")
    body = await request.body()
    secret = channel.config.credential("appSecret")
    if not hub_valid(secret, body, request.headers.get("x-hub-signature-256")):
        log.warning("channel callback signature invalid", channel_id=str(channel.id))
        raise ApiError(403, "invalid_signature", "X-Hub-Signature-256 does not sign this body")
    return parse_json_object(body)


def _list_at(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ApiError(
            422,
            "validation_failed",
            f"the callback is not valid: {where} must be a list",
            [{"location": where.split("."), "message": "a list", "type": "list_type"}],
        )
    return value


def _changes(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `entry[].changes[].value` of a Cloud API webhook."""
    values: list[dict[str, Any]] = []
    for entry in _list_at(payload.get("entry"), "entry"):
        if not isinstance(entry, dict):
            continue
        for change in _list_at(entry.get("changes"), "entry.changes"):
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                values.append(value)
    return values


def _text(value: Any, limit: int = MAX_ID) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value[:limit] if isinstance(value, str) and value.strip() else None


def _moment(value: Any) -> datetime | None:
    """A Cloud API `timestamp` (Unix seconds, as text)."""
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


class _Tally:
    def __init__(self) -> None:
        self.applied = 0
        self.ignored = 0
        self.received = 0

    def json(self) -> dict[str, int]:
        return {"applied": self.applied, "ignored": self.ignored, "received": self.received}


async def _status(
    engine: Engine,
    channel: Channel,
    tally: _Tally,
    provider_id: str | None,
    reported: str | None,
    error_code: str | None,
    error: str | None,
    reported_at: datetime | None,
) -> None:
    status = PROVIDER_STATUSES.get((reported or "").strip().lower())
    if provider_id is None or status is None:
        tally.ignored += 1
        return
    message_id = await message_of(engine.store, channel.id, provider_id)
    if message_id is None:
        # Unknown, or its send not recorded yet: answered 200 all the same (see above).
        log.info(
            "status for an unknown message",
            channel_id=str(channel.id),
            provider_id=provider_id,
            status=str(status),
        )
        tally.ignored += 1
    elif await report_status(engine.store, message_id, status, error_code, error, reported_at):
        tally.applied += 1
    else:
        tally.ignored += 1


async def _meta_channel(engine: Engine, channel: Channel, value: dict[str, Any]) -> Channel | None:
    """The channel a Cloud API change is about: one app's webhook carries every phone
    number of the app, so a change may belong to a sibling channel of the workspace (same
    app secret, that phone number id)."""
    metadata = value.get("metadata")
    number = _text(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None
    if number is None or number == channel.config.credential("phoneNumberId"):
        return channel
    secret = channel.config.credential("appSecret")
    for sibling in await commands.list_channels(engine.store, channel.workspace_id):
        config = sibling.config
        if (
            config.type is ChannelType.WHATSAPP
            and config.credential("phoneNumberId") == number
            and hmac.compare_digest(config.credential("appSecret"), secret)
        ):
            return sibling
    return None


async def _meta_statuses(
    engine: Engine, channel: Channel, value: dict[str, Any], tally: _Tally
) -> None:
    for item in _list_at(value.get("statuses"), "entry.changes.value.statuses"):
        if not isinstance(item, dict):
            tally.ignored += 1
            continue
        errors = item.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else None
        first = first if isinstance(first, dict) else {}
        await _status(
            engine,
            channel,
            tally,
            _text(item.get("id")),
            _text(item.get("status")),
            _text(first.get("code")),
            _text(first.get("title") or first.get("message"), 1000),
            _moment(item.get("timestamp")),
        )


def _meta_reply(message: dict[str, Any]) -> str:
    """The text of a Cloud API inbound message (a button's or a list's choice read as one)."""
    kind = message.get("type")
    part = message.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return ""
    if kind == "interactive":
        chosen = part.get("button_reply") or part.get("list_reply")
        part = chosen if isinstance(chosen, dict) else {}
    for key in ("body", "text", "title", "caption"):
        found = _text(part.get(key), MAX_REPLY)
        if found is not None:
            return found
    return ""


async def _lead_by_phone(engine: Engine, workspace_id: UUID, number: str) -> UUID | None:
    """The workspace's newest live lead with that phone number, read in its region."""
    workspace = await engine.store.load(Workspace, workspace_id)
    region = workspace.default_region if workspace is not None else "US"
    normal = normalise_phone(number, region).normal
    if normal is None:
        return None
    table = table_of(engine, "leads", "leads")
    # phone_digits holds the digits of each form of the lead's number (E.164 among them).
    found: UUID | None = await engine.pool.fetchval(
        f"""SELECT id FROM {table}
             WHERE workspace_id = $1 AND NOT deleted
               AND string_to_array(phone_digits, ' ') @> ARRAY[$2::text]
             ORDER BY created_at DESC LIMIT 1""",
        workspace_id,
        normal.lstrip("+"),
    )
    if found is None:
        # Not in the view yet (a reply racing the lead's arrival): the original lead
        # holding the number in the workspace is known at once from its claim.
        scope = dedup_scope(workspace_id, None)
        found = await engine.store.holder(f"lead:{scope}:phone:{normal}")
    return found


async def _reply(
    engine: Engine, channel: Channel, from_: str, body: str, provider_message_id: str
) -> None:
    handler = inbound_handler(engine)
    if handler is None:
        log.error("inbound message not handled: no handler", channel_id=str(channel.id))
        raise ApiError(503, "inbound_unavailable", "replies cannot be taken now; retry later")
    lead_id = await _lead_by_phone(engine, channel.workspace_id, from_)
    await handler.inbound(channel.workspace_id, channel, lead_id, from_, body, provider_message_id)


async def _meta_messages(
    engine: Engine, channel: Channel, value: dict[str, Any], tally: _Tally
) -> None:
    for item in _list_at(value.get("messages"), "entry.changes.value.messages"):
        sender = _text(item.get("from")) if isinstance(item, dict) else None
        message_id = _text(item.get("id")) if isinstance(item, dict) else None
        if not isinstance(item, dict) or sender is None or message_id is None:
            tally.ignored += 1
            continue
        # The Cloud API gives the sender's number in international form without its `+`.
        number = sender if sender.startswith("+") else f"+{sender}"
        await _reply(engine, channel, number, _meta_reply(item), message_id)
        tally.received += 1


async def _meta_webhook(request: Request, channel: Channel) -> JsonResponse:
    engine = engine_of(request)
    payload = await _meta_payload(request, channel)
    tally = _Tally()
    for value in _changes(payload):
        target = await _meta_channel(engine, channel, value)
        if target is None:
            statuses = value.get("statuses")
            messages = value.get("messages")
            tally.ignored += len(statuses) if isinstance(statuses, list) else 0
            tally.ignored += len(messages) if isinstance(messages, list) else 0
            continue
        await _meta_statuses(engine, target, value, tally)
        await _meta_messages(engine, target, value, tally)
    return JsonResponse(tally.json())


_CALLBACK_BODY = documented_body(form=True)


@router.post("/v1/channels/{channel_id}/status", openapi_extra=_CALLBACK_BODY)
async def status_callback(channel_id: UUID, request: Request) -> Response:
    """A provider's delivery statuses, signed by it (no bearer token). Twilio: a form with
    `MessageSid`, `MessageStatus`, `ErrorCode`. WhatsApp Cloud API: JSON with
    `entry[].changes[].value.statuses[]` (and `messages[]`, replies, taken as `/inbound`
    takes them). Answers `{applied, ignored, received}`; a status repeated, older than the
    message's, or for a message not known (yet) is `ignored`, still with 200."""
    channel = await _callback_channel(request, channel_id)
    engine = engine_of(request)
    if channel.config.type is ChannelType.WHATSAPP:
        return await _meta_webhook(request, channel)
    form = await _twilio_form(request, channel)
    tally = _Tally()
    provider_id = _required(form, "MessageSid", "SmsSid")
    reported = _required(form, "MessageStatus", "SmsStatus")
    error_code = _field(form, "ErrorCode") or None
    error = _field(form, "ErrorMessage") or (f"Twilio error {error_code}" if error_code else None)
    await _status(engine, channel, tally, provider_id, reported, error_code, error, None)
    return JsonResponse(tally.json())


@router.post("/v1/channels/{channel_id}/inbound", openapi_extra=_CALLBACK_BODY)
async def inbound_callback(channel_id: UUID, request: Request) -> Response:
    """A reply from a lead, signed by the provider (no bearer token). Twilio: a form with
    `From`, `Body`, `MessageSid`, answered with empty TwiML. WhatsApp Cloud API: JSON with
    `entry[].changes[].value.messages[]` (`from`, `text.body`, `id`), answered as `/status`
    is. The lead is the workspace's newest with that phone number (none: the reply is still
    taken, without a lead)."""
    channel = await _callback_channel(request, channel_id)
    engine = engine_of(request)
    if channel.config.type is ChannelType.WHATSAPP:
        return await _meta_webhook(request, channel)
    form = await _twilio_form(request, channel)
    sender = _required(form, "From")
    message_id = _required(form, "MessageSid", "SmsMessageSid", "SmsSid")
    body = _field(form, "Body") or ""
    await _reply(engine, channel, sender.removeprefix("whatsapp:"), body, message_id)
    return Response(EMPTY_TWIML, media_type="text/xml")


@router.get(
    "/v1/channels/{channel_id}/status",
    response_class=PlainTextResponse,
    dependencies=[StrictQuery],
)
@router.get(
    "/v1/channels/{channel_id}/inbound",
    response_class=PlainTextResponse,
    dependencies=[StrictQuery],
)
async def subscription_handshake(
    channel_id: UUID,
    request: Request,
    mode: Annotated[str | None, Query(alias="hub.mode", max_length=100)] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token", max_length=1000)] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge", max_length=1000)] = None,
) -> PlainTextResponse:
    """The Cloud API's webhook verification: with `hub.mode=subscribe` and the channel's
    `verifyToken` as `hub.verify_token`, answers `hub.challenge` as text; else 403."""
    channel = await commands.channel_of(engine_of(request).store, channel_id)
    if channel is None or channel.deleted:
        raise ApiError(404, "not_found", f"channel {channel_id} does not exist")
    expected = channel.config.credential("verifyToken")
    if (
        channel.config.type is not ChannelType.WHATSAPP
        or mode != "subscribe"
        or not expected
        or token is None
        or not hmac.compare_digest(token.encode(), expected.encode())
        or challenge is None
    ):
        raise ApiError(403, "forbidden", "the verification token does not match")
    return PlainTextResponse(challenge)
