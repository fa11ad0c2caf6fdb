"""What the application layer needs from the event store, as protocols and value types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar
from uuid import UUID

from domain.base import Aggregate, DomainEvent, LoggedEvent


class StoreError(Exception):
    """Base of the errors a command can get back from the store."""


class ConcurrencyConflict(StoreError):
    """An aggregate changed since the command loaded it; nothing of the command was written."""


class ReservationTaken(StoreError):
    """An exclusive key (a name, a token hash) is already held by another owner."""

    def __init__(self, key: str, holder: UUID) -> None:
        super().__init__(f"{key!r} is already taken")
        self.key = key
        self.holder = holder


class TrackingConflict(StoreError):
    """A consumer tried to record a position at or below the one it already recorded."""


@dataclass(frozen=True)
class Claim:
    """Claim a unique key for `owner` in the append's transaction.

    A shared claim never fails: the first owner keeps the key and later claimants learn
    who holds it (duplicate detection). An exclusive claim fails the command instead.
    """

    key: str
    owner: UUID
    exclusive: bool = False


@dataclass(frozen=True)
class Limit:
    """Add `amount` to counter `name` only if it stays at or below `ceiling` (None: no
    ceiling; a negative amount gives places back). The limits of one append are taken
    together or not at all, decided inside the append's transaction after every command
    before it: a cap can never be overrun by a check-then-increment race."""

    name: str
    amount: int = 1
    ceiling: int | None = None


@dataclass(frozen=True)
class Allocation:
    """What the store decided inside the transaction: key holders and counter values, and
    which limits did not fit (`refused`; then none of the command's limits was taken)."""

    holders: Mapping[str, UUID] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    refused: Sequence[str] = ()

    def holder(self, key: str) -> UUID:
        return self.holders[key]

    def counter(self, name: str) -> int:
        return self.counters[name]


@dataclass(frozen=True)
class Checkpoint:
    """A consumer's position, recorded atomically with the command's events."""

    consumer: str
    position: int


@dataclass
class Append:
    """One command's writes: appended atomically, or not at all.

    `events` are known up front; `build` is called inside the transaction with the
    allocation when the events depend on it (a request number, who holds an email).
    `expect` must name every existing aggregate `build` writes to, with the version it had
    when loaded (new aggregates need not be named); for `events` the versions are read off
    the events themselves. Versions must follow on without gaps.
    """

    workspace_id: UUID | None
    events: Sequence[DomainEvent] = ()
    build: Callable[[Allocation], Sequence[DomainEvent]] | None = None
    expect: Mapping[UUID, int] = field(default_factory=dict)
    claims: Sequence[Claim] = ()
    releases: Sequence[str] = ()
    counters: Sequence[str] = ()
    limits: Sequence[Limit] = ()
    checkpoint: Checkpoint | None = None
    # A retried command (same key) writes nothing and returns `replayed` with the holder.
    idempotency: Claim | None = None


@dataclass(frozen=True)
class Appended:
    """The outcome of one successful append."""

    events: Sequence[DomainEvent]
    positions: Sequence[int]
    allocation: Allocation
    replayed: bool = False

    @property
    def position(self) -> int:
        """The log position of the command's last event (0 when it wrote none)."""
        return self.positions[-1] if self.positions else 0


A = TypeVar("A", bound=Aggregate)


class EventStore(Protocol):
    """The durable log, as command handlers, projections and handlers use it."""

    async def append(self, append: Append) -> Appended: ...

    async def append_many(self, appends: Sequence[Append]) -> list[Appended | Exception]:
        """Several independent commands, committed together where the store can: each is
        decided on its own exactly as `append` would decide it, and fails alone (its
        exception in its place in the answer)."""
        ...

    async def load(
        self,
        cls: type[A],
        aggregate_id: UUID,
        *,
        version: int | None = None,
        at: datetime | None = None,
        position: int | None = None,
    ) -> A | None: ...

    async def holder(self, key: str) -> UUID | None: ...

    async def read(
        self,
        after: int,
        limit: int,
        event_types: Sequence[str] | None = None,
        *,
        workspace_id: UUID | None = None,
    ) -> Sequence[LoggedEvent]: ...

    async def history(self, aggregate_id: UUID) -> Sequence[LoggedEvent]: ...

    def follow(self, after: int, batch_size: int = 500) -> AsyncIterator[Sequence[LoggedEvent]]: ...

    async def max_position(self) -> int: ...
