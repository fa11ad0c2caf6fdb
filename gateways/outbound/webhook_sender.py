"""Outbound webhook requests over a lean, SSRF-guarded HTTP/1.1 connection pool."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import math
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx
import orjson

from domain.lead_types import internal_address
from domain.signing import CONTENT_TYPES, FORM, JSON, encode_form
from handlers.deliveries import AttemptResult

# Webhook answers' bodies are not used; what is read of one is bounded.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "leadlog-webhooks/1"


class BlockedTarget(httpx.ConnectError):
    """A webhook target that resolves to a loopback, private, link-local or reserved address."""


def encode_body(fmt: str, payload: Mapping[str, Any]) -> tuple[str, bytes]:
    """(content type, body) of a webhook payload in its format (`form` or `json`)."""
    if fmt == FORM:
        return CONTENT_TYPES[FORM], encode_form(payload)
    if fmt == JSON:
        return CONTENT_TYPES[JSON], orjson.dumps(payload, default=str)
    raise ValueError(f"unknown webhook format {fmt!r}: form or json")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP date."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def blocked_address(address: str) -> bool:
    """Whether an address is anything but a global unicast one (an IPv6 address that embeds
    an IPv4 one is judged by it: `internal_address`)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    return internal_address(ip)


async def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to; `BlockedTarget` if any of them is not global (one
    internal address is enough to refuse: which one a client picks is not ours to trust)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise httpx.ConnectError(f"cannot resolve {host}: {error.strerror}") from error
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        refused = [a for a in addresses if blocked_address(a)]
        if refused or not addresses:
            raise BlockedTarget(
                f"refused: {host} resolves to a non-public address ({', '.join(refused)}); "
                "set LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS=1 to allow it"
            )
    return addresses


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, its responses parsed by httptools (llhttp)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._status = 0
        # The answer's status line and headers are in: its end may be the connection's end.
        self.answered = False
        self.keep_alive = True

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {error}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answered:
            # A body delimited by the connection's end.
            self.keep_alive = False
            self._finish()
        self._fail(httpx.RemoteProtocolError("the server closed the connection"))

    # ---- httptools callbacks ----

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self.answered = True

    def on_body(self, body: bytes) -> None:
        if len(self._body) < MAX_RESPONSE_BYTES:
            self._body += body[: MAX_RESPONSE_BYTES - len(self._body)]

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            self._reset()  # an interim answer (100 Continue): the real one follows
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # ---- use ----

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        assert self.transport is not None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _reset(self) -> None:
        self._headers = []
        self._body = bytearray()
        self._status = 0
        self.answered = False

    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, self._headers, bytes(self._body)))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)


Origin = tuple[str, str, int]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


class ConnectionPool:
    """HTTP/1.1 keep-alive connections per origin, connecting only to vetted addresses.

    Why not httpx's (httpcore's) pool: it re-examines every connection (a `poll` syscall
    each) on every request, so its cost grows with the pool; at 64 connections it spent
    ~1.5 ms of CPU per request here, capping webhooks at a few hundred per second. Here
    idle connections wait in a stack per origin (O(1) per request). Connections go only to
    addresses `resolve` vetted, so a name cannot be re-pointed at an internal address
    between the check and the connection (DNS rebinding). Answers' bodies are read up to
    `MAX_RESPONSE_BYTES`; no proxies, no HTTP/2.
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        allow_private: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._ssl = ssl_context
        self._closed = False

    async def exchange(
        self,
        origin: Origin,
        request: bytes,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Answer:
        """Send one serialised request and read its answer."""
        async with self._slots:
            while True:
                connection = self._take_idle(origin)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(origin, connect_timeout)
                try:
                    async with asyncio.timeout(read_timeout):
                        status, headers, body = await connection.send(request)
                except httpx.RemoteProtocolError:
                    connection.close()
                    if reused and not connection.answered:
                        # The server dropped an idle keep-alive connection: a new one.
                        continue
                    raise
                except TimeoutError:
                    connection.close()
                    raise httpx.ReadTimeout("timed out waiting for the answer") from None
                except BaseException:
                    connection.close()  # cancelled mid-answer: its state is unknown
                    raise
                break
        if connection.keep_alive and not connection.closed and not self._closed:
            self._put_idle(origin, connection)
        else:
            connection.close()
        return Answer(status, headers, body)

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry:
                return connection
            connection.close()
        return None

    def _put_idle(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        connection.idle_since = time.monotonic()
        idle.append(connection)
        while len(idle) > self.max_idle:
            idle.popleft().close()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = scheme == "https"
        last: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                for address in await resolve(host, port, allow_private=self.allow_private):
                    try:
                        _, connection = await loop.create_connection(
                            _Connection,
                            address,
                            port,
                            ssl=self._ssl_context() if tls else None,
                            server_hostname=host if tls else None,
                        )
                    except OSError as error:
                        last = error
                        continue
                    return connection
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {last}")

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart once: where to connect and what to ask for."""

    origin: Origin
    host_header: str
    path: str


