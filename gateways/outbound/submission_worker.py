"""The submission worker: runs every submission through its campaign's pipeline.

Where work comes from, like the delivery worker:

* **The log**, for promptness: new submissions (`submission.created`) and first-submission
  actions completed (`submission.action_completed`) are read as they commit.
* **The `submissions` view**, for durability: every `interval` seconds (and at once on
  start) it asks for submissions that are not finished and have not moved for a while,
  and for first-submission actions whose time limit is over. A restart, a crash, a
  database outage: whatever was in progress is found again and taken on from its last
  recorded step.

What happens to a submission is decided by `handlers.submissions.SubmissionPipeline` on the
submission as loaded from the log, with optimistic concurrency, so several workers (in
several processes) may take the same submission: each step is recorded once, and one post
is sent by the one worker whose `post_started` was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import structlog

from domain.campaigns import Campaign
from gateways.bootstrap import Engine
from gateways.consumers.consumer_state import live_consumer
from gateways.outbound.buyers import BuyerClient
from gateways.outbound.deliveries import AggregateCache
from gateways.outbound.webhook_sender import WebhookSender
from gateways.outbound.work_queue import WorkQueue
from gateways.postgres.errors import after_failure, describe, is_unavailable
from gateways.servers import secret_key
from gateways.web.signing import Signer
from handlers.submissions import SubmissionNotFound, SubmissionPipeline

log = structlog.get_logger(__name__)

PROJECTION = "submissions"
WAKE_EVENTS = ["submission.created", "submission.action_completed"]
CAMPAIGN_EVENTS = ["campaign.updated", "campaign.deleted"]
FOLLOW_BATCH = 1000
# Commits come in bursts: one read serves those a few ms apart (a follower that finds
# nothing would otherwise cost a query per commit while leads pour in).
FOLLOW_PAUSE = 0.02
# A submission not moved for this long is the poll's (the follower normally has it at once).
STALE_SECONDS = 10.0
CALLBACK_PURPOSE = "submission-callback"


def utc_now() -> datetime:
    return datetime.now(UTC)


def public_base(engine: Engine) -> str:
    settings = engine.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return f"http://{settings.http_host}:{settings.http_port}"


def callback_signer(engine: Engine) -> Signer:
    return Signer(secret_key(engine.settings))


def callback_url(engine: Engine, signer: Signer, submission_id: UUID) -> str:
    """Where a first-submission webhook's receiver posts its decision; the signature makes
    the URL the credential (it names one submission and nothing else)."""
    signature = signer.mac(CALLBACK_PURPOSE, str(submission_id))
    return f"{public_base(engine)}/v1/submissions/{submission_id}/callback?signature={signature}"


class SubmissionWorker:
    """`gateways.workers.Worker` that advances submissions."""

    def __init__(
        self,
        engine: Engine,
        *,
        sender: WebhookSender | None = None,
        concurrency: int | None = None,
        interval: float | None = None,
        clock: Callable[[], datetime] = utc_now,
        stop_timeout: float = 30.0,
    ) -> None:
        settings = engine.settings
        self.engine = engine
        self.concurrency = concurrency or settings.submission_concurrency
        self.interval = interval or settings.submission_poll_interval
        self.stop_timeout = stop_timeout
        self.clock = clock
        self._sender = sender or WebhookSender(
            allow_private=settings.allow_private_webhook_targets,
            max_connections=self.concurrency * 2 + 16,
        )
        self._owns_sender = sender is None
        self.campaigns = AggregateCache(engine.store, Campaign, ttl=30.0)
        signer = callback_signer(engine)
        self.pipeline = SubmissionPipeline(
            engine.store,
            BuyerClient(self._sender),
            callback_url=lambda sid: callback_url(engine, signer, sid),
            clock=clock,
            campaign_loader=self.campaigns.get,
        )
        self.advanced = 0
        """Submissions this instance finished advancing (each call), for tests and metrics."""
        self.error: str | None = None
        self._work = WorkQueue(self._advance, self.concurrency)
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        after = await self.engine.log.max_tracking_id(live_consumer(PROJECTION)) or 0
        self._tasks = [
            asyncio.create_task(self._follow(after), name="leadlog-submissions-follower"),
            asyncio.create_task(self._poll(), name="leadlog-submissions-poller"),
        ]
        self._work.start("leadlog-submissions")

    async def stop(self) -> None:
        """Stop taking work; let the submissions in hand finish their step (a post in
        flight gets its answer recorded), cancelled after `stop_timeout`."""
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._work.stop(self.stop_timeout)
        if self._owns_sender:
            await self._sender.aclose()

    # ---- where work comes from ---------------------------------------------------------------

    def enqueue(self, submission_id: UUID) -> None:
        self._work.put(submission_id)

    async def _follow(self, after: int) -> None:
        event_log = self.engine.log
        types = WAKE_EVENTS + CAMPAIGN_EVENTS
        while True:
            try:
                generation = event_log.generation
                records = await event_log.read(after, FOLLOW_BATCH, event_types=types)
                for record in records:
                    if record.event_type in CAMPAIGN_EVENTS:
                        self.campaigns.forget(record.originator_id)
                    else:
                        self.enqueue(record.originator_id)
                if records:
                    after = records[-1].position
                    continue
                await event_log.wait_for_commit(generation, event_log.poll_interval)
                await asyncio.sleep(FOLLOW_PAUSE)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await after_failure(event_log.pool, error)
                log.warning("submission follower retrying", error=describe(error))
                await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        first = True
        while True:
            try:
                for submission_id in await self.due(0.0 if first else STALE_SECONDS):
                    self.enqueue(submission_id)
                first = False
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await after_failure(self.engine.pool, error)
                log.warning("submission poll retrying", error=describe(error))
            await asyncio.sleep(self.interval)

    async def due(self, stale_seconds: float) -> list[UUID]:
        """Unfinished submissions idle for `stale_seconds`, and actions past their limit."""
        async with self.engine.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                (SELECT id FROM submissions
                  WHERE status IN ('pending', 'processing', 'qualified', 'delivered')
                    AND updated_at <= now() - make_interval(secs => $1)
                  ORDER BY updated_at LIMIT 1000)
                UNION
                (SELECT id FROM submissions
                  WHERE action_due_at IS NOT NULL AND action_due_at <= $2
                  ORDER BY action_due_at LIMIT 1000)
                """,
                stale_seconds,
                self.clock(),
            )
        return [row["id"] for row in rows]

    # ---- doing it ------------------------------------------------------------------------------

    async def _advance(self, submission_id: UUID) -> None:
        try:
            progress = await self.pipeline.advance(submission_id)
        except SubmissionNotFound:
            return
        except Exception as error:
            self.error = f"{submission_id}: {describe(error)}"
            if is_unavailable(error):
                await after_failure(self.engine.pool, error)
                log.warning("submission waiting for the database", error=describe(error))
            else:
                log.error(
                    "submission step failed; the poll tries it again",
                    submission_id=str(submission_id),
                    error=repr(error),
                )
            return
        self.error = None
        self.advanced += 1
        if progress.fallback_id is not None:
            self.enqueue(progress.fallback_id)
