"""ASGI middleware: request ids with access logs, and the request body size limit."""

from __future__ import annotations

import html as htmlmod
import time
import uuid

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("leadlog.http")

_REQUEST_ID_MAX = 128


_SECRET_PATHS = ("/webhooks/leads/",)


def redact(path: str) -> str:
    """The path as it may be logged: a webhook's URL carries its API key, a secret."""
    for prefix in _SECRET_PATHS:
        if path.startswith(prefix):
            return prefix + "[redacted]"
    return path


class RequestContext:
    """Give every request an id (honouring a sane incoming X-Request-ID) and log it once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = (
            incoming
            if incoming and len(incoming) <= _REQUEST_ID_MAX and incoming.isprintable()
            else uuid.uuid4().hex
        )
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=redact(scope["path"]),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")


# Paths that read their body as a stream (never buffered here), with their own larger limit.
IMPORT_PATH = "/v1/leads/import"
IMPORT_MAX_BYTES = 200 * 1024 * 1024
STREAMED_LIMITS: dict[str, int] = {IMPORT_PATH: IMPORT_MAX_BYTES}
# Browser-facing pages: their refusals are HTML, not the API's JSON envelope.
HTML_PREFIXES = ("/forms/",)


class BodyTooLarge(Exception):
    """A streamed body went past its limit; raised from `receive` to the route reading it."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the request body exceeds the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413 before any route sees them.

    A streamed path is passed through unbuffered and counted as it is read instead; going
    past its limit raises BodyTooLarge inside the route, which knows what it already did.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        streamed = STREAMED_LIMITS.get(path.rstrip("/") or "/")
        limit = streamed or self.max_bytes
        html = path.startswith(HTML_PREFIXES)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await _reply(
                    send, 400, "bad_request", "the Content-Length header is not a number", html=html
                )
                return
            if too_big:
                await self._too_large(send, limit, html)
                return
        if streamed is not None:
            await self.app(scope, _counting(receive, streamed), send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, self.max_bytes, html)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, limit: int, html: bool) -> None:
        await _reply(
            send,
            413,
            "payload_too_large",
            f"the request body exceeds the limit of {limit} bytes",
            {"maxBytes": limit},
            html=html,
        )


def _counting(receive: Receive, limit: int) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


async def _reply(
    send: Send, status: int, code: str, message: str, details: object = None, *, html: bool = False
) -> None:
    if html:
        text = htmlmod.escape(message)
        body = (
            f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{status}</title>'
            f"<main><h1>Sorry, that did not work</h1><p>{text}</p></main></html>"
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
        content_type = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
