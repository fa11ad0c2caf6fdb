"""The JSON error envelope `{"error": {"code", "message", "details"}}` and its handlers."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.campaigns import UnknownCampaign
from domain.workspaces import InvalidName
from gateways.consumers.read_models import ViewBehind, ViewNeedsRebuild
from gateways.postgres.errors import (
    RETRY_AFTER_SECONDS,
    describe,
    expire_connections,
    is_unavailable,
)
from handlers.ports import ConcurrencyConflict, ReservationTaken
from handlers.workspaces import TokenNotFound, WorkspaceNotFound

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """Raised by routes for any 4xx the client should see."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class JsonResponse(Response):
    """JSON rendered by orjson (UUIDs and datetimes included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, message: str, details: Any = None) -> JsonResponse:
    """The envelope; a 503 (a dependency away, a view behind) always says when to retry."""
    body = {"error": {"code": code, "message": message, "details": details}}
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JsonResponse(body, status_code=status, headers=headers)


def unavailable_response() -> JsonResponse:
    """503 `database_unavailable`: PostgreSQL cannot serve the request now; retry later."""
    return error_response(
        503,
        "database_unavailable",
        "the database is unavailable; retry after a moment",
        {"retryAfterSeconds": RETRY_AFTER_SECONDS},
    )


# Exception classes that may be (or wrap) a database outage, handled where the route raised
# them: a handler for `Exception` itself runs only after Starlette's error middleware has
# decided on a 500 and re-raised.
_MAYBE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ExceptionGroup,
)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JsonResponse:
        return error_response(error.status, error.code, error.message, error.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JsonResponse:
        problems = [
            {
                "location": list(e.get("loc", ())),
                "message": e.get("msg", ""),
                "type": e.get("type", ""),
            }
            for e in error.errors()
        ]
        if any(p["type"] == "json_invalid" for p in problems):
            return error_response(400, "malformed_json", "the body is not valid JSON", problems)
        return error_response(422, "validation_failed", "the request is not valid", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JsonResponse:
        code = _STATUS_CODES.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(InvalidName)
    async def invalid_name(_: Request, error: InvalidName) -> JsonResponse:
        return error_response(422, "validation_failed", str(error))

    @app.exception_handler(UnknownCampaign)
    async def unknown_campaign(_: Request, error: UnknownCampaign) -> JsonResponse:
        return error_response(422, "unknown_campaign", str(error))

    @app.exception_handler(WorkspaceNotFound)
    @app.exception_handler(TokenNotFound)
    async def not_found(_: Request, error: LookupError) -> JsonResponse:
        return error_response(404, "not_found", str(error))

    @app.exception_handler(ConcurrencyConflict)
    async def conflict(_: Request, error: ConcurrencyConflict) -> JsonResponse:
        return error_response(409, "conflict", str(error))

    @app.exception_handler(ViewBehind)
    async def view_not_ready(_: Request, error: ViewBehind) -> JsonResponse:
        # A command that consults a view (a pipeline's stages that still hold leads) when
        # the view is behind, stopped at a failing event or waiting for its rebuild.
        code = "view_rebuild_needed" if isinstance(error, ViewNeedsRebuild) else "view_behind"
        return error_response(503, code, str(error))

    @app.exception_handler(ReservationTaken)
    async def taken(_: Request, error: ReservationTaken) -> JsonResponse:
        return error_response(409, "already_exists", str(error))

    async def unavailable(request: Request, error: Exception) -> JsonResponse:
        log.warning("database unavailable", error=describe(error))
        engine = getattr(request.app.state, "engine", None)
        if engine is not None:
            await expire_connections(engine.pool)
        return unavailable_response()

    async def database_error(request: Request, error: Exception) -> JsonResponse:
        if is_unavailable(error):
            return await unavailable(request, error)
        log.error("unhandled error", error=repr(error), exc_info=error)
        return error_response(500, "internal_error", "an unexpected error occurred")

    for kind in _MAYBE_UNAVAILABLE:
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JsonResponse:
        if is_unavailable(error):
            return await unavailable(request, error)
        log.exception("unhandled error", error=repr(error))
        return error_response(500, "internal_error", "an unexpected error occurred")
