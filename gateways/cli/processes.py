"""`leadlog up --processes N`: the shared port, the API child processes and their supervision."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import structlog
from pydantic import SecretStr

from gateways.settings import Settings

log = structlog.get_logger(__name__)

# uvicorn's default accept backlog.
BACKLOG = 2048
# A child that dies is started again after 1 s, then 2, 4, … at most 30 s; a child that
# served for a minute before it died starts the sequence again.
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STABLE_SECONDS = 60.0
# How long children get to finish their requests when asked to stop, before they are killed.
STOP_TIMEOUT = 10.0
# The module a child runs (`python -m`); it serves the HTTP app alone, like `serve api`.
CHILD_MODULE = "gateways.cli.api_process"

_PR_SET_PDEATHSIG = 1


class PortInUse(Exception):
    """Another process listens on the address `leadlog up` was asked to serve on."""


def default_processes() -> int:
    """One process per CPU core this process may run on (its affinity, else all cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on `host:port` (one per address it resolves to) that the child
    processes can bind beside: SO_REUSEPORT, so the kernel spreads new connections over
    every process's own accept queue."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        # An empty host means every interface, as for uvicorn.
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortInUse(f"{host}:{port}") from None
                raise
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def claim(host: str, port: int) -> list[socket.socket]:
    """`listen`, for the first process: refused if any other process listens there too.

    SO_REUSEPORT lets any process of the same user join the port, so a second `leadlog
    up` that passed the port check at the same moment as this one could bind beside it
    and silently take half its connections. Once listening, this one counts the
    listeners on the port: more than its own means it is not alone, and it backs off."""
    sockets = listen(host, port)
    ours = {_packed(sock.getsockname()[0], sock.family) for sock in sockets}
    listeners = _listeners(port)
    if listeners is not None and sum(1 for a in listeners if _overlaps(a, ours)) > len(sockets):
        for sock in sockets:
            sock.close()
        raise PortInUse(f"{host}:{port}")
    return sockets


def _packed(address: str, family: int) -> bytes:
    return socket.inet_pton(family, address.split("%", 1)[0])


def _overlaps(address: bytes, ours: set[bytes]) -> bool:
    # A wildcard address (all zeros) overlaps every address, of either family.
    return not any(address) or any(address == mine or not any(mine) for mine in ours)


def _listeners(port: int) -> list[bytes] | None:
    """The local addresses of every TCP socket listening on `port` in this network
    namespace (/proc/net/tcp{,6}); None where there is no /proc to read."""
    found: list[bytes] = []
    read_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        read_any = True
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            found.append(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    return found if read_any else None


def child_environment(
    settings: Settings, database_url: str, nats_url: str, admin_token: str | None
) -> dict[str, str]:
    """The environment of an API child: this process's, with every setting as it is here
    (including the servers' URLs this process found, embedded ones too)."""
    env = dict(os.environ)
    values = settings.model_dump() | {
        "database_url": database_url,
        "nats_url": nats_url,
        "admin_token": admin_token,
        "data_dir": settings.data_dir.resolve(),
        "processes": None,
    }
    prefix = str(settings.model_config.get("env_prefix", ""))
    for name, value in values.items():
        key = f"{prefix}{name}".upper()
        for existing in [k for k in env if k.upper() == key]:
            del env[existing]
        if isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif isinstance(value, bool):
            env[key] = str(value).lower()
        elif value is not None:
            env[key] = str(value)
    return env


def die_with_parent(parent: int) -> None:
    """Make sure this process ends when `parent` does, even when it is SIGKILLed: nothing
    may go on serving the port of a `leadlog up` that is gone. Linux sends SIGTERM (a
    graceful stop) when the parent dies; elsewhere `watch_parent` polls for it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"prctl(PR_SET_PDEATHSIG): {os.strerror(number)}")
    # The parent may have died before the line above took effect.
    if os.getppid() != parent:
        raise SystemExit(f"leadlog API process: parent {parent} is gone")


async def watch_parent(parent: int, interval: float = 1.0) -> None:
    """Where PR_SET_PDEATHSIG does not exist: SIGTERM this process once `parent` is gone."""
    if sys.platform == "linux":
        return
    while True:
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


class ApiProcesses:
    """`count` child processes serving the HTTP app beside this one, each started again
    (after a backoff) if it dies, all stopped together by `stop`.

    Children are spawned from the event loop's thread, which must be the main thread:
    PR_SET_PDEATHSIG fires when the spawning *thread* ends, not the process."""

    def __init__(self, count: int, env: Mapping[str, str]) -> None:
        self.count = count
        self._env = dict(env)
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._ready = [asyncio.Event() for _ in range(count)]
        self._settled = [asyncio.Event() for _ in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(slot)) for slot in range(self.count)]

    def pids(self) -> list[int]:
        return [p.pid for p in self._children.values() if p.returncode is None]

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def ready(self, timeout: float) -> int:
        """How many children serve, once each has come to serve or died trying (a child
        that fails at start-up holds up nobody), `stop_soon` ran, or `timeout` passed."""

        async def all_settled() -> None:
            for event in self._settled:
                await event.wait()

        settled = asyncio.create_task(all_settled())
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait(
                {settled, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            settled.cancel()
            stopped.cancel()
        return sum(1 for event in self._ready if event.is_set())

    def stop_soon(self) -> None:
        """Ask every child to stop (SIGTERM) and start none again; safe in a signal handler."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        self._loop.call_soon_threadsafe(self._stopped.set)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every child: SIGTERM, then SIGKILL for any still running after `timeout`."""
        self.stop_soon()
        if not self._tasks:
            return
        _, running = await asyncio.wait(self._tasks, timeout=timeout)
        if running:
            log.warning("api_processes_killed", pids=self.pids(), after_seconds=timeout)
            self._signal(signal.SIGKILL)
            await asyncio.wait(running)

    def _signal(self, signum: int) -> None:
        for process in self._children.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    async def _keep(self, slot: int) -> None:
        delay = FIRST_RESTART_DELAY
        while not self._stopping:
            started = self._loop.time()
            try:
                process, ready = await self._spawn()
            except OSError as error:  # out of processes or file descriptors, for one
                self._settled[slot].set()
                log.error("api_process_not_started", error=str(error), retry_in_seconds=delay)
                await self._pause(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
                continue
            self._children[slot] = process
            if self._stopping:  # stop_soon ran while it was being spawned
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            if await ready:
                self._ready[slot].set()
            self._settled[slot].set()
            code = await process.wait()
            if self._stopping:
                return
            if self._loop.time() - started >= STABLE_SECONDS:
                delay = FIRST_RESTART_DELAY
            log.error(
                "api_process_exited", pid=process.pid, exit_code=code, restart_in_seconds=delay
            )
            await self._pause(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, asyncio.Future[bool]]:
        """A child, and whether it came to serve: it writes a byte to a pipe once it
        listens; the pipe closes unwritten if it dies first."""
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                CHILD_MODULE,
                "--parent",
                str(os.getpid()),
                "--ready-fd",
                str(write_end),
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_end,),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        ready: asyncio.Future[bool] = self._loop.create_future()

        def readable() -> None:
            self._loop.remove_reader(read_end)
            try:
                said = os.read(read_end, 1)
            except OSError:
                said = b""
            os.close(read_end)
            if not ready.done():
                ready.set_result(bool(said))

        self._loop.add_reader(read_end, readable)
        return process, ready
