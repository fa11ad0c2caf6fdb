"""Inbound webhook settings (`/settings/webhooks`): list with stats, create (the URL is
shown once), field mapping, regenerate the key, activate/deactivate, delete; through
`handlers.inbound_webhooks` and the `webhook_stats` read model."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from domain.mapping import InvalidFieldMapping
from domain.payload_fields import Target
from gateways.web.routes import csrf_guard
from gateways.web.session import SignedIn, require_user, web_of
from gateways.web.settings_common import (
    can_manage,
    confirm_page,
    form_lists,
    one,
    refused,
    settings_page,
)
from handlers import inbound_webhooks as commands
from handlers.inbound_webhooks import WebhookNotFound, WebhookView, WebhookWithKey

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
Signed = Annotated[SignedIn, Depends(require_user)]

TARGETS = [t.value for t in Target]
EMPTY_ROWS = 3


async def stats_of(request: Request, workspace_id: UUID) -> dict[UUID, dict[str, Any]]:
    """Per webhook of the workspace: leads received, duplicates, the last one's time (the
    read model `GET /v1/lead-webhooks/{id}/stats` reads)."""
    async with web_of(request).engine.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT webhook_id, total_received, duplicates, last_received_at "
            "FROM webhook_stats WHERE workspace_id = $1",
            workspace_id,
        )
    return {row["webhook_id"]: dict(row) for row in rows}


def url_of(request: Request, created: WebhookWithKey) -> str:
    return str(request.base_url).rstrip("/") + created.path


def _sorted(views: list[WebhookView]) -> list[WebhookView]:
    return sorted(views, key=lambda v: v.created_at)


async def render_list(
    request: Request,
    signed: SignedIn,
    *,
    created: WebhookWithKey | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    engine = web_of(request).engine
    views = await commands.list_webhooks_from_log(engine.store, signed.workspace_id)
    return settings_page(
        request,
        signed,
        "settings_webhooks.html",
        {
            "webhooks": _sorted(views),
            "stats": await stats_of(request, signed.workspace_id),
            "created": created,
            "created_url": url_of(request, created) if created else None,
            "errors": errors or {},
        },
        status_code=status,
    )


async def render_one(
    request: Request,
    signed: SignedIn,
    webhook_id: UUID,
    *,
    errors: dict[str, str] | None = None,
    rows: list[tuple[str, str]] | None = None,
    new_key: WebhookWithKey | None = None,
    status: int = 200,
) -> Response:
    engine = web_of(request).engine
    try:
        view = await commands.get_webhook(engine.store, signed.workspace_id, webhook_id)
    except WebhookNotFound:
        return settings_page(
            request, signed, "settings_webhooks.html", {"missing": True}, status_code=404
        )
    shown = (
        rows if rows is not None else [(k, _target_text(v)) for k, v in view.field_mapping.items()]
    )
    return settings_page(
        request,
        signed,
        "settings_webhook.html",
        {
            "webhook": view,
            "stats": (await stats_of(request, signed.workspace_id)).get(view.id),
            "rows": shown + [("", "")] * EMPTY_ROWS,
            "targets": TARGETS,
            "new_key": new_key,
            "new_url": url_of(request, new_key) if new_key else None,
            "errors": errors or {},
        },
        status_code=status,
    )


def _target_text(stored: str) -> str:
    """A stored target as the form shows it (`customFields.x` → `custom:x`)."""
    return (
        "custom:" + stored.removeprefix("customFields.")
        if stored.startswith("customFields.")
        else stored
    )


@router.get("/settings/webhooks")
async def webhooks_page(request: Request, signed: Signed) -> Response:
    return await render_list(request, signed)


@router.post("/settings/webhooks")
async def create(request: Request, signed: Signed) -> Response:
    """A new webhook: its URL (with the key) is on the answer page, and never again."""
    if not can_manage(signed):
        return refused(request, signed)
    name = one(await form_lists(request), "name", 500)
    if not name or len(name) > 200:
        return await render_list(
            request, signed, errors={"name": "The name must be 1 to 200 characters."}, status=422
        )
    created = await commands.create_webhook(web_of(request).engine.store, signed.workspace_id, name)
    return await render_list(request, signed, created=created)


@router.get("/settings/webhooks/{webhook_id}")
async def webhook_page(webhook_id: UUID, request: Request, signed: Signed) -> Response:
    return await render_one(request, signed, webhook_id)


@router.post("/settings/webhooks/{webhook_id}")
async def save(webhook_id: UUID, request: Request, signed: Signed) -> Response:
    """Name, active, and the field mapping (source key → lead field or `custom:<key>`)."""
    if not can_manage(signed):
        return refused(request, signed)
    fields = await form_lists(request)
    name = one(fields, "name", 500)
    sources = fields.get("source", [])
    targets = fields.get("target", [])
    rows = [(s.strip(), t.strip()) for s, t in zip(sources, targets, strict=False)]
    rows = [(s, t) for s, t in rows if s or t]
    errors: dict[str, str] = {}
    if not name or len(name) > 200:
        errors["name"] = "The name must be 1 to 200 characters."
    for i, (source, target) in enumerate(rows):
        if not source or not target:
            errors[f"row{i}"] = "Give both the incoming key and the lead field."
    mapping = dict(rows)
    if len(mapping) != len(rows):
        errors["mapping"] = "Each incoming key may be mapped once."
    if not errors:
        try:
            _, position = await commands.update_webhook(
                web_of(request).engine.store,
                signed.workspace_id,
                webhook_id,
                name=name,
                field_mapping=mapping,
                active=one(fields, "active") == "on",
            )
        except WebhookNotFound as error:
            errors["page"] = str(error)
        except InvalidFieldMapping as error:
            errors["mapping"] = str(error)
        else:
            await web_of(request).engine.webhook_keys.changed(webhook_id, position)
    if errors:
        return await render_one(request, signed, webhook_id, errors=errors, rows=rows, status=422)
    return RedirectResponse(f"/settings/webhooks/{webhook_id}?saved=1", status_code=303)


@router.get("/settings/webhooks/{webhook_id}/{step}")
async def confirm(webhook_id: UUID, step: str, request: Request, signed: Signed) -> Response:
    """The confirm step of regenerating the key or deleting the webhook."""
    engine = web_of(request).engine
    try:
        view = await commands.get_webhook(engine.store, signed.workspace_id, webhook_id)
    except WebhookNotFound:
        return RedirectResponse("/settings/webhooks", status_code=303)
    if step == "regenerate":
        question = (
            f"Regenerate the key of “{view.name}”? The current URL stops working at once; "
            "whatever posts to it must be given the new one."
        )
        button = "Regenerate the key"
    elif step == "delete":
        question = (
            f"Delete “{view.name}”? Its URL stops working at once; the leads it brought in stay."
        )
        button = "Delete the webhook"
    else:
        return RedirectResponse(f"/settings/webhooks/{webhook_id}", status_code=303)
    return confirm_page(
        request,
        signed,
        heading="Inbound webhooks",
        question=question,
        action=f"/settings/webhooks/{webhook_id}/{step}",
        button=button,
        cancel=f"/settings/webhooks/{webhook_id}",
    )


@router.post("/settings/webhooks/{webhook_id}/regenerate")
async def regenerate(webhook_id: UUID, request: Request, signed: Signed) -> Response:
    if not can_manage(signed):
        return refused(request, signed)
    try:
        created = await commands.regenerate_key(
            web_of(request).engine.store, signed.workspace_id, webhook_id
        )
    except WebhookNotFound:
        return RedirectResponse("/settings/webhooks", status_code=303)
    await web_of(request).engine.webhook_keys.changed(webhook_id, created.position)
    return await render_one(request, signed, webhook_id, new_key=created)


@router.post("/settings/webhooks/{webhook_id}/delete")
async def delete(webhook_id: UUID, request: Request, signed: Signed) -> Response:
    if not can_manage(signed):
        return refused(request, signed)
    with contextlib.suppress(WebhookNotFound):
        engine = web_of(request).engine
        position = await commands.delete_webhook(engine.store, signed.workspace_id, webhook_id)
        await engine.webhook_keys.changed(webhook_id, position)
    return RedirectResponse("/settings/webhooks", status_code=303)
