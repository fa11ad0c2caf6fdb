"""A submission: one delivery attempt of a lead to one campaign, and its journey.

Statuses: `pending → processing → [pending_action →] qualified → delivered → accepted`, or
`disqualified`, `failed`, `rejected`, `capped`, and `returned` after an accepted return.
Every step of the pipeline is an event here (`Submission.Step` and its kinds), so a
submission's whole journey is the list of its events; `journey_entry` says how each reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate


class SubmissionStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PENDING_ACTION = "pending_action"
    QUALIFIED = "qualified"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    DISQUALIFIED = "disqualified"
    FAILED = "failed"
    REJECTED = "rejected"
    CAPPED = "capped"
    RETURNED = "returned"


# Statuses a submission ends in; the last three send the lead on to a fallback campaign.
FINAL = frozenset(
    {
        SubmissionStatus.ACCEPTED,
        SubmissionStatus.DISQUALIFIED,
        SubmissionStatus.FAILED,
        SubmissionStatus.REJECTED,
        SubmissionStatus.CAPPED,
        SubmissionStatus.RETURNED,
    }
)
FALLS_BACK = frozenset(
    {
        SubmissionStatus.DISQUALIFIED,
        SubmissionStatus.FAILED,
        SubmissionStatus.REJECTED,
        SubmissionStatus.CAPPED,
    }
)
# What the earliest events wrote before statuses had these names.
_LEGACY = {"received": SubmissionStatus.PENDING}


class Origin(StrEnum):
    """How a submission came about: shown in the journey, so reposts are told apart."""

    API = "api"
    MANUAL = "manual"
    WEBHOOK = "webhook"
    FORM = "form"
    NATS = "nats"
    BULK = "bulk"
    REPOST = "repost"
    FALLBACK = "fallback"
    ROUTED = "routed"


class InvalidSubmissionChange(ValueError):
    """A change the submission's status does not allow (a review of a delivered one)."""


