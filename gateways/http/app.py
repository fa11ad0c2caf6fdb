"""Builds the FastAPI application around a running Engine."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateways.bootstrap import Engine, check_nats, check_postgres
from gateways.http import (
    automations,
    broadcasts,
    campaigns,
    channels,
    deliveries,
    forms,
    history,
    imports,
    inbound_webhooks,
    lead_commands,
    lead_types,
    leads,
    messages,
    partners,
    pipelines,
    submission_commands,
    submissions,
    submit,
    timeline,
    tracking,
    users,
    workspaces,
)
from gateways.http.errors import JsonResponse, install_error_handlers
from gateways.http.fast_path import LeadlogApi
from gateways.http.middleware import BodyLimit, RequestContext
from gateways.postgres.errors import RETRY_AFTER_SECONDS, describe, is_unavailable
from gateways.status import refresh_metrics, stopped_consumers
from gateways.web.app import mount_web


def create_app(engine: Engine) -> FastAPI:
    """The API and the web app; `POST /webhooks/leads/<key>` takes the fast path in front
    of the router (`gateways.http.fast_path`), under the same middleware and handlers."""
    app = LeadlogApi(
        title="leadlog",
        version="0.1.0",
        description="Event-sourced lead processing engine.",
        # Served by the web app from vendored assets, so they work offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=engine.settings.max_body_bytes)
    app.add_middleware(RequestContext)
    app.include_router(workspaces.router)
    app.include_router(leads.router)
    app.include_router(lead_commands.router)
    app.include_router(partners.router)
    app.include_router(lead_types.router)
    app.include_router(deliveries.router)
    app.include_router(users.router)
    app.include_router(pipelines.router)
    app.include_router(timeline.router)
    app.include_router(submissions.router)
    app.include_router(submission_commands.router)
    app.include_router(campaigns.router)
    app.include_router(channels.router)
    app.include_router(messages.router)
    app.include_router(automations.router)
    app.include_router(broadcasts.router)
    app.include_router(tracking.router)
    app.include_router(history.router)
    app.include_router(inbound_webhooks.router)
    app.include_router(submit.router)
    app.include_router(forms.router)
    app.include_router(imports.router)
    mount_web(app, engine)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: intake by channel (from the log), append latency,
        consumer lag and stopped consumers; rendered even while PostgreSQL is away."""
        running: Engine = request.app.state.engine
        try:
            await refresh_metrics(running)
        except Exception as error:
            if not is_unavailable(error):
                raise
            running.metrics.database_up.set(0)
        else:
            running.metrics.database_up.set(1)
        return Response(running.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> JsonResponse:
        """Whether PostgreSQL and NATS answer, and whether every consumer runs, by name.

        200 `ok`; 503 `unavailable` when PostgreSQL or NATS does not answer; 503 `degraded`
        when a consumer is stopped (failed at an event, crashed, needs a rebuild), naming
        it: it will not catch up by itself, so alerting must see it."""
        running: Engine = request.app.state.engine
        problems = {
            "postgres": await check_postgres(running.pool),
            "nats": await check_nats(running.nats),
        }
        checks: dict[str, dict[str, object]] = {
            name: {"ok": problem is None, **({"error": problem} if problem else {})}
            for name, problem in problems.items()
        }
        status = "ok" if all(p is None for p in problems.values()) else "unavailable"
        if problems["postgres"] is None:
            try:
                stopped = await asyncio.wait_for(stopped_consumers(running), 2.0)
            except Exception as error:
                if not is_unavailable(error):
                    raise
                checks["consumers"] = {"ok": False, "error": describe(error)}
            else:
                checks["consumers"] = {"ok": not stopped, "stopped": stopped}
                if stopped and status == "ok":
                    status = "degraded"
        headers = None if status == "ok" else {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return JsonResponse(
            {"status": status, "checks": checks},
            status_code=200 if status == "ok" else 503,
            headers=headers,
        )

    return app
