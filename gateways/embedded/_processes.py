"""What the embedded servers and their stack share: the error, the host, ports, processes, logs."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
# Ports other services on a dev machine usually hold; never reuse them even if free now.
AVOID_PORTS = frozenset({4222, 5432, 6222, 8222})
_LOG_TAIL_LINES = 30
_ROTATE_LOG_BYTES = 16 * 1024 * 1024


# Defined below both servers so they can raise it; `stack` re-exports it as its public API.
class EmbeddedStackError(RuntimeError):
    """The embedded servers could not be started or stopped."""


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR, so TIME_WAIT leftovers must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude and port not in AVOID_PORTS:
            return port
    raise EmbeddedStackError(f"could not find a free TCP port on {HOST}")


def wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait for processes to exit; a zombie counts as gone (our pid 1 may reap lazily)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _running(proc: Any) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > _ROTATE_LOG_BYTES:
            log.replace(log.with_suffix(".log.1"))
