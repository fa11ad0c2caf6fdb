"""Commands on submissions from outside the pipeline: review, callback, returns, reposts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.base import DomainEvent
from domain.campaigns import Campaign, CampaignConfig, UnknownCampaign
from domain.leads import Lead
from domain.submissions import InvalidSubmissionChange, Origin, Submission, SubmissionStatus
from handlers.ports import Append, ConcurrencyConflict, EventStore
from handlers.submissions import SubmissionNotFound, fallback_for, lead_snapshot

MAX_CONFLICT_RETRIES = 20


class LeadNotFound(LookupError):
    pass


class NotTheBuyer(PermissionError):
    """A return asked by a partner that did not buy the submission."""


@dataclass(frozen=True)
class Done:
    submission: Submission
    position: int


@dataclass(frozen=True)
class Submitted:
    lead_id: UUID
    submission_id: UUID | None
    position: int
    error: str | None = None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"leadId": str(self.lead_id), "ok": self.ok}
        if self.ok:
            out["submissionId"] = str(self.submission_id)
            out["position"] = self.position
        else:
            out["error"] = {"code": self.code, "message": self.error}
        return out


async def usable_campaign(store: EventStore, workspace_id: UUID, campaign_id: UUID) -> Campaign:
    campaign = await store.load(Campaign, campaign_id)
    if campaign is None or campaign.deleted or campaign.workspace_id != workspace_id:
        raise UnknownCampaign(f"campaign {campaign_id} does not exist in this workspace")
    return campaign


async def load_submission(
    store: EventStore, workspace_id: UUID | None, submission_id: UUID
) -> Submission:
    submission = await store.load(Submission, submission_id)
    if submission is None or (workspace_id is not None and submission.workspace_id != workspace_id):
        raise SubmissionNotFound(f"submission {submission_id} does not exist")
    return submission


async def _change(
    store: EventStore,
    workspace_id: UUID | None,
    submission_id: UUID,
    change: Any,
) -> Done:
    """Load, apply `change(submission)`, append with its fallback; again on a conflict."""
    for _ in range(MAX_CONFLICT_RETRIES):
        submission = await load_submission(store, workspace_id, submission_id)
        change(submission)
        following = fallback_for(submission)  # records `fell_back` on it: before collecting
        own = list(submission.collect_events())
        events: list[DomainEvent] = list(own)
        if following is not None:
            events.extend(following.collect_events())
        try:
            appended = await store.append(
                Append(
                    submission.workspace_id,
                    events=events,
                    expect={submission.id: submission.version - len(own)},
                )
            )
        except ConcurrencyConflict:
            continue
        return Done(submission, appended.position)
    raise RuntimeError(f"gave up changing {submission_id} after conflicting changes")


async def review(
    store: EventStore,
    workspace_id: UUID | None,
    submission_id: UUID,
    decision: str,
    reason: str | None,
    actor: str,
) -> Done:
    """A person's (or the action webhook's) decision on a submission in `pending_action`:
    approve sends it on; reject disqualifies it (and its fallback campaign gets the lead)."""
    if decision not in ("approve", "reject"):
        raise ValueError("decision is approve or reject")

    def apply(submission: Submission) -> None:
        submission.complete_action(decision, reason, actor, fail_as=SubmissionStatus.DISQUALIFIED)

    return await _change(store, workspace_id, submission_id, apply)


def _buyer_of(submission: Submission) -> UUID | None:
    config = CampaignConfig.model_validate(submission.campaign or {}, context={"stored": True})
    if submission.accepted_endpoint:
        try:
            endpoint = config.endpoint(submission.accepted_endpoint)
        except KeyError:
            endpoint = None
        if endpoint is not None and endpoint.buyer_partner_id is not None:
            return endpoint.buyer_partner_id
    return config.buyer_partner_id


async def request_return(
    store: EventStore,
    workspace_id: UUID,
    submission_id: UUID,
    reason: str,
    actor: str,
    partner_id: UUID | None,
    now: datetime | None = None,
) -> Done:
    """A buyer hands back an accepted submission within the campaign's return window. A
    partner token may return only what its partner bought; a manager may return any."""
    moment = now or datetime.now(UTC)

    def apply(submission: Submission) -> None:
        if submission.campaign is None:
            raise InvalidSubmissionChange("only an accepted submission can be returned")
        if partner_id is not None and _buyer_of(submission) != partner_id:
            raise NotTheBuyer("this submission was not delivered to your partner")
        window = int(submission.campaign.get("returnWindowDays", 7))
        submission.request_return(reason, actor, moment, window)

    return await _change(store, workspace_id, submission_id, apply)


async def decide_return(
    store: EventStore,
    workspace_id: UUID,
    submission_id: UUID,
    accept: bool,
    reason: str | None,
    actor: str,
) -> Done:
    def apply(submission: Submission) -> None:
        submission.decide_return(accept, reason, actor)

    return await _change(store, workspace_id, submission_id, apply)


async def repost(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    campaign_id: UUID,
    actor: str,
    origin: Origin = Origin.REPOST,
) -> Submitted:
    """A new submission of the lead to a campaign (a manual repost, or a bulk submit)."""
    await usable_campaign(store, workspace_id, campaign_id)
    lead = await store.load(Lead, lead_id)
    if lead is None or lead.workspace_id != workspace_id or lead.deleted:
        raise LeadNotFound(f"lead {lead_id} does not exist")
    submission = Submission(
        workspace_id=workspace_id,
        lead_id=lead_id,
        campaign_id=campaign_id,
        source=str(lead.source),
        snapshot=lead_snapshot(lead),
        origin=origin,
        actor=actor,
    )
    appended = await store.append(Append(workspace_id, events=submission.collect_events()))
    return Submitted(lead_id, submission.id, appended.position)


async def submit_many(
    store: EventStore,
    workspace_id: UUID,
    lead_ids: Sequence[UUID],
    campaign_id: UUID,
    actor: str,
) -> list[Submitted]:
    """Submit each lead to the campaign (imported leads wait for this); each on its own."""
    await usable_campaign(store, workspace_id, campaign_id)
    results: list[Submitted] = []
    for lead_id in lead_ids:
        try:
            results.append(
                await repost(store, workspace_id, lead_id, campaign_id, actor, Origin.BULK)
            )
        except LeadNotFound as error:
            results.append(Submitted(lead_id, None, 0, str(error), "lead_not_found"))
    return results