class Submission(Aggregate):
    """One lead sent to one campaign, from receipt to the buyer's answer (and a return)."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        lead_id: UUID
        campaign_id: UUID
        source: str
        snapshot: dict[str, Any]
        status: str
        origin: str = Origin.API
        actor: str | None = None
        parent_id: UUID | None = None
        # Fallback campaigns still to try, in order, after this one.
        chain: tuple[UUID, ...] = ()
        # Why routing chose the campaign, when the lead named none.
        routing: dict[str, Any] | None = None

    class Step(Aggregate.Event):
        """A step of the pipeline. `status` is set when the step moves the submission."""

        step: ClassVar[str] = "step"
        lead_id: UUID
        campaign_id: UUID
        status: str | None = None

        def apply(self, aggregate: Any) -> None:
            aggregate.apply_step(self)

    class ProcessingStarted(Step):
        step: ClassVar[str] = "processing"
        campaign: dict[str, Any]

    class ActionRequested(Step):
        step: ClassVar[str] = "first_submission_action"
        action: str
        due_at: datetime
        url: str | None = None
        status_code: int | None = None
        error: str | None = None

    class ActionCompleted(Step):
        step: ClassVar[str] = "first_submission_action"
        decision: str  # approve | reject | timeout
        reason: str | None = None
        actor: str

    class Disqualified(Step):
        step: ClassVar[str] = "disqualification"
        reason: str
        field: str | None = None
        checks: list[dict[str, Any]] = []

    class KeysComputed(Step):
        step: ClassVar[str] = "dynamic_keys"
        keys: dict[str, Any]
        errors: dict[str, str] = {}

    class RequiredFieldsMissing(Step):
        step: ClassVar[str] = "required_fields"
        missing: list[str]
        endpoint_id: str | None = None

    class EndpointSkipped(Step):
        step: ClassVar[str] = "payload"
        endpoint_id: str
        reason: str

    class Qualified(Step):
        step: ClassVar[str] = "qualification"
        checks: list[dict[str, Any]] = []

    class Capped(Step):
        step: ClassVar[str] = "caps"
        limits: list[str]
        endpoint_id: str | None = None

    class Pinged(Step):
        step: ClassVar[str] = "ping"
        bids: list[dict[str, Any]]

    class PostStarted(Step):
        step: ClassVar[str] = "post"
        endpoint_id: str
        url: str
        attempt: int
        request: dict[str, Any]
        price: Decimal | None = None
        # Cap counters this post holds a place in (given back if the buyer says no).
        reserved: dict[str, int] = {}

    class BuyerAnswered(Step):
        step: ClassVar[str] = "delivery"
        endpoint_id: str
        outcome: str  # accepted | rejected | duplicate | error
        status_code: int | None = None
        latency_ms: float | None = None
        reason: str | None = None
        price: Decimal | None = None
        response: str | None = None
        released: dict[str, int] = {}

    class FellBack(Step):
        step: ClassVar[str] = "fallback"
        to_submission_id: UUID
        to_campaign_id: UUID

    class ReturnRequested(Step):
        step: ClassVar[str] = "return"
        reason: str
        actor: str

    class ReturnDecided(Step):
        step: ClassVar[str] = "return"
        accepted: bool
        reason: str | None = None
        actor: str
        # The accepted price given back when the return is accepted (revenue falls by it).
        price: Decimal | None = None

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        lead_id: UUID,
        campaign_id: UUID,
        source: str,
        snapshot: dict[str, Any],
        status: str = SubmissionStatus.PENDING,
        origin: str = Origin.API,
        actor: str | None = None,
        parent_id: UUID | None = None,
        chain: tuple[UUID, ...] = (),
        routing: dict[str, Any] | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.lead_id = lead_id
        self.campaign_id = campaign_id
        self.source = source
        self.lead_snapshot = snapshot
        self.status = _LEGACY.get(status, SubmissionStatus(status))
        self.origin = origin
        self.parent_id = parent_id
        self.chain = list(chain)
        self.campaign: dict[str, Any] | None = None
        self.action_due_at: datetime | None = None
        self.keys: dict[str, Any] = {}
        self.bids: list[dict[str, Any]] | None = None
        self.tried: list[str] = []  # endpoint ids posted to, in order
        self.skipped: list[str] = []  # endpoint ids passed over (capped, fields, payload)
        self.accepted_count = 0
        self.last_released: dict[str, int] = {}
        self.in_flight: Submission.PostStarted | None = None
        self.accepted_at: datetime | None = None
        self.accepted_endpoint: str | None = None
        self.price: Decimal | None = None
        self.return_pending: bool = False
        self.fallen_back = False

    # ---- reading ---------------------------------------------------------------------------

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def falls_back(self) -> bool:
        return self.status in FALLS_BACK and not self.fallen_back

    # ---- the pipeline's steps (the handler decides which, in which order) -----------------

    def start(self, campaign: dict[str, Any]) -> None:
        self._check(SubmissionStatus.PENDING)
        self._trigger(
            Submission.ProcessingStarted,
            campaign=campaign,
            status=SubmissionStatus.PROCESSING,
        )

    def request_action(
        self,
        action: str,
        due_at: datetime,
        url: str | None = None,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        self._check(SubmissionStatus.PROCESSING)
        self._trigger(
            Submission.ActionRequested,
            action=action,
            due_at=due_at,
            url=url,
            status_code=status_code,
            error=error,
            status=SubmissionStatus.PENDING_ACTION,
        )

    def complete_action(
        self, decision: str, reason: str | None, actor: str, *, fail_as: SubmissionStatus
    ) -> None:
        """approve → processing; reject or a timeout set to fail → `fail_as`."""
        if self.status is not SubmissionStatus.PENDING_ACTION:
            raise InvalidSubmissionChange(
                f"the submission is {self.status}, not waiting for its first-submission action"
            )
        status = SubmissionStatus.PROCESSING if decision in ("approve", "continue") else fail_as
        self._trigger(
            Submission.ActionCompleted,
            decision=decision,
            reason=reason,
            actor=actor,
            status=status,
        )

    def disqualify(
        self, reason: str, field: str | None = None, checks: list[dict[str, Any]] | None = None
    ) -> None:
        self._check(SubmissionStatus.PROCESSING)
        self._trigger(
            Submission.Disqualified,
            reason=reason,
            field=field,
            checks=checks or [],
            status=SubmissionStatus.DISQUALIFIED,
        )

    def compute_keys(self, keys: dict[str, Any], errors: dict[str, str]) -> None:
        self._check(SubmissionStatus.PROCESSING)
        self._trigger(Submission.KeysComputed, keys=keys, errors=errors)

    def miss_fields(
        self, missing: list[str], endpoint_id: str | None = None, *, final: bool = True
    ) -> None:
        """Required fields are missing: the campaign's (the submission fails), or one
        endpoint's (that endpoint is skipped; the submission fails when it was the last)."""
        if endpoint_id is None:
            self._check(SubmissionStatus.PROCESSING)
        else:
            self._check(SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED)
        self._trigger(
            Submission.RequiredFieldsMissing,
            missing=missing,
            endpoint_id=endpoint_id,
            status=SubmissionStatus.FAILED if final else None,
        )

    def skip_endpoint(self, endpoint_id: str, reason: str) -> None:
        """An endpoint that cannot be posted to (its payload cannot be built)."""
        self._check(SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED)
        self._trigger(Submission.EndpointSkipped, endpoint_id=endpoint_id, reason=reason)

    def qualify(self, checks: list[dict[str, Any]]) -> None:
        self._check(SubmissionStatus.PROCESSING)
        self._trigger(Submission.Qualified, checks=checks, status=SubmissionStatus.QUALIFIED)

    def cap(self, limits: list[str], endpoint_id: str | None = None, *, final: bool = True) -> None:
        """A cap is reached: the campaign's, or the last endpoint's (`final`: the submission
        is capped), or one endpoint's (it is skipped and the next one tried)."""
        self._check(SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED)
        status: SubmissionStatus | None = SubmissionStatus.CAPPED
        if not final:
            status = None
        elif self.accepted_count:
            status = SubmissionStatus.ACCEPTED
        self._trigger(Submission.Capped, limits=limits, endpoint_id=endpoint_id, status=status)

    def record_bids(self, bids: list[dict[str, Any]]) -> None:
        self._check(SubmissionStatus.QUALIFIED)
        self._trigger(Submission.Pinged, bids=bids)

    def start_post(
        self,
        endpoint_id: str,
        url: str,
        request: dict[str, Any],
        price: Decimal | None,
        reserved: dict[str, int],
    ) -> None:
        self._check(SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED)
        if self.in_flight is not None:
            raise InvalidSubmissionChange("a post is already in flight")
        self._trigger(
            Submission.PostStarted,
            endpoint_id=endpoint_id,
            url=url,
            attempt=len(self.tried) + 1,
            request=request,
            price=price,
            reserved=reserved,
            status=SubmissionStatus.DELIVERED,
        )

    def record_answer(
        self,
        outcome: str,
        *,
        status_code: int | None,
        latency_ms: float | None,
        reason: str | None,
        price: Decimal | None,
        response: str | None,
        final: bool,
    ) -> None:
        """The buyer's answer to the post in flight. `final`: nothing more will be posted
        (no endpoint left, or enough buyers accepted), so the submission ends: accepted if
        any buyer accepted, else rejected (failed when the last answer was an error)."""
        post = self.in_flight
        if post is None:
            raise InvalidSubmissionChange("no post is in flight")
        status: SubmissionStatus | None = None
        if final:
            if outcome == "accepted" or self.accepted_count:
                status = SubmissionStatus.ACCEPTED
            elif outcome == "error":
                status = SubmissionStatus.FAILED
            else:
                status = SubmissionStatus.REJECTED
        self._trigger(
            Submission.BuyerAnswered,
            endpoint_id=post.endpoint_id,
            outcome=outcome,
            status_code=status_code,
            latency_ms=latency_ms,
            reason=reason,
            price=price,
            response=response,
            released={} if outcome == "accepted" else {k: -v for k, v in post.reserved.items()},
            status=status,
        )

    def fall_back(self, to_submission_id: UUID, to_campaign_id: UUID) -> None:
        if not self.falls_back:
            raise InvalidSubmissionChange("the submission does not fall back")
        self._trigger(
            Submission.FellBack, to_submission_id=to_submission_id, to_campaign_id=to_campaign_id
        )

    def finish_accepted(self) -> None:
        """Every bidder of a shared lead was tried and at least one accepted."""
        self._check(SubmissionStatus.DELIVERED)
        if not self.accepted_count:
            raise InvalidSubmissionChange("no buyer accepted the lead")
        self._trigger(
            Submission.BuyerAnswered,
            endpoint_id="",
            outcome="accepted",
            reason="every bidder was tried",
            status=SubmissionStatus.ACCEPTED,
        )

    def fail_post(self, reason: str) -> None:
        """Nothing left to post to (every endpoint capped or tried)."""
        self._check(SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED)
        self._trigger(
            Submission.BuyerAnswered,
            endpoint_id="",
            outcome="error",
            reason=reason,
            status=SubmissionStatus.FAILED,
        )

    def request_return(self, reason: str, actor: str, now: datetime, window_days: int) -> None:
        if self.status is not SubmissionStatus.ACCEPTED or self.accepted_at is None:
            raise InvalidSubmissionChange("only an accepted submission can be returned")
        if self.return_pending:
            raise InvalidSubmissionChange("a return of this submission is already waiting")
        if now > self.accepted_at + timedelta(days=window_days):
            raise InvalidSubmissionChange(
                f"the return window ({window_days} days from acceptance) is over"
            )
        self._trigger(Submission.ReturnRequested, reason=reason, actor=actor)

    def decide_return(self, accept: bool, reason: str | None, actor: str) -> None:
        if not self.return_pending:
            raise InvalidSubmissionChange("no return of this submission is waiting")
        self._trigger(
            Submission.ReturnDecided,
            accepted=accept,
            reason=reason,
            actor=actor,
            price=self.price if accept else None,
            status=SubmissionStatus.RETURNED if accept else None,
        )

    # ---- applying ---------------------------------------------------------------------------

    def _check(self, *allowed: SubmissionStatus) -> None:
        if self.status not in allowed:
            raise InvalidSubmissionChange(
                f"the submission is {self.status}; this step needs {', '.join(allowed)}"
            )

    def _trigger(self, cls: type[Submission.Step], **fields: Any) -> None:
        self.trigger_event(cls, lead_id=self.lead_id, campaign_id=self.campaign_id, **fields)

    def apply_step(self, step: Submission.Step) -> None:
        if step.status is not None:
            self.status = SubmissionStatus(step.status)
        if isinstance(step, Submission.ProcessingStarted):
            self.campaign = step.campaign
        elif isinstance(step, Submission.ActionRequested):
            self.action_due_at = step.due_at
        elif isinstance(step, Submission.ActionCompleted):
            self.action_due_at = None
        elif isinstance(step, Submission.KeysComputed):
            self.keys = dict(step.keys)
        elif isinstance(step, Submission.Pinged):
            self.bids = list(step.bids)
        elif isinstance(step, Submission.PostStarted):
            self.in_flight = step
            self.tried.append(step.endpoint_id)
        elif isinstance(step, Submission.BuyerAnswered):
            self.in_flight = None
            self.last_released = dict(step.released)
            if step.outcome == "accepted" and step.endpoint_id:
                self.accepted_count += 1
                self.accepted_at = self.accepted_at or step.timestamp
                self.accepted_endpoint = self.accepted_endpoint or step.endpoint_id
                if step.price is not None:
                    self.price = (self.price or Decimal(0)) + step.price
        elif isinstance(step, Submission.Capped | Submission.RequiredFieldsMissing):
            if step.endpoint_id and step.status is None:
                self.skipped.append(step.endpoint_id)
        elif isinstance(step, Submission.EndpointSkipped):
            self.skipped.append(step.endpoint_id)
        elif isinstance(step, Submission.FellBack):
            self.fallen_back = True
        elif isinstance(step, Submission.ReturnRequested):
            self.return_pending = True
        elif isinstance(step, Submission.ReturnDecided):
            self.return_pending = False


