"""Messages: every SMS, WhatsApp message and email sent to a lead, and its delivery status.

One tracking model for every sender (an automation's step, a quick send, a broadcast, a
lead-type action): a message is queued with what it says and where it goes, sent at least
once by the message worker (its id is the idempotency key), and then moves through the
provider's statuses `pending → sent → delivered → read`, or ends `failed` / `undelivered`
with the provider's error code and text.

Status reports are applied monotonically and deduplicated: a report of a status the message
has already had is ignored (providers repeat themselves), a late `sent` never downgrades
`delivered`, and `read` implies `delivered`. `failed` / `undelivered` end a message that
was not yet delivered; after `delivered` they are ignored.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate


class MessageStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    UNDELIVERED = "undelivered"


RANK = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
}
FAILURES = frozenset({MessageStatus.FAILED, MessageStatus.UNDELIVERED})

# What providers call their statuses, as ours (Twilio's and WhatsApp's wording).
PROVIDER_STATUSES: dict[str, MessageStatus] = {
    "accepted": MessageStatus.PENDING,
    "queued": MessageStatus.PENDING,
    "scheduled": MessageStatus.PENDING,
    "sending": MessageStatus.PENDING,
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
    "undelivered": MessageStatus.UNDELIVERED,
    "canceled": MessageStatus.FAILED,
}


class Origin(StrEnum):
    AUTOMATION = "automation"
    QUICK_SEND = "quick_send"
    BROADCAST = "broadcast"
    ACTION = "action"


class Message(Aggregate):
    """One message to one address on one channel."""

    # Chosen by whoever decides the message (from what asked for it, so deciding again
    # makes the same message and a replayed decision never sends twice).
    id: UUID

    class Queued(Aggregate.Created):
        workspace_id: UUID
        lead_id: UUID | None
        channel_id: UUID
        channel: str
        to: str
        # What is sent: `{body}` (SMS), `{subject, body, html?}` (email), or
        # `{template: {name, language, parameters}}` (WhatsApp).
        content: dict[str, Any]
        origin: str
        # The automation run, broadcast or lead-type action it belongs to.
        origin_id: UUID | None = None
        step: int | None = None
        template: dict[str, Any] | None = None

    class Sent(Aggregate.Event):
        """The provider took the message: its id there."""

        provider_id: str
        lead_id: UUID | None = None
        channel: str = ""

        def apply(self, aggregate: Any) -> None:
            aggregate.provider_id = self.provider_id
            aggregate.attempted = True
            aggregate.move(MessageStatus.SENT, self.timestamp)

    class SendFailed(Aggregate.Event):
        """The provider refused it, or it could not be sent (no such number, suppressed)."""

        error_code: str | None
        error: str
        lead_id: UUID | None = None
        channel: str = ""

        def apply(self, aggregate: Any) -> None:
            aggregate.attempted = True
            aggregate.error_code = self.error_code
            aggregate.error = self.error
            aggregate.move(MessageStatus.FAILED, self.timestamp, self.error_code, self.error)

    class StatusReported(Aggregate.Event):
        """A delivery status from the provider's callback (or an email bounce)."""

        status: MessageStatus
        error_code: str | None = None
        error: str | None = None
        reported_at: datetime | None = None
        lead_id: UUID | None = None
        channel: str = ""

        def apply(self, aggregate: Any) -> None:
            seen = {entry["status"] for entry in aggregate.history}
            if self.status is MessageStatus.READ and MessageStatus.DELIVERED not in seen:
                aggregate.move(MessageStatus.DELIVERED, self.timestamp)  # read implies it
            if self.status in FAILURES:
                aggregate.error_code = self.error_code
                aggregate.error = self.error
            aggregate.move(self.status, self.timestamp, self.error_code, self.error)

    @event(Queued)
    def __init__(
        self,
        workspace_id: UUID,
        lead_id: UUID | None,
        channel_id: UUID,
        channel: str,
        to: str,
        content: dict[str, Any],
        origin: str,
        origin_id: UUID | None = None,
        step: int | None = None,
        template: dict[str, Any] | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.lead_id = lead_id
        self.channel_id = channel_id
        self.channel = channel
        self.to = to
        self.content = content
        self.origin = origin
        self.origin_id = origin_id
        self.step = step
        self.status = MessageStatus.PENDING
        self.provider_id: str | None = None
        self.history: list[dict[str, Any]] = []
        self.error_code: str | None = None
        self.error: str | None = None
        self.attempted = False

    @property
    def final(self) -> bool:
        return self.status in FAILURES or self.status is MessageStatus.READ

    @property
    def idempotency_key(self) -> str:
        return f"msg_{self.id.hex}"

    def sent(self, provider_id: str) -> bool:
        if self.provider_id is not None or self.status in FAILURES:
            return False
        self.trigger_event(
            Message.Sent, provider_id=provider_id, lead_id=self.lead_id, channel=self.channel
        )
        return True

    def fail(self, error: str, error_code: str | None = None) -> bool:
        if self.provider_id is not None or self.status in FAILURES:
            return False
        self.trigger_event(
            Message.SendFailed,
            error_code=error_code,
            error=error,
            lead_id=self.lead_id,
            channel=self.channel,
        )
        return True

    def report(
        self,
        status: MessageStatus,
        error_code: str | None = None,
        error: str | None = None,
        reported_at: datetime | None = None,
    ) -> bool:
        """Apply a provider's status; False when it changes nothing (repeated, or older
        than what the message already reached)."""
        if not self.advances(status):
            return False
        self.trigger_event(
            Message.StatusReported,
            status=status,
            error_code=error_code,
            error=error,
            reported_at=reported_at,
            lead_id=self.lead_id,
            channel=self.channel,
        )
        return True

    def advances(self, status: MessageStatus) -> bool:
        seen = {entry["status"] for entry in self.history}
        if status in seen:
            return False
        if status in FAILURES:
            return self.status not in FAILURES and RANK[self.status] < RANK[MessageStatus.DELIVERED]
        if self.status in FAILURES:
            return False
        return RANK[status] > RANK[self.status]

    def move(
        self,
        status: MessageStatus,
        at: datetime,
        error_code: str | None = None,
        error: str | None = None,
    ) -> None:
        self.status = status
        self.history.append(
            {"status": str(status), "at": at.isoformat(), "errorCode": error_code, "error": error}
        )
