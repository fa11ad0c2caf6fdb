"""Routes: managing inbound webhooks, and the public URL lead sources post to."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from domain.leads import MissingName
from domain.mapping import InvalidFieldMapping
from domain.payload_fields import UnusablePayload
from domain.source_formats import SourceFormat
from domain.workspaces import Permission
from gateways.http.auth import engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.lead_json import receipt_json
from gateways.http.payloads import (
    check_shape,
    idempotency_key,
    parse_form,
    parse_json_object,
    validation_error,
)
from gateways.http.query import StrictQuery
from gateways.http.views import After
from handlers import inbound_webhooks as commands
from handlers.inbound_webhooks import (
    KEEP,
    UnknownWebhookKey,
    WebhookIntake,
    WebhookNotFound,
    WebhookView,
    WebhookWithKey,
)
from handlers.payloads import is_form, is_json
from handlers.workspaces import Principal

router = APIRouter(tags=["inbound webhooks"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

# Unbounce posts its form's answers as a JSON document inside one form field.
EMBEDDED_JSON_FIELDS = ("data.json",)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class CreateWebhook(_Body):
    name: str = Field(min_length=1, max_length=200)
    field_mapping: dict[str, str] = Field(default_factory=dict)
    source_format: SourceFormat | None = None
    active: bool = True


class UpdateWebhook(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    field_mapping: dict[str, str] | None = None
    source_format: SourceFormat | None = None
    active: bool | None = None


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def documented_body(*models: type[BaseModel], form: bool = False) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself, so bad input gets the API's own errors."""
    if not models:
        schema: dict[str, Any] = {"type": "object", "additionalProperties": True}
    else:
        schema = models[0].model_json_schema(by_alias=True)
        schema = _inline(schema, schema.pop("$defs", {}))
    content = {"application/json": {"schema": schema}}
    if form:
        content["application/x-www-form-urlencoded"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}


def webhook_json(view: WebhookView) -> dict[str, Any]:
    return {
        "id": str(view.id),
        "workspaceId": str(view.workspace_id),
        "name": view.name,
        "apiKeyHint": view.key_hint,
        "fieldMapping": view.field_mapping,
        "sourceFormat": view.source_format,
        "active": view.active,
        "createdAt": view.created_at.isoformat(),
        "updatedAt": view.updated_at.isoformat(),
    }


def with_key_json(request: Request, created: WebhookWithKey) -> dict[str, Any]:
    """The one response that shows the API key, and the URL it opens."""
    return {
        **webhook_json(created.webhook),
        "apiKey": created.api_key,
        "url": str(request.base_url).rstrip("/") + created.path,
        "position": created.position,
    }


async def _settings(request: Request, model: type[_Body]) -> Any:
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the settings as application/json")
    data = parse_json_object(await request.body())
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problem = validation_error(error)
        raise ApiError(
            422, problem.code, "the webhook settings are not valid", problem.details
        ) from None


def _mapping_error(error: InvalidFieldMapping) -> ApiError:
    return ApiError(422, "invalid_field_mapping", str(error))


def _not_found(error: WebhookNotFound) -> ApiError:
    return ApiError(404, "not_found", str(error))


@router.post("/v1/lead-webhooks", status_code=201, openapi_extra=documented_body(CreateWebhook))
async def create_webhook(request: Request, caller: Manager) -> JsonResponse:
    """A new inbound webhook; its `apiKey` and `url` are shown this once."""
    workspace_id = workspace_of(caller, request)
    body: CreateWebhook = await _settings(request, CreateWebhook)
    try:
        created = await commands.create_webhook(
            engine_of(request).store,
            workspace_id,
            body.name,
            body.field_mapping,
            body.source_format,
            body.active,
        )
    except InvalidFieldMapping as error:
        raise _mapping_error(error) from None
    return JsonResponse(with_key_json(request, created), status_code=201)


@router.get("/v1/lead-webhooks", dependencies=[StrictQuery])
async def list_webhooks(request: Request, caller: Viewer) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    views = await commands.list_webhooks_from_log(engine_of(request).store, workspace_id)
    return {"items": [webhook_json(v) for v in views], "total": len(views)}


