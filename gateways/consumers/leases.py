"""Leases: the consumers that follow the log, divided among a schema's worker processes.

A **partition** is a named unit of consumer work that must run in one process at a time: a
projection (`projection:<name>`), a reaction (`reaction:<name>`), an action shard
(`actions:<i>/<n>`), the NATS relay (`relay:nats`), a timer. Its name is the consumer's own
(its checkpoint's, where it has one), so a partition carries no position of its own: whoever
takes it resumes from the consumer's checkpoint, and a release that adds a partition (a new
view) replays nothing but that new consumer.

**Leasing is PostgreSQL's.** Each worker process (`Leases`) opens one dedicated connection
whose `application_name` names it a member of the schema's workers, and holds a
session-level advisory lock per partition it runs (`pg_try_advisory_lock(class, key)`: the
two-int4 form, whose keys never meet the one-bigint `pg_advisory_xact_lock(hashtext(...))`
per-batch locks, with a class and key derived from the schema and the partition, so
schemas sharing a database never share a lease). The live members are the sessions in
`pg_stat_activity` with that name; who holds what is `pg_locks`. A process that dies loses
its connection and PostgreSQL drops its locks at once; nothing needs to expire.

**Rebalancing**, every `interval` seconds and at once when a member joins or lets go of
partitions (NOTIFY on the lease connection): with P partitions and N members each member's
quota is P // N, the first P % N members (by id) one more. A member over its quota stops the
partitions it least prefers (consumer first, lock after), one under it takes free ones it
prefers (rendezvous hashing on partition and member, so simultaneous takers reach for
different partitions and a dead member's partitions spread over the living). A partition
left free for `orphan_after` seconds (its only possible taker is full, or a member counted
is not taking) is taken by anyone who can run it, quota or not. A partition its process
cannot run (a view waiting for a rebuild of its version) is neither taken nor kept.

**The fence stays.** The lease divides the work; exactly-once still rests on each consumer's
per-batch check (the advisory transaction lock and checkpoint of a projection, the checkpoint
appended with a reaction's or shard's decision). Two processes overlap only briefly, when a
member lost its connection and has not yet noticed, and even then no batch is applied twice.

If the lease connection is lost, every leased consumer of the process is stopped at once and
the process reconnects with a growing pause (the database may be down); it takes its share
again once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import blake2b
from typing import Any

import asyncpg
import structlog

from gateways.postgres.errors import describe

log = structlog.get_logger(__name__)

APPLICATION = "leadlog-worker:"
CHANNEL = "leadlog.leases."
# The longest `application_name` PostgreSQL keeps (NAMEDATALEN - 1); longer ones are cut.
_NAME_LIMIT = 63
_PREFIX_LIMIT = 40
_HOST = re.compile(r"[^A-Za-z0-9.-]")


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Partition:
    """A consumer under a lease: started once its lock is held, stopped before it is let go."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    runnable: Callable[[], bool] = _always
    """Whether this process can run it now; one that cannot is neither taken nor kept."""
    consumer: object = None
    """What runs under the lease, for introspection (tests, status)."""


def _hash32(text: str) -> int:
    """A signed int4, the same in every process and release (unlike `hash`)."""
    return int.from_bytes(blake2b(text.encode(), digest_size=4).digest(), "big", signed=True)


def _score(partition: str, member: str) -> int:
    """Rendezvous weight of `member` for `partition`."""
    return int.from_bytes(blake2b(f"{partition}\0{member}".encode(), digest_size=8).digest())


def _scoped(base: str, schema: str, limit: int) -> str:
    """`base` + `schema`, the schema shortened and suffixed with its digest if too long."""
    name = base + schema
    if len(name) <= limit:
        return name
    digest = blake2b(schema.encode(), digest_size=6).hexdigest()
    return f"{base}{schema[: limit - len(base) - len(digest) - 1]}~{digest}"


def lease_class(schema: str) -> int:
    """The advisory lock class (first int4) of every lease of `schema`."""
    return _hash32(f"leadlog.leases.{schema}")


def lease_key(schema: str, partition: str) -> int:
    """The advisory lock key (second int4) of `partition` in `schema`."""
    return _hash32(f"{schema}/{partition}")


def member_prefix(schema: str) -> str:
    """What every lease connection's `application_name` of `schema` starts with."""
    return _scoped(APPLICATION, schema, _PREFIX_LIMIT) + ":"


def lease_channel(schema: str) -> str:
    """The NOTIFY channel on which the members of `schema` ask each other to rebalance."""
    return _scoped(CHANNEL, schema, _NAME_LIMIT)


