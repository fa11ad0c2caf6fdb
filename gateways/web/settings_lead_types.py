"""Lead type settings (`/settings/lead-types`): a lead type's referral method and its
ordered actions, make default, delete; through `handlers.lead_types`. A webhook action's
signing secret is shown on the page that answers the save that issued it, and never again."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import TypeAdapter, ValidationError

from domain.lead_types import (
    CONDITION_FIELDS,
    Action,
    AssignMode,
    InvalidLeadType,
    LeadType,
    Op,
    PayloadFormat,
    Referral,
    ReferralMethod,
    Webhook,
)
from domain.triggers import Trigger
from domain.workspaces import InvalidName
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
from handlers import lead_types as commands
from handlers import partners as partner_commands
from handlers import users as user_commands
from handlers.lead_types import LeadTypeNotFound, Saved
from handlers.ports import ReservationTaken

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
Signed = Annotated[SignedIn, Depends(require_user)]

ACTION = TypeAdapter(Action)
# The keys each action type takes from the form, besides type, trigger, name, enabled.
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "assign_user": ("mode", "userId", "groupId"),
    "change_status": ("status",),
    "change_lead_type": ("leadTypeId",),
    "refer": ("partnerId",),
    "webhook": ("url", "format", "timeoutSeconds", "maxRetries"),
    "contact_customer": ("subject", "body"),
    "contact_user": ("subject", "body"),
    "notify_user": ("userId", "subject", "body"),
}
ACTION_LABELS = {
    "assign_user": "Assign to user",
    "change_status": "Change status",
    "change_lead_type": "Change lead type",
    "refer": "Refer to partner",
    "webhook": "Webhook",
    "contact_customer": "Email the lead",
    "contact_user": "Email the assignee",
    "notify_user": "Notify a user",
}
BLANK: dict[str, Any] = {"type": "", "trigger": "received", "enabled": True, "conditions": []}


def _message(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).isdigit())
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    if isinstance(error, ReservationTaken):
        return "A lead type with this name already exists."
    return str(error)


async def _choices(request: Request, signed: SignedIn) -> dict[str, Any]:
    store = web_of(request).engine.store
    ws = signed.workspace_id
    partners = [p for p in await partner_commands.list_partners(store, ws) if p.details.active]
    return {
        "users": await user_commands.list_users(store, ws, active=True),
        "groups": await user_commands.list_groups(store, ws),
        "partners": partners,
        "lead_types": [t for t in await commands.list_lead_types(store, ws) if not t.deleted],
        "triggers": [t.value for t in Trigger],
        "action_types": ACTION_LABELS,
        "type_keys": TYPE_KEYS,
        "modes": [m.value for m in AssignMode],
        "formats": [f.value for f in PayloadFormat],
        "methods": [m.value for m in ReferralMethod],
        "condition_fields": sorted(CONDITION_FIELDS),
        "ops": [o.value for o in Op],
    }


def _shown(action: dict[str, Any]) -> dict[str, Any]:
    """An action as the form shows it: condition values as text, one empty row more."""
    conditions = []
    for c in action.get("conditions") or []:
        value = c.get("value")
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        conditions.append(
            {
                **c,
                "value": ""
                if value is None
                else str(value).lower()
                if isinstance(value, bool)
                else value,
            }
        )
    return {**action, "conditions": [*conditions, {"field": "", "op": "eq", "value": ""}]}


async def render_editor(
    request: Request,
    signed: SignedIn,
    lead_type: LeadType | None,
    *,
    name: str | None = None,
    referral: dict[str, Any] | None = None,
    actions: list[dict[str, Any]] | None = None,
    errors: dict[str, str] | None = None,
    saved: Saved | None = None,
    status: int = 200,
) -> Response:
    if actions is None:
        actions = [
            a.model_dump(mode="json", by_alias=True)
            for a in (lead_type.actions if lead_type else [])
        ]
    if referral is None:
        referral = (lead_type.referral if lead_type else Referral()).model_dump(
            mode="json", by_alias=True
        )
    secrets = []
    if saved is not None:
        for action_id, secret in saved.secrets.items():
            found = saved.lead_type.action(action_id)
            label = (found.name or getattr(found, "url", "")) if found else str(action_id)
            secrets.append((str(action_id), label, secret))
    default_id = await commands.default_of(web_of(request).engine.store, signed.workspace_id)
    return settings_page(
        request,
        signed,
        "settings_lead_type.html",
        {
            "lead_type": lead_type,
            "is_default": lead_type is not None and lead_type.id == default_id,
            "name": name if name is not None else (lead_type.name if lead_type else ""),
            "referral": referral,
            "actions": [_shown(a) for a in [*actions, BLANK]],
            "errors": errors or {},
            "secrets": secrets,
            **await _choices(request, signed),
        },
        status_code=status,
    )


def _condition_value(field: str, op: str, text: str) -> Any:
    if op in ("exists", "not_exists"):
        return None
    if op in ("in", "not_in"):
        return [v.strip() for v in text.split(",") if v.strip()]
    if field == "isDuplicate" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_actions(
    fields: dict[str, list[str]], current: LeadType | None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The action rows of the form, in their given order, and a problem per row."""
    try:
        count = min(int(one(fields, "count") or 0), 200)
    except ValueError:
        count = 0
    rows: list[tuple[float, int, dict[str, Any]]] = []
    errors: dict[str, str] = {}
    for i in range(count):
        p = f"a{i}-"
        kind = one(fields, p + "type", 40)
        if not kind or one(fields, p + "remove") == "on":
            continue
        action: dict[str, Any] = {
            "type": kind,
            "trigger": one(fields, p + "trigger", 40),
            "enabled": one(fields, p + "enabled") == "on",
        }
        if one(fields, p + "id", 40):
            action["id"] = one(fields, p + "id", 40)
        if one(fields, p + "name", 200):
            action["name"] = one(fields, p + "name", 200)
        for key in TYPE_KEYS.get(kind, ()):
            if value := one(fields, p + key):
                action[key] = value
        conditions = []
        for j in range(
            min(int(one(fields, p + "ccount") or 0), 20)
            if one(fields, p + "ccount").isdigit()
            else 0
        ):
            q = f"{p}c{j}-"
            field, op = one(fields, q + "field", 200), one(fields, q + "op", 20) or "eq"
            if not field:
                continue
            condition: dict[str, Any] = {"field": field, "op": op}
            value = _condition_value(field, op, one(fields, q + "value", 2000))
            if value is not None:
                condition["value"] = value
            conditions.append(condition)
        action["conditions"] = conditions
        # Keys this form does not edit (a webhook's headers) stay as they were.
        old = (
            current.action(UUID(action["id"]))
            if current and "id" in action and _uuid(action["id"])
            else None
        )
        if isinstance(old, Webhook) and kind == "webhook" and old.headers:
            action["headers"] = dict(old.headers)
        try:
            ACTION.validate_python(action)
        except ValidationError as error:
            errors[f"a{i}"] = _message(error)
        try:
            order = float(one(fields, p + "order", 20) or i + 1)
        except ValueError:
            order = float(i + 1)
        action["_row"] = i
        rows.append((order, i, action))
    return [a for _, _, a in sorted(rows, key=lambda r: (r[0], r[1]))], errors


