"""Routes for leads entered by hand and read back, and the customers leads belong to.

A partner token reads too: the leads referred to its partner now (live, not handed back by
an accepted return, not referred elsewhere since), each as `PartnerLeadView` shows it; any
other lead is a 404 to it, exactly like a missing one.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from domain.customers import Customer
from domain.leads import Lead, LeadDetails, MissingName, ReturnStatus, Source
from domain.normalize import PhoneSearch, phone_search
from domain.partners import referred_to
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.consumers.read_models import Cursor, LeadFilter
from gateways.http.auth import actor_of, engine_of, lead_reader, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.lead_json import lead_json, partner_lead_json, receipt_json
from gateways.http.payloads import idempotency_key, parse_json_object, validation_error
from gateways.http.query import StrictQuery, utc
from gateways.http.timeline import lead_timeline
from gateways.http.views import After, await_position, read_view
from handlers import intake as commands
from handlers.intake import Intake, UnknownCustomer
from handlers.payloads import is_json
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["leads"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
# A viewer, or a partner token (which sees only the leads referred to its partner).
Reader = Annotated[Principal, Depends(lead_reader)]

SortBy = Literal["createdAt", "updatedAt", "name", "requestId", "status", "deletedAt"]

PARTNER_PARAMETERS = frozenset(
    {
        "search",
        "createdAfter",
        "createdBefore",
        "returnStatus",
        "page",
        "limit",
        "sortBy",
        "sortOrder",
        "cursor",
        "after",
    }
)
"""The list's query parameters a partner token may use: the rest filter on what a referral
does not share."""
PARTNER_SORTS = frozenset({"createdAt", "name", "requestId"})
# Submissions that send a lead on after its first campaign (by hand, or a fallback).
REPOST_ORIGINS = frozenset({"repost", "fallback"})


def parse_details(data: dict[str, Any]) -> LeadDetails:
    try:
        return LeadDetails.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, "lead") from None


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


Strings = list[str] | None
Ids = list[UUID] | None


def _texts(values: list[str] | None, max_length: int = 200) -> tuple[str, ...]:
    """A repeated filter's values, trimmed and lower-cased (statuses, sources and tags
    compare case-insensitively); each at most `max_length` characters."""
    out: dict[str, None] = {}
    for value in values or ():
        text = value.strip()
        if len(text) > max_length:
            raise ApiError(422, "validation_failed", f"a filter value is over {max_length} chars")
        if text:
            out.setdefault(text.casefold(), None)
    return tuple(out)


def _partner_query(request: Request, sort_by: str | None) -> None:
    """400 for a filter a partner token may not use (as for an unknown one), 422 for a
    sort on what it cannot see."""
    refused = list(dict.fromkeys(k for k in request.query_params if k not in PARTNER_PARAMETERS))
    if refused:
        raise ApiError(
            400,
            "unknown_parameter",
            f"query parameter{'s' * (len(refused) > 1)} not available to a partner token: "
            + ", ".join(refused),
            {"unknown": refused, "allowed": sorted(PARTNER_PARAMETERS)},
        )
    if sort_by is not None and sort_by not in PARTNER_SORTS:
        raise ApiError(
            422,
            "validation_failed",
            f"a partner token sorts by {', '.join(sorted(PARTNER_SORTS))}",
            [{"location": ["query", "sortBy"], "message": "not available", "type": "enum"}],
        )


async def _partner_leads(
    request: Request, partner_id: UUID, ids: list[str]
) -> list[dict[str, Any]]:
    """The page's leads as the partner sees them, read from their events (the view gives
    the page; a lead referred elsewhere since the view was written is left out)."""
    store = engine_of(request).store
    leads = await asyncio.gather(*(store.load(Lead, UUID(i)) for i in ids))
    return [
        partner_lead_json(lead)
        for lead in leads
        if lead is not None and referred_to(lead, partner_id)
    ]


@router.get("/leads", dependencies=[StrictQuery])
async def list_leads(
    request: Request,
    caller: Reader,
    search: Annotated[str | None, Query(max_length=200)] = None,
    stage_id: Annotated[Ids, Query(alias="stageId")] = None,
    pipeline_id: Annotated[Ids, Query(alias="pipelineId")] = None,
    source: Annotated[Strings, Query()] = None,
    assigned_to: Annotated[
        Strings, Query(alias="assignedTo", description="a user id, or `none` for unassigned")
    ] = None,
    tag: Annotated[Strings, Query(description="case-insensitive")] = None,
    status: Annotated[Strings, Query()] = None,
    is_duplicate: Annotated[bool | None, Query(alias="isDuplicate")] = None,
    created_after: Annotated[
        datetime | None, Query(alias="createdAfter", description="ISO-8601, inclusive")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(alias="createdBefore", description="ISO-8601, exclusive")
    ] = None,
    referred: bool | None = None,
    partner_id: Annotated[Ids, Query(alias="partnerId", description="referred to")] = None,
    return_open: Annotated[bool | None, Query(alias="returnOpen")] = None,
    return_status: Annotated[list[ReturnStatus] | None, Query(alias="returnStatus")] = None,
    lead_type_id: Annotated[Ids, Query(alias="leadTypeId")] = None,
    converted: bool | None = None,
    deleted: Annotated[
        bool, Query(description="true: the trash (soft-deleted leads), newest deleted first")
    ] = False,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    sort_by: Annotated[SortBy | None, Query(alias="sortBy")] = None,
    sort_order: Annotated[Literal["asc", "desc"], Query(alias="sortOrder")] = "desc",
    cursor: Annotated[
        str | None,
        Query(
            max_length=1000,
            description="the previous page's `nextCursor`: the page after it, found by index "
            "however deep (instead of `page`)",
        ),
    ] = None,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's leads, filtered, sorted and paged (`after`: read your own writes).

    A filter given several times matches any of its values (`?status=new&status=backlog`);
    different filters must all match. `assignedTo=none` is the unassigned leads; a search
    that looks like a phone number also matches however the number was formatted.

    A partner token lists the leads referred to its partner now, as a referral shares them,
    with `search`, `createdAfter`, `createdBefore`, `returnStatus`, `page`, `limit`,
    `sortBy` (`createdAt`, `name`, `requestId`), `sortOrder`, `cursor` and `after`.

    Every page carries `nextCursor` (null on the last): pass it back as `cursor`, with the
    same filters and sort, for the next page by keyset, as fast however deep it goes
    (`page` counts rows to skip, which grows with the page number)."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    phone = PhoneSearch()
    if caller.partner_id is not None:
        _partner_query(request, sort_by)
    sort = sort_by or ("deletedAt" if deleted else "createdAt")
    resume = _cursor(cursor, sort, sort_order == "desc", page)
    if search and search.strip():
        phone = phone_search(search, await engine.intake.region_of(workspace_id))
    if caller.partner_id is not None:
        where = LeadFilter(
            search=search,
            phone_keys=phone.keys,
            phone_whole=phone.whole,
            created_after=utc(created_after),
            created_before=utc(created_before),
            partner_id=(caller.partner_id,),
            return_status=tuple(dict.fromkeys(str(r) for r in return_status or ())),
        )
        await await_position(request, after)
        rows, total, following = await read_view(
            engine.lead_views.page(
                workspace_id,
                where,
                page=page,
                limit=limit,
                sort_by=sort,
                descending=sort_order == "desc",
                cursor=resume,
            )
        )
        items = await _partner_leads(request, caller.partner_id, [r["id"] for r in rows])
        return _listing(items, total, page, limit, following)
    assignees = _texts(assigned_to)
    where = LeadFilter(
        search=search,
        phone_keys=phone.keys,
        phone_whole=phone.whole,
        pipeline_id=tuple(dict.fromkeys(pipeline_id or ())),
        stage_id=tuple(dict.fromkeys(stage_id or ())),
        source=_texts(source),
        assigned_to=tuple(
            dict.fromkeys(v.strip() for v in assigned_to or () if v.strip().casefold() != "none")
        ),
        unassigned="none" in assignees,
        tag=_texts(tag),
        status=_texts(status),
        is_duplicate=is_duplicate,
        created_after=utc(created_after),
        created_before=utc(created_before),
        referred=referred,
        partner_id=tuple(dict.fromkeys(partner_id or ())),
        return_status=tuple(dict.fromkeys(str(r) for r in return_status or ())),
        return_open=return_open,
        lead_type_id=tuple(dict.fromkeys(lead_type_id or ())),
        converted=converted,
        deleted=deleted,
    )
    await await_position(request, after)
    items, total, following = await read_view(
        engine.lead_views.page(
            workspace_id,
            where,
            page=page,
            limit=limit,
            sort_by=sort,
            descending=sort_order == "desc",
            cursor=resume,
        )
    )
    return _listing(items, total, page, limit, following)


def _cursor(text: str | None, sort_by: str, descending: bool, page: int) -> Cursor | None:
    """The list's `cursor`, checked: one this API handed out for the same sort, and not
    beside a `page` (they are two ways of saying where the page starts)."""
    if text is None:
        return None
    if page != 1:
        raise ApiError(422, "validation_failed", "give `cursor` or `page`, not both")
    resume = Cursor.decode(text)
    if resume is None:
        raise ApiError(400, "bad_cursor", "the cursor is not one this API gave out")
    if (resume.sort_by, resume.descending) != (sort_by, descending):
        order = "desc" if resume.descending else "asc"
        raise ApiError(
            400,
            "bad_cursor",
            f"the cursor is for sortBy={resume.sort_by}&sortOrder={order}: ask with those",
        )
    return resume


def _listing(
    items: list[dict[str, Any]], total: int, page: int, limit: int, following: Cursor | None
) -> dict[str, Any]:
    return {
        "items": items,
        "total": total,
        "page": page,
        "limit": limit,
        "nextCursor": following.encode() if following else None,
    }


@router.get("/leads/{lead_id}", dependencies=[StrictQuery])
async def get_lead(lead_id: UUID, request: Request, caller: Reader) -> dict[str, Any]:
    """One lead, current from its events: fields, custom fields with display names, tags,
    notes, milestones, and its ten most recent timeline entries. A partner token reads a
    lead referred to its partner now, as the referral shares it (any other is a 404)."""

    workspace_id = workspace_of(caller, request)
    lead = await engine_of(request).store.load(Lead, lead_id)
    if lead is None or lead.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"lead {lead_id} does not exist")
    if caller.partner_id is not None:
        if not referred_to(lead, caller.partner_id):
            raise ApiError(404, "not_found", f"lead {lead_id} does not exist")
        return partner_lead_json(lead)
    activity = await lead_timeline(lead_id, request, caller, page=1, limit=10)
    return {
        **lead_json(lead),
        **await submissions_of(engine_of(request), lead_id),
        "recentActivity": activity["items"],
    }


async def submissions_of(engine: Engine, lead_id: UUID) -> dict[str, Any]:
    """Where the lead was sent: the campaigns it was reposted to (by hand, in bulk or by a
    fallback), in order, and its latest submission's status (from the submissions view)."""
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, campaign_id, status, origin FROM submissions
                WHERE lead_id = $1 ORDER BY created_at, id""",
            lead_id,
        )
    latest = rows[-1] if rows else None
    return {
        "repostedTo": [str(row["campaign_id"]) for row in rows if row["origin"] in REPOST_ORIGINS],
        "submissionId": str(latest["id"]) if latest else None,
        "submissionStatus": latest["status"] if latest else None,
    }


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


@router.get("/customers/{customer_id}", tags=["customers"], dependencies=[StrictQuery])
async def get_customer(customer_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    workspace_id = workspace_of(caller, request)
    customer = await engine_of(request).store.load(Customer, customer_id)
    if customer is None or customer.workspace_id != workspace_id:
        raise ApiError(404, "not_found", f"customer {customer_id} does not exist")
    return customer_json(customer)
