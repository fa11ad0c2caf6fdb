"""Routes for lead types (`/v1/lead-types`) and a lead's type (`PATCH /v1/leads/{id}/lead-type`).

A webhook action's signing secret is in the response of the command that issued it (the
create, the update that added the action, or a rotation) under `secrets`, and never again:
reads show only `hasSecret` and whether a previous secret is still inside its overlap.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from domain.lead_types import Action, InvalidLeadType, LeadType, Referral, Webhook
from domain.workspaces import InvalidName, Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.lead_commands import done_json, run
from gateways.http.payloads import validation_error
from gateways.http.query import StrictQuery
from handlers import lead_types as commands
from handlers.lead_types import LeadTypeNotFound, Saved
from handlers.workspaces import Principal

router = APIRouter(tags=["lead types"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

T = TypeVar("T")
_ACTIONS = TypeAdapter(list[Action])


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CreateLeadType(Body):
    name: str = Field(min_length=1, max_length=200)
    referral: Referral = Field(default_factory=Referral)
    actions: list[dict[str, Any]] = Field(default_factory=list, max_length=200)
    # The type new leads get; the workspace's first type becomes it unless this is false.
    default: bool | None = None


class UpdateLeadType(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    referral: Referral | None = None
    # The whole list, in order; actions keep their `id` (and a webhook its secret).
    actions: list[dict[str, Any]] | None = Field(default=None, max_length=200)


class RotateSecret(Body):
    # How long the secret being replaced keeps signing (default 24 h, at most 30 days).
    overlap_seconds: float = Field(default=86_400, ge=0, le=30 * 86_400)


class LeadTypeOfLead(Body):
    lead_type_id: UUID


def invalid(error: ValidationError, resource: str, prefix: str = "") -> ApiError:
    """The 422 for a pydantic error, its message naming the resource and the first field."""
    api = validation_error(error)
    problems = error.errors(include_url=False, include_input=False)
    if problems:
        where = ".".join([prefix] * bool(prefix) + [to_camel(str(p)) for p in problems[0]["loc"]])
        api.message = f"the {resource} is not valid: {where}: {problems[0]['msg']}"
    else:
        api.message = f"the {resource} is not valid"
    return api


def _actions(raw: list[dict[str, Any]]) -> list[Action]:
    try:
        return _ACTIONS.validate_python(raw)
    except ValidationError as error:
        raise invalid(error, "lead type", "actions") from None


def action_json(lead_type: LeadType, action: Action, now: datetime) -> dict[str, Any]:
    data = action.model_dump(mode="json", by_alias=True)
    if isinstance(action, Webhook):
        secrets = lead_type.secrets.get(action.id, [])
        data["hasSecret"] = bool(secrets)
        data["secretIssuedAt"] = secrets[0].issued_at.isoformat() if secrets else None
        data["previousSecretValidUntil"] = next(
            (
                s.valid_until.isoformat()
                for s in secrets[1:]
                if s.valid_until is not None and s.valid_until > now
            ),
            None,
        )
    return data


def lead_type_json(lead_type: LeadType, default_id: UUID | None = None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "id": str(lead_type.id),
        "name": lead_type.name,
        "referral": lead_type.referral.model_dump(mode="json", by_alias=True),
        "actions": [action_json(lead_type, a, now) for a in lead_type.actions],
        "default": default_id == lead_type.id if default_id is not None else None,
        "createdAt": lead_type.created_on.isoformat(),
        "updatedAt": lead_type.modified_on.isoformat(),
    }


def saved_json(saved: Saved) -> dict[str, Any]:
    body = {**lead_type_json(saved.lead_type), "position": saved.position}
    if saved.secrets:
        body["secrets"] = {str(k): v for k, v in saved.secrets.items()}
    return body


async def _run(command: Callable[[], Awaitable[T]]) -> T:
    try:
        return await command()
    except LeadTypeNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except (InvalidLeadType, InvalidName) as error:
        raise ApiError(422, "invalid_lead_type", str(error)) from None
    except ValidationError as error:
        raise invalid(error, "lead type") from None


def _allow_private(request: Request) -> bool:
    return bool(getattr(engine_of(request).settings, "allow_private_webhook_targets", False))


def _forget(request: Request, workspace_id: UUID) -> None:
    # New leads in this process get the new default type at once, not after the cache TTL.
    engine_of(request).intake.forget(workspace_id)


@router.post("/v1/lead-types", status_code=201)
async def create_lead_type(
    body: CreateLeadType, request: Request, caller: Manager
) -> dict[str, Any]:
    """A lead type with its actions. The response's `secrets` holds each webhook action's
    signing secret: shown this once."""
    ws = workspace_of(caller, request)
    actions = _actions(body.actions)
    saved = await _run(
        lambda: commands.create_lead_type(
            engine_of(request).store,
            ws,
            body.name,
            body.referral,
            actions,
            actor_of(caller),
            make_default=body.default,
            allow_private_targets=_allow_private(request),
        )
    )
    _forget(request, ws)
    return saved_json(saved)


@router.get("/v1/lead-types", dependencies=[StrictQuery])
async def list_lead_types(request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    found = await commands.list_lead_types(store, ws)
    default_id = await commands.default_of(store, ws)
    return {"items": [lead_type_json(t, default_id) for t in found], "total": len(found)}


@router.get("/v1/lead-types/{lead_type_id}", dependencies=[StrictQuery])
async def get_lead_type(lead_type_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    found = await _run(lambda: commands.get_lead_type(store, ws, lead_type_id))
    return lead_type_json(found, await commands.default_of(store, ws))


@router.patch("/v1/lead-types/{lead_type_id}")
async def update_lead_type(
    lead_type_id: UUID, body: UpdateLeadType, request: Request, caller: Manager
) -> dict[str, Any]:
    """Rename, change the referral method, or replace the action list (in order)."""
    ws = workspace_of(caller, request)
    actions = _actions(body.actions) if body.actions is not None else None
    saved = await _run(
        lambda: commands.update_lead_type(
            engine_of(request).store,
            ws,
            lead_type_id,
            actor_of(caller),
            name=body.name,
            referral=body.referral,
            actions=actions,
            allow_private_targets=_allow_private(request),
        )
    )
    return saved_json(saved)


@router.post("/v1/lead-types/{lead_type_id}/actions/{action_id}/rotate-secret")
async def rotate_secret(
    lead_type_id: UUID,
    action_id: UUID,
    request: Request,
    caller: Manager,
    body: RotateSecret | None = None,
) -> dict[str, Any]:
    """A new signing secret (shown this once); the old one keeps signing for the overlap,
    so deliveries carry both signatures until then."""
    ws = workspace_of(caller, request)
    overlap = timedelta(seconds=(body or RotateSecret()).overlap_seconds)
    saved = await _run(
        lambda: commands.rotate_secret(
            engine_of(request).store, ws, lead_type_id, action_id, actor_of(caller), overlap
        )
    )
    return saved_json(saved)


@router.post("/v1/lead-types/{lead_type_id}/default")
async def make_default(lead_type_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """New leads get this lead type."""
    ws = workspace_of(caller, request)
    position = await _run(lambda: commands.set_default(engine_of(request).store, ws, lead_type_id))
    _forget(request, ws)
    return {"id": str(lead_type_id), "default": True, "position": position}


@router.delete("/v1/lead-types/{lead_type_id}")
async def delete_lead_type(lead_type_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    position = await _run(
        lambda: commands.delete_lead_type(
            engine_of(request).store, ws, lead_type_id, actor_of(caller)
        )
    )
    _forget(request, ws)
    return {"id": str(lead_type_id), "deleted": True, "position": position}


@router.patch("/v1/leads/{lead_id}/lead-type")
async def change_lead_type(
    lead_id: UUID, body: LeadTypeOfLead, request: Request, caller: Manager
) -> dict[str, Any]:
    """Give the lead another lead type: its later triggers run that type's actions."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    await _run(lambda: commands.get_lead_type(store, ws, body.lead_type_id))
    done = await run(
        lambda: commands.change_lead_type_of(
            store, ws, lead_id, body.lead_type_id, actor_of(caller), by_user=True
        )
    )
    return done_json(done)
