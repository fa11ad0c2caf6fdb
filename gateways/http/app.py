"""Builds the FastAPI application around a running Engine."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateways.bootstrap import Engine, check_nats, check_postgres
from gateways.http import (
    deliveries,
    forms,
    history,
    imports,
    inbound_webhooks,
    lead_commands,
    lead_types,
    leads,
    partners,
    pipelines,
    submit,
    timeline,
    users,
    workspaces,
)
from gateways.http.errors import JsonResponse, install_error_handlers
from gateways.http.middleware import BodyLimit, RequestContext
from gateways.status import refresh_metrics


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(
        title="leadlog",
        version="0.1.0",
        description="Event-sourced lead processing engine.",
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
    app.include_router(history.router)
    app.include_router(inbound_webhooks.router)
    app.include_router(submit.router)
    app.include_router(forms.router)
    app.include_router(imports.router)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text format: intake by channel, append latency, consumer lag."""
        running: Engine = request.app.state.engine
        await refresh_metrics(running)
        return Response(running.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["operations"])
    async def healthz(request: Request) -> JsonResponse:
        """Whether PostgreSQL and NATS answer, by name; 503 when either does not."""
        running: Engine = request.app.state.engine
        problems = {
            "postgres": await check_postgres(running.pool),
            "nats": await check_nats(running.nats),
        }
        checks = {
            name: {"ok": problem is None, **({"error": problem} if problem else {})}
            for name, problem in problems.items()
        }
        healthy = all(problem is None for problem in problems.values())
        return JsonResponse(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status_code=200 if healthy else 503,
        )

    return app
