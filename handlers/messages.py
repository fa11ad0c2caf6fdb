"""Delivery statuses from the providers, applied to the messages they report on.

The message worker records a send as `Message.Sent` together with the claim
`provider_claim(channel, provider id)` held by the message, so a provider's callback, which
knows only its own message id, finds the message with one key lookup.

A callback may arrive before the send it reports on is recorded (the provider answers the
send and calls back at once, while the worker's append is still in flight). Such a status
is not applied and the callback is answered 200 anyway: providers retry only a non-2xx
answer, and the statuses that follow (or the next repeat of this one) carry the message on.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.messages import Message, MessageStatus
from handlers.ports import Append, EventStore
from handlers.retry import retrying

ATTEMPTS = 20


def provider_claim(channel_id: UUID, provider_id: str) -> str:
    """The key a sent message holds: its id at the provider, on the channel it went out on."""
    return f"msgprov:{channel_id}:{provider_id}"


async def message_of(store: EventStore, channel_id: UUID, provider_id: str) -> UUID | None:
    """The message the provider calls `provider_id`, once its send is recorded."""
    return await store.holder(provider_claim(channel_id, provider_id))


async def apply_status(
    store: EventStore,
    channel_id: UUID,
    provider_id: str,
    status: MessageStatus,
    error_code: str | None,
    error: str | None,
    reported_at: datetime | None,
) -> bool:
    """Apply one status report; True when it changed the message. False for a provider id
    no recorded send holds (unknown, or not recorded yet: see the module's note) and for a
    status that changes nothing (repeated, or older than what the message reached)."""
    message_id = await message_of(store, channel_id, provider_id)
    if message_id is None:
        return False
    return await report_status(store, message_id, status, error_code, error, reported_at)


async def report_status(
    store: EventStore,
    message_id: UUID,
    status: MessageStatus,
    error_code: str | None,
    error: str | None,
    reported_at: datetime | None,
) -> bool:
    """Apply one status report to a known message (see `apply_status`), appended with
    optimistic concurrency: a report racing another reloads and decides again."""

    async def attempt() -> bool:
        message = await store.load(Message, message_id)
        if message is None or not message.report(status, error_code, error, reported_at):
            return False
        await store.append(Append(message.workspace_id, events=message.collect_events()))
        return True

    return await retrying(attempt, ATTEMPTS)
