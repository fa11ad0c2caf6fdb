"""Routes that act on submissions: review, the action callback, returns and reposts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from domain.submissions import InvalidSubmissionChange
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.outbound.submission_worker import CALLBACK_PURPOSE, callback_signer
from handlers import submission_commands as commands
from handlers.submission_commands import Done, LeadNotFound, NotTheBuyer
from handlers.submissions import SubmissionNotFound
from handlers.workspaces import Principal

router = APIRouter(tags=["submissions"])

Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
Returner = Annotated[Principal, Depends(requires(Permission.RETURNS_START))]

T = TypeVar("T")


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ReviewBody(Body):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(default=None, max_length=1000)


class ReturnBody(Body):
    reason: str = Field(min_length=1, max_length=1000)


class ReturnDecisionBody(Body):
    decision: Literal["accept", "decline"]
    reason: str | None = Field(default=None, max_length=1000)


class RepostBody(Body):
    campaign_id: UUID


async def run(command: Callable[[], Awaitable[T]]) -> T:
    """A command's refusals as the API's errors."""
    try:
        return await command()
    except SubmissionNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except LeadNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except NotTheBuyer as error:
        raise ApiError(403, "forbidden", str(error)) from None
    except InvalidSubmissionChange as error:
        raise ApiError(409, "invalid_state", str(error)) from None


def done_json(done: Done) -> dict[str, Any]:
    submission = done.submission
    return {
        "id": str(submission.id),
        "leadId": str(submission.lead_id),
        "campaignId": str(submission.campaign_id),
        "status": str(submission.status),
        "position": done.position,
    }


@router.post("/v1/submissions/{submission_id}/review")
async def review(
    submission_id: UUID, body: ReviewBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Approve (it goes on to delivery) or reject (disqualified, with the reason; its
    fallback campaign gets the lead) a submission waiting for review (`pending_action`)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.review(
            store, ws, submission_id, body.decision, body.reason, actor_of(caller)
        )
    )
    return done_json(done)


@router.post("/v1/submissions/{submission_id}/callback")
async def action_callback(
    submission_id: UUID,
    body: ReviewBody,
    request: Request,
    signature: Annotated[str, Query(min_length=1, max_length=200)],
) -> dict[str, Any]:
    """Where a first-submission webhook's receiver answers: the signed URL it was sent
    (`callbackUrl`) is the credential; the body is `{decision: approve|reject, reason}`."""
    engine = engine_of(request)
    if not callback_signer(engine).matches(CALLBACK_PURPOSE, str(submission_id), signature):
        raise ApiError(401, "unauthorized", "the callback signature is not valid")
    done = await run(
        lambda: commands.review(
            engine.store, None, submission_id, body.decision, body.reason, "webhook:callback"
        )
    )
    return done_json(done)


@router.post("/v1/submissions/{submission_id}/return")
async def request_return(
    submission_id: UUID, body: ReturnBody, request: Request, caller: Returner
) -> dict[str, Any]:
    """A buyer (a partner token of the campaign's buyer) hands back an accepted submission
    within the campaign's return window; a manager accepts or declines it."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.request_return(
            store, ws, submission_id, body.reason, actor_of(caller), caller.partner_id
        )
    )
    return done_json(done)


@router.post("/v1/submissions/{submission_id}/return/decision")
async def decide_return(
    submission_id: UUID, body: ReturnDecisionBody, request: Request, caller: Manager
) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.decide_return(
            store, ws, submission_id, body.decision == "accept", body.reason, actor_of(caller)
        )
    )
    return done_json(done)


async def _repost(lead_id: UUID, body: RepostBody, request: Request, caller: Principal) -> Any:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    submitted = await run(
        lambda: commands.repost(store, ws, lead_id, body.campaign_id, actor_of(caller))
    )
    return {
        "leadId": str(lead_id),
        "submissionId": str(submitted.submission_id),
        "campaignId": str(body.campaign_id),
        "status": "pending",
        "position": submitted.position,
    }


@router.post("/v1/leads/{lead_id}/repost", status_code=201)
async def repost(
    lead_id: UUID, body: RepostBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Submit the lead again, to any campaign: a new submission (origin `repost`)."""
    result: dict[str, Any] = await _repost(lead_id, body, request, caller)
    return result


@router.post("/api/v1/leads/{lead_id}/repost", status_code=201, tags=["submit"])
async def partner_repost(
    lead_id: UUID, body: RepostBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """The submit API's repost: the same as `POST /v1/leads/{id}/repost`."""
    result: dict[str, Any] = await _repost(lead_id, body, request, caller)
    return result
