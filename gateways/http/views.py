"""Read-your-writes for views: `?after=<position>` waits, bounded, until the view has it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Query, Request

from gateways.consumers.read_models import ViewBehind, ViewNeedsRebuild
from gateways.http.auth import engine_of
from gateways.http.errors import ApiError

MAX_WAIT = 5.0
MAX_POSITION = 2**63 - 1
"""The highest log position a commit can produce (a PostgreSQL bigint)."""

After = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_POSITION,
        description="a command's `position`: wait (up to 5 s) until the view has it",
    ),
]
"""`?after=`: a position no commit can have produced (negative, beyond 64 bits) is a 422
at once; one beyond the log head waits, then is a 503 `view_behind`."""

T = TypeVar("T")


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


async def read_view(query: Awaitable[T]) -> T:
    """Run a query over the leads view; a view not ready to answer is a 503."""
    try:
        return await query
    except ViewNeedsRebuild as error:
        raise ApiError(503, "view_rebuild_needed", str(error), {"view": "leads"}) from None
    except ViewBehind as error:
        raise ApiError(503, "view_behind", str(error), {"view": "leads"}) from None
