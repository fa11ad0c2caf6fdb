"""The long-running consumers a serving process runs beside the HTTP app."""

from __future__ import annotations

from typing import Protocol

from gateways.bootstrap import Engine
from gateways.consumers.action_shards import ActionWorkers
from gateways.consumers.automations import (
    AutomationReaction,
    AutomationTimers,
    BroadcastQueuer,
)
from gateways.consumers.reactor import Reactor
from gateways.consumers.read_models import PendingLeadsTable
from gateways.consumers.timers import AbandonmentTimers
from gateways.consumers.upgrade import UpgradeRebuilds
from gateways.nats.intake import NatsIntake
from gateways.nats.relay import NatsRelay
from gateways.outbound.deliveries import delivery_worker
from gateways.outbound.message_worker import MessageWorker
from gateways.outbound.submission_worker import SubmissionWorker
from handlers.actions import ActionRunner
from handlers.customers import ReleasePendingLeads


def messaging_workers(engine: Engine) -> list[Worker]:
    """Automations (the reaction and its timers) and the message sender."""
    messaging, channels, automations = engine.messaging_parts
    return [
        Reactor(
            engine.log,
            engine.store,
            AutomationReaction(messaging, channels, automations),
            tail=engine.projector.tail,
        ),
        AutomationTimers(messaging, engine.projector, interval=engine.settings.timer_interval),
        MessageWorker(engine, channels),
        BroadcastQueuer(messaging, engine.store),
    ]


class Worker(Protocol):
    """Something that runs in the background until stopped (cleanly: finishing its batch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_workers(engine: Engine) -> list[Worker]:
    """Every background consumer `leadlog up` runs, in start order."""
    release = ReleasePendingLeads(engine.store, PendingLeadsTable(engine.projector))
    return [
        engine.projector,
        UpgradeRebuilds(engine.projector),
        Reactor(engine.log, engine.store, release, tail=engine.projector.tail),
        ActionWorkers(
            engine.log, engine.store, ActionRunner(engine.store), tail=engine.projector.tail
        ),
        AbandonmentTimers(engine.projector, engine.store, interval=engine.settings.timer_interval),
        delivery_worker(engine),
        SubmissionWorker(engine),
        *messaging_workers(engine),
        NatsIntake(engine),
        NatsRelay(engine),
    ]
