"""Read-your-writes for views: `?after=<position>` waits, bounded, until the view has it."""

from __future__ import annotations

from fastapi import Request

from gateways.http.auth import engine_of
from gateways.http.errors import ApiError

MAX_WAIT = 5.0


async def await_position(request: Request, after: int | None) -> None:
    """Wait until the leads view reflects log position `after` (a command's `position`);
    503 `view_behind` if it does not within MAX_WAIT seconds."""
    if after is None or after <= 0:
        return
    if not await engine_of(request).lead_views.wait_for(after, MAX_WAIT):
        raise ApiError(
            503,
            "view_behind",
            f"the view has not caught up with position {after} yet; retry shortly",
            {"position": after},
        )