@lru_cache(maxsize=4096)
def parse_target(url: str) -> Target:
    """`ValueError` for anything but an absolute http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{parts.scheme or 'no'} scheme: only http and https")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    host = parts.hostname.encode("idna").decode("ascii")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in "\r\n ") or not path.isascii():
        path = quote(path, safe="/?&=%:@!$'()*+,;~[]-._")
    return Target((parts.scheme, host, port), host_header, path)


def serialise(
    method: str, target: Target, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """An HTTP/1.1 request; `ValueError` for a header that would break the framing."""
    lines = [
        f"{method} {target.path} HTTP/1.1",
        f"host: {target.host_header}",
        f"content-length: {len(body)}",
    ]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r} is not a valid HTTP header")
        if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Http11Transport(httpx.AsyncBaseTransport):
    """`ConnectionPool` as an httpx transport, for callers that want an `httpx.AsyncClient`
    with the same SSRF guard (the webhook hot path skips httpx's client layers: they cost
    ~250 µs of CPU per request here)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            target = parse_target(str(request.url))
            body = await request.aread()
            data = serialise(
                request.method,
                target,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                body,
            )
        except ValueError as error:
            raise httpx.UnsupportedProtocol(str(error)) from None
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        answer = await self.pool.exchange(
            target.origin,
            data,
            connect_timeout=timeouts.get("connect"),
            read_timeout=timeouts.get("read"),
        )
        return httpx.Response(
            answer.status,
            headers=[(k, v) for k, v in answer.headers if k.lower() != b"content-encoding"],
            content=answer.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self.pool.aclose()


class WebhookSender:
    """Sends webhook attempts over one shared `ConnectionPool`."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        max_connections: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.pool = ConnectionPool(
            max_connections=max_connections, allow_private=allow_private, ssl_context=ssl_context
        )
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` on the same pool and guard, for other outbound calls."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=Http11Transport(self.pool),
                follow_redirects=False,
                trust_env=False,  # an environment proxy would bypass the address checks
                headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
            )
        return self._client

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> AttemptResult:
        """POST one attempt (redirects are not followed: a 3xx is the receiver's answer and
        counts as success); every failure is an `AttemptResult`, never an exception."""
        started = time.perf_counter()

        def took() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            target = parse_target(url)
            request = serialise("POST", target, headers, body)
        except ValueError as error:
            return AttemptResult(None, took(), f"invalid request: {error}", retryable=False)
        try:
            async with asyncio.timeout(timeout):
                answer = await self.pool.exchange(target.origin, request)
        except BlockedTarget as error:
            return AttemptResult(None, took(), str(error), retryable=False)
        except (TimeoutError, httpx.TimeoutException):
            return AttemptResult(None, took(), f"timed out after {timeout:g} s")
        except (httpx.HTTPError, OSError) as error:
            return AttemptResult(None, took(), f"{type(error).__name__}: {error}")
        status = answer.status
        if 200 <= status < 400:
            return AttemptResult(status, took())
        return AttemptResult(
            status,
            took(),
            f"HTTP {status} {_phrase(status)}".rstrip(),
            retry_after=parse_retry_after(answer.header(b"retry-after")),
        )

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
        await self.pool.aclose()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
