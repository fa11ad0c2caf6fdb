"""The recent end of the log, read and decoded once per process and shared by its consumers."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass

from domain.base import LoggedEvent
from gateways.postgres.codec import EventDecodeError
from gateways.postgres.event_store import PostgresEventStore
from gateways.postgres.log_store import PostgresLog, Record

CHUNK = 2000
CAPACITY = 20_000
HEAD_TTL = 0.05


@dataclass(frozen=True, slots=True)
class TailEntry:
    """One committed record and what it decodes to (or why it does not)."""

    record: Record
    event: LoggedEvent | None
    error: EventDecodeError | None = None

    @property
    def position(self) -> int:
        return self.record.position

    def logged(self) -> LoggedEvent:
        """The decoded event; raises the `EventDecodeError` when it did not decode."""
        if self.event is None:
            assert self.error is not None
            raise self.error
        return self.event


@dataclass(frozen=True, slots=True)
class TailRead:
    """The entries a consumer asked for, and how far they cover the log.

    Every event of the asked-for types with a position in (after, `upto`] is in `entries`;
    `full` means the limit cut the read short, so more may follow at once.
    """

    entries: list[TailEntry]
    upto: int
    full: bool


class LogTail:
    """Holds the log's most recent events, decoded, for every consumer in this process.

    A dozen views and reactions follow the same log. Each reading and decoding every batch
    on its own made decoding the largest cost of following it; here one reader fetches each
    stretch once (unfiltered, in log order, one fetch at a time) and every consumer takes
    the events of its types from memory. A consumer behind the stretch held (catching up,
    rebuilding) is told to read the log itself (`read` returns None).

    Correctness rests on the log's ordering promise: positions become visible in order (the
    append lock), so once a consumer has seen `stop` as the head, everything at or below it
    is committed and a fetch up to `stop` misses nothing.
    """

    def __init__(
        self,
        log: PostgresLog,
        store: PostgresEventStore,
        *,
        chunk: int = CHUNK,
        capacity: int = CAPACITY,
        wakeups: Callable[[], Hashable] | None = None,
        head_ttl: float = HEAD_TTL,
    ) -> None:
        """`wakeups`: a value that changes whenever this process hears of a commit (the
        generations of every LISTEN its consumers wait on); the log's own by default."""
        if chunk < 1 or (capacity and capacity < chunk):
            raise ValueError("the tail needs chunk >= 1 and a capacity of 0 or >= chunk")
        self.log = log
        self.store = store
        self.chunk = chunk
        self.capacity = capacity
        # Every committed event in (start, end] is held, in `_entries` (and `_positions`).
        self.start: int | None = None
        self.end = 0
        self._entries: list[TailEntry] = []
        self._positions: list[int] = []
        self._fetching = asyncio.Lock()
        self.fetches = 0
        self._wakeups = wakeups if wakeups is not None else (lambda: log.generation)
        self.head_ttl = head_ttl
        self._head: asyncio.Future[int] | None = None
        self._head_key: Hashable = None
        self._head_started = 0.0
        self.head_reads = 0

    async def head(self) -> int:
        """The log's head, read once for every consumer that asks before the next commit
        this process hears of.

        A read started after the last wake-up this process heard of sees every commit
        announced until then; a consumer woken by a later commit finds the wake-up value
        changed and reads again. A commit not yet announced is missed, as with any read of
        the head, and its announcement wakes the consumer. `head_ttl` bounds how long a read
        is shared at all, for when no LISTEN connection is up to announce anything.
        """
        loop = asyncio.get_running_loop()
        key = self._wakeups()
        shared = self._head
        if (
            shared is None
            or key != self._head_key
            or loop.time() - self._head_started > self.head_ttl
            or (shared.done() and (shared.cancelled() or shared.exception() is not None))
        ):
            self._head_key = key
            self._head_started = loop.time()
            self.head_reads += 1
            shared = self._head = asyncio.ensure_future(self.log.max_position())
        return await asyncio.shield(shared)

    @classmethod
    def direct(cls, log: PostgresLog, store: PostgresEventStore) -> LogTail:
        """A tail that holds nothing: every read goes to the log, filtered there (for a
        consumer running alone, where sharing buys nothing)."""
        return cls(log, store, capacity=0)

    def __len__(self) -> int:
        return len(self._entries)

    async def entries(
        self,
        after: int,
        limit: int,
        *,
        stop: int,
        event_types: Collection[str] | None = None,
    ) -> TailRead:
        """As `read`, reading the log itself (filtered there) when the tail does not hold
        `after`; those records are decoded for this caller only."""
        if event_types is not None and not event_types:
            return TailRead([], stop, False)
        served = await self.read(after, limit, stop=stop, event_types=event_types)
        if served is not None:
            return served
        records = await self.log.read(
            after,
            limit,
            stop=stop,
            event_types=sorted(event_types) if event_types is not None else None,
        )
        full = len(records) >= limit
        return TailRead(
            [self._entry(record) for record in records],
            records[-1].position if full else stop,
            full,
        )

    async def read(
        self,
        after: int,
        limit: int,
        *,
        stop: int,
        event_types: Collection[str] | None = None,
    ) -> TailRead | None:
        """Events after `after` up to `stop` (a head the caller has seen), at most `limit`
        of them, of `event_types` (all when None); None when `after` is older than the
        stretch held, so the caller reads the log itself."""
        if not self.capacity:
            return None
        if self.start is None:
            # Start where the consumers are: at the head the first of them saw.
            self.start = self.end = stop
        if after < self.start:
            return None
        if self.end < stop:
            await self._fill(stop)
            if after < self.start:  # evicted meanwhile
                return None
        upto = min(self.end, stop)
        entries: list[TailEntry] = []
        index = bisect.bisect_right(self._positions, after)
        for entry in self._entries[index:]:
            if entry.record.position > upto:
                break
            if event_types is None or entry.record.event_type in event_types:
                entries.append(entry)
                if len(entries) >= limit:
                    return TailRead(entries, entry.record.position, True)
        return TailRead(entries, upto, upto < stop)

    async def _fill(self, stop: int) -> None:
        async with self._fetching:
            if self.end >= stop:
                return  # another consumer's fetch brought it here meanwhile
            after = self.end
            records = await self.log.read(after, self.chunk, stop=stop)
            self.fetches += 1
            for record in records:
                self._entries.append(self._entry(record))
                self._positions.append(record.position)
            self.end = records[-1].position if len(records) >= self.chunk else stop
            if len(self._entries) > self.capacity:
                drop = len(self._entries) - self.capacity // 2
                self.start = self._positions[drop - 1]
                del self._entries[:drop]
                del self._positions[:drop]

    def _entry(self, record: Record) -> TailEntry:
        try:
            return TailEntry(record, self.store.logged(record))
        except EventDecodeError as error:
            return TailEntry(record, None, error)
