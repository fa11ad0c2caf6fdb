"""Opens the asyncpg pool on the configured schema, after migrating it."""

from __future__ import annotations

from typing import Any

import asyncpg

from gateways.postgres.schema import check_schema_name, migrate


class LeadlogConnection(asyncpg.Connection):
    """A pooled connection released without the reset query.

    asyncpg runs `RESET ALL; UNLISTEN *; ...` on every release, one more round trip per
    query. Our connections keep no session state to undo; open transactions are still
    rolled back on release whatever this returns.
    """

    def get_reset_query(self) -> str:
        return ""


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
        connection_class=LeadlogConnection,
        **kwargs,
    )
    assert pool is not None
    return pool
