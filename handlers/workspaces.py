"""Command handlers for workspaces and API tokens, and token authentication."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from domain.pipelines import DEFAULT_PIPELINE_NAME, Pipeline, default_stages
from domain.users import User
from domain.workspaces import ROLE_PERMISSIONS, ApiToken, Permission, Role, Workspace, clean_name
from handlers.listing import aggregates_of
from handlers.ports import Append, Claim, ConcurrencyConflict, EventStore

TOKEN_PREFIX = "llt_"


class WorkspaceNotFound(LookupError):
    pass


class TokenNotFound(LookupError):
    pass


class TokenUserNotFound(LookupError):
    """The user a token should belong to is not an active user of its workspace."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the operator (every workspace) or a token of one workspace."""

    workspace_id: UUID | None
    role: Role | None
    permissions: frozenset[Permission]
    token_id: UUID | None = None
    # A partner token's partner: it acts for that partner only.
    partner_id: UUID | None = None
    # A person signed in to the web app: the user it acts as.
    user_id: UUID | None = None

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
        Append(
            workspace.id,
            events=[*workspace.collect_events(), *pipeline.collect_events()],
            # Stage ids are held by their pipeline (see `handlers.pipelines.stage_claims`).
            claims=[Claim(f"stage:{s.id}", pipeline.id, exclusive=True) for s in pipeline.stages],
        )
    )
    return Created(workspace.id, appended.position)


