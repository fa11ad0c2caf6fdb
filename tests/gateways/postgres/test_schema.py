"""Schema migrations: fresh schemas, idempotence, concurrent start-ups, schema name checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateways.postgres.database import open_pool
from gateways.postgres.schema import check_schema_name, migrate, migrations
from tests.conftest import Servers, drop_schema

TABLES = {"events", "reservations", "counters", "tracking", "schema_migrations"}


@pytest.fixture
async def fresh_schema(servers: Servers, schema_name: str) -> AsyncIterator[str]:
    """A schema name nobody has created yet, dropped after the test."""
    try:
        yield schema_name
    finally:
        await drop_schema(servers.database_url, schema_name)


async def tables_in(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
        "ORDER BY table_name",
        schema,
    )
    return [r["table_name"] for r in rows]


async def applied_versions(conn: asyncpg.Connection, schema: str) -> list[int]:
    rows = await conn.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


def test_migrations_are_shipped_in_version_order() -> None:
    shipped = migrations()
    versions = [m.version for m in shipped]
    assert versions
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert all(m.sql.strip() and m.name for m in shipped)


async def test_fresh_schema_gets_every_version_and_a_second_run_applies_nothing(
    servers: Servers, fresh_schema: str
) -> None:
    every = [m.version for m in migrations()]
    conn = await asyncpg.connect(servers.database_url)
    try:
        assert await tables_in(conn, fresh_schema) == []
        assert await migrate(conn, fresh_schema) == every
        assert set(await tables_in(conn, fresh_schema)) >= TABLES
        assert await applied_versions(conn, fresh_schema) == every

        assert await migrate(conn, fresh_schema) == []
        assert await applied_versions(conn, fresh_schema) == every
        # the session's advisory lock was released both times
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
        # migrating never leaves the connection pointed at the schema
        assert fresh_schema not in await conn.fetchval("SHOW search_path")
    finally:
        await conn.close()

    # and a pool opened on it works
    pool = await open_pool(servers.database_url, fresh_schema, min_size=1, max_size=2)
    try:
        assert await pool.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await pool.close()


async def test_concurrent_migrations_take_turns(servers: Servers, fresh_schema: str) -> None:
    every = [m.version for m in migrations()]
    conns = [await asyncpg.connect(servers.database_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(migrate(c, fresh_schema) for c in conns))
        # every call succeeded, and each version was applied by exactly one of them
        assert sorted(v for applied in results for v in applied) == every
        assert sum(1 for applied in results if applied) == 1
        tables = await tables_in(conns[0], fresh_schema)
        assert len(tables) == len(set(tables))
        assert set(tables) >= TABLES
        assert await applied_versions(conns[0], fresh_schema) == every
        schemas = await conns[0].fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            fresh_schema,
        )
        assert schemas == 1
    finally:
        for conn in conns:
            await conn.close()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Leads",
        "1leads",
        "leads-prod",
        "leads prod",
        "leads.events",
        'leads"; DROP SCHEMA public CASCADE; --',
        "leads;drop",
        "leads\n",
        "lead\u00e9s",
        "a" * 64,
    ],
)
async def test_invalid_schema_names_are_rejected(servers: Servers, name: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        check_schema_name(name)
    conn = await asyncpg.connect(servers.database_url)
    try:
        with pytest.raises(ValueError, match="invalid schema name"):
            await migrate(conn, name)
        with pytest.raises(ValueError, match="invalid schema name"):
            await open_pool(servers.database_url, name)
        # rejected before touching the database: no lock taken, nothing created
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name::text = $1",
                name,
            )
            == 0
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["leads", "_private", "t_0123456789abcdef", "a" * 63])
def test_plain_identifiers_are_accepted(name: str) -> None:
    assert check_schema_name(name) == name
