"""The embedded servers: a real PostgreSQL and a real NATS JetStream under one data folder."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

from gateways.embedded._processes import (
    AVOID_PORTS,
    EmbeddedStackError,
    free_port,
    port_is_free,
    rotate,
)
from gateways.embedded.nats import NatsServer
from gateways.embedded.postgres import DATABASE_NAME, PG_SYSTEM_USER, PostgresServer

__all__ = [
    "DATABASE_NAME",
    "PG_SYSTEM_USER",
    "EmbeddedStack",
    "EmbeddedStackError",
    "StackAlreadyRunning",
    "StackInfo",
]


@dataclass(frozen=True)
class StackInfo:
    """Where the running embedded servers can be reached."""

    database_url: str
    nats_url: str
    postgres_port: int
    nats_port: int


class StackAlreadyRunning(Exception):
    """Another live process owns the data folder (holds the lock on stack.lock)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        if pid is None:
            holder = "another process"
            how = "stop that process"
        else:
            holder = f"process {pid}{_describe_process(pid)}"
            how = f"stop it (Ctrl-C in its terminal, or `kill -TERM {pid}`)"
        super().__init__(
            f"the data folder {data_dir} is already in use by {holder}, which is running "
            f"its embedded servers; {how} before starting another stack on the same folder, "
            "or point this one at its servers with LEADLOG_DATABASE_URL / LEADLOG_NATS_URL"
        )


class EmbeddedStack:
    """A real PostgreSQL and a real NATS server (JetStream on) owned by this process.

    Layout of ``data_dir``::

        postgres/           PGDATA (initialised once, reused on every later start)
        nats/               JetStream store dir, plus nats.pid
        logs/postgres.log   server logs (rotated to *.log.1 when over 16 MiB at start)
        logs/nats.log
        run/                PostgreSQL unix socket dir (under /tmp when this path is too long)
        stack.json          chosen ports, pids and URLs; ports are reused on the next start
        stack.lock          flock held by the owning process for its lifetime; holds its pid

    Only one process at a time owns a data folder: ``start()`` in a second process raises
    ``StackAlreadyRunning`` and touches nothing. If a previous owner died without calling
    ``stop()`` (nobody holds the lock, but its servers may still run), ``start()`` stops
    those leftovers cleanly (``pg_ctl -m fast stop``; SIGTERM to nats-server) and starts
    fresh servers, rather than adopting them: fresh servers are guaranteed to run with
    this version's settings, and a clean shutdown never risks the data. When run as root,
    PostgreSQL (which refuses root) runs as the system user ``leadlog-pg``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "postgres"
        self.nats_dir = self.data_dir / "nats"
        self.logs_dir = self.data_dir / "logs"
        self.postgres_log = self.logs_dir / "postgres.log"
        self.nats_log = self.logs_dir / "nats.log"
        self.state_path = self.data_dir / "stack.json"
        self.lock_path = self.data_dir / "stack.lock"
        self._postgres = PostgresServer(self.data_dir, self.pgdata, self.postgres_log)
        self._nats = NatsServer(self.data_dir, self.nats_dir, self.nats_log)
        self.socket_dir = self._postgres.socket_dir
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None
        self._info: StackInfo | None = None

    @property
    def info(self) -> StackInfo:
        """The running stack's addresses; raises if it is not started."""
        if self._info is None:
            raise EmbeddedStackError(f"the embedded stack in {self.data_dir} is not started")
        return self._info

    def start(self) -> StackInfo:
        """Start both servers (or return the running ones if this object already did)."""
        with self._mutex:
            if self._info is not None:
                return self._info
            self._acquire_lock()
            try:
                info = self._start_locked()
            except BaseException:
                with contextlib.suppress(Exception):
                    self._stop_servers()
                self._release_lock()
                raise
            self._info = info
            atexit.register(self.stop)
            return info

    def stop(self) -> None:
        """Stop both servers cleanly and give up ownership of the data folder."""
        with self._mutex:
            if self._lock_fd is None:
                return
            if os.getpid() != self._owner_pid:
                # A forked child inherited this object: the servers belong to the parent.
                return
            atexit.unregister(self.stop)
            try:
                self._stop_servers()
            finally:
                self._info = None
                self._release_lock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- ownership -------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StackAlreadyRunning(self.data_dir, self._lock_holder_pid()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._owner_pid = os.getpid()

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def _lock_holder_pid(self) -> int | None:
        # The holder writes its pid right after locking; give it a moment if we raced it.
        for _ in range(20):
            with contextlib.suppress(OSError, ValueError):
                return int(self.lock_path.read_text().strip())
            time.sleep(0.025)
        return None

    # ---- start and stop --------------------------------------------------------------

    def _start_locked(self) -> StackInfo:
        state = self._read_state()
        for path in (self.nats_dir, self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._postgres.choose_user()
        self._nats.stop_leftover()
        self._postgres.stop_leftover()
        rotate(self.postgres_log)
        rotate(self.nats_log)
        self._postgres.prepare_dirs()
        pg_port, nats_port = _choose_ports(state.get("postgres_port"), state.get("nats_port"))
        info = StackInfo(
            database_url=self._postgres.url(pg_port),
            nats_url=self._nats.url(nats_port),
            postgres_port=pg_port,
            nats_port=nats_port,
        )
        self._write_state(info, postgres_pid=None, nats_pid=None)
        self._postgres.start(pg_port)
        nats_pid = self._nats.start(nats_port)
        self._write_state(info, postgres_pid=self._postgres.postmaster_pid(), nats_pid=nats_pid)
        return info

    def _stop_servers(self) -> None:
        errors: list[str] = []
        try:
            self._nats.stop()
        except EmbeddedStackError as exc:
            errors.append(str(exc))
        try:
            self._postgres.stop()
        except EmbeddedStackError as exc:
            errors.append(str(exc))
        state = self._read_state()
        if state:
            state.update(postgres_pid=None, nats_pid=None, owner_pid=None)
            self._write_json(state)
        if errors:
            raise EmbeddedStackError("\n\n".join(errors))

    # ---- stack.json ------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(
        self, info: StackInfo, *, postgres_pid: int | None, nats_pid: int | None
    ) -> None:
        self._write_json(
            {
                "postgres_port": info.postgres_port,
                "nats_port": info.nats_port,
                "database_url": info.database_url,
                "nats_url": info.nats_url,
                "owner_pid": os.getpid(),
                "postgres_pid": postgres_pid,
                "nats_pid": nats_pid,
                "socket_dir": str(self.socket_dir),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )

    def _write_json(self, data: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_path)


def _describe_process(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(psutil.Process(pid).cmdline())
        if cmdline:
            return f" ({cmdline[:120]})"
    return ""


def _choose_ports(recorded_pg: object, recorded_nats: object) -> tuple[int, int]:
    recorded = [p if isinstance(p, int) else 0 for p in (recorded_pg, recorded_nats)]
    chosen: list[int] = []
    for port in recorded:
        if (
            1024 <= port <= 65535
            and port not in AVOID_PORTS
            and port not in chosen
            and port_is_free(port)
        ):
            chosen.append(port)
        else:
            chosen.append(free_port({*chosen, *recorded}))
    return chosen[0], chosen[1]
