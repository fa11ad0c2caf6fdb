"""What a projection is: versioned tables, DDL, and the event→row logic the runtime drives."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from domain.base import LoggedEvent

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_identifier(name: str, what: str = "name") -> str:
    """Table and projection names are interpolated into SQL, so only plain identifiers pass."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: use lowercase letters, digits and _ (max 63)")
    return name


def trigram_index(name: str, table: str, column: str, storage: str = "") -> str:
    """SQL creating a pg_trgm GIN index (what `LIKE '%text%'` searches use), wherever the
    database keeps the extension: a projection's tables live in the engine's schema, which
    is the only one on its search path, so the operator class is named with its schema."""
    return f"""
        DO $trigram$ BEGIN
            EXECUTE format(
                'CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({column} %I.gin_trgm_ops)'
                || '{f" WITH ({storage})" if storage else ""}',
                (SELECT n.nspname FROM pg_extension e
                   JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'));
        END $trigram$;"""


class Tables(Mapping[str, str]):
    """A projection's logical table names mapped to the concrete ones it writes this time.

    The live copy of `workspaces` at version 1 is `workspaces_v1`; a blue/green rebuild fills
    `workspaces_v2` beside it by handing the same projection another `Tables`.
    """

    __slots__ = ("_names",)

    def __init__(self, names: Mapping[str, str]) -> None:
        for logical, concrete in names.items():
            check_identifier(logical, "logical table name")
            check_identifier(concrete, "table name")
        self._names = dict(names)

    @classmethod
    def versioned(cls, logical: Iterable[str], version: int) -> Tables:
        if version < 1:
            raise ValueError(f"a projection version starts at 1, got {version}")
        return cls({name: f"{name}_v{version}" for name in logical})

    def __getitem__(self, logical: str) -> str:
        try:
            return self._names[logical]
        except KeyError:
            raise KeyError(f"no table {logical!r} here; known: {sorted(self._names)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"Tables({self._names!r})"


class ProjectionDb(Protocol):
    """The database as a projection sees it: one connection, inside the batch's transaction."""

    async def execute(self, sql: str, *args: object) -> None: ...

    async def executemany(self, sql: str, args: Iterable[Sequence[object]]) -> None: ...

    async def fetch(self, sql: str, *args: object) -> list[Mapping[str, Any]]: ...

    async def fetchval(self, sql: str, *args: object) -> Any: ...


class Projection(ABC):
    """A read model derived from the log.

    The runtime calls `apply` with committed events in log order, inside a transaction that
    also records the projection's checkpoint, so each event takes effect exactly once.
    Contract:

    * `apply(db, tables, [a, b])` has the same effect as `apply([a])` then `apply([b])`: the
      runtime re-applies a failed batch one event at a time to find the culprit.
    * It depends only on the events and the rows it wrote before (no clock, no other tables),
      so a rebuild from position 0 yields the same rows as the live copy.
    * It writes only to `tables[...]`, never to a hard-coded name.
    * `create_sql` is idempotent (`IF NOT EXISTS`): it runs again on every start.

    Any change to the tables or to what rows mean takes a new `version`.
    """

    name: str
    """The projection's name; its checkpoint is `projection:<name>`."""
    version: int
    table_names: tuple[str, ...]
    """The logical names of its tables, the keys of the `Tables` it is given."""
    event_types: frozenset[str] | None = None
    """The event types it reads (e.g. `workspace.created`); None reads every event."""

    @abstractmethod
    def create_sql(self, tables: Tables) -> str:
        """DDL for its tables under the concrete names in `tables`."""

    def index_sql(self, tables: Tables) -> Sequence[str]:
        """DDL for its secondary indexes (`CREATE INDEX IF NOT EXISTS`), kept apart from
        `create_sql` so that a rebuild fills its new tables first and indexes them after:
        building an index over a full table is several times cheaper than keeping it up row
        by row, and a GIN index comes out whole, not with a long pending list every search
        must scan. The live copy gets them with its tables.

        One statement an index, the slowest first: a rebuild builds them side by side, on
        as many connections as the machine has cores."""
        return ()

    @abstractmethod
    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        """Fold `events` (in log order, only those of `event_types`) into the tables."""
