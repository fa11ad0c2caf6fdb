"""Routes for partners (`/v1/partners`): who leads are referred to."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from domain.partners import Partner, PartnerDetails
from domain.workspaces import Permission, Role
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.lead_types import invalid
from handlers import partners as commands
from handlers.partners import PartnerNotFound
from handlers.workspaces import Principal, issue_token

router = APIRouter(prefix="/v1/partners", tags=["partners"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CreatePartner(Body):
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=500)
    phone: str | None = Field(default=None, max_length=100)
    webhook_url: str | None = Field(default=None, max_length=2048)
    active: bool = True


class UpdatePartner(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=500)
    phone: str | None = Field(default=None, max_length=100)
    webhook_url: str | None = Field(default=None, max_length=2048)
    active: bool | None = None


def partner_json(partner: Partner) -> dict[str, Any]:
    d = partner.details
    return {
        "id": str(partner.id),
        "name": d.name,
        "email": d.email,
        "phone": d.phone,
        "webhookUrl": d.webhook_url,
        "active": d.active,
        "createdAt": partner.created_on.isoformat(),
        "updatedAt": partner.modified_on.isoformat(),
    }


def _details(fields: dict[str, Any]) -> PartnerDetails:
    try:
        return PartnerDetails.model_validate(fields)
    except ValidationError as error:
        raise invalid(error, "partner") from None


@router.post("", status_code=201)
async def create_partner(body: CreatePartner, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    partner, position = await commands.create_partner(
        engine_of(request).store, ws, _details(body.model_dump()), actor_of(caller)
    )
    return {**partner_json(partner), "position": position}


@router.get("")
async def list_partners(request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    partners = await commands.list_partners(engine_of(request).store, ws)
    return {"items": [partner_json(p) for p in partners], "total": len(partners)}


@router.get("/{partner_id}")
async def get_partner(partner_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    try:
        partner = await commands.get_partner(engine_of(request).store, ws, partner_id)
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    return partner_json(partner)


@router.patch("/{partner_id}")
async def update_partner(
    partner_id: UUID, body: UpdatePartner, request: Request, caller: Manager
) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    fields = body.model_dump(exclude_unset=True)
    if fields.get("name", "") is None or fields.get("active", False) is None:
        raise ApiError(422, "validation_failed", "name and active cannot be null")
    try:
        partner, position = await commands.update_partner(
            engine_of(request).store, ws, partner_id, fields, actor_of(caller)
        )
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except ValidationError as error:
        raise invalid(error, "partner") from None
    return {**partner_json(partner), "position": position}


class CreatePartnerToken(Body):
    name: str = Field(default="partner", min_length=1, max_length=200)


@router.post("/{partner_id}/tokens", status_code=201)
async def create_partner_token(
    partner_id: UUID, request: Request, caller: Manager, body: CreatePartnerToken | None = None
) -> dict[str, Any]:
    """The partner's own credential (shown once): with it the partner starts returns of the
    leads referred to it, and nothing else."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    try:
        await commands.get_partner(store, ws, partner_id)
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    issued = await issue_token(
        store, ws, Role.PARTNER, (body or CreatePartnerToken()).name, partner_id=partner_id
    )
    return {
        "id": str(issued.id),
        "token": issued.token,
        "partnerId": str(partner_id),
        "role": issued.role,
        "position": issued.position,
    }


@router.delete("/{partner_id}")
async def delete_partner(partner_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    try:
        position = await commands.delete_partner(
            engine_of(request).store, ws, partner_id, actor_of(caller)
        )
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    return {"id": str(partner_id), "deleted": True, "position": position}
