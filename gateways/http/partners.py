"""Routes for partners (`/v1/partners`): who leads are referred to.

A partner's signing secret (for its referral webhook) is in the response of the command
that issued it (the create or update that gave it its first `webhookUrl`, or a rotation)
under `webhookSecret`, and never again: reads show only `hasWebhookSecret`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from domain.lead_types import check_webhook_url, private_target
from domain.partners import Partner, PartnerDetails
from domain.workspaces import Permission, Role
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.lead_types import invalid
from gateways.http.query import StrictQuery
from handlers import partners as commands
from handlers.partners import InvalidOverlap, PartnerNotFound, SavedPartner
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


class RotateSecret(Body):
    # How long the secret being replaced keeps signing (default 24 h, at most 30 days).
    overlap_seconds: float = Field(default=86_400, ge=0, le=30 * 86_400)


def partner_json(partner: Partner) -> dict[str, Any]:
    d = partner.details
    now = datetime.now(UTC)
    return {
        "id": str(partner.id),
        "name": d.name,
        "email": d.email,
        "phone": d.phone,
        "webhookUrl": d.webhook_url,
        "active": d.active,
        "hasWebhookSecret": bool(partner.secrets),
        "webhookSecretIssuedAt": (
            partner.secrets[0].issued_at.isoformat() if partner.secrets else None
        ),
        "previousWebhookSecretValidUntil": next(
            (
                s.valid_until.isoformat()
                for s in partner.secrets[1:]
                if s.valid_until is not None and s.valid_until > now
            ),
            None,
        ),
        "webhookDisabled": partner.webhook_disabled,
        "createdAt": partner.created_on.isoformat(),
        "updatedAt": partner.modified_on.isoformat(),
    }


def saved_json(saved: SavedPartner) -> dict[str, Any]:
    body = {**partner_json(saved.partner), "position": saved.position}
    if saved.secret is not None:
        body["webhookSecret"] = saved.secret
    return body


def _details(fields: dict[str, Any]) -> PartnerDetails:
    try:
        return PartnerDetails.model_validate(fields)
    except ValidationError as error:
        raise invalid(error, "partner") from None


def _check_target(request: Request, url: str | None) -> None:
    """A literal internal address is refused as for a lead type's webhook: referrals are
    sent there."""
    allowed = getattr(engine_of(request).settings, "allow_private_webhook_targets", False)
    if url is None or allowed:
        return
    try:
        url = check_webhook_url(url, "webhookUrl")
    except ValueError:
        return  # the partner's own validation names what is wrong with it
    if private_target(url):
        raise ApiError(
            422,
            "validation_failed",
            f"the partner is not valid: webhookUrl: {url} is a loopback or private"
            " address; deliveries there are off unless LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS=1",
            [{"location": ["body", "webhookUrl"], "message": "private address", "type": "value"}],
        )


@router.post("", status_code=201)
async def create_partner(body: CreatePartner, request: Request, caller: Manager) -> dict[str, Any]:
    """A partner; one with a `webhookUrl` gets its signing secret (`webhookSecret`, shown
    this once)."""
    ws = workspace_of(caller, request)
    _check_target(request, body.webhook_url)
    saved = await commands.create_partner(
        engine_of(request).store, ws, _details(body.model_dump()), actor_of(caller)
    )
    return saved_json(saved)


@router.get("", dependencies=[StrictQuery])
async def list_partners(request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    partners = await commands.list_partners(engine_of(request).store, ws)
    return {"items": [partner_json(p) for p in partners], "total": len(partners)}


@router.get("/{partner_id}", dependencies=[StrictQuery])
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
    """Change the given fields. The first `webhookUrl` brings the signing secret
    (`webhookSecret`, shown this once); setting `webhookUrl` again after its URL answered
    410 Gone switches the referral webhook back on."""
    ws = workspace_of(caller, request)
    fields = body.model_dump(exclude_unset=True)
    if fields.get("name", "") is None or fields.get("active", False) is None:
        raise ApiError(422, "validation_failed", "name and active cannot be null")
    _check_target(request, fields.get("webhook_url"))
    try:
        saved = await commands.update_partner(
            engine_of(request).store, ws, partner_id, fields, actor_of(caller)
        )
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except ValidationError as error:
        raise invalid(error, "partner") from None
    return saved_json(saved)


@router.post("/{partner_id}/rotate-secret")
async def rotate_secret(
    partner_id: UUID, request: Request, caller: Manager, body: RotateSecret | None = None
) -> dict[str, Any]:
    """A new signing secret for the referral webhook (`webhookSecret`, shown this once);
    the old one keeps signing for `overlapSeconds`, so deliveries carry both signatures
    until then."""
    ws = workspace_of(caller, request)
    overlap = timedelta(seconds=(body or RotateSecret()).overlap_seconds)
    try:
        saved = await commands.rotate_secret(
            engine_of(request).store, ws, partner_id, actor_of(caller), overlap
        )
    except PartnerNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except InvalidOverlap as error:
        raise ApiError(422, "validation_failed", str(error)) from None
    return saved_json(saved)


class CreatePartnerToken(Body):
    name: str = Field(default="partner", min_length=1, max_length=200)


@router.post("/{partner_id}/tokens", status_code=201)
async def create_partner_token(
    partner_id: UUID, request: Request, caller: Manager, body: CreatePartnerToken | None = None
) -> dict[str, Any]:
    """The partner's own credential (shown once): with it the partner reads the leads
    referred to it (`GET /v1/leads`, `GET /v1/leads/{id}`, only what a referral shares) and
    starts their returns, and nothing else."""
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