def journey_entry(event: Any, at: datetime) -> dict[str, Any]:
    """One line of a submission's journey: `{step, outcome, at, ...}` from one event."""
    if isinstance(event, Submission.Created):
        return {
            "step": "received",
            "outcome": event.origin,
            "at": at.isoformat(),
            "status": _LEGACY.get(event.status, event.status),
            "campaignId": str(event.campaign_id),
            "parentId": str(event.parent_id) if event.parent_id else None,
            "routing": event.routing,
            "actor": event.actor,
        }
    entry: dict[str, Any] = {"step": getattr(event, "step", "step"), "at": at.isoformat()}
    if isinstance(event, Submission.ProcessingStarted):
        entry["outcome"] = "started"
    elif isinstance(event, Submission.ActionRequested):
        entry.update(outcome="requested", action=event.action, dueAt=event.due_at.isoformat())
        if event.url:
            entry.update(url=event.url, statusCode=event.status_code, error=event.error)
    elif isinstance(event, Submission.ActionCompleted):
        entry.update(outcome=event.decision, reason=event.reason, actor=event.actor)
    elif isinstance(event, Submission.Disqualified):
        entry.update(outcome="disqualified", reason=event.reason, field=event.field)
        if event.checks:
            entry["checks"] = event.checks
    elif isinstance(event, Submission.KeysComputed):
        entry.update(outcome="computed", keys=event.keys)
        if event.errors:
            entry["errors"] = event.errors
    elif isinstance(event, Submission.RequiredFieldsMissing):
        entry.update(outcome="failed", missing=event.missing, endpointId=event.endpoint_id)
    elif isinstance(event, Submission.EndpointSkipped):
        entry.update(outcome="skipped", endpointId=event.endpoint_id, reason=event.reason)
    elif isinstance(event, Submission.Qualified):
        entry.update(outcome="passed", checks=event.checks)
    elif isinstance(event, Submission.Capped):
        entry.update(outcome="capped", limits=event.limits, endpointId=event.endpoint_id)
    elif isinstance(event, Submission.Pinged):
        entry.update(outcome="bids" if event.bids else "no_bids", bids=event.bids)
    elif isinstance(event, Submission.PostStarted):
        entry.update(
            outcome="sent",
            endpointId=event.endpoint_id,
            url=event.url,
            attempt=event.attempt,
            request=event.request,
            price=_money(event.price),
        )
    elif isinstance(event, Submission.BuyerAnswered):
        entry.update(
            outcome=event.outcome,
            endpointId=event.endpoint_id or None,
            statusCode=event.status_code,
            latencyMs=event.latency_ms,
            reason=event.reason,
            price=_money(event.price),
            response=event.response,
        )
    elif isinstance(event, Submission.FellBack):
        entry.update(
            outcome="reposted",
            submissionId=str(event.to_submission_id),
            campaignId=str(event.to_campaign_id),
        )
    elif isinstance(event, Submission.ReturnRequested):
        entry.update(outcome="requested", reason=event.reason, actor=event.actor)
    elif isinstance(event, Submission.ReturnDecided):
        entry.update(
            outcome="accepted" if event.accepted else "declined",
            reason=event.reason,
            actor=event.actor,
        )
    if getattr(event, "status", None):
        entry["status"] = event.status
    return entry


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
