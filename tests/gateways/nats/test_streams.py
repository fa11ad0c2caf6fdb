"""The engine's JetStream streams: created, brought up to date, or refused in plain words."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from gateways.nats.streams import StreamRefused, ensure_stream
from gateways.settings import Settings
from tests.conftest import Servers, drop_schema, leadlog_cli


@pytest.fixture
async def js(servers: Servers, nats_prefix: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(servers.nats_url)
    try:
        yield nc.jetstream()
    finally:
        for info in await nc.jetstream().streams_info():
            if (info.config.name or "").upper().startswith(nats_prefix.upper()):
                await nc.jetstream().delete_stream(info.config.name or "")
        await nc.close()


def config(prefix: str, *, max_msgs: int = 10, num_replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=f"{prefix.upper()}_S",
        subjects=[f"{prefix}.s.>"],
        max_msgs=max_msgs,
        num_replicas=num_replicas,
    )


async def test_a_stream_is_created_then_brought_up_to_date(
    js: JetStreamContext, nats_prefix: str
) -> None:
    created = await ensure_stream(js, config(nats_prefix, max_msgs=10))
    assert created.config.max_msgs == 10
    updated = await ensure_stream(js, config(nats_prefix, max_msgs=20))
    assert updated.config.max_msgs == 20
    assert (await js.stream_info(f"{nats_prefix.upper()}_S")).config.max_msgs == 20


async def test_more_copies_than_servers_is_refused_naming_the_setting(
    js: JetStreamContext, nats_prefix: str
) -> None:
    with pytest.raises(StreamRefused) as refused:
        await ensure_stream(js, config(nats_prefix, num_replicas=3))
    message = str(refused.value)
    assert f"{nats_prefix.upper()}_S" in message
    assert "LEADLOG_NATS_REPLICAS is 3" in message
    with pytest.raises(NotFoundError):
        await js.stream_info(f"{nats_prefix.upper()}_S")


def test_workers_on_a_single_server_asked_for_three_copies_stop_with_that_message(
    servers: Servers, settings: Settings
) -> None:
    try:
        ran = leadlog_cli(
            servers,
            settings,
            "serve",
            "workers",
            timeout=120,
            extra_env={"LEADLOG_NATS_REPLICAS": "3"},
        )
    finally:
        asyncio.run(drop_schema(servers.database_url, settings.database_schema))
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "error: NATS refused the stream" in ran.stderr
    assert "LEADLOG_NATS_REPLICAS is 3" in ran.stderr
    assert "Traceback" not in ran.stderr and "╭" not in ran.stderr
