"""Routes for leads entered by hand and read back, and the customers leads belong to."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.customers import Customer
from domain.leads import Lead, LeadDetails, MissingName, Source
from domain.workspaces import Permission
from gateways.consumers.read_models import LeadFilter
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.lead_json import lead_json, receipt_json
from gateways.http.payloads import idempotency_key, parse_json_object, validation_error
from gateways.http.timeline import lead_timeline
from gateways.http.views import await_position
from handlers import intake as commands
from handlers.intake import Intake, UnknownCustomer
from handlers.payloads import is_json
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["leads"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

SortBy = Literal["createdAt", "updatedAt", "name", "requestId", "status"]


def parse_details(data: dict[str, Any]) -> LeadDetails:
    try:
        return LeadDetails.model_validate(data)
    except ValidationError as error:
        raise validation_error(error) from None


async def receive(request: Request, intake: Intake) -> JsonResponse:
    """Hand a lead to the intake, mapping its refusals to 4xx."""
    try:
        receipt = await engine_of(request).intake.receive(intake)
    except MissingName as error:
        raise ApiError(422, "name_required", str(error)) from None
    except UnknownCustomer as error:
        raise ApiError(422, "unknown_customer", str(error)) from None
    return JsonResponse(receipt_json(receipt), status_code=201)


@router.post("/leads", status_code=201)
async def create_lead(request: Request, caller: Manager) -> JsonResponse:
    """Enter a lead by hand (`name` required); `Idempotency-Key` makes retries safe."""
    workspace_id = workspace_of(caller, request)
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the lead as application/json")
    data = parse_json_object(await request.body())
    details = parse_details(data)
    if not details.name:
        raise ApiError(422, "name_required", "a lead entered by hand needs a name")
    return await receive(
        request,
        Intake(
            workspace_id=workspace_id,
            details=details,
            source=Source.MANUAL,
            actor=actor_of(caller),
            by_user=True,
            idempotency_key=idempotency_key(request),
        ),
    )


@router.get("/leads")
async def list_leads(
    request: Request,
    caller: Viewer,
    search: Annotated[str | None, Query(max_length=200)] = None,
    stage_id: Annotated[UUID | None, Query(alias="stageId")] = None,
    pipeline_id: Annotated[UUID | None, Query(alias="pipelineId")] = None,
    source: str | None = None,
    assigned_to: Annotated[str | None, Query(alias="assignedTo")] = None,
    tag: str | None = None,
    status: str | None = None,
    is_duplicate: Annotated[bool | None, Query(alias="isDuplicate")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    sort_by: Annotated[SortBy, Query(alias="sortBy")] = "createdAt",
    sort_order: Annotated[Literal["asc", "desc"], Query(alias="sortOrder")] = "desc",
    after: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """The workspace's leads, filtered, sorted and paged (`after`: read your own writes)."""
    workspace_id = workspace_of(caller, request)
    await await_position(request, after)
    items, total = await engine_of(request).lead_views.page(
        workspace_id,
        LeadFilter(
            search=search,
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            source=source,
            assigned_to=assigned_to,
            tag=tag,
            status=status,
            is_duplicate=is_duplicate,
        ),
        page=page,
        limit=limit,
        sort_by=sort_by,
        descending=sort_order == "desc",
    )
    return {"items": items, "total": total, "page": page, "limit": limit}


@router.get("/leads/{lead_id}")
async def get_lead(lead_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    """One lead, current from its events: fields, custom fields with display names, tags,
    notes, milestones, and its ten most recent timeline entries."""

    workspace_id = workspace_of(caller, request)
    lead = await engine_of(request).store.load(Lead, lead_id)
    if lead is None or lead.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"lead {lead_id} does not exist")
    activity = await lead_timeline(lead_id, request, caller, page=1, limit=10)
    return {**lead_json(lead), "recentActivity": activity["items"]}


class RegisterCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=500)
    email: str | None = Field(default=None, max_length=500)
    active: bool = False


def customer_json(customer: Customer) -> dict[str, Any]:
    return {
        "id": str(customer.id),
        "name": customer.name,
        "email": customer.email,
        "active": customer.active,
    }


@router.post("/customers", status_code=201, tags=["customers"])
async def register_customer(
    body: RegisterCustomer, request: Request, caller: Manager
) -> dict[str, Any]:
    """Make a customer known; `active` when they already have an account."""
    workspace_id = workspace_of(caller, request)
    store = engine_of(request).store
    customer_id, position = await commands.register_customer(
        store, workspace_id, body.name.strip(), body.email, body.active
    )
    customer = await store.load(Customer, customer_id)
    assert customer is not None
    return {**customer_json(customer), "position": position}


@router.post("/customers/{customer_id}/activate", tags=["customers"])
async def activate_customer(customer_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """The customer registered an account: their pending leads move to backlog."""
    workspace_id = workspace_of(caller, request)
    try:
        position = await commands.activate_customer(
            engine_of(request).store, workspace_id, customer_id
        )
    except UnknownCustomer as error:
        raise ApiError(404, "not_found", str(error)) from None
    return {"id": str(customer_id), "active": True, "position": position}


@router.get("/customers/{customer_id}", tags=["customers"])
async def get_customer(customer_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    customer = await engine_of(request).store.load(Customer, customer_id)
    if customer is None or customer.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"customer {customer_id} does not exist")
    return customer_json(customer)