@router.get("/v1/lead-webhooks/{webhook_id}", dependencies=[StrictQuery])
async def get_webhook(webhook_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    try:
        view = await commands.get_webhook(engine_of(request).store, workspace_id, webhook_id)
    except WebhookNotFound as error:
        raise _not_found(error) from None
    return webhook_json(view)


@router.get("/v1/lead-webhooks/{webhook_id}/stats", dependencies=[StrictQuery])
async def webhook_stats(
    webhook_id: UUID,
    request: Request,
    caller: Viewer,
    after: After = None,
) -> dict[str, Any]:
    """Leads received through the webhook (duplicates among them) and the last one's time."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        await commands.get_webhook(engine.store, workspace_id, webhook_id)
    except WebhookNotFound as error:
        raise _not_found(error) from None
    if after and not await engine.projector.wait_for("webhook_stats", after, 5.0):
        raise ApiError(503, "view_behind", f"the stats have not caught up with {after} yet")
    async with engine.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT total_received, duplicates, last_received_at, last_lead_id "
            "FROM webhook_stats WHERE webhook_id = $1",
            webhook_id,
        )
    return {
        "id": str(webhook_id),
        "totalReceived": row["total_received"] if row else 0,
        "duplicates": row["duplicates"] if row else 0,
        "lastReceivedAt": row["last_received_at"].isoformat() if row else None,
        "lastLeadId": str(row["last_lead_id"]) if row else None,
    }


@router.patch("/v1/lead-webhooks/{webhook_id}", openapi_extra=documented_body(UpdateWebhook))
async def update_webhook(webhook_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Change the name, field mapping, pinned format (null: detect) or whether it is active."""
    workspace_id = workspace_of(caller, request)
    body: UpdateWebhook = await _settings(request, UpdateWebhook)
    engine = engine_of(request)
    try:
        view, position = await commands.update_webhook(
            engine.store,
            workspace_id,
            webhook_id,
            name=body.name,
            field_mapping=body.field_mapping,
            source_format=body.source_format if "source_format" in body.model_fields_set else KEEP,
            active=body.active,
        )
    except WebhookNotFound as error:
        raise _not_found(error) from None
    except InvalidFieldMapping as error:
        raise _mapping_error(error) from None
    await engine.webhook_keys.changed(webhook_id, position)
    return {**webhook_json(view), "position": position}


@router.delete("/v1/lead-webhooks/{webhook_id}")
async def delete_webhook(webhook_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """The URL stops working at once; the leads it brought in stay."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        position = await commands.delete_webhook(engine.store, workspace_id, webhook_id)
    except WebhookNotFound as error:
        raise _not_found(error) from None
    await engine.webhook_keys.changed(webhook_id, position)
    return {"id": str(webhook_id), "deleted": True, "position": position}


@router.post("/v1/lead-webhooks/{webhook_id}/regenerate-key")
async def regenerate_key(webhook_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """A new `apiKey` and `url`; the old URL stops working at once."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    try:
        created = await commands.regenerate_key(engine.store, workspace_id, webhook_id)
    except WebhookNotFound as error:
        raise _not_found(error) from None
    await engine.webhook_keys.changed(webhook_id, created.position)
    return with_key_json(request, created)


def _expand_embedded_json(data: dict[str, Any]) -> dict[str, Any]:
    """Parse JSON posted inside a form field, under the same limits as a JSON body."""
    for key in EMBEDDED_JSON_FIELDS:
        value = data.get(key)
        if isinstance(value, str):
            data = {**data, key: parse_json_object(value.encode("utf-8"))}
    check_shape(data)
    return data


@router.post(
    "/webhooks/leads/{api_key}",
    status_code=201,
    tags=["ingest"],
    openapi_extra=documented_body(form=True),
)
async def receive_lead(api_key: str, request: Request) -> JsonResponse:
    """Post one lead as JSON or form fields; the format is recognised from the payload."""
    return await ingest(api_key, request)


async def ingest(api_key: str, request: Request) -> JsonResponse:
    """The work of `POST /webhooks/leads/{apiKey}`, for the route above and for the fast
    path (`gateways.http.fast_path`) that serves it without routing; errors are raised as
    the route raises them, for the app's handlers to answer."""
    engine = engine_of(request)
    intake = WebhookIntake(engine.store, engine.intake, engine.webhook_keys.resolve)
    try:
        webhook = await intake.authenticate(api_key)
    except UnknownWebhookKey:
        raise ApiError(401, "unauthorized", "the API key is not valid") from None
    content_type = request.headers.get("content-type")
    if is_json(content_type):
        data = parse_json_object(await request.body())
    elif is_form(content_type):
        data = parse_form(await request.body())
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the lead as application/json or application/x-www-form-urlencoded",
        )
    data = _expand_embedded_json(data)
    key = idempotency_key(request)
    try:
        ingested = await intake.receive(webhook, data, key)
    except UnusablePayload as error:
        status = 400 if error.code == "malformed_json" else 422
        raise ApiError(status, error.code, str(error)) from None
    except ValidationError as error:
        raise validation_error(error) from None
    except MissingName as error:
        raise ApiError(422, "name_required", str(error)) from None
    return JsonResponse(
        {**receipt_json(ingested.receipt), "format": ingested.format.value}, status_code=201
    )
