"""`leadlog up` and `leadlog serve api|workers`: run the engine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections.abc import Iterator
from enum import StrEnum
from types import FrameType
from typing import Annotated

import typer
import uvicorn
import uvloop

from gateways.bootstrap import start_engine
from gateways.cli.common import command, err, fail
from gateways.embedded.stack import EmbeddedStackError, StackAlreadyRunning
from gateways.http.app import create_app
from gateways.logs import configure_logging
from gateways.servers import ServerUrls, admin_token, server_urls
from gateways.settings import Settings
from gateways.web.live import stop_streams
from gateways.workers import build_workers


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the stop signal after its graceful shutdown: that would kill
    the process before the engine closes and the embedded servers stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # The board's event streams never end by themselves: the graceful stop waits for them.
        stop_streams()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_on_sigterm(signum: int, _: FrameType | None) -> None:
    # Outside uvicorn's own handling (while servers start), unwind so `finally` blocks run.
    raise SystemExit(128 + signum)


async def _serve(
    settings: Settings, urls: ServerUrls, token: str | None, *, http: bool, workers: bool
) -> None:
    """Run the HTTP app and/or the background workers until Ctrl-C or SIGTERM."""
    engine = await start_engine(settings, urls.database_url, urls.nats_url, token)
    running = build_workers(engine) if workers else []
    servers = f"PostgreSQL {'embedded' if urls.embedded else 'configured'}, " + (
        f"NATS {'embedded' if urls.embedded else 'configured'}"
    )
    try:
        for worker in running:
            await worker.start()
        if http:
            config = uvicorn.Config(
                create_app(engine),
                host=settings.http_host,
                port=settings.http_port,
                log_config=None,
                access_log=False,
                lifespan="off",
                http="httptools",
            )
            err().print(
                f"leadlog is up on http://{settings.http_host}:{settings.http_port} "
                f"({servers}{'' if workers else '; no workers'}); Ctrl-C stops it",
                soft_wrap=True,
            )
            await _Server(config).serve()
        else:
            err().print(
                f"leadlog workers are running ({servers}); Ctrl-C stops them", soft_wrap=True
            )
            await _until_stopped()
    finally:
        for worker in reversed(running):
            await worker.stop()
        await engine.close()


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _run(
    settings: Settings, *, start_servers: bool, http: bool = True, workers: bool = True
) -> None:
    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not http:
        if not (settings.database_url and settings.nats_url):
            raise fail("`serve workers` needs LEADLOG_DATABASE_URL and LEADLOG_NATS_URL")
        urls = ServerUrls(settings.database_url, settings.nats_url, embedded=False)
        try:
            uvloop.run(_serve(settings, urls, None, http=False, workers=True))
        except (OSError, ConnectionError) as error:
            raise fail(f"cannot reach PostgreSQL or NATS: {error}") from None
        return
    if _port_taken(settings.http_host, settings.http_port):
        raise fail(
            f"{settings.http_host}:{settings.http_port} is already in use "
            "(another leadlog up?); set LEADLOG_HTTP_PORT to use another port"
        )
    token, created = admin_token(settings)
    if created:
        err().print(f"operator token (saved in {settings.data_dir / 'admin-token'}): {token}")
    elif not settings.admin_token:
        err().print(f"operator token: see {settings.data_dir / 'admin-token'}")
    if not start_servers and not (settings.database_url and settings.nats_url):
        raise fail("`serve` needs LEADLOG_DATABASE_URL and LEADLOG_NATS_URL (or use `leadlog up`)")
    try:
        with server_urls(settings, share_running=False) as urls:
            uvloop.run(_serve(settings, urls, token, http=True, workers=workers))
    except StackAlreadyRunning as error:
        raise fail(str(error)) from None
    except EmbeddedStackError as error:
        raise fail(f"the embedded servers did not start: {error}") from None
    except (OSError, ConnectionError) as error:
        raise fail(f"cannot reach PostgreSQL or NATS: {error}") from None


def up() -> None:
    """Run everything in one process: servers (embedded unless configured), API and workers."""
    _run(Settings(), start_servers=True)


class ServeRole(StrEnum):
    api = "api"
    workers = "workers"


def serve(role: Annotated[ServeRole, typer.Argument(help="what to serve")]) -> None:
    """Serve one role against configured servers (LEADLOG_DATABASE_URL, LEADLOG_NATS_URL).

    `api` serves the HTTP app alone; `workers` runs the projections, reactions, NATS intake
    and relay alone. Run one `workers` beside any number of `api` processes.
    """
    if role is ServeRole.api:
        _run(Settings(), start_servers=False, workers=False)
    else:
        _run(Settings(), start_servers=False, http=False)


def register(app: typer.Typer) -> None:
    command(app, up)
    command(app, serve)
