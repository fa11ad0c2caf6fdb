"""Routes for the user directory (`/v1/users`, `/v1/user-groups`): who leads are assigned to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from domain.users import MAX_MEMBERS, InvalidUser, User, UserGroup
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from handlers import users as commands
from handlers.users import GroupNotFound, InvalidMembers, Taken, UserNotFound
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["users"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

T = TypeVar("T")


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class CreateUser(Body):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=1, max_length=320)


class UpdateUser(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, min_length=1, max_length=320)


class CreateGroup(Body):
    name: str = Field(min_length=1, max_length=200)
    member_ids: list[UUID] = Field(default_factory=list, max_length=MAX_MEMBERS)


class UpdateGroup(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    member_ids: list[UUID] | None = Field(default=None, max_length=MAX_MEMBERS)


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "name": user.name,
        "email": user.email,
        "active": user.active,
        "createdAt": user.created_on.isoformat(),
        "updatedAt": user.modified_on.isoformat(),
    }


def group_json(group: UserGroup) -> dict[str, Any]:
    return {
        "id": str(group.id),
        "name": group.name,
        "memberIds": [str(i) for i in group.member_ids],
        "createdAt": group.created_on.isoformat(),
        "updatedAt": group.modified_on.isoformat(),
    }


async def run(command: Callable[[], Awaitable[T]]) -> T:
    """A command's refusals as the API's errors (a lost race keeps the app's 409)."""
    try:
        return await command()
    except (UserNotFound, GroupNotFound) as error:
        raise ApiError(404, "not_found", str(error)) from None
    except Taken as error:
        raise ApiError(409, "already_exists", str(error)) from None
    except InvalidMembers as error:
        details = {"memberIds": [str(i) for i in error.member_ids]}
        raise ApiError(422, "invalid_members", str(error), details) from None
    except InvalidUser as error:
        raise ApiError(422, "validation_failed", str(error)) from None


def _no_nulls(fields: dict[str, Any]) -> None:
    nulls = sorted(to_camel(k) for k, v in fields.items() if v is None)
    if nulls:
        raise ApiError(422, "validation_failed", f"{', '.join(nulls)} cannot be null")


# ---- users ---------------------------------------------------------------------------------


@router.post("/users", status_code=201)
async def create_user(body: CreateUser, request: Request, caller: Manager) -> dict[str, Any]:
    """Add a user `{name, email}`; the email (trimmed, lower-cased) is unique in the workspace
    (409 otherwise, deactivated users included)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    user, position = await run(
        lambda: commands.create_user(store, ws, body.name, body.email, actor_of(caller))
    )
    return {**user_json(user), "position": position}


@router.get("/users", dependencies=[StrictQuery])
async def list_users(
    request: Request, caller: Viewer, active: bool | None = None
) -> dict[str, Any]:
    """The workspace's users, oldest first; `?active=true|false` to see only those."""
    ws = workspace_of(caller, request)
    users = await commands.list_users(engine_of(request).store, ws, active)
    return {"items": [user_json(u) for u in users], "total": len(users)}


@router.get("/users/{user_id}", dependencies=[StrictQuery])
async def get_user(user_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    return user_json(await run(lambda: commands.get_user(store, ws, user_id)))


@router.patch("/users/{user_id}")
async def update_user(
    user_id: UUID, body: UpdateUser, request: Request, caller: Manager
) -> dict[str, Any]:
    """Change `name` and/or `email` (`position` 0 when nothing changed)."""
    ws = workspace_of(caller, request)
    fields = body.model_dump(exclude_unset=True)
    _no_nulls(fields)
    store = engine_of(request).store
    user, position = await run(
        lambda: commands.update_user(store, ws, user_id, actor_of(caller), **fields)
    )
    return {**user_json(user), "position": position}


@router.delete("/users/{user_id}")
async def deactivate_user(user_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Deactivate: the user stays (with their history and leads) but can no longer be given
    leads or added to groups; `POST /v1/users/{id}/reactivate` undoes it."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    user, position = await run(
        lambda: commands.deactivate_user(store, ws, user_id, actor_of(caller))
    )
    return {**user_json(user), "position": position}


@router.post("/users/{user_id}/reactivate")
async def reactivate_user(user_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    user, position = await run(
        lambda: commands.reactivate_user(store, ws, user_id, actor_of(caller))
    )
    return {**user_json(user), "position": position}


# ---- groups --------------------------------------------------------------------------------


@router.post("/user-groups", status_code=201, tags=["user groups"])
async def create_group(body: CreateGroup, request: Request, caller: Manager) -> dict[str, Any]:
    """Add a group `{name, memberIds?}`: the name is unique in the workspace (409), the
    members active users of it (422 `invalid_members` otherwise)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    group, position = await run(
        lambda: commands.create_group(store, ws, body.name, body.member_ids, actor_of(caller))
    )
    return {**group_json(group), "position": position}


@router.get("/user-groups", tags=["user groups"], dependencies=[StrictQuery])
async def list_groups(request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    groups = await commands.list_groups(engine_of(request).store, ws)
    return {"items": [group_json(g) for g in groups], "total": len(groups)}


@router.get("/user-groups/{group_id}", tags=["user groups"], dependencies=[StrictQuery])
async def get_group(group_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    return group_json(await run(lambda: commands.get_group(store, ws, group_id)))


@router.patch("/user-groups/{group_id}", tags=["user groups"])
async def update_group(
    group_id: UUID, body: UpdateGroup, request: Request, caller: Manager
) -> dict[str, Any]:
    """Rename (`name`) and/or replace the members (`memberIds`, in order) in one change."""
    ws = workspace_of(caller, request)
    fields = body.model_dump(exclude_unset=True)
    _no_nulls(fields)
    store = engine_of(request).store
    group, position = await run(
        lambda: commands.update_group(store, ws, group_id, actor_of(caller), **fields)
    )
    return {**group_json(group), "position": position}


@router.delete("/user-groups/{group_id}", tags=["user groups"])
async def delete_group(group_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    position = await run(lambda: commands.delete_group(store, ws, group_id, actor_of(caller)))
    return {"id": str(group_id), "deleted": True, "position": position}