def _uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def _referral(fields: dict[str, list[str]]) -> dict[str, Any]:
    referral: dict[str, Any] = {"method": one(fields, "referral_method", 20) or "manually"}
    if one(fields, "referral_partner", 40):
        referral["partnerId"] = one(fields, "referral_partner", 40)
    return referral


def _slot_error(message: str, actions: list[dict[str, Any]]) -> str:
    """Where a handler's refusal of one action belongs: its row's key."""
    for action in actions:
        if "id" in action and str(action["id"]) in message:
            return f"a{action['_row']}"
    return "actions"


async def save(request: Request, signed: SignedIn, lead_type_id: UUID | None) -> Response:
    if not can_manage(signed):
        return refused(request, signed)
    engine = web_of(request).engine
    store, ws = engine.store, signed.workspace_id
    current = None
    if lead_type_id is not None:
        try:
            current = await commands.get_lead_type(store, ws, lead_type_id)
        except LeadTypeNotFound:
            return RedirectResponse("/settings/lead-types", status_code=303)
    fields = await form_lists(request)
    name = one(fields, "name", 500)
    referral_raw = _referral(fields)
    rows, errors = parse_actions(fields, current)
    if not name or len(name) > 200:
        errors["name"] = "The name must be 1 to 200 characters."
    referral: Referral | None = None
    try:
        referral = Referral.model_validate(referral_raw)
    except ValidationError as error:
        errors["referral"] = _message(error)
    if not errors and referral is not None:
        actions = [
            ACTION.validate_python({k: v for k, v in a.items() if k != "_row"}) for a in rows
        ]
        allow = bool(getattr(engine.settings, "allow_private_webhook_targets", False))
        try:
            if current is None:
                saved = await commands.create_lead_type(
                    store, ws, name, referral, actions, signed.actor, allow_private_targets=allow
                )
            else:
                saved = await commands.update_lead_type(
                    store,
                    ws,
                    current.id,
                    signed.actor,
                    name=name,
                    referral=referral,
                    actions=actions,
                    allow_private_targets=allow,
                )
        except ReservationTaken as error:
            errors["name"] = _message(error)
        except InvalidName as error:
            errors["name"] = _message(error)
        except (InvalidLeadType, ValidationError) as error:
            message = _message(error)
            key = "referral" if message.startswith("referral") else _slot_error(message, rows)
            errors[key] = message
        else:
            engine.intake.forget(ws)
            return await render_editor(request, signed, saved.lead_type, saved=saved)
    return await render_editor(
        request,
        signed,
        current,
        name=name,
        referral=referral_raw,
        actions=rows,
        errors=errors,
        status=422,
    )


