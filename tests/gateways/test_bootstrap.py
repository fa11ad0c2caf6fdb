"""The composition root's connections: a NATS cluster named by one setting."""

from __future__ import annotations

import socket

from gateways.bootstrap import connect_nats, nats_servers
from tests.conftest import Servers


def test_a_nats_url_setting_names_one_server_or_a_cluster() -> None:
    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers(" nats://a:4222, nats://b:4222,,nats://c:4222 ") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_any_live_server_of_a_listed_cluster_will_do(servers: Servers) -> None:
    down = f"nats://127.0.0.1:{_unused_port()}"
    nc = await connect_nats(f"{down},{servers.nats_url}")
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port == int(servers.nats_url.rsplit(":", 1)[1])
        assert {f"{url.hostname}:{url.port}" for url in nc.servers} >= {down[7:]}
    finally:
        await nc.close()
