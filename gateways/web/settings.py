"""The settings pages: Add Lead (`/leads/new`) here, and the routers of the pipeline,
inbound webhook and lead type pages gathered into one `router`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from domain.leads import LeadDetails, MissingName, Source
from gateways.web import settings_lead_types, settings_pipelines, settings_webhooks
from gateways.web.routes import csrf_guard
from gateways.web.session import SignedIn, require_user, web_of
from gateways.web.settings_common import can_manage, form_lists, one, refused, settings_page
from handlers.intake import Intake, UnknownCampaign, UnknownCustomer

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
router.include_router(settings_pipelines.router)
router.include_router(settings_webhooks.router)
router.include_router(settings_lead_types.router)
Signed = Annotated[SignedIn, Depends(require_user)]

FIELDS = ("name", "email", "phone", "company", "title", "tags")
EMPTY_ROWS = 3


def lead_form(
    request: Request,
    signed: SignedIn,
    values: dict[str, str] | None = None,
    rows: list[tuple[str, str]] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    return settings_page(
        request,
        signed,
        "settings_lead.html",
        {
            "values": values or {},
            "rows": (rows or []) + [("", "")] * EMPTY_ROWS,
            "errors": errors or {},
        },
        status_code=status,
    )


@router.get("/settings")
async def settings_home() -> Response:
    return RedirectResponse("/settings/pipelines", status_code=303)


@router.get("/leads/new")
async def new_lead(request: Request, signed: Signed) -> Response:
    return lead_form(request, signed)


@router.post("/leads/new")
async def add_lead(request: Request, signed: Signed) -> Response:
    """A lead entered by hand: the same intake as `POST /v1/leads` (source `manual`)."""
    if not can_manage(signed):
        return refused(request, signed)
    fields = await form_lists(request)
    values = {name: one(fields, name, 2000) for name in FIELDS}
    keys = fields.get("custom_key", [])
    texts = fields.get("custom_value", [])
    rows = [
        (k.strip(), v.strip()) for k, v in zip(keys, texts, strict=False) if k.strip() or v.strip()
    ]
    errors: dict[str, str] = {}
    if not values["name"]:
        errors["name"] = "A lead entered by hand needs a name."
    for i, (key, _) in enumerate(rows):
        if not key:
            errors[f"row{i}"] = "Give the custom field a key."
    if errors:
        return lead_form(request, signed, values, rows, errors, 422)
    data: dict[str, object] = {k: v for k, v in values.items() if v}
    if rows:
        data["customFields"] = dict(rows)
    try:
        details = LeadDetails.model_validate(data)
        receipt = await web_of(request).engine.intake.receive(
            Intake(
                workspace_id=signed.workspace_id,
                details=details,
                source=Source.MANUAL,
                actor=signed.actor,
                by_user=True,
            )
        )
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = str(first["loc"][0]) if first["loc"] else "page"
        key = where if where in FIELDS else "custom" if where == "customFields" else "page"
        return lead_form(request, signed, values, rows, {key: str(first["msg"])}, 422)
    except (MissingName, UnknownCustomer, UnknownCampaign) as error:
        return lead_form(request, signed, values, rows, {"name": str(error)}, 422)
    # The board reads a view: wait (briefly) for it to have the lead, so it is there.
    await web_of(request).engine.lead_views.wait_for(receipt.position, 5.0)
    return RedirectResponse(f"/?lead={receipt.lead_id}", status_code=303)
