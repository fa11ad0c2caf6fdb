"""A NATS cluster of three under the engine: replicated streams outlive a crashed server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.errors import ServiceUnavailableError

from gateways.bootstrap import connect_nats, start_engine
from gateways.http.app import create_app
from gateways.nats.intake import intake_subject, stream_name
from gateways.nats.relay import events_stream_name
from gateways.workers import build_workers
from tests.conftest import (
    ADMIN_TOKEN,
    Servers,
    delete_streams,
    drop_schema,
    make_workspace,
    settings_for,
)
from tests.private_servers import started_nats_cluster

pytestmark = pytest.mark.slow


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def jetstream_ready(url: str) -> None:
    """Until the cluster has elected its JetStream leader, stream requests are refused."""
    nc = await nats.connect(url.split(","))
    try:

        async def answered() -> bool:
            try:
                await nc.jetstream().account_info()
            except (ServiceUnavailableError, nats.errors.TimeoutError):
                return False
            return True

        await eventually(answered, "the cluster's JetStream leader")
    finally:
        await nc.close()


async def test_replicated_streams_keep_intake_and_the_feed_going_when_a_server_dies(
    servers: Servers, schema_name: str, nats_prefix: str
) -> None:
    with started_nats_cluster("leadlog-cluster-") as cluster:
        await jetstream_ready(cluster.url)
        settings = settings_for(schema_name, nats_prefix, nats_replicas=3)
        engine = await start_engine(settings, servers.database_url, cluster.url, ADMIN_TOKEN)
        workers = build_workers(engine)
        publisher = await connect_nats(cluster.url, name="publisher")
        js = publisher.jetstream()
        try:
            for worker in workers:
                await worker.start()
            transport = httpx.ASGITransport(app=create_app(engine))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                ws = await make_workspace(client)
                subject = intake_subject(nats_prefix, ws["id"], "crm")
                events = events_stream_name(nats_prefix)

                async def publish_until_stored(subject: str, body: bytes, msg_id: str) -> None:
                    # As a publisher should: retry, under the same id, until the stream
                    # answers (it elects a new leader after a crash; the id dedupes retries).
                    deadline = time.monotonic() + 30
                    while True:
                        try:
                            await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                            return
                        except (NoRespondersError, nats.errors.TimeoutError, NatsError):
                            if time.monotonic() > deadline:
                                raise
                            await asyncio.sleep(0.2)

                async def send(batch: str) -> None:
                    for n in range(20):
                        lead = {"name": f"{batch} {n}", "email": f"{batch}-{n}@example.com"}
                        await publish_until_stored(subject, orjson.dumps(lead), f"{batch}-{n}")
                        posted = await client.post("/v1/leads", json=lead, headers=ws["h"])
                        assert posted.status_code == 201, posted.text

                async def leads_total() -> int:
                    listed = await client.get("/v1/leads?limit=1", headers=ws["h"])
                    total: int = listed.json()["total"] if listed.status_code == 200 else -1
                    return total

                async def fed_to_head(expected: int) -> bool:
                    head = await engine.log.max_position()
                    try:
                        info = await js.stream_info(events)
                    except (nats.errors.TimeoutError, NatsError):
                        return False
                    return head >= expected and info.state.last_seq == head

                await send("before")
                for name in (events, stream_name(nats_prefix)):
                    info = await js.stream_info(name)
                    assert info.config.num_replicas == 3
                    assert info.cluster is not None and len(info.cluster.replicas or []) == 2
                await eventually(lambda: _equals(leads_total(), 40), "the first 40 leads")

                leader = (await js.stream_info(events)).cluster
                assert leader is not None and leader.leader is not None
                cluster.crash(leader.leader)

                await send("after")
                await eventually(lambda: _equals(leads_total(), 80), "all 80 leads")
                head = await engine.log.max_position()
                await eventually(lambda: fed_to_head(head), "every event on the NATS feed")
                survivor = await js.stream_info(events)
                assert survivor.cluster is not None and survivor.cluster.leader != leader.leader
        finally:
            for worker in reversed(workers):
                await worker.stop()
            await delete_streams(engine, nats_prefix)
            await engine.close()
            await publisher.close()
            await drop_schema(servers.database_url, schema_name)


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)
