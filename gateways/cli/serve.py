"""`leadlog up` and `leadlog serve api|workers`: run the engine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
import uvloop

from gateways.bootstrap import Engine, start_engine
from gateways.cli.common import command, err, fail, load_settings, settle_garbage_collector
from gateways.cli.processes import (
    STOP_TIMEOUT,
    ApiProcesses,
    PortInUse,
    child_environment,
    claim,
    default_processes,
    die_with_parent,
    listen,
    watch_parent,
)
from gateways.embedded.stack import EmbeddedStackError, StackAlreadyRunning
from gateways.http.app import create_app
from gateways.logs import configure_logging
from gateways.nats.streams import StreamRefused
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


# How long `leadlog up` waits for its API children to serve before it says it is up anyway.
CHILDREN_START_TIMEOUT = 60.0


class _Server(uvicorn.Server):
    """uvicorn, minus re-raising the stop signal after its graceful shutdown: that would kill
    the process before the engine closes and the embedded servers stop; plus hooks for
    when it serves and when it is asked to stop."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        on_started: Callable[[], None] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with _on_stop_signals(self.handle_exit):
            yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # The board's event streams never end by themselves: the graceful stop waits for them.
        stop_streams()
        if self._on_exit is not None:
            self._on_exit()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)


def _exit_on_sigterm(signum: int, _: FrameType | None) -> None:
    # Outside uvicorn's own handling (while servers start), unwind so `finally` blocks run.
    raise SystemExit(128 + signum)


def _http_config(engine: Engine, settings: Settings, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(engine),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        **extra,
    )


async def _serve(
    settings: Settings,
    urls: ServerUrls,
    token: str | None,
    *,
    http: bool,
    workers: bool,
    processes: int = 1,
) -> None:
    """Run the HTTP app and/or the background workers until Ctrl-C or SIGTERM; with
    `processes` > 1, also that many processes minus this one serving the HTTP app alone."""
    engine = await start_engine(settings, urls.database_url, urls.nats_url, token)
    settle_garbage_collector()
    running = build_workers(engine) if workers else []
    servers = f"PostgreSQL {'embedded' if urls.embedded else 'configured'}, " + (
        f"NATS {'embedded' if urls.embedded else 'configured'}"
    )
    try:
        for worker in running:
            await worker.start()
        if http and processes > 1:
            await _serve_with_children(engine, settings, urls, token, processes, servers)
        elif http:
            err().print(
                f"leadlog is up on http://{settings.http_host}:{settings.http_port} "
                f"({servers}{'' if workers else '; no workers'}); Ctrl-C stops it",
                soft_wrap=True,
            )
            await _Server(_http_config(engine, settings)).serve()
        else:
            err().print(
                f"leadlog workers are running ({servers}); Ctrl-C stops them", soft_wrap=True
            )
            await _until_stopped()
    finally:
        for worker in reversed(running):
            await worker.stop()
        await engine.close()


async def _serve_with_children(
    engine: Engine,
    settings: Settings,
    urls: ServerUrls,
    token: str | None,
    processes: int,
    servers: str,
) -> None:
    """Serve HTTP here and in `processes - 1` children on the same port; on the way out
    the children stop (and are killed if they take too long) before this returns."""
    sockets = claim(settings.http_host, settings.http_port)
    children = ApiProcesses(
        processes - 1, child_environment(settings, urls.database_url, urls.nats_url, token)
    )
    # Started once this process's engine has migrated the schema: children find it ready.
    children.start()
    try:
        # This process listens already but accepts only once the children serve too (or
        # failed to start): keep-alive clients that connect first would stay on it alone.
        with _on_stop_signals(lambda *_: children.stop_soon()):
            serving = 1 + await children.ready(CHILDREN_START_TIMEOUT)
        if children.stopping:
            return
        count = f"{serving}" if serving == processes else f"{serving} of {processes}"
        err().print(
            f"leadlog is up on http://{settings.http_host}:{settings.http_port} "
            f"({count} processes serve HTTP, this one also runs the workers; {servers}); "
            "Ctrl-C stops it",
            soft_wrap=True,
        )
        await _Server(_http_config(engine, settings), on_exit=children.stop_soon).serve(
            sockets=sockets
        )
    finally:
        await children.stop()
        for sock in sockets:
            sock.close()


