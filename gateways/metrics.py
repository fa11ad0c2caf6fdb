"""Prometheus metrics: intake by channel, append latency, consumer lag, NATS backlog, deliveries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from handlers.intake import Intake, LeadIntake, Receipt


class LoggedLeads(Collector):
    """Leads received and flagged duplicate, by channel, as the log says (through the leads
    view) at the last scrape: every process's intake counts, the CLI's imports included,
    and a restart does not reset them."""

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}

    def set(self, received: Mapping[str, int], duplicates: Mapping[str, int]) -> None:
        self.received = dict(received)
        self.duplicates = dict(duplicates)

    def collect(self) -> Iterator[CounterMetricFamily]:
        received = CounterMetricFamily(
            "leadlog_leads_received", "Leads received, by channel (from the log)", labels=["source"]
        )
        for source, value in sorted(self.received.items()):
            received.add_metric([source], value)
        duplicates = CounterMetricFamily(
            "leadlog_leads_duplicate",
            "Leads received flagged duplicate, by channel (from the log)",
            labels=["source"],
        )
        for source, value in sorted(self.duplicates.items()):
            duplicates.add_metric([source], value)
        yield received
        yield duplicates


@dataclass
class Metrics:
    """One engine's metrics, in a registry of its own (several engines may share a process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.leads = LoggedLeads()
        r.register(self.leads)
        self.replayed = Counter(
            "leadlog_leads_replayed",
            "Retried submissions answered with the first result (by this process)",
            ["source"],
            registry=r,
        )
        self.append_seconds = Histogram(
            "leadlog_append_batch_seconds",
            "Time to commit one group-commit batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.append_commands = Counter(
            "leadlog_append_commands", "Commands committed through the log", registry=r
        )
        self.head = Gauge("leadlog_log_head_position", "The log's last position", registry=r)
        self.lag_events = Gauge(
            "leadlog_consumer_lag_events", "Events a consumer is behind", ["consumer"], registry=r
        )
        self.lag_seconds = Gauge(
            "leadlog_consumer_lag_seconds", "How far behind a consumer is", ["consumer"], registry=r
        )
        self.consumer_errors = Gauge(
            "leadlog_consumer_errors",
            "Unresolved errors a consumer stopped at",
            ["consumer"],
            registry=r,
        )
        self.consumer_stopped = Gauge(
            "leadlog_consumer_stopped",
            "1 while a consumer is stopped (failed at an event, crashed, or needs a rebuild)",
            ["consumer"],
            registry=r,
        )
        self.database_up = Gauge(
            "leadlog_database_up", "1 when PostgreSQL answered the last scrape", registry=r
        )
        self.intake_pending = Gauge(
            "leadlog_nats_intake_pending", "NATS intake messages not yet processed", registry=r
        )
        self.deliveries = Counter(
            "leadlog_deliveries",
            "Delivery attempts (webhooks, emails) by what they came to",
            ["kind", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "leadlog_delivery_attempt_seconds",
            "Time one delivery attempt took (send and answer)",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )

    def observe_batch(self, seconds: float, commands: int) -> None:
        self.append_seconds.observe(seconds)
        self.append_commands.inc(commands)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeteredIntake(LeadIntake):
    """The intake, counting retries answered with the first result (nothing is logged for
    those; what is received comes from the log, see `LoggedLeads`)."""

    def __init__(self, intake: LeadIntake, metrics: Metrics) -> None:
        super().__init__(intake.store)
        self.metrics = metrics

    async def receive(self, intake: Intake) -> Receipt:
        receipt = await super().receive(intake)
        if receipt.replayed:
            self.metrics.replayed.labels(str(intake.source)).inc()
        return receipt

    async def receive_many(self, intakes: Sequence[Intake]) -> list[Receipt | Exception]:
        answers = await super().receive_many(intakes)
        for intake, answer in zip(intakes, answers, strict=True):
            if isinstance(answer, Receipt) and answer.replayed:
                self.metrics.replayed.labels(str(intake.source)).inc()
        return answers
