"""What every verb shares: the consoles, errors, JSON output and a short-lived engine."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import orjson
import typer
from rich.console import Console

from gateways.bootstrap import Engine, start_engine
from gateways.embedded.stack import EmbeddedStackError, StackAlreadyRunning
from gateways.logs import configure_logging
from gateways.servers import ServerUrls, server_urls
from gateways.settings import Settings

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
    settings = Settings()
    configure_logging("warning")

    async def run(urls: ServerUrls) -> T:
        engine = await start_engine(settings, urls.database_url, urls.nats_url, None)
        try:
            return await work(engine)
        finally:
            await engine.close()

    try:
        with server_urls(settings) as urls:
            return asyncio.run(run(urls))
    except StackAlreadyRunning as error:
        raise fail(str(error)) from None
    except EmbeddedStackError as error:
        raise fail(f"the embedded servers did not start: {error}") from None


JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


def emit(data: object, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.print(human)
