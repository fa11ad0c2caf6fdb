"""A view whose code is newer than its live tables is rebuilt by the workers, not an operator."""

from __future__ import annotations

from typing import Any

import httpx

from gateways.bootstrap import Engine
from gateways.consumers.consumer_state import State
from gateways.consumers.projector import Projector
from gateways.consumers.upgrade import UpgradeRebuilds
from tests.gateways.consumers.test_rebuild import NewerLeads, V, add, board_count, wait_until


async def test_an_upgraded_view_is_rebuilt_and_takes_over(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    for i in range(5):
        last = await add(client, ws, f"Lead {i}")
    await board_count(client, ws, last["position"])
    # A process of the new code starts: its `leads` waits, and its worker rebuilds it.
    upgraded = Projector(engine.pool, engine.log, engine.store, [NewerLeads()])
    await upgraded.start()
    worker = UpgradeRebuilds(upgraded, interval=0.1)
    [before] = await upgraded.status()
    assert before.state == State.NEEDS_REBUILD
    await worker.start()
    try:

        async def running() -> bool:
            [status] = await upgraded.status()
            return status.state == State.RUNNING

        assert await wait_until(running, 60)

        async def recorded() -> bool:
            # The swap makes the view run before the worker notes what it rebuilt.
            return worker.rebuilt == ["leads"]

        assert await wait_until(recorded, 10)
        assert upgraded.tables("leads")["leads"] == f"leads_v{V + 1}"
        after = await add(client, ws, "After the upgrade")
        assert await upgraded.wait_for("leads", after["position"], 10)
        rows = await engine.pool.fetchval(
            "SELECT count(*) FROM leads WHERE workspace_id = $1::uuid", ws["id"]
        )
        assert rows == 6
    finally:
        await worker.stop()
        await upgraded.stop()


async def test_an_older_process_never_rebuilds_a_newer_view(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    last = await add(client, ws, "Lead")
    await board_count(client, ws, last["position"])
    newer = Projector(engine.pool, engine.log, engine.store, [NewerLeads()])
    await newer.start()
    newer_worker = UpgradeRebuilds(newer, interval=0.1)
    await newer_worker.start()
    try:

        async def upgraded() -> bool:
            return newer_worker.rebuilt == ["leads"]

        assert await wait_until(upgraded, 60)

        # The engine's own projector runs the old code: at its next batch it stands down,
        # and its worker leaves the newer tables alone.
        await add(client, ws, "After the upgrade")

        async def stood_down() -> bool:
            return [p.name for p in engine.projector.waiting_for_rebuild()] == ["leads"]

        assert await wait_until(stood_down)
        old_worker = UpgradeRebuilds(engine.projector)
        await old_worker.rebuild_upgraded()
        assert old_worker.rebuilt == []
        live = await engine.pool.fetchval(
            "SELECT live_version FROM projection_versions WHERE name = 'leads'"
        )
        assert live == V + 1
    finally:
        await newer_worker.stop()
        await newer.stop()
