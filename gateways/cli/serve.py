"""The `leadlog` command line: run the engine, and the operator's admin verbs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from enum import StrEnum
from types import FrameType
from typing import Annotated, TypeVar
from uuid import UUID

import orjson
import typer
import uvicorn
import uvloop
from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain.workspaces import InvalidName, Role
from gateways.bootstrap import Engine, start_engine
from gateways.embedded import EmbeddedStackError, StackAlreadyRunning
from gateways.http.app import create_app
from gateways.logs import configure_logging
from gateways.servers import ServerUrls, admin_token, server_urls
from gateways.settings import Settings
from gateways.status import engine_status
from gateways.workers import build_workers
from handlers import workspaces as commands

app = typer.Typer(help="leadlog: an event-sourced lead processing engine.", no_args_is_help=True)
workspaces_app = typer.Typer(help="Create and list workspaces.", no_args_is_help=True)
tokens_app = typer.Typer(help="Issue and revoke API tokens.", no_args_is_help=True)
app.add_typer(workspaces_app, name="workspaces")
app.add_typer(tokens_app, name="tokens")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def main() -> None:
    app()


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


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
            err.print(
                f"leadlog is up on http://{settings.http_host}:{settings.http_port} "
                f"({servers}{'' if workers else '; no workers'}); Ctrl-C stops it",
                soft_wrap=True,
            )
            await _Server(config).serve()
        else:
            err.print(f"leadlog workers are running ({servers}); Ctrl-C stops them", soft_wrap=True)
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
        err.print(f"operator token (saved in {settings.data_dir / 'admin-token'}): {token}")
    elif not settings.admin_token:
        err.print(f"operator token: see {settings.data_dir / 'admin-token'}")
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


@app.command()
def up() -> None:
    """Run everything in one process: servers (embedded unless configured), API and workers."""
    _run(Settings(), start_servers=True)


class ServeRole(StrEnum):
    api = "api"
    workers = "workers"


@app.command()
def serve(role: Annotated[ServeRole, typer.Argument(help="what to serve")]) -> None:
    """Serve one role against configured servers (LEADLOG_DATABASE_URL, LEADLOG_NATS_URL):
    `api` the HTTP app alone, `workers` the projections, reactions, NATS intake and relay
    alone. Run one `workers` beside any number of `api` processes."""
    if role is ServeRole.api:
        _run(Settings(), start_servers=False, workers=False)
    else:
        _run(Settings(), start_servers=False, http=False)


def _with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
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


def _emit(data: object, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.print(human)


@workspaces_app.command("create")
def workspaces_create(
    name: str,
    region: Annotated[str, typer.Option(help="default phone region (ISO 3166)")] = "US",
    as_json: JsonFlag = False,
) -> None:
    """Create a workspace."""
    if len(region) != 2 or not region.isalpha() or not region.isupper():
        raise fail("--region must be a two-letter upper-case ISO 3166 code such as US or GB")
    try:
        created = _with_engine(lambda e: commands.create_workspace(e.store, name, region))
    except InvalidName as error:
        raise fail(str(error)) from None
    _emit(
        {"id": str(created.id), "name": name.strip(), "position": created.position},
        as_json,
        f"created workspace [bold]{name.strip()}[/] {created.id}",
    )


@workspaces_app.command("list")
def workspaces_list(as_json: JsonFlag = False) -> None:
    """List every workspace."""
    views = _with_engine(lambda e: commands.list_workspaces(e.store))
    if as_json:
        _emit(
            [{"id": str(v.id), "name": v.name, "defaultRegion": v.default_region} for v in views],
            True,
            "",
        )
        return
    table = Table("id", "name", "region")
    for view in views:
        table.add_row(str(view.id), view.name, view.default_region)
    out.print(table)


@tokens_app.command("create")
def tokens_create(
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
    role: Annotated[Role, typer.Option(help="the token's role")],
    name: Annotated[str, typer.Option(help="a label for the token")] = "api",
    as_json: JsonFlag = False,
) -> None:
    """Issue an API token; its secret is shown this once."""
    try:
        issued = _with_engine(lambda e: commands.issue_token(e.store, workspace, role, name))
    except commands.WorkspaceNotFound as error:
        raise fail(str(error)) from None
    except InvalidName as error:
        raise fail(str(error)) from None
    _emit(
        {"id": str(issued.id), "token": issued.token, "workspaceId": str(workspace), "role": role},
        as_json,
        f"token {issued.id} ({role}) for workspace {workspace}:\n{issued.token}",
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: UUID,
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
) -> None:
    """Revoke an API token at once."""
    try:
        _with_engine(lambda e: commands.revoke_token(e.store, workspace, token_id))
    except commands.TokenNotFound as error:
        raise fail(str(error)) from None
    out.print(f"revoked token {token_id}")


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Each consumer's position, lag (events and seconds) and last error; the NATS backlog."""

    report = _with_engine(engine_status)
    if as_json:
        _emit(report, True, "")
        return
    out.print(f"log head: position {report['head']}")
    table = Table("consumer", "position", "lag (events)", "lag (s)", "last error")
    consumers = report["consumers"]
    assert isinstance(consumers, list)
    for consumer in consumers:
        table.add_row(
            consumer["name"],
            str(consumer["position"]),
            str(consumer["lagEvents"]),
            str(consumer["lagSeconds"]),
            Text(consumer["lastError"] or "", style="red"),
        )
    out.print(table if consumers else "no consumers have recorded a position yet")
    backlog = report["natsIntake"]
    if isinstance(backlog, dict):
        out.print(
            f"NATS intake: {backlog['pending']} waiting, {backlog['ackPending']} in progress, "
            f"{backlog['redelivered']} redelivered"
        )
    deliveries = report.get("deliveries")
    if isinstance(deliveries, dict):
        out.print(
            f"deliveries: {deliveries['pending']} pending (oldest due "
            f"{deliveries['oldestPendingSeconds']} s ago), {deliveries['failed']} failed, "
            f"{deliveries['disabled']} disabled, {deliveries['succeeded']} succeeded"
        )


def _register_subcommands() -> None:
    # Imported here: these modules import helpers from this one.
    from gateways.cli_deliveries import deliveries_app  # noqa: PLC0415
    from gateways.cli_import import import_command  # noqa: PLC0415
    from gateways.cli_intake import intake_app  # noqa: PLC0415
    from gateways.cli_ops import register as register_ops  # noqa: PLC0415

    app.command("import")(import_command)
    app.add_typer(intake_app, name="intake")
    app.add_typer(deliveries_app, name="deliveries")
    register_ops(app)


_register_subcommands()
