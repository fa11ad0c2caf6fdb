"""Query strings checked before a route reads them: known names only, printable values."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from gateways.http.errors import ApiError

MAX_VALUE = 1000
"""Characters in one query value; a route may allow fewer (`search`: 200)."""
MAX_VALUES = 50
"""Values of one repeated parameter (`?tag=a&tag=b`)."""

_known: dict[int, frozenset[str]] = {}


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def known_parameters(route: APIRoute) -> frozenset[str]:
    """The query parameters `route` declares (its own and its dependencies')."""
    names = _known.get(id(route))
    if names is None:
        names = _known[id(route)] = frozenset(_query_names(route.dependant))
    return names


def _unprintable(text: str) -> bool:
    # Cc: NUL and the other C0/C1 controls (tab and newline included); Cs: lone surrogates.
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_failed",
        f"query parameter {name!r} {message}",
        [{"location": ["query", name], "message": message, "type": "query_value"}],
    )


async def strict_query(request: Request) -> None:
    """400 `unknown_parameter` for a query parameter the route does not declare (a typo
    would otherwise be ignored and return everything); 422 for a value holding control
    characters (NUL included), longer than MAX_VALUE, or repeated more than MAX_VALUES
    times, naming the parameter."""
    route = request.scope.get("route")
    allowed = known_parameters(route) if isinstance(route, APIRoute) else None
    unknown: list[str] = []
    counts: dict[str, int] = {}
    for name, value in request.query_params.multi_items():
        if _unprintable(name) or len(name) > 100:
            raise ApiError(
                400, "unknown_parameter", "a query parameter name holds control characters"
            )
        if allowed is not None and name not in allowed:
            if name not in unknown:
                unknown.append(name)
            continue
        if _unprintable(value):
            raise _invalid(name, "holds a control character")
        if len(value) > MAX_VALUE:
            raise _invalid(name, f"is longer than {MAX_VALUE} characters")
        counts[name] = counts.get(name, 0) + 1
        if counts[name] > MAX_VALUES:
            raise _invalid(name, f"is given more than {MAX_VALUES} times")
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown query parameter{'s' * (len(unknown) > 1)}: {', '.join(unknown)}",
            {"unknown": unknown, "allowed": sorted(allowed or ())},
        )


StrictQuery: Any = Depends(strict_query)
"""For a route's or router's `dependencies=[...]`."""


def utc(moment: datetime | None) -> datetime | None:
    """A query's date-time in UTC; one given without an offset is read as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
