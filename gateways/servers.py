"""Finds the PostgreSQL and NATS a command should use: configured, running embedded, or new."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateways.embedded.stack import EmbeddedStack
from gateways.settings import Settings


@dataclass(frozen=True)
class ServerUrls:
    database_url: str
    nats_url: str
    embedded: bool


def running_embedded(data_dir: Path) -> ServerUrls | None:
    """The URLs of the embedded servers a live `leadlog up` owns in `data_dir`, if any."""
    lock_path = data_dir / "stack.lock"
    state_path = data_dir / "stack.json"
    if not lock_path.exists() or not state_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            state = json.loads(state_path.read_text())
            return ServerUrls(state["database_url"], state["nats_url"], embedded=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def server_urls(settings: Settings, *, share_running: bool = True) -> Iterator[ServerUrls]:
    """Configured servers if set; else (for admin verbs) the running `up`'s; else embedded
    ones owned by this command. `up` never shares: a second one on a folder must refuse."""
    if settings.database_url and settings.nats_url:
        yield ServerUrls(settings.database_url, settings.nats_url, embedded=False)
        return
    running = running_embedded(settings.data_dir.resolve()) if share_running else None
    if running is not None:
        yield ServerUrls(
            settings.database_url or running.database_url,
            settings.nats_url or running.nats_url,
            embedded=True,
        )
        return
    with EmbeddedStack(settings.data_dir) as stack:
        yield ServerUrls(
            settings.database_url or stack.info.database_url,
            settings.nats_url or stack.info.nats_url,
            embedded=True,
        )


def admin_token(settings: Settings) -> tuple[str, bool]:
    """The operator's token: LEADLOG_ADMIN_TOKEN, else the one kept in the data folder
    (created on first use, readable by its owner only). Returns (token, created_now)."""
    if settings.admin_token:
        return settings.admin_token, False
    path = settings.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip(), False
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = "lla_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token, True


def secret_key(settings: Settings) -> bytes:
    """The key that signs the web app's session cookies and CSRF tokens:
    LEADLOG_SECRET_KEY, else the one kept in the data folder (created on first use,
    readable by its owner only; a process that lost the race to create it reads it)."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / "secret-key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under a private name, then linked into place: a process racing
        # this one never reads a half-written key, and the first link wins.
        scratch = settings.data_dir / f".secret-key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
        scratch.unlink()
    return path.read_text().strip().encode()
