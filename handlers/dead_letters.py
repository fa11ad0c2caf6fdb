"""Recording refused intake messages as dead letters, and listing them from the log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from domain.base import LoggedEvent
from domain.dead_letters import DeadLetter, body_excerpt, clean_detail, clean_headers
from handlers.ports import Append, Claim, EventStore

RECORDED = "dead_letter.recorded"
MAX_SUBJECT = 1000


@dataclass(frozen=True)
class Letter:
    """A refused message as the channel saw it, before it is cut to size for the log."""

    channel: str
    subject: str
    reason: str
    detail: str
    body: bytes
    received_at: datetime
    workspace_id: UUID | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    msg_id: str | None = None
    stream: str | None = None
    stream_seq: int | None = None
    deliveries: int = 1
    # Unique per message (e.g. stream and sequence): a redelivered message records nothing new.
    key: str | None = None


@dataclass(frozen=True)
class RecordedLetter:
    id: UUID
    position: int
    replayed: bool


@dataclass(frozen=True)
class DeadLetterView:
    id: UUID
    position: int
    recorded_at: datetime
    event: DeadLetter.Recorded


def dead_letter_claim(key: str, owner: UUID) -> Claim:
    return Claim(f"dead-letter:{key}", owner)


async def record_dead_letter(store: EventStore, letter: Letter) -> RecordedLetter:
    """Append the letter; a second one with the same `key` writes nothing."""
    body, truncated = body_excerpt(letter.body)
    dead = DeadLetter(
        workspace_id=letter.workspace_id,
        channel=letter.channel,
        subject="".join(c if c.isprintable() else "\ufffd" for c in letter.subject[:MAX_SUBJECT]),
        reason=letter.reason,
        detail=clean_detail(letter.detail),
        body=body,
        body_truncated=truncated,
        body_size=len(letter.body),
        headers=clean_headers(letter.headers),
        msg_id=letter.msg_id,
        stream=letter.stream,
        stream_seq=letter.stream_seq,
        deliveries=letter.deliveries,
        received_at=letter.received_at,
    )
    appended = await store.append(
        Append(
            letter.workspace_id,
            events=dead.collect_events(),
            idempotency=dead_letter_claim(letter.key, dead.id) if letter.key else None,
        )
    )
    if appended.replayed:
        assert letter.key is not None
        holder = appended.allocation.holder(dead_letter_claim(letter.key, dead.id).key)
        return RecordedLetter(holder, 0, replayed=True)
    return RecordedLetter(dead.id, appended.position, replayed=False)


def _view(logged: LoggedEvent) -> DeadLetterView:
    assert isinstance(logged.event, DeadLetter.Recorded)
    return DeadLetterView(
        logged.event.originator_id, logged.position, logged.recorded_at, logged.event
    )


async def list_dead_letters(
    store: EventStore, workspace_id: UUID | None = None, limit: int = 50, page_size: int = 500
) -> list[DeadLetterView]:
    """The newest `limit` dead letters (of one workspace, if given), newest first.

    Read straight from the log by event type, in windows that grow backwards from the head,
    so the newest letters cost a few index reads however long the log and the list grow.
    """
    if limit <= 0:
        return []
    found: list[DeadLetterView] = []
    upper = await store.max_position()
    window = 4096
    while upper > 0 and len(found) < limit:
        lower = max(0, upper - window)
        inside: list[DeadLetterView] = []
        after = lower
        while True:
            page = await store.read(after, page_size, [RECORDED])
            within = [e for e in page if e.position <= upper]
            inside.extend(
                _view(e) for e in within if workspace_id is None or e.workspace_id == workspace_id
            )
            if len(within) < len(page) or len(page) < page_size:
                break
            after = page[-1].position
        found.extend(reversed(inside))
        upper = lower
        window *= 4
    return found[:limit]