def serve_api_process(parent: int, ready_fd: int) -> None:
    """An API child of `leadlog up --processes N` (gateways/cli/api_process.py): the HTTP
    app alone, on the parent's port and servers, until SIGTERM or the parent's end."""
    die_with_parent(parent)
    settings = Settings()
    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not (settings.database_url and settings.nats_url):
        raise SystemExit("leadlog API process: LEADLOG_DATABASE_URL and LEADLOG_NATS_URL unset")
    try:
        uvloop.run(
            _serve_api_process(settings, settings.database_url, settings.nats_url, parent, ready_fd)
        )
    except (OSError, ConnectionError) as error:
        raise SystemExit(f"leadlog API process: cannot serve: {error}") from None


async def _serve_api_process(
    settings: Settings, database_url: str, nats_url: str, parent: int, ready_fd: int
) -> None:
    engine = await start_engine(settings, database_url, nats_url, settings.admin_token)
    settle_garbage_collector()
    watching = asyncio.create_task(watch_parent(parent))
    try:
        # Bound only now, when it is about to accept: the kernel hands a listening socket
        # its share of new connections at once.
        sockets = listen(settings.http_host, settings.http_port)

        def serving() -> None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

        # Finish in time to close the engine before the parent's kill.
        config = _http_config(engine, settings, timeout_graceful_shutdown=STOP_TIMEOUT - 2)
        await _Server(config, on_started=serving).serve(sockets=sockets)
    finally:
        watching.cancel()
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


def _port_in_use(settings: Settings) -> typer.Exit:
    return fail(
        f"{settings.http_host}:{settings.http_port} is already in use "
        "(another leadlog up?); set LEADLOG_HTTP_PORT to use another port"
    )


def _run(
    settings: Settings,
    *,
    start_servers: bool,
    http: bool = True,
    workers: bool = True,
    processes: int = 1,
) -> None:
    configure_logging(settings.log_level)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not http:
        if not (settings.database_url and settings.nats_url):
            raise fail("`serve workers` needs LEADLOG_DATABASE_URL and LEADLOG_NATS_URL")
        urls = ServerUrls(settings.database_url, settings.nats_url, embedded=False)
        try:
            uvloop.run(_serve(settings, urls, None, http=False, workers=True))
        except StreamRefused as error:
            raise fail(str(error)) from None
        except (OSError, ConnectionError) as error:
            raise fail(f"cannot reach PostgreSQL or NATS: {error}") from None
        return
    if _port_taken(settings.http_host, settings.http_port):
        raise _port_in_use(settings)
    token, created = admin_token(settings)
    if created:
        err().print(f"operator token (saved in {settings.data_dir / 'admin-token'}): {token}")
    elif not settings.admin_token:
        err().print(f"operator token: see {settings.data_dir / 'admin-token'}")
    if not start_servers and not (settings.database_url and settings.nats_url):
        raise fail("`serve` needs LEADLOG_DATABASE_URL and LEADLOG_NATS_URL (or use `leadlog up`)")
    try:
        with server_urls(settings, share_running=False) as urls:
            uvloop.run(
                _serve(settings, urls, token, http=True, workers=workers, processes=processes)
            )
    except PortInUse:
        raise _port_in_use(settings) from None
    except (StackAlreadyRunning, StreamRefused) as error:
        raise fail(str(error)) from None
    except EmbeddedStackError as error:
        raise fail(f"the embedded servers did not start: {error}") from None
    except (OSError, ConnectionError) as error:
        raise fail(f"cannot reach PostgreSQL or NATS: {error}") from None


def up(
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            metavar="N",
            min=1,
            show_default=False,
            help="processes serving HTTP on the one port; the first also runs the workers. "
            "Default: LEADLOG_PROCESSES, else one per CPU core; 1 serves from one process.",
        ),
    ] = None,
) -> None:
    """Run everything: servers (embedded unless configured), API and workers.

    One process starts the servers and runs the HTTP app and every worker; with more than
    one process, the others serve the HTTP app alone on the same port (SO_REUSEPORT), are
    started again if they die, and stop with it.
    """
    settings = load_settings()
    count = processes or settings.processes or default_processes()
    _run(settings, start_servers=True, processes=count)


class ServeRole(StrEnum):
    api = "api"
    workers = "workers"


def serve(role: Annotated[ServeRole, typer.Argument(help="what to serve")]) -> None:
    """Serve one role against configured servers (LEADLOG_DATABASE_URL, LEADLOG_NATS_URL).

    `api` serves the HTTP app alone; `workers` runs the projections, reactions, NATS intake
    and relay alone. Run any number of each: worker processes divide the consumers between
    them (leases in PostgreSQL).
    """
    if role is ServeRole.api:
        _run(load_settings(), start_servers=False, workers=False)
    else:
        _run(load_settings(), start_servers=False, http=False)


def register(app: typer.Typer) -> None:
    command(app, up)
    command(app, serve)