@router.get("/settings/lead-types")
async def lead_types_page(request: Request, signed: Signed) -> Response:
    store = web_of(request).engine.store
    found = [t for t in await commands.list_lead_types(store, signed.workspace_id) if not t.deleted]
    return settings_page(
        request,
        signed,
        "settings_lead_types.html",
        {
            "lead_types": found,
            "default_id": await commands.default_of(store, signed.workspace_id),
            "labels": ACTION_LABELS,
        },
    )


@router.get("/settings/lead-types/new")
async def new_lead_type(request: Request, signed: Signed) -> Response:
    return await render_editor(request, signed, None)


@router.post("/settings/lead-types")
async def create(request: Request, signed: Signed) -> Response:
    return await save(request, signed, None)


@router.get("/settings/lead-types/{lead_type_id}")
async def edit(lead_type_id: UUID, request: Request, signed: Signed) -> Response:
    try:
        found = await commands.get_lead_type(
            web_of(request).engine.store, signed.workspace_id, lead_type_id
        )
    except LeadTypeNotFound:
        return RedirectResponse("/settings/lead-types", status_code=303)
    return await render_editor(request, signed, found)


@router.post("/settings/lead-types/{lead_type_id}")
async def update(lead_type_id: UUID, request: Request, signed: Signed) -> Response:
    return await save(request, signed, lead_type_id)


@router.post("/settings/lead-types/{lead_type_id}/default")
async def make_default(lead_type_id: UUID, request: Request, signed: Signed) -> Response:
    if not can_manage(signed):
        return refused(request, signed)
    engine = web_of(request).engine
    with contextlib.suppress(LeadTypeNotFound):
        await commands.set_default(engine.store, signed.workspace_id, lead_type_id)
    engine.intake.forget(signed.workspace_id)
    return RedirectResponse("/settings/lead-types", status_code=303)


@router.get("/settings/lead-types/{lead_type_id}/delete")
async def confirm_delete(lead_type_id: UUID, request: Request, signed: Signed) -> Response:
    try:
        found = await commands.get_lead_type(
            web_of(request).engine.store, signed.workspace_id, lead_type_id
        )
    except LeadTypeNotFound:
        return RedirectResponse("/settings/lead-types", status_code=303)
    return confirm_page(
        request,
        signed,
        heading="Lead types",
        question=f"Delete the lead type “{found.name}”? Its leads keep it but run no "
        "more of its actions; if it is the default, new leads get no lead type.",
        action=f"/settings/lead-types/{lead_type_id}/delete",
        button="Delete the lead type",
        cancel=f"/settings/lead-types/{lead_type_id}",
    )


@router.post("/settings/lead-types/{lead_type_id}/delete")
async def delete(lead_type_id: UUID, request: Request, signed: Signed) -> Response:
    if not can_manage(signed):
        return refused(request, signed)
    engine = web_of(request).engine
    with contextlib.suppress(LeadTypeNotFound):
        await commands.delete_lead_type(
            engine.store, signed.workspace_id, lead_type_id, signed.actor
        )
    engine.intake.forget(signed.workspace_id)
    return RedirectResponse("/settings/lead-types", status_code=303)
