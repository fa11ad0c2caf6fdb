"""Command handlers for workspaces and API tokens, and token authentication."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from domain.pipelines import DEFAULT_PIPELINE_NAME, Pipeline, default_stages
from domain.workspaces import ROLE_PERMISSIONS, ApiToken, Permission, Role, Workspace, clean_name
from handlers.ports import Append, Claim, ConcurrencyConflict, EventStore

TOKEN_PREFIX = "llt_"


class WorkspaceNotFound(LookupError):
    pass


class TokenNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (every workspace) or a token of one workspace."""

    workspace_id: UUID | None
    role: Role | None
    permissions: frozenset[Permission]
    token_id: UUID | None = None
    # A partner token's partner: it acts for that partner only.
    partner_id: UUID | None = None

    @property
    def is_operator(self) -> bool:
        return self.workspace_id is None

    def can(self, permission: Permission) -> bool:
        return self.is_operator or permission in self.permissions


OPERATOR = Principal(workspace_id=None, role=None, permissions=frozenset(Permission))


@dataclass(frozen=True)
class Created:
    id: UUID
    position: int


@dataclass(frozen=True)
class IssuedToken:
    id: UUID
    token: str
    workspace_id: UUID
    role: Role
    position: int


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_key(token_hash: str) -> str:
    return f"token:{token_hash}"


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def create_workspace(store: EventStore, name: str, default_region: str = "US") -> Created:
    """A workspace and its default pipeline, in one append: neither exists without the other."""
    workspace = Workspace(name=clean_name(name, "workspace name"), default_region=default_region)
    pipeline = Pipeline(
        workspace_id=workspace.id,
        name=DEFAULT_PIPELINE_NAME,
        stages=default_stages(),
        is_default=True,
    )
    workspace.activate_pipeline(pipeline.id)
    appended = await store.append(
        Append(workspace.id, events=[*workspace.collect_events(), *pipeline.collect_events()])
    )
    return Created(workspace.id, appended.position)


async def issue_token(
    store: EventStore,
    workspace_id: UUID,
    role: Role,
    name: str = "api",
    generate: Callable[[], str] = new_secret,
    partner_id: UUID | None = None,
) -> IssuedToken:
    """Issue a token; the secret is returned once and stored only as a hash."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    secret = generate()
    digest = hash_token(secret)
    token = ApiToken(
        workspace_id=workspace_id,
        role=role,
        token_hash=digest,
        name=clean_name(name, "token name"),
        hint=secret[: len(TOKEN_PREFIX) + 4],
        partner_id=partner_id,
    )
    appended = await store.append(
        Append(
            workspace_id,
            events=token.collect_events(),
            claims=[Claim(token_key(digest), token.id, exclusive=True)],
        )
    )
    return IssuedToken(token.id, secret, workspace_id, role, appended.position)


async def revoke_token(
    store: EventStore,
    workspace_id: UUID,
    token_id: UUID,
    authenticator: Authenticator | None = None,
) -> int:
    token = await store.load(ApiToken, token_id)
    if token is None or token.workspace_id != workspace_id:
        raise TokenNotFound(f"token {token_id} does not exist")
    token.revoke()
    appended = await store.append(
        Append(workspace_id, events=token.collect_events(), releases=[token_key(token.token_hash)])
    )
    if authenticator is not None:
        authenticator.forget(token.token_hash)
    return appended.position


@dataclass(frozen=True)
class AbandonAfter:
    workspace_id: UUID
    hours: float
    position: int
    """The log position of the change; 0 when the workspace already had this value."""


async def set_abandon_after(
    store: EventStore, workspace_id: UUID, hours: float, attempts: int = 20
) -> AbandonAfter:
    """How long (hours, fractional allowed) a pending lead without `expiresAt` waits for its
    customer before it is abandoned; applies to leads received from now on. A concurrent
    change to the workspace makes it try again on the new state."""
    for _ in range(attempts):
        workspace = await store.load(Workspace, workspace_id)
        if workspace is None:
            raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
        if not workspace.set_abandon_after(hours):
            return AbandonAfter(workspace_id, workspace.abandon_after_hours, 0)
        try:
            appended = await store.append(Append(workspace_id, events=workspace.collect_events()))
        except ConcurrencyConflict:
            continue
        return AbandonAfter(workspace_id, workspace.abandon_after_hours, appended.position)
    raise ConcurrencyConflict(f"workspace {workspace_id} kept changing; try again")


class Authenticator:
    """Token → principal, remembered briefly: loading a token's events on every request
    would cost more than the request's real work.

    A revocation in this process takes effect at once (`forget`); another process serving
    the API notices it within `ttl` seconds.
    """

    def __init__(self, store: EventStore, admin_token: str | None, ttl: float = 2.0) -> None:
        self.store = store
        self.admin_token = admin_token
        self.ttl = ttl
        self._known: dict[str, tuple[Principal | None, float]] = {}

    async def authenticate(self, presented: str) -> Principal | None:
        if self.admin_token and hmac.compare_digest(presented.encode(), self.admin_token.encode()):
            return OPERATOR
        digest = hash_token(presented)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and now < known[1]:
            return known[0]
        principal = await authenticate(self.store, presented, None)
        if len(self._known) > 10_000:
            self._known.clear()
        # Unknown tokens are remembered too, so guessing costs the store nothing.
        self._known[digest] = (principal, now + self.ttl)
        return principal

    def forget(self, token_hash: str) -> None:
        self._known.pop(token_hash, None)


async def authenticate(
    store: EventStore, presented: str, admin_token: str | None
) -> Principal | None:
    """The principal a bearer token stands for, or None (without saying why)."""
    if admin_token and hmac.compare_digest(presented.encode(), admin_token.encode()):
        return OPERATOR
    if not presented.startswith(TOKEN_PREFIX):
        return None
    digest = hash_token(presented)
    token_id = await store.holder(token_key(digest))
    if token_id is None:
        return None
    token = await store.load(ApiToken, token_id)
    if token is None or token.revoked or not hmac.compare_digest(token.token_hash, digest):
        return None
    return Principal(
        token.workspace_id,
        token.role,
        ROLE_PERMISSIONS[token.role],
        token.id,
        getattr(token, "partner_id", None),
    )


@dataclass(frozen=True)
class WorkspaceView:
    id: UUID
    name: str
    default_region: str


async def get_workspace(store: EventStore, workspace_id: UUID) -> WorkspaceView:
    workspace = await store.load(Workspace, workspace_id)
    if workspace is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    return WorkspaceView(workspace.id, workspace.name, workspace.default_region)


async def list_workspaces(store: EventStore, page_size: int = 1000) -> list[WorkspaceView]:
    """Every workspace, folded straight from its events in the log (an operator's rare query)."""
    found: dict[UUID, WorkspaceView] = {}
    after = 0
    while True:
        page = await store.read(after, page_size, ["workspace.created", "workspace.renamed"])
        if not page:
            break
        for logged in page:
            event = logged.event
            if isinstance(event, Workspace.Created):
                found[event.originator_id] = WorkspaceView(
                    event.originator_id, event.name, event.default_region
                )
            elif isinstance(event, Workspace.Renamed) and event.originator_id in found:
                previous = found[event.originator_id]
                found[event.originator_id] = WorkspaceView(
                    previous.id, event.name, previous.default_region
                )
        after = page[-1].position
    return list(found.values())
