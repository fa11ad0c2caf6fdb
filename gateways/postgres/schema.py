"""Creates and migrates the schema from the versioned SQL files in `gateways/postgres/sql`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("gateways.postgres.sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def check_schema_name(schema: str) -> str:
    """Schema names are interpolated into SQL, so only plain identifiers are accepted."""
    if not _SCHEMA_NAME.fullmatch(schema):  # not .match: `$` also matches before a final \n
        raise ValueError(f"invalid schema name {schema!r}: use lowercase letters, digits and _")
    return schema


async def migrate(conn: asyncpg.Connection, schema: str) -> list[int]:
    """Bring `schema` up to date; returns the versions applied now.

    A session advisory lock keyed on the schema makes concurrent start-ups take turns:
    the second process waits, then finds nothing left to do.
    """
    check_schema_name(schema)
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"leadlog.migrate.{schema}")
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    version int PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]
            for r in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")
        }
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {schema}")
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"leadlog.migrate.{schema}")
    return applied_now
