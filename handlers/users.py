"""Command handlers for the user directory: users (with their role and password), groups,
who a lead may be given to, and sign-in sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, TypeVar
from uuid import UUID

from domain.base import DomainEvent
from domain.users import (
    User,
    UserGroup,
    UserSession,
    check_password,
    email_key,
    group_name_key,
    new_group,
    new_user,
    user_email,
)
from domain.workspaces import Role, Workspace
from handlers.listing import aggregates_of
from handlers.ports import Append, Claim, EventStore, ReservationTaken
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound

T = TypeVar("T")


class UserNotFound(LookupError):
    """No such user in this workspace (another workspace's user looks exactly like this)."""


class GroupNotFound(LookupError):
    """No such group in this workspace, or it was deleted."""


class UnknownUser(LookupError):
    """An id that names no active user of the workspace, where one is required."""


class UnknownGroup(LookupError):
    """An id that names no live group of the workspace, where one is required."""


class InvalidMembers(UnknownUser):
    """A group's members must all be active users of its workspace."""

    def __init__(self, member_ids: Sequence[UUID]) -> None:
        listed = ", ".join(str(i) for i in member_ids)
        super().__init__(f"not active users of this workspace: {listed}")
        self.member_ids = list(member_ids)


class PasswordHasher(Protocol):
    """The password hashing port (argon2id in `gateways.web.passwords`); asynchronous so
    the deliberately slow hashing runs off the event loop."""

    async def hash(self, password: str) -> str: ...

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when `password` matches; False otherwise (never raises for a mismatch)."""
        ...

    async def waste(self, password: str) -> None:
        """Spend the time one verification takes, for an email no user has: the answer
        must not come back faster for unknown emails."""
        ...


class Taken(ReservationTaken):
    """A user's email or a group's name is already used in the workspace."""

    def __init__(self, message: str, taken: ReservationTaken) -> None:
        super().__init__(taken.key, taken.holder)
        self.args = (message,)


async def _append(
    store: EventStore,
    workspace_id: UUID,
    events: Sequence[DomainEvent],
    claims: Sequence[Claim] = (),
    releases: Sequence[str] = (),
    taken: str = "",
) -> int:
    """Append the events with their exclusive claims; a taken key is reported as `taken`."""
    if not events:
        return 0
    try:
        appended = await store.append(
            Append(workspace_id, events=events, claims=claims, releases=releases)
        )
    except ReservationTaken as error:
        raise Taken(taken or str(error), error) from None
    return appended.position


async def _ensure_workspace(store: EventStore, workspace_id: UUID) -> None:
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")


# ---- users ---------------------------------------------------------------------------------


async def load_user(store: EventStore, workspace_id: UUID, user_id: UUID) -> User | None:
    """The workspace's user (active or not); None for another workspace's or no user."""
    user = await store.load(User, user_id)
    if user is None or user.workspace_id != workspace_id:
        return None
    return user


async def get_user(store: EventStore, workspace_id: UUID, user_id: UUID) -> User:
    user = await load_user(store, workspace_id, user_id)
    if user is None:
        raise UserNotFound(f"user {user_id} does not exist")
    return user


async def list_users(
    store: EventStore, workspace_id: UUID, active: bool | None = None
) -> list[User]:
    """The workspace's users, oldest first; only active (or only deactivated) ones on request."""
    users = await aggregates_of(store, User, "user.created", workspace_id)
    return [u for u in users if active is None or u.active == active]


async def create_user(
    store: EventStore,
    workspace_id: UUID,
    name: str,
    email: str,
    actor: str,
    role: Role | str = Role.MANAGER,
    password: str | None = None,
    hasher: PasswordHasher | None = None,
) -> tuple[User, int]:
    """A new active user (a manager unless `role` says otherwise), with a password when
    given (checked, then hashed by `hasher`: only the hash is recorded), in one append; the
    email (normalised) must not be any other user's in the workspace, deactivated users
    included (`Taken` otherwise, decided in the append)."""
    await _ensure_workspace(store, workspace_id)
    user = new_user(workspace_id, name, email, actor, role)
    if password is not None:
        if hasher is None:
            raise ValueError("a password needs a hasher")
        user.set_password_hash(await hasher.hash(check_password(password)), actor)
    position = await _append(
        store,
        workspace_id,
        user.collect_events(),
        claims=[Claim(email_key(workspace_id, user.email), user.id, exclusive=True)],
        taken=f"a user with email {user.email} already exists",
    )
    return user, position


async def update_user(
    store: EventStore,
    workspace_id: UUID,
    user_id: UUID,
    actor: str,
    name: str | None = None,
    email: str | None = None,
) -> tuple[User, int]:
    """Change the name and/or email; a new email takes its key and frees the old one in the
    same append. The position is 0 when nothing changed."""

    async def attempt() -> tuple[User, int]:
        user = await get_user(store, workspace_id, user_id)
        old_email = user.email
        if not user.update(actor, name=name, email=email):
            return user, 0
        claims: list[Claim] = []
        releases: list[str] = []
        if user.email != old_email:
            claims.append(Claim(email_key(workspace_id, user.email), user.id, exclusive=True))
            releases.append(email_key(workspace_id, old_email))
        position = await _append(
            store,
            workspace_id,
            user.collect_events(),
            claims=claims,
            releases=releases,
            taken=f"a user with email {user.email} already exists",
        )
        return user, position

    return await retrying(attempt)


async def find_by_email(store: EventStore, workspace_id: UUID, email: str) -> User | None:
    """The workspace's user (active or not) with this email, by its reservation."""
    try:
        normal = user_email(email)
    except ValueError:
        return None
    holder = await store.holder(email_key(workspace_id, normal))
    if holder is None:
        return None
    user = await load_user(store, workspace_id, holder)
    return user if user is not None and user.email == normal else None


async def set_password(
    store: EventStore,
    hasher: PasswordHasher,
    workspace_id: UUID,
    user_id: UUID,
    password: str,
    actor: str,
) -> tuple[User, int]:
    """Give the user a new password (at least 10 characters); only its hash is recorded."""
    password_hash = await hasher.hash(check_password(password))

    async def attempt() -> tuple[User, int]:
        user = await get_user(store, workspace_id, user_id)
        user.set_password_hash(password_hash, actor)
        return user, await _append(store, workspace_id, user.collect_events())

    return await retrying(attempt)


async def change_role(
    store: EventStore, workspace_id: UUID, user_id: UUID, role: Role | str, actor: str
) -> tuple[User, int]:
    """Give the user another role; position 0 when it already had it."""

    async def attempt() -> tuple[User, int]:
        user = await get_user(store, workspace_id, user_id)
        user.change_role(role, actor)
        return user, await _append(store, workspace_id, user.collect_events())

    return await retrying(attempt)


async def verify_password(
    store: EventStore, hasher: PasswordHasher, candidates: Sequence[UUID], email: str, password: str
) -> list[User]:
    """The active users among `candidates` (user ids, any workspaces) whose email is `email`
    and whose password is `password`. With no candidate that has a password, a dummy
    verification takes the time a real one would."""
    try:
        normal = user_email(email)
    except ValueError:
        normal = ""
    users = [await store.load(User, user_id) for user_id in candidates]
    usable = [
        u
        for u in users
        if u is not None and u.active and u.email == normal and u.password_hash is not None
    ]
    if not usable:
        await hasher.waste(password)
        return []
    return [u for u in usable if u.password_hash and await hasher.verify(u.password_hash, password)]


async def start_session(
    store: EventStore, user: User, now: datetime, lifetime: timedelta
) -> tuple[UserSession, int]:
    """A new sign-in session of the user, valid for `lifetime`: `user_session.started` in
    the log (who and until when; no secret)."""
    session = UserSession(
        workspace_id=user.workspace_id, user_id=user.id, expires_at=now + lifetime
    )
    return session, await _append(store, user.workspace_id, session.collect_events())


async def end_session(store: EventStore, session_id: UUID, reason: str = "signed_out") -> int:
    """End the session (sign-out); 0 when it was already ended or does not exist."""

    async def attempt() -> int:
        session = await store.load(UserSession, session_id)
        if session is None or not session.end(reason):
            return 0
        return await _append(store, session.workspace_id, session.collect_events())

    return await retrying(attempt)


async def session_user(
    store: EventStore, session_id: UUID, now: datetime
) -> tuple[UserSession, User] | None:
    """The live session and its user; None when the session is ended, expired or unknown,
    or its user is deactivated (read from the log on every call, so it takes effect at
    once)."""
    session = await store.load(UserSession, session_id)
    if session is None or not session.live_at(now):
        return None
    user = await load_user(store, session.workspace_id, session.user_id)
    if user is None or not user.active:
        return None
    return session, user


async def deactivate_user(
    store: EventStore, workspace_id: UUID, user_id: UUID, actor: str
) -> tuple[User, int]:
    """The user can no longer be given leads (leads they hold stay theirs); their email stays
    reserved so that reactivation gives them back as they were."""

    async def attempt() -> tuple[User, int]:
        user = await get_user(store, workspace_id, user_id)
        user.deactivate(actor)
        return user, await _append(store, workspace_id, user.collect_events())

    return await retrying(attempt)


async def reactivate_user(
    store: EventStore, workspace_id: UUID, user_id: UUID, actor: str
) -> tuple[User, int]:
    async def attempt() -> tuple[User, int]:
        user = await get_user(store, workspace_id, user_id)
        user.reactivate(actor)
        return user, await _append(store, workspace_id, user.collect_events())

    return await retrying(attempt)


async def assignable_user(store: EventStore, workspace_id: UUID, user_id: str) -> User:
    """The active user of the workspace that `user_id` names; `UnknownUser` when it is not
    a UUID, names no user of this workspace, or names a deactivated one."""
    try:
        parsed = UUID(user_id)
    except (TypeError, ValueError):
        raise UnknownUser(f"{user_id!r} is not a user of this workspace") from None
    user = await load_user(store, workspace_id, parsed)
    if user is None:
        raise UnknownUser(f"user {user_id} is not a user of this workspace")
    if not user.active:
        raise UnknownUser(f"user {user_id} is deactivated")
    return user


# ---- groups --------------------------------------------------------------------------------


async def load_group(store: EventStore, workspace_id: UUID, group_id: UUID) -> UserGroup | None:
    """The workspace's live group; None for a deleted, another workspace's, or no group."""
    group = await store.load(UserGroup, group_id)
    if group is None or group.workspace_id != workspace_id or group.deleted:
        return None
    return group


async def get_group(store: EventStore, workspace_id: UUID, group_id: UUID) -> UserGroup:
    group = await load_group(store, workspace_id, group_id)
    if group is None:
        raise GroupNotFound(f"user group {group_id} does not exist")
    return group


async def list_groups(store: EventStore, workspace_id: UUID) -> list[UserGroup]:
    """The workspace's live groups, oldest first."""
    return await aggregates_of(store, UserGroup, "user_group.created", workspace_id)


async def _check_members(store: EventStore, workspace_id: UUID, member_ids: Sequence[UUID]) -> None:
    """`InvalidMembers` naming every id that is not an active user of the workspace.

    Checked before the append, not in it: a member deactivated meanwhile stays listed, and
    `group_members` leaves deactivated members out anyway."""
    ids = list(dict.fromkeys(member_ids))
    users = await asyncio.gather(*(load_user(store, workspace_id, i) for i in ids))
    bad = [i for i, user in zip(ids, users, strict=True) if user is None or not user.active]
    if bad:
        raise InvalidMembers(bad)


async def create_group(
    store: EventStore, workspace_id: UUID, name: str, member_ids: Sequence[UUID], actor: str
) -> tuple[UserGroup, int]:
    """A new group; its name is unique in the workspace (case-insensitively, `Taken`), its
    members must be active users of the workspace (`InvalidMembers`)."""
    await _ensure_workspace(store, workspace_id)
    group = new_group(workspace_id, name, member_ids, actor)
    await _check_members(store, workspace_id, group.member_ids)
    position = await _append(
        store,
        workspace_id,
        group.collect_events(),
        claims=[Claim(group_name_key(workspace_id, group.name), group.id, exclusive=True)],
        taken=f"a user group named {group.name!r} already exists",
    )
    return group, position


async def update_group(
    store: EventStore,
    workspace_id: UUID,
    group_id: UUID,
    actor: str,
    name: str | None = None,
    member_ids: Sequence[UUID] | None = None,
) -> tuple[UserGroup, int]:
    """Rename and/or replace the members, in one append; position 0 when nothing changed."""
    if member_ids is not None:
        await _check_members(store, workspace_id, member_ids)

    async def attempt() -> tuple[UserGroup, int]:
        group = await get_group(store, workspace_id, group_id)
        old_key = group_name_key(workspace_id, group.name)
        if name is not None:
            group.rename(name, actor)
        if member_ids is not None:
            group.set_members(member_ids, actor)
        new_key = group_name_key(workspace_id, group.name)
        renamed = new_key != old_key
        position = await _append(
            store,
            workspace_id,
            group.collect_events(),
            claims=[Claim(new_key, group.id, exclusive=True)] if renamed else [],
            releases=[old_key] if renamed else [],
            taken=f"a user group named {group.name!r} already exists",
        )
        return group, position

    return await retrying(attempt)


async def delete_group(store: EventStore, workspace_id: UUID, group_id: UUID, actor: str) -> int:
    """The group is gone (its name free again); the users stay."""

    async def attempt() -> int:
        group = await get_group(store, workspace_id, group_id)
        group.delete(actor)
        return await _append(
            store,
            workspace_id,
            group.collect_events(),
            releases=[group_name_key(workspace_id, group.name)],
        )

    return await retrying(attempt)


async def group_members(store: EventStore, workspace_id: UUID, group_id: UUID) -> list[User]:
    """The group's active members, in the group's order; `UnknownGroup` for a deleted,
    another workspace's, or no group."""
    group = await load_group(store, workspace_id, group_id)
    if group is None:
        raise UnknownGroup(f"user group {group_id} is not a group of this workspace")
    users = await asyncio.gather(*(load_user(store, workspace_id, i) for i in group.member_ids))
    return [u for u in users if u is not None and u.active]