async def issue_token(
    store: EventStore,
    workspace_id: UUID,
    role: Role,
    name: str = "api",
    generate: Callable[[], str] = new_secret,
    partner_id: UUID | None = None,
    user_id: UUID | None = None,
) -> IssuedToken:
    """Issue a token; the secret is returned once and stored only as a hash. With `user_id`
    the token belongs to that user of the workspace and acts as them."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    if user_id is not None:
        user = await store.load(User, user_id)
        if user is None or user.workspace_id != workspace_id or not user.active:
            raise TokenUserNotFound(f"user {user_id} is not an active user of this workspace")
    secret = generate()
    digest = hash_token(secret)
    token = ApiToken(
        workspace_id=workspace_id,
        role=role,
        token_hash=digest,
        name=clean_name(name, "token name"),
        hint=secret[: len(TOKEN_PREFIX) + 4],
        partner_id=partner_id,
        user_id=user_id,
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


REVOKED = "api_token.revoked"


class Authenticator:
    """Token → principal, remembered briefly: loading a token's events on every request
    would cost more than the request's real work.

    A revocation takes effect at once in every process: a remembered principal is used
    only after the log has been checked for token revocations by a read that began after
    the request did (one indexed read of `api_token.revoked` events past the last one
    seen, shared by the requests waiting for it), so a request that starts after a
    `leadlog tokens revoke` returned is refused. `forget` evicts at once in this process.
    """

    def __init__(self, store: EventStore, admin_token: str | None, ttl: float = 2.0) -> None:
        self.store = store
        self.admin_token = admin_token
        self.ttl = ttl
        self._known: dict[str, tuple[Principal | None, float]] = {}
        # The log position up to which revocations have been applied to `_known`.
        self._seen: int | None = None
        # Orders request starts and revocation reads (a clock may give two the same time).
        self._ticks = itertools.count()
        self._check: tuple[int, asyncio.Future[None]] | None = None

    async def authenticate(self, presented: str) -> Principal | None:
        if self.admin_token and hmac.compare_digest(presented.encode(), self.admin_token.encode()):
            return OPERATOR
        tick = next(self._ticks)
        now = time.monotonic()
        digest = hash_token(presented)
        if self._seen is None:
            # Every load from now on sees the revocations committed before this position.
            head = await self.store.max_position()
            if self._seen is None:
                self._seen = head
        known = self._known.get(digest)
        if known is not None and now < known[1]:
            if known[0] is None:
                return None  # unknown tokens stay unknown: guessing costs the store nothing
            await self._revocations_since(tick)
            known = self._known.get(digest)
            if known is not None:
                return known[0]
        mark = self._seen
        principal = await authenticate(self.store, presented, None)
        if len(self._known) > 10_000:
            self._known.clear()
        # A revocation read that went past `mark` during the load may have passed this
        # token's revocation before the entry existed: then it is not remembered.
        if self._seen == mark:
            self._known[digest] = (principal, now + self.ttl)
        return principal

    async def _revocations_since(self, tick: int) -> None:
        """Apply every revocation committed before request `tick` started, by a read begun
        after it. Requests share reads: one arriving while a read is under way waits for
        it and joins the next, so there are at most about two reads per round trip."""
        while True:
            check = self._check
            if check is None or (check[1].done() and (check[0] < tick or _failed(check[1]))):
                check = (next(self._ticks), asyncio.ensure_future(self._apply_revocations()))
                self._check = check
            if check[0] > tick:
                await asyncio.shield(check[1])
                return
            await asyncio.wait([check[1]])  # begun before this request: the next one

    async def _apply_revocations(self) -> None:
        while True:
            page = await self.store.read(self._seen or 0, 500, [REVOKED])
            if not page:
                return
            revoked = {logged.event.originator_id for logged in page}
            for digest, (principal, _) in list(self._known.items()):
                if principal is not None and principal.token_id in revoked:
                    self._known.pop(digest, None)
            self._seen = max(self._seen or 0, page[-1].position)

    def forget(self, token_hash: str) -> None:
        self._known.pop(token_hash, None)


def _failed(future: asyncio.Future[None]) -> bool:
    return future.cancelled() or future.exception() is not None


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
    user_id = getattr(token, "user_id", None)
    if user_id is not None:
        # A deactivated person's tokens stop working with them.
        user = await store.load(User, user_id)
        if user is None or not user.active:
            return None
    return Principal(
        token.workspace_id,
        token.role,
        ROLE_PERMISSIONS[token.role],
        token.id,
        getattr(token, "partner_id", None),
        getattr(token, "user_id", None),
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


@dataclass(frozen=True)
class TokenView:
    id: UUID
    name: str
    role: Role
    user_id: UUID | None
    partner_id: UUID | None
    hint: str
    created_at: datetime
    revoked: bool


async def list_tokens(store: EventStore, workspace_id: UUID) -> list[TokenView]:
    """The workspace's tokens, oldest first, revoked ones too (never their secrets)."""
    tokens = await aggregates_of(store, ApiToken, "api_token.issued", workspace_id)
    return [
        TokenView(
            t.id,
            t.name,
            t.role,
            getattr(t, "user_id", None),
            t.partner_id,
            t.hint,
            t.created_on,
            t.revoked,
        )
        for t in tokens
    ]


@dataclass(frozen=True)
class ActorUser:
    """A person behind an actor string of the log."""

    id: UUID
    name: str
    email: str


async def actor_users(store: EventStore, actors: Iterable[str | None]) -> dict[str, ActorUser]:
    """The people behind `user:<id>` actors and `token:<id>` actors of tokens that belong to
    a user, by actor string; other actors (operator, channels, tokens of no one) are left
    out. One load per distinct actor."""
    found: dict[str, ActorUser] = {}
    users: dict[UUID, ActorUser | None] = {}

    async def person(user_id: UUID) -> ActorUser | None:
        if user_id not in users:
            user = await store.load(User, user_id)
            users[user_id] = ActorUser(user.id, user.name, user.email) if user else None
        return users[user_id]

    for actor in set(actors):
        if not actor:
            continue
        kind, _, raw = actor.partition(":")
        try:
            ref = UUID(raw)
        except ValueError:
            continue
        who: ActorUser | None = None
        if kind == "user":
            who = await person(ref)
        elif kind == "token":
            token = await store.load(ApiToken, ref)
            user_id = getattr(token, "user_id", None) if token is not None else None
            who = await person(user_id) if user_id is not None else None
        if who is not None:
            found[actor] = who
    return found
