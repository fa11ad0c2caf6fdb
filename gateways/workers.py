"""The long-running consumers a serving process runs beside the HTTP app."""

from __future__ import annotations

from typing import Protocol

from gateways.bootstrap import Engine


class Worker(Protocol):
    """Something that runs in the background until stopped (cleanly: finishing its batch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_workers(engine: Engine) -> list[Worker]:
    """Every background consumer `leadlog up` runs, in start order."""
    return []
