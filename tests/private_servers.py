"""PostgreSQL and NATS servers of a test's own, to stop, crash and start again (outage tests
never touch the machine's shared servers)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

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


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Server)


@contextlib.contextmanager
def _started(prefix: str, make: Callable[[Path], S]) -> Iterator[S]:
    """`make`'s servers in a folder of their own, started; stopped and removed on exit."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    server = make(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def started_nats(prefix: str) -> contextlib.AbstractContextManager[PrivateNats]:
    """A private nats-server, started; stopped and its files removed on exit."""
    return _started(prefix, PrivateNats)


class PrivateNatsCluster:
    """nats-servers of the test's own, clustered with JetStream: any one can be crashed."""

    def __init__(self, base: Path, size: int) -> None:
        routes = [free_port() for _ in range(size)]
        self.ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for index, route in enumerate(routes):
            folder = base / f"node-{index}"
            folder.joinpath("store").mkdir(parents=True)
            cluster = [
                "--cluster_name",
                "leadlog-test",
                "--cluster",
                f"nats://127.0.0.1:{route}",
                "--routes",
                ",".join(f"nats://127.0.0.1:{port}" for port in routes if port != route),
            ]
            name = f"node-{index}"
            log = folder / "nats.log"
            self.nodes.append(NatsServer(folder, folder / "store", log, name=name, cluster=cluster))
        nodes = zip(self.nodes, self.ports, strict=True)
        self.url = ",".join(node.url(port) for node, port in nodes)

    def start(self) -> None:
        for node, port in zip(self.nodes, self.ports, strict=True):
            node.start(port)

    def crash(self, name: str) -> None:
        """SIGKILL of the node of that server name."""
        node = next(node for node in self.nodes if node.name == name)
        process = psutil.Process(int(node.store_dir.joinpath("nats.pid").read_text()))
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


def started_nats_cluster(
    prefix: str, size: int = 3
) -> contextlib.AbstractContextManager[PrivateNatsCluster]:
    """A private JetStream cluster of `size` nats-servers, started; stopped and removed on exit."""
    return _started(prefix, lambda base: PrivateNatsCluster(base, size))
