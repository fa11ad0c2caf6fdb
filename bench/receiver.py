"""A local HTTP endpoint in its own process that answers every request with one fixed reply."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
from collections.abc import Iterator
from multiprocessing.synchronize import Event as ProcessEvent
from typing import cast

import uvloop


def reply(body: bytes = b"", content_type: str | None = None) -> bytes:
    """A `200 OK` with `body` (and its content type)."""
    head = b"HTTP/1.1 200 OK\r\n"
    if content_type:
        head += f"content-type: {content_type}\r\n".encode()
    return head + f"content-length: {len(body)}\r\n\r\n".encode() + body


class _Answerer(asyncio.Protocol):
    """Answers each request on a keep-alive connection (reading just enough framing)."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(self.answer)


def _serve(port: int, ready: ProcessEvent, answer: bytes) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Answerer(answer), "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def receiver(answer: bytes) -> Iterator[int]:
    """Run the endpoint in a process of its own (so it costs the engine no CPU); its port."""
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_serve, args=(port, ready, answer), daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the local endpoint did not start")
        yield port
    finally:
        process.terminate()
        process.join(5)
