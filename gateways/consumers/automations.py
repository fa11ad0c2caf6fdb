"""Automations as the engine runs them: the reaction that starts runs and moves their steps,
the timer worker that sends delayed steps, and what they read (channels, automations, runs).

The reaction follows lead events (what starts an automation), message events (what moves a
run on), and automation and channel events (to know the configuration as of each lead event,
read from the views once they have caught up with it). It is a `Reactor`: what it decides is
appended with its checkpoint, so each event is decided exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from domain.automations import Automation
from domain.base import DomainEvent, LoggedEvent
from domain.channels import Channel, ChannelType
from domain.triggers import TRIGGERING_EVENT_TYPES
from domain.users import User
from gateways.consumers.projector import Projector
from gateways.postgres.errors import after_failure, describe, is_unavailable
from gateways.postgres.event_store import PostgresEventStore
from handlers.messaging import Messaging

log = structlog.get_logger(__name__)

VIEW_WAIT = 10.0
CHANNEL_TTL = 5.0
FOLLOW_PAUSE = 0.1
MESSAGE_EVENTS = frozenset({"message.sent", "message.send_failed", "message.status_reported"})
CONFIG_EVENTS = frozenset(
    {
        "automation.created",
        "automation.updated",
        "automation.deleted",
        "channel.created",
        "channel.updated",
        "channel.deleted",
    }
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChannelViews:
    """`handlers.messaging.ChannelDirectory` over the `channels` view and the log."""

    def __init__(self, store: PostgresEventStore, projector: Projector) -> None:
        self.store = store
        self.projector = projector
        self._cached: dict[UUID, tuple[float, Channel | None]] = {}

    def forget(self, channel_id: UUID) -> None:
        self._cached.pop(channel_id, None)

    async def get(self, channel_id: UUID) -> Channel | None:
        cached = self._cached.get(channel_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await self.store.load(Channel, channel_id)
        self._cached[channel_id] = (time.monotonic() + CHANNEL_TTL, found)
        return found

    async def first_of(self, workspace_id: UUID, kind: ChannelType) -> Channel | None:
        async with self.projector.pool.acquire() as conn:
            found = await conn.fetchval(
                """SELECT id FROM channels WHERE workspace_id = $1 AND type = $2
                    AND active AND NOT deleted ORDER BY created_at, id LIMIT 1""",
                workspace_id,
                str(kind),
            )
        return await self.get(found) if found is not None else None


class AutomationViews:
    """`handlers.messaging.AutomationDirectory`: a workspace's live automations as of the
    event being decided. The reaction notes each automation event as it passes; the next
    lead event of that workspace reads the view once it has caught up with that event."""

    def __init__(self, store: PostgresEventStore, projector: Projector) -> None:
        self.store = store
        self.projector = projector
        self._cached: dict[UUID, Sequence[Automation]] = {}
        self._dirty: dict[UUID, int] = {}
        self._ever: set[UUID] = set()

    def note(self, logged: LoggedEvent) -> None:
        if logged.workspace_id is not None and logged.event_type.startswith("automation."):
            self._dirty[logged.workspace_id] = logged.position
            self._ever.add(logged.workspace_id)

    async def ever_had(self, workspace_id: UUID) -> bool:
        """Whether the workspace has (or had) an automation, so runs may exist: a message of
        a workspace without any moves no run (its events need no loading)."""
        if workspace_id in self._ever:
            return True
        async with self.projector.pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM automations WHERE workspace_id = $1)", workspace_id
            )
        if found:
            self._ever.add(workspace_id)
        return bool(found)

    async def active_for(self, workspace_id: UUID) -> Sequence[Automation]:
        dirty = self._dirty.pop(workspace_id, None)
        if dirty is None and workspace_id in self._cached:
            return self._cached[workspace_id]
        if dirty is not None:
            await self.projector.wait_for("automations", dirty, VIEW_WAIT)
        async with self.projector.pool.acquire() as conn:
            ids = await conn.fetch(
                """SELECT id FROM automations WHERE workspace_id = $1 AND active
                    AND NOT deleted ORDER BY created_at, id""",
                workspace_id,
            )
        found = [await self.store.load(Automation, row["id"]) for row in ids]
        live = [a for a in found if a is not None and not a.deleted and a.config.active]
        self._cached[workspace_id] = live
        return live

    async def running_runs(self, lead_id: UUID, automation_id: UUID | None) -> list[UUID]:
        async with self.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT id FROM automation_runs WHERE lead_id = $1 AND status = 'running'
                    AND ($2::uuid IS NULL OR automation_id = $2)""",
                lead_id,
                automation_id,
            )
        return [row["id"] for row in rows]

    async def latest_run(self, automation_id: UUID, lead_id: UUID) -> UUID | None:
        async with self.projector.pool.acquire() as conn:
            found: UUID | None = await conn.fetchval(
                """SELECT id FROM automation_runs WHERE automation_id = $1 AND lead_id = $2
                    ORDER BY created_at DESC, id LIMIT 1""",
                automation_id,
                lead_id,
            )
        return found


