"""Failed sign-ins, counted in PostgreSQL so that every API process enforces one limit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Limit:
    key: str
    allowed: int


class SignInLimiter:
    """At most `allowed` failures per key within `window` seconds; beyond that sign-in is
    refused until the oldest counted failure leaves the window. Keys are the email
    (guessing one account's password) and the client address (trying many accounts)."""

    def __init__(self, pool: asyncpg.Pool, window: float) -> None:
        self.pool = pool
        self.window = window

    async def retry_after(self, limits: list[Limit]) -> int | None:
        """Seconds until a sign-in may be tried again, or None when it may be now."""
        waits = []
        async with self.pool.acquire() as conn:
            for limit in limits:
                # The failure that must age out before one more attempt is allowed.
                oldest = await conn.fetchval(
                    """SELECT extract(epoch FROM failed_at + make_interval(secs => $3) - now())
                         FROM sign_in_failures
                        WHERE key = $1 AND failed_at > now() - make_interval(secs => $3)
                        ORDER BY failed_at DESC OFFSET $2 - 1 LIMIT 1""",
                    limit.key,
                    limit.allowed,
                    self.window,
                )
                if oldest is not None:
                    waits.append(max(1, math.ceil(float(oldest))))
        return max(waits) if waits else None

    async def failed(self, keys: list[str]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO sign_in_failures (key) VALUES ($1)", [(k,) for k in keys]
            )
            # Old failures count for nothing: drop them as new ones arrive.
            await conn.execute(
                """DELETE FROM sign_in_failures
                    WHERE key = ANY($1::text[])
                      AND failed_at < now() - make_interval(secs => $2)""",
                keys,
                self.window,
            )

    async def succeeded(self, email_key: str) -> None:
        """A right password clears the email's count (not the address's)."""
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM sign_in_failures WHERE key = $1", email_key)
