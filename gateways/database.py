"""Opens the asyncpg pool on the configured schema, after migrating it."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateways.schema import check_schema_name, migrate


async def open_pool(
    database_url: str, schema: str, *, min_size: int = 2, max_size: int = 20, **kwargs: Any
) -> asyncpg.Pool:
    """Migrate `schema`, then return a pool whose connections resolve names in it."""
    check_schema_name(schema)
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, schema)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": "leadlog"},
        **kwargs,
    )
    assert pool is not None
    return pool
