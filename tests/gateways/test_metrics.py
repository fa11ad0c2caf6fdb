"""GET /metrics: what a Prometheus scrape sees after real traffic."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_after_intake(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    last: dict[str, Any] = {}
    for name in ("A", "B"):
        response = await client.post(
            "/v1/leads", json={"name": name, "email": "same@example.com"}, headers=ws["h"]
        )
        last = response.json()
    retry = {**ws["h"], "Idempotency-Key": "once"}
    for _ in range(2):
        await client.post("/v1/leads", json={"name": "C"}, headers=retry)
    # let the views reach the last lead, so their lag is 0
    await client.get("/v1/leads", params={"after": last["position"]}, headers=ws["h"])
    async with asyncio.timeout(10):
        while True:
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            found = samples(response.text)
            if found.get(("leadlog_consumer_lag_events", (("consumer", "projection:leads"),))) == 0:
                break
            await asyncio.sleep(0.1)
    manual = (("source", "manual"),)
    assert found[("leadlog_leads_received_total", manual)] == 3
    assert found[("leadlog_leads_duplicate_total", manual)] == 1
    assert found[("leadlog_leads_replayed_total", manual)] == 1
    assert found[("leadlog_append_batch_seconds_count", ())] >= 1
    assert found[("leadlog_log_head_position", ())] >= last["position"]
    assert found[("leadlog_consumer_errors", (("consumer", "projection:leads"),))] == 0
