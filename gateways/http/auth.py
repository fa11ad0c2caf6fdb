"""Bearer-token authentication and permission checks as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from uuid import UUID

from fastapi import Request

from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.http.errors import ApiError
from handlers.workspaces import ActorUser, Principal, actor_users


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def principal(request: Request) -> Principal:
    """The caller; 401 with the same answer for a missing, unknown or revoked token."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "a Bearer token is required")
    engine = engine_of(request)
    found = await engine.authenticator.authenticate(presented.strip())
    if found is None:
        raise ApiError(401, "unauthorized", "the token is not valid")
    return found


def requires(permission: Permission) -> Callable[[Request], Awaitable[Principal]]:
    async def check(request: Request) -> Principal:
        caller = await principal(request)
        if not caller.can(permission):
            raise ApiError(403, "forbidden", f"this token lacks the {permission} permission")
        return caller

    return check


async def lead_reader(request: Request) -> Principal:
    """A caller that may read leads: one with `leads:view`, or a partner token (which reads
    only the leads referred to its partner, as a referral shares them)."""
    caller = await principal(request)
    if caller.partner_id is None and not caller.can(Permission.LEADS_VIEW):
        raise ApiError(403, "forbidden", f"this token lacks the {Permission.LEADS_VIEW} permission")
    return caller


async def operator(request: Request) -> Principal:
    caller = await principal(request)
    if not caller.is_operator:
        raise ApiError(403, "forbidden", "only the operator token may do this")
    return caller


def scoped_workspace(caller: Principal, workspace_id: UUID) -> UUID:
    """The workspace a request may touch: its token's own; another's looks like a missing one."""
    if caller.is_operator or caller.workspace_id == workspace_id:
        return workspace_id
    raise ApiError(404, "not_found", f"workspace {workspace_id} does not exist")


def workspace_of(caller: Principal, request: Request) -> UUID:
    """A token's own workspace; the operator names one with X-Workspace-Id."""
    if caller.workspace_id is not None:
        return caller.workspace_id
    header = request.headers.get("x-workspace-id")
    if not header:
        raise ApiError(
            400, "workspace_required", "the operator must name a workspace in X-Workspace-Id"
        )
    try:
        return UUID(header)
    except ValueError:
        raise ApiError(400, "bad_request", "X-Workspace-Id is not a UUID") from None


def actor_of(caller: Principal) -> str:
    """How the log names the caller: its token (a token of a person is shown with their
    name where actors are read), a signed-in user, or the operator."""
    if caller.token_id:
        return f"token:{caller.token_id}"
    if caller.user_id:
        return f"user:{caller.user_id}"
    return "operator"


async def actor_names(engine: Engine, actors: Iterable[str | None]) -> dict[str, ActorUser]:
    """The people behind the actors of entries shown to a reader (see `actor_fields`)."""
    return await actor_users(engine.store, actors)


def actor_fields(actor: str | None, people: Mapping[str, ActorUser]) -> dict[str, Any]:
    """`actorName` and `actorUser` ({type, id, name}) beside the raw `actor` of an entry:
    the person's name for `user:<id>` and for a user's token, else None."""
    who = people.get(actor) if actor else None
    if who is None:
        return {"actorName": None, "actorUser": None}
    return {
        "actorName": who.name,
        "actorUser": {"type": "user", "id": str(who.id), "name": who.name},
    }
