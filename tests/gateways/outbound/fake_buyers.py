"""A local buyer endpoint for the campaign tests: answers each request from a script."""

from __future__ import annotations

import asyncio
import http
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Seen:
    """One request the buyer received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = '{"status": "accepted"}'
    content_type: str = "application/json"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Seen], Answer | Awaitable[Answer]]


def accept(price: str | None = None) -> Answer:
    body: dict[str, Any] = {"status": "accepted"}
    if price is not None:
        body["price"] = price
    return Answer(body=json.dumps(body))


def reject(reason: str) -> Answer:
    return Answer(body=json.dumps({"status": "rejected", "reason": reason}))


class FakeBuyer:
    """A bare HTTP/1.1 keep-alive server on 127.0.0.1; `handler` decides each answer."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda _: Answer())
        self.seen: list[Seen] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FakeBuyer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str = "/leads") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, path, headers, body, time.monotonic())
                self.seen.append(seen)
                answer = self.handler(seen)
                if not isinstance(answer, Answer):
                    answer = await answer
                await asyncio.sleep(answer.delay)
                payload = answer.body.encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
                phrase = http.HTTPStatus(answer.status).phrase
                head = (
                    f"HTTP/1.1 {answer.status} {phrase}\r\ncontent-type: {answer.content_type}\r\n"
                    f"content-length: {len(payload)}\r\n{extra}\r\n"
                )
                writer.write(head.encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
