"""The partner submit API: a lead and its submission to a campaign, in one call."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request

from domain.leads import MissingName, Source
from domain.submissions import Submission
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.lead_json import receipt_json
from gateways.http.leads import parse_details
from gateways.http.payloads import idempotency_key, parse_json_object
from handlers.intake import Intake, NoRoute, UnknownCustomer
from handlers.payloads import is_json
from handlers.ports import EventStore
from handlers.workspaces import Principal

router = APIRouter(prefix="/api/v1", tags=["submit"])

Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]


def split_body(data: dict[str, Any]) -> dict[str, Any]:
    """The lead's fields, campaign included, from `{campaignId, lead: {...}}` or the flat form.
    Without a campaignId the workspace's routing rules pick the campaign."""
    raw = data.get("campaignId")
    campaign_id: UUID | None = None
    if raw is not None:
        if not isinstance(raw, str):
            raise ApiError(422, "validation_failed", "campaignId must be a UUID string")
        try:
            campaign_id = UUID(raw)
        except ValueError:
            raise ApiError(422, "validation_failed", "campaignId is not a UUID") from None
    rest = {k: v for k, v in data.items() if k != "campaignId"}
    if "lead" in rest:
        lead = rest.pop("lead")
        if not isinstance(lead, dict):
            raise ApiError(422, "validation_failed", "lead must be a JSON object")
        if rest:
            raise ApiError(
                422,
                "validation_failed",
                "send the lead's fields inside `lead` or beside campaignId, not both",
                {"unexpected": sorted(rest)},
            )
    else:
        lead = rest
    inner = lead.get("campaignId", lead.get("campaign_id"))
    if campaign_id is None:
        return dict(lead)
    if inner is not None and str(inner) != str(campaign_id):
        raise ApiError(422, "validation_failed", "the lead names another campaign than campaignId")
    lead = {k: v for k, v in lead.items() if k not in {"campaignId", "campaign_id"}}
    return {**lead, "campaignId": str(campaign_id)}


async def submission_of(store: EventStore, lead_id: UUID, after: int) -> UUID | None:
    """The submission created with a lead, for the replay of a retried call.

    It was appended in the same transaction right after the lead's first event, so it is
    the first `submission.created` past that position.
    """
    found = await store.read(after, 1, ["submission.created"])
    event = found[0].event if found else None
    if isinstance(event, Submission.Created) and event.lead_id == lead_id:
        return event.originator_id
    return None


@router.post("/leads/submit", status_code=201)
async def submit_lead(request: Request, caller: Manager) -> JsonResponse:
    """A partner sends a lead to a campaign: the lead (deduplicated within the campaign) and
    its submission. `Idempotency-Key` makes a retry return the first result."""
    workspace_id = workspace_of(caller, request)
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the lead as application/json")
    key = idempotency_key(request)
    lead = split_body(parse_json_object(await request.body()))
    intake = Intake(
        workspace_id=workspace_id,
        details=parse_details(lead),
        source=Source.API,
        actor=actor_of(caller),
        channel=f"api:{caller.token_id or 'operator'}",
        idempotency_key=key,
        route=True,
    )
    engine = engine_of(request)
    try:
        receipt = await engine.intake.receive(intake)
    except MissingName as error:
        raise ApiError(422, "name_required", str(error)) from None
    except UnknownCustomer as error:
        raise ApiError(422, "unknown_customer", str(error)) from None
    except NoRoute as error:
        raise ApiError(422, "campaign_required", str(error)) from None
    if receipt.replayed and receipt.submission_id is None:
        found = await submission_of(engine.store, receipt.lead_id, receipt.position)
        receipt = replace(receipt, submission_id=found)
    body = receipt_json(receipt)
    return JsonResponse({**body, "leadId": body["id"]}, status_code=201)
