"""PostgreSQL and NATS servers of a test's own, to stop, crash and start again (outage tests
never touch the machine's shared servers)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from gateways.embedded.nats import NatsServer
from gateways.embedded.postgres import PostgresServer
from tests.engine_process import free_port


class PrivatePostgres:
    """A PostgreSQL of the test's own (never the machine's shared one): stopped fast,
    crashed, and started again on the same port and data."""

    def __init__(self, base: Path) -> None:
        self.server = PostgresServer(base, base / "pgdata", base / "postgres.log")
        self.port = free_port()
        self.url = self.server.url(self.port)
        self.server.choose_user()

    def start(self) -> None:
        self.server.prepare_dirs()
        self.server.start(self.port)

    def stop_fast(self) -> None:
        """`pg_ctl -m fast stop`: sessions are terminated, a shutdown checkpoint is written."""
        self.server.stop()

    def crash(self) -> None:
        """SIGKILL of the postmaster and every backend: what a power cut leaves behind (the
        next start replays the WAL)."""
        pid = self.server.postmaster_pid()
        assert pid is not None
        postmaster = psutil.Process(pid)
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        _, alive = psutil.wait_procs(processes, timeout=10)
        assert not alive


@contextlib.contextmanager
def started_postgres(prefix: str) -> Iterator[PrivatePostgres]:
    """A private PostgreSQL, started; stopped and its files removed on exit."""
    # Outside pytest's temp folder, which is 0700 (PostgreSQL runs as another user as root).
    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = PrivatePostgres(base)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop_fast()
        shutil.rmtree(base, ignore_errors=True)


class PrivateNats:
    """A nats-server of the test's own, stopped and started again on the same port and store."""

    def __init__(self, base: Path) -> None:
        base.joinpath("store").mkdir()
        self.server = NatsServer(base, base / "store", base / "nats.log")
        self.port = free_port()
        self.url = self.server.url(self.port)

    def start(self) -> None:
        self.server.start(self.port)

    def stop(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def started_nats(prefix: str) -> Iterator[PrivateNats]:
    """A private nats-server, started; stopped and its files removed on exit."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = PrivateNats(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
