"""`POST /webhooks/leads/<key>` served without routing: the app's own middleware, then the route."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateways.http.inbound_webhooks import ingest

INGEST_PREFIX = "/webhooks/leads/"


def ingest_key(scope: Scope) -> str | None:
    """The API key when the request is exactly `POST /webhooks/leads/<key>`, the one path
    the ingest route matches (a key of one or more characters, no `/`); None otherwise."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not path.startswith(INGEST_PREFIX) or path.find("/", len(INGEST_PREFIX)) != -1:
        return None
    return path[len(INGEST_PREFIX) :] or None


async def _ingest(scope: Scope, receive: Receive, send: Send) -> None:
    key = ingest_key(scope)
    assert key is not None
    response = await ingest(key, Request(scope, receive, send))
    await response(scope, receive, send)


def with_app_middleware(app: FastAPI, endpoint: ASGIApp) -> ASGIApp:
    """`endpoint` inside the layers FastAPI puts around its router, built the same way: the
    500 handler, every middleware added to the app (request id and access log, body limit),
    the exception handlers (the error envelope, 503 for an unavailable database).

    Left out: FastAPI's OpenTelemetry exception hook and app-wide body limit, which act only
    when telemetry is configured or `max_body_size` is set (then nothing takes this path),
    and the exit stack that closes uploaded files (this route takes none)."""
    error_handler = None
    handlers = {}
    for key, value in app.exception_handlers.items():
        if key in (500, Exception):
            error_handler = value
        else:
            handlers[key] = value
    layers = [
        Middleware(ServerErrorMiddleware, handler=error_handler, debug=app.debug),
        *app.user_middleware,
        Middleware(ExceptionMiddleware, handlers=handlers, debug=app.debug),
    ]
    for cls, args, kwargs in reversed(layers):
        endpoint = cls(endpoint, *args, **kwargs)
    return endpoint


class FastPath:
    """Sends exactly `POST /webhooks/leads/<key>` to `ingest` and everything else to `app`.

    Per request the ingest route cost more in routing (matching ~200 routes), dependency
    solving and exit stacks than in its own work; none of it changes the answer."""

    def __init__(self, app: ASGIApp, ingest: ASGIApp) -> None:
        self.app = app
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A request FastAPI's own telemetry observes keeps the full stack that reports it.
        if scope.get("fastapi.telemetry") is None and ingest_key(scope) is not None:
            await self.ingest(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class LeadlogApi(FastAPI):
    """The FastAPI app with the ingest fast path in front of its middleware and router.

    It sits inside FastAPI's own entry (which sets `scope["app"]` and, when configured,
    OpenTelemetry) and outside everything else; the FastAPI route stays for the OpenAPI
    document and for anything the fast path does not take."""

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.max_body_size is not None:
            return stack
        return FastPath(stack, with_app_middleware(self, _ingest))