def new_member_id() -> str:
    """`<pid>.<random>@<host>`: unique, and tells an operator which process it is."""
    host = _HOST.sub("-", socket.gethostname()) or "host"
    return f"{os.getpid()}.{secrets.token_hex(3)}@{host}"


def _unsigned(value: int) -> int:
    # pg_locks shows the int4 halves of an advisory key as oid, i.e. unsigned.
    return value & 0xFFFFFFFF


@dataclass(frozen=True)
class Member:
    """A live worker process of the schema, as PostgreSQL sees its lease connection."""

    id: str
    backend_pid: int
    client: str | None
    since: datetime | None
    partitions: tuple[str, ...] = ()


@dataclass
class _Snapshot:
    members: dict[int, Member] = field(default_factory=dict)
    holders: dict[int, int] = field(default_factory=dict)
    """Unsigned lease key → the backend pid holding it."""


_SNAPSHOT_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client, a.backend_start,
       NULL::int8 AS key
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND starts_with(a.application_name, $1)
UNION ALL
SELECT l.pid, NULL, NULL, NULL, l.objid::int8
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
   AND l.classid::int8 = $2
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def _read_snapshot(conn: Any, schema: str, timeout: float | None = None) -> _Snapshot:
    prefix = member_prefix(schema)
    rows = await conn.fetch(_SNAPSHOT_SQL, prefix, _unsigned(lease_class(schema)), timeout=timeout)
    snapshot = _Snapshot()
    for row in rows:
        if row["key"] is None:
            snapshot.members[row["pid"]] = Member(
                id=row["application_name"][len(prefix) :],
                backend_pid=row["pid"],
                client=row["client"],
                since=row["backend_start"],
            )
        elif row["pid"] is not None:
            snapshot.holders[int(row["key"])] = row["pid"]
    return snapshot


async def lease_holders(
    conn: Any, schema: str, partitions: Iterable[str]
) -> tuple[list[Member], dict[str, str | None]]:
    """The schema's live workers (each with the partitions it holds) and, for each of
    `partitions`, the member holding it (None: nobody runs it now). For status pages."""
    snapshot = await _read_snapshot(conn, schema)
    names = {_unsigned(lease_key(schema, name)): name for name in partitions}
    held: dict[int, list[str]] = {}
    holder_of: dict[str, str | None] = dict.fromkeys(names.values())
    for key, pid in snapshot.holders.items():
        name = names.get(key, f"unknown partition (lease key {key})")
        held.setdefault(pid, []).append(name)
        member = snapshot.members.get(pid)
        holder_of[name] = member.id if member is not None else f"backend {pid}"
    members = [
        Member(m.id, m.backend_pid, m.client, m.since, tuple(sorted(held.get(pid, ()))))
        for pid, m in snapshot.members.items()
    ]
    members.sort(key=lambda m: m.id)
    return members, holder_of