def build_messaging(
    store: PostgresEventStore,
    projector: Projector,
    clock: Callable[[], datetime] = utc_now,
) -> tuple[Messaging, ChannelViews, AutomationViews]:
    channels = ChannelViews(store, projector)
    automations = AutomationViews(store, projector)

    async def user_of(user_id: str | None) -> dict[str, Any]:
        if not user_id:
            return {}
        try:
            user = await store.load(User, UUID(user_id))
        except ValueError:
            return {}
        if user is None:
            return {}
        return {"id": str(user.id), "name": user.name, "email": user.email}

    messaging = Messaging(store, channels, automations, clock=clock, user_of=user_of)
    return messaging, channels, automations


class AutomationReaction:
    """The `Reaction` that runs automations (see the module's docstring)."""

    name = "automations"
    event_types = frozenset(
        TRIGGERING_EVENT_TYPES | MESSAGE_EVENTS | CONFIG_EVENTS | {"lead.action_taken"}
    )

    def __init__(
        self, messaging: Messaging, channels: ChannelViews, automations: AutomationViews
    ) -> None:
        self.messaging = messaging
        self.channels = channels
        self.automations = automations

    async def react(self, logged: LoggedEvent) -> Sequence[DomainEvent]:
        if logged.event_type in CONFIG_EVENTS:
            self.automations.note(logged)
            if logged.event_type.startswith("channel."):
                self.channels.forget(logged.event.originator_id)
            return []
        workspace = logged.workspace_id
        # Runs exist only where automations do (the reaction saw their events first).
        message = logged.event_type in MESSAGE_EVENTS and workspace is not None
        if message and workspace is not None and not await self.automations.ever_had(workspace):
            return []
        return await self.messaging.react(logged)


class AutomationTimers:
    """`gateways.workers.Worker` that sends automation steps whose delay is over.

    Durable like the abandonment timers: the due times are rows of the `automation_runs`
    view (derived from the log), polled every `interval` seconds, so a step that came due
    while no worker ran is sent on the first poll after the start. Each is decided on the
    run as loaded from the log with optimistic concurrency: sent once across processes."""

    def __init__(
        self,
        messaging: Messaging,
        projector: Projector,
        *,
        interval: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.messaging = messaging
        self.projector = projector
        self.interval = interval
        self.clock = clock
        self.fired = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="leadlog-automation-timers")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait({task}, timeout=10.0)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run_once(self) -> int:
        async with self.projector.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT id FROM automation_runs WHERE due_at <= $1
                    ORDER BY due_at, id LIMIT 500""",
                self.clock(),
            )
        fired = 0
        for row in rows:
            if self._stop.is_set():
                break
            try:
                if await self.messaging.fire_due(row["id"]):
                    fired += 1
                    self.fired += 1
            except Exception as error:
                if is_unavailable(error):
                    raise
                log.error("automation step failed", run_id=str(row["id"]), error=repr(error))
        return fired

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as error:
                await after_failure(self.projector.pool, error)
                log.warning("automation timers retrying", error=describe(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)


class BroadcastQueuer:
    """`gateways.workers.Worker` that queues broadcasts' messages a chunk at a time.

    On start it reads every broadcast from the log and finishes those left half-queued (a
    restart mid-broadcast resumes where it stopped); then it follows new ones. Queuing is
    decided on the broadcast as loaded, with optimistic concurrency: a chunk is queued
    once however many processes run this."""

    def __init__(self, messaging: Messaging, store: PostgresEventStore) -> None:
        self.messaging = messaging
        self.store = store
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="leadlog-broadcasts")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        event_log = self.store.log
        after = 0
        while True:
            try:
                generation = event_log.generation
                records = await event_log.read(after, 500, event_types=["broadcast.created"])
                for record in records:
                    more = True
                    while more:
                        more = await self.messaging.queue_broadcast(record.originator_id)
                if records:
                    after = records[-1].position
                    continue
                await event_log.wait_for_commit(generation, event_log.poll_interval)
                # One read serves a burst of commits (broadcasts are rare; leads are not).
                await asyncio.sleep(FOLLOW_PAUSE)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await after_failure(event_log.pool, error)
                log.warning("broadcast queuer retrying", error=describe(error))
                await asyncio.sleep(1.0)
