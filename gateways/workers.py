"""The long-running consumers a serving process runs beside the HTTP app.

What follows the log and must run in one process at a time (each view, each reaction, each
action shard, the NATS relay, the timers and the broadcast queuer) is a leased partition
(`gateways.consumers.leases`): the worker processes of a schema divide them between them,
and one process alone runs them all. What divides its work by itself runs in every worker
process: the outbound senders (deliveries and messages claim rows with leases of their own,
submissions are advanced with optimistic concurrency, so one post per step), NATS intake
(one durable pull consumer shared by every process), and the upgrade rebuilds (each process
rebuilds the views its own code is newer than; the rebuild's lock keeps that to one).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Protocol, TypeVar

from gateways.bootstrap import Engine
from gateways.consumers.action_shards import SHARDS, ActionWorkers, consumer_name
from gateways.consumers.automations import (
    AutomationReaction,
    AutomationTimers,
    BroadcastQueuer,
)
from gateways.consumers.consumer_state import live_consumer
from gateways.consumers.leases import Leases, Partition
from gateways.consumers.projector import Projector
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

ABANDONMENT_TIMERS = "timers:abandonment"
AUTOMATION_TIMERS = "timers:automations"
BROADCASTS = "broadcasts"
PROJECTION_STOP_TIMEOUT = 10.0
"""How long a projection handed to another process may take to finish its batch."""


class Worker(Protocol):
    """Something that runs in the background until stopped (cleanly: finishing its batch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ProjectorHost:
    """`Worker`: the projector's shared parts (registry, LISTEN, rebuild watch), open before
    any projection is leased here and closed after the last one stopped."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def start(self) -> None:
        await self.projector.open()

    async def stop(self) -> None:
        await self.projector.stop()


def leased_partitions(engine: Engine) -> list[Partition]:
    """Every consumer that follows the log and runs in one process at a time, named by
    its checkpoint (or, for a timer, its role)."""
    projector = engine.projector
    tail = projector.tail
    messaging, channels, automations = engine.messaging_parts
    release = ReleasePendingLeads(engine.store, PendingLeadsTable(projector))
    reactors = [
        Reactor(engine.log, engine.store, release, tail=tail),
        Reactor(
            engine.log,
            engine.store,
            AutomationReaction(messaging, channels, automations),
            tail=tail,
        ),
    ]
    actions = ActionWorkers(engine.log, engine.store, ActionRunner(engine.store), tail=tail)
    interval = engine.settings.timer_interval
    abandonment = AbandonmentTimers(projector, engine.store, interval=interval)
    automation_timers = AutomationTimers(messaging, projector, interval=interval)
    broadcasts = BroadcastQueuer(messaging, engine.store)
    relay = NatsRelay(engine)
    return [
        *(
            Partition(
                live_consumer(name),
                partial(projector.start_projection, name),
                partial(projector.stop_projection, name, PROJECTION_STOP_TIMEOUT),
                partial(projector.can_run, name),
                consumer=projector,
            )
            for name in projector.names()
        ),
        *(
            Partition(reactor.consumer, reactor.start, reactor.stop, consumer=reactor)
            for reactor in reactors
        ),
        *(
            Partition(
                consumer_name(shard),
                partial(actions.start_shard, shard),
                partial(actions.stop_shard, shard),
                consumer=actions,
            )
            for shard in range(SHARDS)
        ),
        Partition(ABANDONMENT_TIMERS, abandonment.start, abandonment.stop, consumer=abandonment),
        Partition(
            AUTOMATION_TIMERS,
            automation_timers.start,
            automation_timers.stop,
            consumer=automation_timers,
        ),
        Partition(BROADCASTS, broadcasts.start, broadcasts.stop, consumer=broadcasts),
        Partition(relay.consumer, relay.start, relay.stop, consumer=relay),
    ]


def partition_names(engine: Engine) -> list[str]:
    """The names `leased_partitions` leases, for status pages (builds nothing that runs)."""
    return [partition.name for partition in leased_partitions(engine)]


def build_workers(engine: Engine, *, rebalance_interval: float = 1.0) -> list[Worker]:
    """Every background consumer `leadlog up` runs, in start order; several worker
    processes of one schema divide the leased ones between them, rebalancing every
    `rebalance_interval` seconds."""
    _, channels, _ = engine.messaging_parts
    return [
        ProjectorHost(engine.projector),
        Leases(
            engine.database_url,
            engine.settings.database_schema,
            leased_partitions(engine),
            interval=rebalance_interval,
        ),
        UpgradeRebuilds(engine.projector),
        delivery_worker(engine),
        SubmissionWorker(engine),
        MessageWorker(engine, channels),
        NatsIntake(engine),
    ]


W = TypeVar("W")


def find_workers(workers: Iterable[object], kind: type[W]) -> list[W]:
    """The workers of `kind` among `workers`, whether run directly or under a lease."""
    found: list[W] = []
    for worker in workers:
        if isinstance(worker, kind):
            found.append(worker)
        elif isinstance(worker, Leases):
            for partition in worker.partitions:
                consumer = partition.consumer
                if isinstance(consumer, kind) and not any(f is consumer for f in found):
                    found.append(consumer)
    return found
