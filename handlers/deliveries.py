"""Recording delivery attempts and requesting redeliveries: load, decide, append."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain.deliveries import Delivery, DeliveryState, Outcome
from domain.lead_types import LeadType
from domain.partners import Partner
from handlers.ports import Append, ConcurrencyConflict, EventStore

MAX_CONFLICT_RETRIES = 20


@dataclass(frozen=True)
class AttemptResult:
    """What one send came to, as a sender (HTTP, SMTP) reports it."""

    status_code: int | None
    latency_ms: float
    error: str | None = None
    # False when trying again cannot help (a refused target, a permanent SMTP error).
    retryable: bool = True
    # Seconds the receiver asked us to wait (Retry-After).
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    cap_seconds: float = 3600.0


@dataclass(frozen=True)
class Recorded:
    delivery: Delivery
    outcome: Outcome
    position: int


class DeliveryNotFound(LookupError):
    pass


def disabled_reason(delivery: Delivery) -> str:
    return f"{delivery.target} answered 410 Gone to delivery {delivery.id}"


async def record_attempt(
    store: EventStore,
    delivery: Delivery,
    result: AttemptResult,
    *,
    now: datetime,
    policy: RetryPolicy,
) -> Recorded | None:
    """Append the attempt (and, on a 410, the action, or for a referral webhook the
    partner's webhook, switched off in the same append).

    On a concurrent change the delivery is reloaded: an attempt on a delivery that is no
    longer pending (someone else finished it) is dropped, None; otherwise it is recorded
    on the new state, since it was made."""
    for _ in range(MAX_CONFLICT_RETRIES):
        outcome = delivery.record_attempt(
            result.status_code,
            result.latency_ms,
            result.error,
            now=now,
            retryable=result.retryable,
            retry_after=result.retry_after,
            base_seconds=policy.base_seconds,
            cap_seconds=policy.cap_seconds,
        )
        events = list(delivery.collect_events())
        if outcome is Outcome.DISABLED and delivery.partner_id is not None:
            partner = await store.load(Partner, delivery.partner_id)
            if partner is not None and partner.disable_webhook(disabled_reason(delivery)):
                events.extend(partner.collect_events())
        elif outcome is Outcome.DISABLED:
            lead_type = await store.load(LeadType, delivery.lead_type_id)
            if lead_type is not None and lead_type.disable_action(
                delivery.action_id, disabled_reason(delivery)
            ):
                events.extend(lead_type.collect_events())
        try:
            appended = await store.append(Append(delivery.workspace_id, events=events))
        except ConcurrencyConflict:
            reloaded = await store.load(Delivery, delivery.id)
            if reloaded is None or reloaded.state is not DeliveryState.PENDING:
                return None
            delivery = reloaded
            continue
        return Recorded(delivery, outcome, appended.positions[0])
    raise RuntimeError(f"gave up recording an attempt of {delivery.id} after conflicts")


async def get_delivery(store: EventStore, workspace_id: UUID | None, delivery_id: UUID) -> Delivery:
    """The delivery, read from its events; another workspace's is missing, alike."""
    delivery = await store.load(Delivery, delivery_id)
    if delivery is None or (workspace_id is not None and delivery.workspace_id != workspace_id):
        raise DeliveryNotFound(f"delivery {delivery_id} does not exist")
    return delivery


async def request_redelivery(
    store: EventStore, workspace_id: UUID | None, delivery_id: UUID, actor: str
) -> tuple[Delivery, int]:
    """A new round of attempts with the same `webhook-id`; `InvalidRedelivery` while the
    delivery is still pending. `workspace_id` None: the operator, any workspace."""
    for _ in range(MAX_CONFLICT_RETRIES):
        delivery = await get_delivery(store, workspace_id, delivery_id)
        delivery.request_redelivery(actor)
        try:
            appended = await store.append(
                Append(delivery.workspace_id, events=delivery.collect_events())
            )
        except ConcurrencyConflict:
            continue
        return delivery, appended.position
    raise RuntimeError(f"gave up requesting a redelivery of {delivery_id} after conflicts")
