"""Outbound webhooks: scheduled deliveries sent by the delivery worker to a fast local receiver."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta

import uvloop

from bench.receiver import receiver, reply
from bench.report import Report
from domain.base import DomainEvent
from domain.deliveries import Delivery, DeliveryKind
from domain.lead_types import LeadType, Referral, Webhook
from domain.triggers import Trigger
from gateways.bootstrap import Engine, start_engine
from gateways.outbound.deliveries import DeliveryWorker
from gateways.settings import Settings
from handlers.ports import Append
from handlers.workspaces import create_workspace

DELIVERIES = 20_000
PER_APPEND = 250
TARGET = 2_000


async def _schedule(engine: Engine, url: str, count: int) -> None:
    workspace = (await create_workspace(engine.store, "bench-deliveries")).id
    action = Webhook(trigger=Trigger.RECEIVED, url=url)
    lead_type = LeadType(
        workspace_id=workspace, name="bench", referral=Referral(), actions=[action], actor="bench"
    )
    lead_type.issue_secret(action.id, timedelta(0), "bench")
    await engine.store.append(Append(workspace, events=lead_type.collect_events()))
    payload = {
        "name": "Bench Lead",
        "email": "lead@bench.test",
        "phone": "+14155552671",
        "tags": ["bench"],
        "customFields": {"budget": 5000, "plan": "pro"},
        "eventtype": "deliveryndupe",
    }

    def batch(size: int) -> Append:
        events: list[DomainEvent] = []
        for _ in range(size):
            delivery = Delivery(
                workspace_id=workspace,
                lead_id=uuid.uuid4(),
                lead_type_id=lead_type.id,
                action_id=action.id,
                trigger=Trigger.RECEIVED_NOT_DUPLICATE,
                event_code="deliveryndupe",
                kind=DeliveryKind.WEBHOOK,
                target=url,
                format="form",
                payload=payload,
                headers={},
                max_attempts=6,
                timeout_seconds=10.0,
            )
            events.extend(delivery.collect_events())
        return Append(workspace, events=events)

    for start in range(0, count, PER_APPEND * 4):
        await asyncio.gather(
            *(
                engine.store.append(batch(min(PER_APPEND, count - s)))
                for s in range(start, min(start + PER_APPEND * 4, count), PER_APPEND)
            )
        )


async def bench_deliveries(
    report: Report, database_url: str, nats_url: str, count: int = DELIVERIES
) -> float:
    """Deliveries per second with every view running in the same process, as `leadlog
    serve workers` runs them: a backlog drained (the budget), then a stream scheduled
    while the worker sends (the scheduling's own cost included)."""
    with receiver(reply()) as port:
        return await _run(report, database_url, nats_url, count, port)


async def _run(report: Report, database_url: str, nats_url: str, count: int, port: int) -> float:
    settings = Settings(
        database_schema=f"bench_{uuid.uuid4().hex[:8]}",
        nats_prefix=f"bench{uuid.uuid4().hex[:8]}",
        allow_private_webhook_targets=True,
    )
    engine = await start_engine(settings, database_url, nats_url, None)
    worker = DeliveryWorker(engine.pool, engine.log, engine.store, settings, metrics=engine.metrics)
    url = f"http://127.0.0.1:{port}/hook"
    try:
        await engine.projector.start()
        await _schedule(engine, url, count)
        head = await engine.log.max_position()
        while not await engine.projector.wait_for("deliveries", head, 1.0):
            pass
        started = time.perf_counter()
        await worker.start()
        while worker.attempts < count:
            await asyncio.sleep(0.02)
        drained = time.perf_counter() - started

        started = time.perf_counter()
        await _schedule(engine, url, count)
        scheduled = time.perf_counter() - started
        while worker.attempts < 2 * count:
            await asyncio.sleep(0.02)
        streamed = time.perf_counter() - started
    finally:
        await worker.stop()
        await engine.projector.stop()
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    rate = count / drained
    thousands = count // 1000
    report.add(
        f"Outbound webhooks ({thousands}k due, signed, local receiver)",
        rate,
        "deliveries/s",
        at_least=TARGET,
        note="every view running in the same process",
    )
    report.add(
        f"Outbound webhooks ({thousands}k scheduled while sending)",
        count / streamed,
        "deliveries/s",
        note=f"scheduling them in the same process took {scheduled:.1f} s of {streamed:.1f} s",
    )
    return rate


if __name__ == "__main__":  # `python -m bench.deliveries` against LEADLOG_DATABASE_URL / _NATS_URL
    uvloop.run(
        bench_deliveries(
            Report(),
            os.environ["LEADLOG_DATABASE_URL"],
            os.environ["LEADLOG_NATS_URL"],
            int(sys.argv[1]) if len(sys.argv) > 1 else DELIVERIES,
        )
    )
