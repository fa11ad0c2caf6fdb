"""The drawer's refresh (`GET /board/leads/{id}?down_to=`), in process: it keeps the older
entries an open drawer shows, and a `down_to` that is not a position changes nothing."""

from __future__ import annotations

from typing import Any

import httpx

from gateways.bootstrap import Engine
from tests.conftest import sign_in_manager
from tests.gateways.http.test_lead_commands import add

HTMX = {"HX-Request": "true"}


async def test_a_refresh_keeps_the_older_entries_and_ignores_a_bad_down_to(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Noted")
    for n in range(24):
        added = await client.post(
            f"/v1/leads/{lead['id']}/notes", json={"value": f"n{n}"}, headers=ws["h"]
        )
        assert added.status_code == 201, added.text
    timeline = await client.get(
        f"/v1/leads/{lead['id']}/timeline",
        params={"limit": 200, "after": added.json()["position"]},
        headers=ws["h"],
    )
    positions = [e["position"] for e in timeline.json()["items"]]
    assert len(positions) == 25
    await sign_in_manager(client, engine, ws["id"], "nora@acme.example")
    url = f"/board/leads/{lead['id']}"

    first_page = await client.get(url, headers=HTMX)
    assert first_page.status_code == 200
    assert first_page.text.count("data-timeline-entry") == 20
    kept = await client.get(url, params={"down_to": positions[-3]}, headers=HTMX)
    assert kept.status_code == 200
    assert kept.text.count("data-timeline-entry") == 23
    for garbage in ("abc", "-5", "1e9", "99999999999999999999999", "", "٣"):
        answer = await client.get(url, params={"down_to": garbage}, headers=HTMX)
        assert answer.status_code == 200, (garbage, answer.text[:300])
        assert answer.text.count("data-timeline-entry") == 20, garbage
    beyond = await client.get(url, params={"down_to": positions[0] + 1000}, headers=HTMX)
    assert beyond.text.count("data-timeline-entry") == 20
