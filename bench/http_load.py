"""A small keep-alive HTTP/1.1 load generator on asyncio streams (cheaper than httpx)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial


@dataclass
class LoadResult:
    count: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def _connection(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    body_for: Callable[[int], bytes],
    deadline: float,
    result: LoadResult,
    pace: float | None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sequence = 0
    next_at = time.perf_counter()
    try:
        while time.perf_counter() < deadline:
            if pace:
                next_at += pace
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            body = body_for(sequence)
            sequence += 1
            request = (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - started)
            status = int(status_line.split()[1])
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.count += 1
            else:
                result.errors += 1
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    body_for: Callable[[int, int], bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> LoadResult:
    """POST from `connections` keep-alive connections for `seconds` (optionally paced to `rate`/s
    in total); `body_for(connection, sequence)` makes each body."""
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + seconds
    pace = connections / rate if rate else None
    await asyncio.gather(
        *(
            _connection(host, port, path, headers, partial(body_for, c), deadline, result, pace)
            for c in range(connections)
        )
    )
    result.elapsed = time.perf_counter() - started
    return result