class Leases:
    """`gateways.workers.Worker`: holds this process's share of `partitions` and runs them.

    `start` connects and takes a first share before it returns (alone, that is every
    partition); a background task then rebalances every `interval` seconds, or at once
    when another member joins or lets go of partitions. `stop` stops every consumer it
    runs, then lets go of their locks and tells the others to take them over.
    """

    def __init__(
        self,
        database_url: str,
        schema: str,
        partitions: Sequence[Partition],
        *,
        interval: float = 1.0,
        orphan_after: float = 3.0,
        adopt_hold: float = 60.0,
        retry_after_failed_start: float = 30.0,
        stop_timeout: float = 60.0,
        query_timeout: float = 5.0,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        member: str | None = None,
    ) -> None:
        if interval <= 0 or query_timeout <= 0 or min_backoff <= 0:
            raise ValueError("interval, query_timeout and min_backoff must be above 0")
        self.database_url = database_url
        self.schema = schema
        self.interval = interval
        self.orphan_after = orphan_after
        self.adopt_hold = adopt_hold
        self.retry_after_failed_start = retry_after_failed_start
        self.stop_timeout = stop_timeout
        self.query_timeout = query_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.member = member or new_member_id()
        self.application_name = (member_prefix(schema) + self.member)[:_NAME_LIMIT]
        self.channel = lease_channel(schema)
        self.lease_class = lease_class(schema)
        self.partitions = list(partitions)
        self._rank = {partition.name: rank for rank, partition in enumerate(self.partitions)}
        self._by_name: dict[str, Partition] = {}
        self._keys: dict[str, int] = {}
        for partition in self.partitions:
            if partition.name in self._by_name:
                raise ValueError(f"two partitions are named {partition.name!r}")
            key = lease_key(schema, partition.name)
            clash = next((n for n, k in self._keys.items() if k == key), None)
            if clash is not None:
                raise ValueError(f"{partition.name!r} and {clash!r} have the same lease key")
            self._by_name[partition.name] = partition
            self._keys[partition.name] = key
        self.lost = 0
        """How many times the lease connection was lost (every consumer stopped each time)."""
        self.backend_pid: int | None = None
        self._conn: asyncpg.Connection | None = None
        self._held: dict[str, float] = {}
        self._adopted: dict[str, float] = {}
        self._free_since: dict[str, float] = {}
        self._cooldown: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- what it holds --------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The partitions this process holds (and runs) now."""
        return frozenset(self._held)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and take a first share; on failure, the background task keeps trying."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        try:
            await self._connect()
            await self._rebalance()
        except Exception as error:
            log.warning("leases not taken yet; retrying", error=describe(error))
            await self._lose(error)
        self._task = asyncio.create_task(self._run(), name=f"leadlog-leases-{self.member}")

    async def stop(self) -> None:
        """Stop every consumer this process runs, then let go of their locks at once."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(Exception):
                await task
        await self._stop_all()
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()", timeout=self.query_timeout)
            # No longer counted as a member, even before the session is gone.
            await conn.execute("SET application_name = 'leadlog-worker (leaving)'")
            await conn.execute(
                "SELECT pg_notify($1, $2)", self.channel, self.member, timeout=self.query_timeout
            )
            await conn.close(timeout=self.query_timeout)
        except Exception as error:  # the locks go with the session anyway
            log.warning("lease connection not closed cleanly", error=describe(error))
            conn.terminate()

    # ---- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.min_backoff
        while not self._stopping:
            if not self.connected:
                if self._conn is not None:
                    await self._lose(ConnectionError("the lease connection was closed"))
                try:
                    await self._connect()
                except Exception as error:
                    log.warning(
                        "lease connection failed; retrying", error=describe(error), backoff=backoff
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                log.info("lease connection open", member=self.member)
            try:
                await self._rebalance()
                backoff = self.min_backoff
            except Exception as error:
                if self._stopping:
                    break
                log.warning(
                    "lease connection lost; every leased consumer stopped",
                    member=self.member,
                    error=describe(error),
                )
                await self._lose(error)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            # Jitter, so members that started together do not rebalance in step.
            await self._pause(self.interval * random.uniform(0.9, 1.1))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self.database_url,
            timeout=self.query_timeout * 2,
            server_settings={
                "application_name": self.application_name,
                # A peer that vanished without a FIN (a partition, a power cut) is found by
                # the server in seconds, so its locks, and partitions, do not stay stuck.
                "tcp_keepalives_idle": "5",
                "tcp_keepalives_interval": "2",
                "tcp_keepalives_count": "3",
                "tcp_user_timeout": "10000",
            },
        )
        try:
            await conn.add_listener(self.channel, self._on_notify)
            conn.add_termination_listener(self._on_terminated)
            await conn.execute(
                "SELECT pg_notify($1, $2)", self.channel, self.member, timeout=self.query_timeout
            )
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.backend_pid = conn.get_server_pid()

    def _on_notify(self, _conn: object, pid: int, _channel: str, _payload: object) -> None:
        if pid != self.backend_pid:
            self._wake.set()

    def _on_terminated(self, _conn: object) -> None:
        self._wake.set()

    async def _lose(self, error: BaseException) -> None:
        """The locks are gone (or about to be) with the connection: stop everything now."""
        if self._conn is not None:
            self.lost += 1
        await self._stop_all()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _stop_all(self) -> None:
        names = list(self._held)
        self._held.clear()
        self._adopted.clear()
        await asyncio.gather(*(self._stop_consumer(name) for name in names))

    async def _stop_consumer(self, name: str) -> None:
        try:
            # Bounded: one consumer that does not stop must not hold every other lease.
            await asyncio.wait_for(self._by_name[name].stop(), self.stop_timeout)
        except Exception as error:
            # Its per-batch fence still holds should it go on running somewhere in here.
            log.error("leased consumer did not stop cleanly", partition=name, error=repr(error))

    # ---- one round --------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectionError("no lease connection")
        loop = asyncio.get_running_loop()
        snapshot = await _read_snapshot(conn, self.schema, self.query_timeout)
        now = loop.time()
        for name in list(self._held):
            if snapshot.holders.get(_unsigned(self._keys[name])) != self.backend_pid:
                # Cannot happen while the session lives; if it does, do not run unfenced.
                log.error("lease missing from pg_locks; consumer stopped", partition=name)
                self._held.pop(name, None)
                self._adopted.pop(name, None)
                await self._stop_consumer(name)
        mine = snapshot.members.get(self.backend_pid or -1)
        me = mine.id if mine is not None else self.member
        ids = sorted({m.id for m in snapshot.members.values()} | {me})
        keys = {_unsigned(k) for k in self._keys.values()}
        total = len(keys | set(snapshot.holders))
        base, extra = divmod(total, len(ids))
        quota = base + (1 if ids.index(me) < extra else 0)

        released = [name for name in self._held if not self._by_name[name].runnable()]
        countable = [
            name
            for name in self._held
            if name not in released and not self._recently_adopted(name, now)
        ]
        excess = len(countable) - quota
        if excess > 0:
            # The ones others would rather have go first, then those it cares least for.
            least = sorted(countable, key=lambda n: (self._owner(n, ids) == me, _score(n, me)))
            released += least[:excess]
            countable = least[excess:]
        await self._release(released)

        free = [
            p.name
            for p in self.partitions
            if _unsigned(self._keys[p.name]) not in snapshot.holders
            and p.name not in self._held
            and self._cooldown.get(p.name, -math.inf) <= now
            and p.runnable()
        ]
        self._free_since = {name: self._free_since.get(name, now) for name in free}
        wanted = quota - len(countable)
        locked: list[tuple[str, bool]] = []
        orphans = 1  # a round, so that orphans spread over the members
        for name in sorted(free, key=lambda n: (self._owner(n, ids) != me, -_score(n, me))):
            if self._stopping:
                break
            if wanted > 0:
                if await self._lock(name):
                    wanted -= 1
                    locked.append((name, False))
            elif (
                orphans
                and now - self._free_since[name] >= self.orphan_after
                and await self._lock(name)
            ):
                orphans -= 1
                locked.append((name, True))
        taken: list[str] = []
        # Started in the order given (views before what reads them), whatever the hashing.
        for name, adopted in sorted(locked, key=lambda item: self._rank[item[0]]):
            if self._stopping:
                break  # `stop` lets go of every lock of the session
            if await self._start(name, adopted=adopted):
                taken.append(name)
        if released:
            await conn.execute(
                "SELECT pg_notify($1, $2)", self.channel, self.member, timeout=self.query_timeout
            )
        if released or taken:
            log.info(
                "leases rebalanced",
                member=self.member,
                members=len(ids),
                quota=quota,
                took=taken,
                released=released,
                holds=len(self._held),
            )

    def _recently_adopted(self, name: str, now: float) -> bool:
        """Taken as an orphan lately: not counted against the quota, so not let go at once
        (whoever left it free may not be able to run it)."""
        return now - self._adopted.get(name, -math.inf) < self.adopt_hold

    def _owner(self, name: str, ids: Sequence[str]) -> str:
        return max(ids, key=lambda member: _score(name, member))

    async def _lock(self, name: str) -> bool:
        conn = self._conn
        assert conn is not None
        got: bool = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)",
            self.lease_class,
            self._keys[name],
            timeout=self.query_timeout,
        )
        return got

    async def _start(self, name: str, *, adopted: bool) -> bool:
        """Run the consumer whose lock was just taken; on failure, let go of the lock."""
        now = asyncio.get_running_loop().time()
        self._held[name] = now
        if adopted:
            self._adopted[name] = now
        self._free_since.pop(name, None)
        try:
            await self._by_name[name].start()
        except Exception as error:
            log.error("leased consumer did not start", partition=name, error=repr(error))
            self._held.pop(name, None)
            self._adopted.pop(name, None)
            self._cooldown[name] = now + self.retry_after_failed_start
            await self._stop_consumer(name)
            await self._unlock(name)
            return False
        return True

    async def _release(self, names: Sequence[str]) -> None:
        """Stop the consumers (together), then let go of their locks (never the other way
        round: a consumer runs only under its lock)."""
        for name in names:
            self._held.pop(name, None)
            self._adopted.pop(name, None)
        await asyncio.gather(*(self._stop_consumer(name) for name in names))
        for name in names:
            await self._unlock(name)

    async def _unlock(self, name: str) -> None:
        conn = self._conn
        assert conn is not None
        released = await conn.fetchval(
            "SELECT pg_advisory_unlock($1, $2)",
            self.lease_class,
            self._keys[name],
            timeout=self.query_timeout,
        )
        if not released:
            log.warning("lease was not held at release", partition=name)
