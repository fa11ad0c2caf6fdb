"""The long-running consumers a serving process runs beside the HTTP app."""

from __future__ import annotations

from typing import Protocol

from gateways.action_runner import ActionWorkers
from gateways.bootstrap import Engine
from gateways.deliveries import delivery_worker
from gateways.nats_intake import NatsIntake
from gateways.nats_relay import NatsRelay
from gateways.reactor import Reactor
from gateways.read_models import PendingLeadsTable
from gateways.timers import AbandonmentTimers
from handlers.actions import ActionRunner
from handlers.customers import ReleasePendingLeads


class Worker(Protocol):
    """Something that runs in the background until stopped (cleanly: finishing its batch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_workers(engine: Engine) -> list[Worker]:
    """Every background consumer `leadlog up` runs, in start order."""
    release = ReleasePendingLeads(engine.store, PendingLeadsTable(engine.projector))
    return [
        engine.projector,
        Reactor(engine.log, engine.store, release),
        ActionWorkers(engine.log, engine.store, ActionRunner(engine.store)),
        AbandonmentTimers(engine.projector, engine.store, interval=engine.settings.timer_interval),
        delivery_worker(engine),
        NatsIntake(engine),
        NatsRelay(engine),
    ]
