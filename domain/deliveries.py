"""Outbound deliveries (webhooks, emails) that lead-type actions schedule, and the referral
webhooks partners are sent: the outbox.

An action does not call out while it is decided: it schedules a `Delivery` in the same
transaction as its decision and the runner's checkpoint. A delivery worker then sends it,
at least once, and records every attempt. A webhook's `webhook-id` (`message_id`) is the
delivery's own id, so it stays the same across retries and redeliveries and receivers can
deduplicate.

Retries: up to `max_attempts` (1 + the action's retries) per round, with exponential
backoff and full jitter, or the receiver's `Retry-After` when it gives one. A 410 Gone ends
the delivery and disables the action (for a partner's referral webhook: the partner's
webhook). A manual redelivery starts a new round.

A partner's referral webhook (`partner_id` set) has no lead type or action: its
`lead_type_id` is `NO_LEAD_TYPE` and its `action_id` is the partner's id; it is signed with
the partner's secret.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate
from domain.triggers import Trigger

NO_LEAD_TYPE = UUID(int=0)
"""The `lead_type_id` of a delivery no lead type scheduled (a partner's referral webhook)."""


class DeliveryKind(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every attempt of the round failed, or it cannot be delivered at all
    DISABLED = "disabled"  # the receiver answered 410 Gone: the action is switched off


class Outcome(StrEnum):
    """What one attempt came to."""

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    DISABLED = "disabled"


class InvalidRedelivery(ValueError):
    """A redelivery of a delivery still being tried."""


def backoff(
    attempt: int,
    base_seconds: float,
    cap_seconds: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt `attempt + 1`: the receiver's Retry-After when it
    gave one (capped), else exponential backoff with full jitter (`base·2^(attempt-1)`)."""
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, cap_seconds)
    ceiling = min(cap_seconds, base_seconds * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(ceiling / 2, ceiling)


class Delivery(Aggregate):
    class Scheduled(Aggregate.Created):
        workspace_id: UUID
        lead_id: UUID
        lead_type_id: UUID
        action_id: UUID
        trigger: Trigger
        event_code: str
        kind: DeliveryKind
        # A URL for a webhook; an email address for an email.
        target: str
        # `form` or `json` for a webhook; `text` for an email.
        format: str
        # The lead as the action saw it, plus `eventtype` / `eventdatetime` (webhook), or
        # `{subject, body}` (email).
        payload: dict[str, Any]
        headers: dict[str, str]
        max_attempts: int
        timeout_seconds: float
        # The partner a referral webhook goes to (signed with its secret); None for an action's.
        partner_id: UUID | None = None

        @property
        def timeline_category(self) -> str:
            return "webhook" if self.kind is DeliveryKind.WEBHOOK else "action"

    class Attempted(Aggregate.Event):
        attempt: int
        status_code: int | None
        latency_ms: float
        error: str | None
        outcome: Outcome
        next_attempt_at: datetime | None
        kind: DeliveryKind = DeliveryKind.WEBHOOK
        lead_id: UUID | None = None
        # Copied from `Scheduled` so the lead's timeline can say where it went and why.
        target: str | None = None
        event_code: str | None = None

        @property
        def timeline_category(self) -> str:
            return "webhook" if self.kind is DeliveryKind.WEBHOOK else "action"

    class RedeliveryRequested(Aggregate.Event):
        actor: str
        kind: DeliveryKind = DeliveryKind.WEBHOOK
        lead_id: UUID | None = None
        target: str | None = None
        event_code: str | None = None

        @property
        def timeline_category(self) -> str:
            return "webhook" if self.kind is DeliveryKind.WEBHOOK else "action"

    @event(Scheduled)
    def __init__(
        self,
        workspace_id: UUID,
        lead_id: UUID,
        lead_type_id: UUID,
        action_id: UUID,
        trigger: Trigger,
        event_code: str,
        kind: DeliveryKind,
        target: str,
        format: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        max_attempts: int,
        timeout_seconds: float,
        partner_id: UUID | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.partner_id = partner_id
        self.lead_id = lead_id
        self.lead_type_id = lead_type_id
        self.action_id = action_id
        self.trigger = trigger
        self.event_code = event_code
        self.kind = kind
        self.target = target
        self.format = format
        self.payload = payload
        self.headers = headers
        self.max_attempts = max_attempts
        self.timeout_seconds = timeout_seconds
        self.state = DeliveryState.PENDING
        self.attempts = 0
        self.round_attempts = 0
        self.next_attempt_at: datetime | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None

    @property
    def message_id(self) -> str:
        """The `webhook-id`: the same for every attempt of this delivery."""
        return f"msg_{self.id.hex}"

    def due(self, now: datetime) -> bool:
        """Whether an attempt should be made now: still pending and not waiting out a backoff."""
        if self.state is not DeliveryState.PENDING:
            return False
        return self.next_attempt_at is None or self.next_attempt_at <= now

    def record_attempt(
        self,
        status_code: int | None,
        latency_ms: float,
        error: str | None,
        *,
        now: datetime,
        retryable: bool = True,
        retry_after: float | None = None,
        base_seconds: float = 5.0,
        cap_seconds: float = 3600.0,
        rng: random.Random | None = None,
    ) -> Outcome:
        """Record one attempt's result and decide what follows: success for 200-399, the
        action disabled for 410, a retry while attempts remain, else failure."""
        attempt = self.round_attempts + 1
        next_at: datetime | None = None
        if status_code is not None and 200 <= status_code < 400:
            outcome = Outcome.SUCCEEDED
        elif status_code == 410:
            outcome = Outcome.DISABLED
        elif retryable and attempt < self.max_attempts:
            outcome = Outcome.RETRYING
            delay = backoff(attempt, base_seconds, cap_seconds, retry_after, rng)
            next_at = now + timedelta(seconds=delay)
        else:
            outcome = Outcome.FAILED
        self._attempted(
            attempt=attempt,
            status_code=status_code,
            latency_ms=round(latency_ms, 3),
            error=error,
            outcome=outcome,
            next_attempt_at=next_at,
            kind=self.kind,
            lead_id=self.lead_id,
            target=self.target,
            event_code=self.event_code,
        )
        return outcome

    @event(Attempted)
    def _attempted(
        self,
        attempt: int,
        status_code: int | None,
        latency_ms: float,
        error: str | None,
        outcome: Outcome,
        next_attempt_at: datetime | None,
        kind: DeliveryKind,
        lead_id: UUID | None,
        target: str | None,
        event_code: str | None,
    ) -> None:
        self.attempts += 1
        self.round_attempts = attempt
        self.last_status = status_code
        self.last_error = error
        self.next_attempt_at = next_attempt_at
        self.state = {
            Outcome.SUCCEEDED: DeliveryState.SUCCEEDED,
            Outcome.RETRYING: DeliveryState.PENDING,
            Outcome.FAILED: DeliveryState.FAILED,
            Outcome.DISABLED: DeliveryState.DISABLED,
        }[outcome]

    def request_redelivery(self, actor: str) -> None:
        """Send it again (same `webhook-id`), with a fresh round of attempts."""
        if self.state is DeliveryState.PENDING:
            raise InvalidRedelivery("the delivery is still being tried")
        self._redelivery_requested(
            actor=actor,
            kind=self.kind,
            lead_id=self.lead_id,
            target=self.target,
            event_code=self.event_code,
        )

    @event(RedeliveryRequested)
    def _redelivery_requested(
        self,
        actor: str,
        kind: DeliveryKind,
        lead_id: UUID | None,
        target: str | None,
        event_code: str | None,
    ) -> None:
        self.state = DeliveryState.PENDING
        self.round_attempts = 0
        self.next_attempt_at = None
