"""Which errors mean PostgreSQL cannot serve now (retry later): one rule for HTTP and workers."""

from __future__ import annotations

import contextlib

import asyncpg
from asyncpg import exceptions as pg

RETRY_AFTER_SECONDS = 2
"""What a 503 for an unavailable database tells the client to wait (`Retry-After`)."""

# The server is away, shutting down, starting up, out of connections or resources, or the
# connection (or the client's protocol state on it) was lost. A fresh connection later
# succeeds; nothing about the request itself is wrong.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, broken pipe, unreachable; TimeoutError too
    pg.PostgresConnectionError,  # 08xxx, ConnectionDoesNotExistError among them
    pg.OperatorInterventionError,  # 57xxx: shutdown, cannot connect now, statement timeout
    pg.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    pg.TransactionRollbackError,  # 40xxx: serialization failure, deadlock: try again
    pg.InternalClientError,  # "cannot switch to state N" after a lost connection
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
)
# Subclasses of the above that are about the request, not the database's availability.
_NOT_UNAVAILABLE: tuple[type[BaseException], ...] = (
    pg.DataError,  # a query argument that cannot be encoded (e.g. an int beyond 64 bits)
    pg.InterfaceWarning,
)


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` is a connection-level or server-availability failure: the same work
    may succeed once PostgreSQL is back, on a fresh connection. Follows explicit causes
    (`raise ... from error`) and exception groups whose every member is one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            return bool(current.exceptions) and all(
                is_unavailable(member) for member in current.exceptions
            )
        if isinstance(current, _UNAVAILABLE) and not isinstance(current, _NOT_UNAVAILABLE):
            return True
        current = current.__cause__
    return False


def describe(error: BaseException) -> str:
    """One line for logs and status: the error's type, then its message."""
    return f"{type(error).__name__}: {error}"


async def expire_connections(pool: asyncpg.Pool) -> None:
    """After a connection-level failure: have the pool replace every connection it holds
    (idle ones on their next acquire, busy ones on release), so that none a lost server
    left in a broken protocol state is handed out again."""
    with contextlib.suppress(Exception):
        await pool.expire_connections()


async def after_failure(pool: asyncpg.Pool, error: BaseException) -> bool:
    """Whether `error` is unavailability; if so, the pool's connections are replaced."""
    if not is_unavailable(error):
        return False
    await expire_connections(pool)
    return True


def connection_alive(conn: object) -> bool:
    """Whether a held connection (or pool proxy) still works. A proxy whose connection was
    lost has been handed back to the pool by asyncpg, and then `is_closed()` itself raises."""
    try:
        return not conn.is_closed()  # type: ignore[attr-defined]
    except asyncpg.InterfaceError:
        return False
