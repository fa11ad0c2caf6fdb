"""`is_unavailable`: every connection-level failure is unavailability; bad input is not."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg import exceptions as pg

from gateways.postgres.errors import is_unavailable


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(),
        TimeoutError(),
        pg.CannotConnectNowError("the database system is starting up"),
        pg.AdminShutdownError("terminating connection due to administrator command"),
        pg.CrashShutdownError("terminating connection because of crash of another process"),
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        pg.TooManyConnectionsError("sorry, too many clients already"),
        pg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InterfaceError("connection is closed"),
        pg.SerializationError("could not serialize access"),
    ],
    ids=repr,
)
def test_connection_level_failures_are_unavailability(error: Exception) -> None:
    assert is_unavailable(error)


def test_a_wrapped_outage_and_a_group_of_outages_are_unavailability() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except OSError as cause:
            raise RuntimeError("append failed") from cause
    except RuntimeError as wrapped:
        assert is_unavailable(wrapped)
    assert is_unavailable(ExceptionGroup("all down", [OSError(), pg.AdminShutdownError()]))
    assert not is_unavailable(ExceptionGroup("mixed", [OSError(), ValueError()]))


@pytest.mark.parametrize(
    "error",
    [
        pg.DataError("invalid input for query argument $1: 2**70 (value out of int64 range)"),
        pg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00"),
        pg.UniqueViolationError("duplicate key"),
        pg.UndefinedTableError("relation does not exist"),
        ValueError("bad"),
        RuntimeError("bug"),
    ],
    ids=repr,
)
def test_errors_about_the_request_or_the_code_are_not(error: Exception) -> None:
    assert not is_unavailable(error)
