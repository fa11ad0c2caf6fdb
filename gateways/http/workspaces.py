"""Routes for workspaces and their API tokens (`/v1/workspaces`, `/v1/me`)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from domain.users import User
from domain.workspaces import MAX_ABANDON_AFTER_HOURS, ApiToken, InvalidSetting, Role
from gateways.http.auth import actor_of, engine_of, operator, principal, scoped_workspace
from gateways.http.errors import ApiError
from gateways.http.query import StrictQuery
from handlers import workspaces as commands
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["workspaces"])

Caller = Annotated[Principal, Depends(principal)]
Operator = Annotated[Principal, Depends(operator)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CreateWorkspace(Body):
    name: str = Field(min_length=1, max_length=200)
    default_region: str = Field(
        default="US",
        alias="defaultRegion",
        pattern="^[A-Z]{2}$",
        description="ISO 3166 region used to read phone numbers without a country code",
    )


class CreateToken(Body):
    role: Role
    name: str = Field(default="api", min_length=1, max_length=200)
    user_id: UUID | None = Field(
        default=None,
        alias="userId",
        description="a user of the workspace the token belongs to: it then acts as that user",
    )


class WorkspaceSettings(Body):
    abandon_after_hours: float = Field(
        alias="abandonAfterHours",
        gt=0,
        le=MAX_ABANDON_AFTER_HOURS,
        description="hours a pending lead without expiresAt waits for its customer before it "
        "is abandoned (default 72; fractions allowed); applies to leads received from now on",
    )


def workspace_json(view: commands.WorkspaceView) -> dict[str, object]:
    return {"id": str(view.id), "name": view.name, "defaultRegion": view.default_region}


@router.post("/workspaces", status_code=201)
async def create_workspace(
    body: CreateWorkspace, request: Request, _: Operator
) -> dict[str, object]:
    engine = engine_of(request)
    created = await commands.create_workspace(engine.store, body.name, body.default_region)
    view = await commands.get_workspace(engine.store, created.id)
    return {**workspace_json(view), "position": created.position}


@router.get("/workspaces", dependencies=[StrictQuery])
async def list_workspaces(request: Request, caller: Caller) -> dict[str, object]:
    engine = engine_of(request)
    if caller.is_operator:
        views = await commands.list_workspaces(engine.store)
    else:
        assert caller.workspace_id is not None
        views = [await commands.get_workspace(engine.store, caller.workspace_id)]
    return {"items": [workspace_json(v) for v in views], "total": len(views)}


@router.get("/workspaces/{workspace_id}", dependencies=[StrictQuery])
async def get_workspace(workspace_id: UUID, request: Request, caller: Caller) -> dict[str, object]:
    scoped = scoped_workspace(caller, workspace_id)
    return workspace_json(await commands.get_workspace(engine_of(request).store, scoped))


# Workspace admins may mint tokens for their own workspace, never above their own role.
_MAY_ISSUE: dict[Role | None, set[Role]] = {
    None: set(Role),
    Role.SUPER_ADMIN: set(Role),
    Role.ADMIN: set(Role) - {Role.SUPER_ADMIN},
}


@router.post("/workspaces/{workspace_id}/tokens", status_code=201)
async def create_token(
    workspace_id: UUID, body: CreateToken, request: Request, caller: Caller
) -> dict[str, object]:
    scoped = scoped_workspace(caller, workspace_id)
    if body.role is Role.PARTNER:
        raise ApiError(
            422,
            "validation_failed",
            "a partner token names its partner: issue it with POST /v1/partners/{id}/tokens",
        )
    if body.role not in _MAY_ISSUE.get(caller.role, set()):
        raise ApiError(403, "forbidden", f"this token may not issue {body.role} tokens")
    try:
        issued = await commands.issue_token(
            engine_of(request).store, scoped, body.role, body.name, user_id=body.user_id
        )
    except commands.TokenUserNotFound as error:
        raise ApiError(
            422, "validation_failed", str(error), [{"location": "userId", "message": str(error)}]
        ) from error
    return {
        "id": str(issued.id),
        "token": issued.token,
        "workspaceId": str(issued.workspace_id),
        "role": issued.role,
        "userId": str(body.user_id) if body.user_id else None,
        "position": issued.position,
    }


@router.get("/workspaces/{workspace_id}/tokens", dependencies=[StrictQuery])
async def list_tokens(workspace_id: UUID, request: Request, caller: Caller) -> dict[str, object]:
    """The workspace's tokens without their secrets (the first characters only, as `hint`)."""
    scoped = scoped_workspace(caller, workspace_id)
    if caller.role not in _MAY_ISSUE:
        raise ApiError(403, "forbidden", "this token may not list tokens")
    tokens = await commands.list_tokens(engine_of(request).store, scoped)
    items = [
        {
            "id": str(t.id),
            "name": t.name,
            "role": t.role,
            "userId": str(t.user_id) if t.user_id else None,
            "partnerId": str(t.partner_id) if t.partner_id else None,
            "hint": t.hint,
            "createdAt": t.created_at.isoformat(),
            "revoked": t.revoked,
        }
        for t in tokens
    ]
    return {"items": items, "total": len(items)}


@router.delete("/workspaces/{workspace_id}/tokens/{token_id}")
async def revoke_token(
    workspace_id: UUID, token_id: UUID, request: Request, caller: Caller
) -> dict[str, object]:
    scoped = scoped_workspace(caller, workspace_id)
    if caller.role not in _MAY_ISSUE:
        raise ApiError(403, "forbidden", "this token may not revoke tokens")
    engine = engine_of(request)
    position = await commands.revoke_token(engine.store, scoped, token_id, engine.authenticator)
    return {"id": str(token_id), "revoked": True, "position": position}


@router.patch("/workspaces/{workspace_id}/settings")
async def update_settings(
    workspace_id: UUID, body: WorkspaceSettings, request: Request, caller: Caller
) -> dict[str, object]:
    scoped = scoped_workspace(caller, workspace_id)
    if caller.role not in _MAY_ISSUE:
        raise ApiError(403, "forbidden", "this token may not change the workspace's settings")
    try:
        changed = await commands.set_abandon_after(
            engine_of(request).store, scoped, body.abandon_after_hours
        )
    except InvalidSetting as error:
        raise ApiError(422, "validation_failed", str(error)) from error
    return {
        "id": str(scoped),
        "abandonAfterHours": changed.hours,
        "position": changed.position,
    }


@router.get("/me", dependencies=[StrictQuery])
async def me(request: Request, caller: Caller) -> dict[str, object]:
    """Who the caller is: the operator, a token (its name and role) and, when the token
    belongs to a person, that user (id, name, email)."""
    store = engine_of(request).store
    token: dict[str, object] | None = None
    if caller.token_id is not None:
        found = await store.load(ApiToken, caller.token_id)
        if found is not None:
            token = {"id": str(found.id), "name": found.name, "role": found.role}
    user: dict[str, object] | None = None
    if caller.user_id is not None:
        person = await store.load(User, caller.user_id)
        if person is not None:
            user = {"id": str(person.id), "name": person.name, "email": person.email}
    return {
        "workspaceId": str(caller.workspace_id) if caller.workspace_id else None,
        "role": caller.role,
        "operator": caller.is_operator,
        "permissions": sorted(caller.permissions),
        "actor": actor_of(caller),
        "user": user,
        "token": token,
    }
