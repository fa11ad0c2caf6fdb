"""A NUL character in any setting is a 422 naming the field, never an event a view cannot
store (PostgreSQL's text and jsonb refuse `\\u0000`; one such event once stopped the
campaigns view for every workspace)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from gateways.bootstrap import Engine

WEBHOOK = {"type": "webhook", "trigger": "received", "url": "https://hooks.example/x"}

CASES: list[tuple[str, dict[str, Any], list[str | int]]] = [
    (
        "/v1/campaigns",
        {
            "name": "Buyer",
            "endpoints": [{"url": "https://buyer.example/x", "headers": {"X-Key": "a\x00b"}}],
        },
        ["endpoints", 0, "headers", "X-Key"],
    ),
    (
        "/v1/campaigns",
        {
            "name": "Buyer",
            "endpoints": [{"url": "https://buyer.example/x", "fields": {"k\x00": 1}}],
        },
        ["endpoints", 0, "fields", "k\x00"],
    ),
    (
        "/v1/lead-automations",
        {"name": "Welcome\x00", "trigger": {"type": "lead_received"}, "steps": []},
        ["name"],
    ),
    (
        "/v1/channels",
        {"type": "email", "name": "Mail", "config": {"host": "smtp.example\x00"}},
        ["config", "host"],
    ),
]


async def test_a_nul_in_settings_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    head = await engine.log.max_position()
    for url, body, path in CASES:
        response = await client.post(url, json=body, headers=ws["h"])
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_failed", error
        assert "NUL" in error["message"], error
        assert error["details"][0]["location"] == ["body", *path], error
    assert await engine.log.max_position() == head


async def test_no_setting_route_lets_a_nul_reach_a_view(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    """Every way a NUL could go in is refused or cleaned: whatever was accepted, every
    view still applies every event."""
    attempts: list[tuple[str, dict[str, Any]]] = [(url, body) for url, body, _ in CASES] + [
        ("/v1/lead-types", {"name": "T\x00", "actions": [WEBHOOK]}),
        (
            "/v1/lead-types",
            {"name": "T", "actions": [{**WEBHOOK, "headers": {"X-A": "a\x00b"}}]},
        ),
        ("/v1/lead-forms", {"name": "F\x00", "fields": [{"key": "name", "label": "N\x00"}]}),
        ("/v1/lead-webhooks", {"name": "W\x00"}),
        ("/v1/partners", {"name": "P\x00", "email": "p@example.com"}),
        ("/v1/lead-pipelines", {"name": "P\x00", "stages": [{"name": "A\x00"}, {"name": "B"}]}),
        ("/v1/leads", {"name": "Ann\x00", "customFields": {"k\x00": "v\x00"}}),
    ]
    for url, body in attempts:
        response = await client.post(url, json=body, headers=ws["h"])
        assert response.status_code < 500, (url, response.text)
    last = await client.post("/v1/leads", json={"name": "After"}, headers=ws["h"])
    position = last.json()["position"]
    for _ in range(100):
        if await engine.projector.wait_for("leads", position, 0.1):
            break
    await asyncio.sleep(0.5)  # the other views follow the same log
    errors = await engine.pool.fetch(
        "SELECT consumer, error FROM consumer_errors WHERE resolved_at IS NULL"
    )
    assert [tuple(e) for e in errors] == []
