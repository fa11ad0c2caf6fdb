"""Inbound webhook keys in memory: an API key's digest → its webhook, kept current from the log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from uuid import UUID

import structlog

from domain.inbound_webhooks import InboundWebhook
from gateways.postgres.errors import describe
from gateways.postgres.event_store import PostgresEventStore
from handlers.inbound_webhooks import WEBHOOK_EVENT_TYPES, webhook_by_digest

log = structlog.get_logger(__name__)

# Digests no webhook held, remembered so a sender stuck on a dead URL costs no query; the
# oldest go first past this many.
MAX_UNKNOWN = 10_000
_PAGE = 500


class WebhookKeys:
    """Resolves an API key's digest to its `InboundWebhook` from memory (one per process).

    Remembered: the webhook (active or not) a looked-up digest named when it was loaded, and
    a bounded set of digests no webhook held. A miss loads from the store (the reservation,
    then the webhook's events) and remembers the answer. A follower task reads the log's
    inbound-webhook events as they commit, woken by the log's LISTEN/NOTIFY and at most once
    every `min_interval`, and forgets every changed webhook and every remembered unknown
    digest; the next request loads afresh. So another process's change counts here within
    milliseconds; `changed` makes this process's own change count at once.

    A load that ran while anything was forgotten is not remembered (it may have read the
    webhook before that change committed), nor one that began before the follower knew
    where the log stood. While PostgreSQL is away the follower retries with a growing pause
    and what is remembered keeps answering.
    """

    def __init__(
        self,
        store: PostgresEventStore,
        *,
        min_interval: float = 0.01,
        poll_interval: float = 1.0,
        max_retry_pause: float = 5.0,
        max_unknown: int = MAX_UNKNOWN,
    ) -> None:
        self.store = store
        self.log = store.log
        self.min_interval = min_interval
        self.poll_interval = poll_interval
        self.max_retry_pause = max_retry_pause
        self.max_unknown = max_unknown
        self._webhooks: dict[str, InboundWebhook] = {}
        self._digest_of: dict[UUID, str] = {}
        self._unknown: dict[str, None] = {}
        # Bumped whenever anything is forgotten: a load that saw it change is not kept.
        self._epoch = 0
        # Every inbound-webhook event at or below this position has been applied.
        self._seen: int | None = None
        # Set (and replaced) after every read of the log; `changed` waits on it.
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def resolve(self, digest: str) -> InboundWebhook | None:
        """The webhook holding the key with this digest (in whatever state), or None."""
        self._follow_log()
        webhook = self._webhooks.get(digest)
        if webhook is not None or digest in self._unknown:
            return webhook
        epoch = self._epoch
        webhook = await webhook_by_digest(self.store, digest)
        if epoch == self._epoch and self._seen is not None and not self._closed:
            self._remember(digest, webhook)
        return webhook

    async def changed(self, webhook_id: UUID, position: int, timeout: float = 1.0) -> None:
        """This process committed a change to the webhook at log `position`: forget it now,
        then wait (at most `timeout`) until the follower has read the log that far. Every
        process's follower is woken by the same commit, so once the caller answers, the
        others have normally applied the change too."""
        self._forget((webhook_id,))
        if position <= 0 or self._closed:
            return
        self._follow_log()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._seen is None or self._seen < position:
            advanced = self._advanced
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), remaining)

    async def close(self) -> None:
        """Stop following the log and forget everything; later lookups go to the store."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._forget(list(self._digest_of))

    def __contains__(self, digest: object) -> bool:
        """Whether this digest is answered from memory."""
        return digest in self._webhooks or digest in self._unknown

    def __len__(self) -> int:
        """How many digests are remembered, known and unknown."""
        return len(self._webhooks) + len(self._unknown)

    @property
    def position(self) -> int | None:
        """The log position up to which changes have been applied (None: not started)."""
        return self._seen

    def _follow_log(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._follow(), name="webhook-keys")

    def _remember(self, digest: str, webhook: InboundWebhook | None) -> None:
        if webhook is None:
            if len(self._unknown) >= self.max_unknown:
                del self._unknown[next(iter(self._unknown))]
            self._unknown[digest] = None
            return
        previous = self._digest_of.get(webhook.id)
        if previous is not None and previous != digest:
            self._webhooks.pop(previous, None)
        self._webhooks[digest] = webhook
        self._digest_of[webhook.id] = digest

    def _forget(self, webhook_ids: Iterable[UUID]) -> None:
        self._epoch += 1
        for webhook_id in webhook_ids:
            digest = self._digest_of.pop(webhook_id, None)
            if digest is not None:
                self._webhooks.pop(digest, None)
        # A digest nobody held may be a new or regenerated key's (or a reactivated one's).
        self._unknown.clear()

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = float("-inf")
        pause = self.min_interval
        failing = False
        while True:
            # Commits come in bursts under load: one read covers them all.
            wait = last_read + self.min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            generation = self.log.generation
            last_read = loop.time()
            try:
                await self._catch_up()
            except Exception as error:
                if not failing:
                    log.warning("webhook keys cannot read the log; retrying", error=describe(error))
                failing = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_retry_pause)
                continue
            self._advanced.set()
            self._advanced = asyncio.Event()
            if failing:
                log.info("webhook keys follow the log again", position=self._seen)
            failing, pause = False, self.min_interval
            try:
                await self.log.wait_for_commit(generation, self.poll_interval)
            except Exception:
                await asyncio.sleep(self.poll_interval)

    async def _catch_up(self) -> None:
        head = await self.log.max_position()
        if self._seen is None:
            # Nothing is remembered yet: every change from here on will be read.
            self._seen = head
            self._epoch += 1
            return
        while self._seen < head:
            records = await self.log.read(
                self._seen, _PAGE, stop=head, event_types=WEBHOOK_EVENT_TYPES
            )
            if records:
                self._forget({record.originator_id for record in records})
            if len(records) < _PAGE:
                self._seen = head
            else:
                self._seen = records[-1].position
