"""The workspace's user directory: users (who leads are assigned to, who sign in to the web
app, with a role and a password hash) and groups of users; and the users' sign-in sessions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate
from domain.leads import FieldChange
from domain.normalize import normalise_email
from domain.text import clean_text
from domain.workspaces import Role

MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 254
MAX_MEMBERS = 1000
MIN_PASSWORD_LENGTH = 10
# Hashing cost grows with the input: a longer "password" is an attack, not a password.
MAX_PASSWORD_LENGTH = 1024


class InvalidUser(ValueError):
    """A name, email or member list the directory does not accept."""


def user_name(given: str, what: str = "name") -> str:
    """Trimmed, without control characters: 1 to 200 characters."""
    name = clean_text(given)
    if not name:
        raise InvalidUser(f"{what} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidUser(f"{what} must be at most {MAX_NAME_LENGTH} characters")
    return name


def user_email(given: str) -> str:
    """The normal form (trimmed, lower-cased) of a valid address; an invalid one is refused."""
    normalised = normalise_email(clean_text(given))
    if normalised.normal is None:
        raise InvalidUser("email must not be empty")
    if not normalised.valid or len(normalised.normal) > MAX_EMAIL_LENGTH:
        raise InvalidUser(f"{given!r} is not a valid email address")
    return normalised.normal


def check_password(password: str) -> str:
    """A password the directory accepts: 10 to 1024 characters, kept exactly as typed."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidUser(f"a password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidUser(f"a password must have at most {MAX_PASSWORD_LENGTH} characters")
    return password


def user_role(given: str | Role) -> Role:
    """A workspace role a person may have (a partner's credential is a token, not a user)."""
    try:
        role = Role(given)
    except ValueError:
        roles = ", ".join(r for r in Role if r is not Role.PARTNER)
        raise InvalidUser(f"role must be one of {roles}") from None
    if role is Role.PARTNER:
        raise InvalidUser("a user cannot have the partner role")
    return role


def email_key(workspace_id: UUID, email: str) -> str:
    """The exclusive key that makes a (normalised) email unique among a workspace's users."""
    return f"user:{workspace_id}:email:{email}"


def group_name_key(workspace_id: UUID, name: str) -> str:
    """The exclusive key that makes a group name unique in a workspace (case-insensitively)."""
    return f"user-group:{workspace_id}:name:{name.casefold()}"


def member_list(member_ids: Iterable[UUID]) -> list[UUID]:
    """The ids in the order given, each once; at most MAX_MEMBERS."""
    members = list(dict.fromkeys(member_ids))
    if len(members) > MAX_MEMBERS:
        raise InvalidUser(f"a group has at most {MAX_MEMBERS} members")
    return members


class User(Aggregate):
    """A person of the workspace; a deactivated user keeps their email and history but can
    no longer be given leads or sign in.

    Users created before roles and passwords existed load as managers without a password
    (the events' defaults): they cannot sign in until a password is set."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        email: str
        actor: str
        role: Role = Role.MANAGER

    class RoleChanged(Aggregate.Event):
        old: Role
        role: Role
        actor: str

    class PasswordSet(Aggregate.Event):
        """An argon2id hash (PHC string), never the password; the NATS relay redacts it."""

        redacted_fields: ClassVar[frozenset[str]] = frozenset({"password_hash"})

        password_hash: str
        actor: str

    class Updated(Aggregate.Event):
        name: str
        email: str
        changes: list[FieldChange]
        actor: str

    class Deactivated(Aggregate.Event):
        actor: str

    class Reactivated(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(
        self, workspace_id: UUID, name: str, email: str, actor: str, role: Role = Role.MANAGER
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.email = email
        self.active = True
        self.role = role
        self.password_hash: str | None = None

    def change_role(self, role: Role | str, actor: str) -> bool:
        new = user_role(role)
        if new == self.role:
            return False
        self._role_changed(old=self.role, role=new, actor=actor)
        return True

    @event(RoleChanged)
    def _role_changed(self, old: Role, role: Role, actor: str) -> None:
        self.role = role

    def set_password_hash(self, password_hash: str, actor: str) -> None:
        """Record a new password's hash (hashing is the caller's: the domain does no I/O
        and holds no hashing library)."""
        if not password_hash.startswith("$"):
            raise InvalidUser("a password is stored only as a PHC-format hash")
        self._password_set(password_hash=password_hash, actor=actor)

    @event(PasswordSet)
    def _password_set(self, password_hash: str, actor: str) -> None:
        self.password_hash = password_hash

    def update(self, actor: str, name: str | None = None, email: str | None = None) -> bool:
        """Change the name and/or email (validated, email normalised); False when neither
        differs."""
        new_name = self.name if name is None else user_name(name)
        new_email = self.email if email is None else user_email(email)
        changes = [
            FieldChange(field=field, old=old, new=new)
            for field, old, new in (("name", self.name, new_name), ("email", self.email, new_email))
            if old != new
        ]
        if not changes:
            return False
        self._updated(name=new_name, email=new_email, changes=changes, actor=actor)
        return True

    @event(Updated)
    def _updated(self, name: str, email: str, changes: list[FieldChange], actor: str) -> None:
        self.name = name
        self.email = email

    def deactivate(self, actor: str) -> bool:
        if not self.active:
            return False
        self._deactivated(actor=actor)
        return True

    @event(Deactivated)
    def _deactivated(self, actor: str) -> None:
        self.active = False

    def reactivate(self, actor: str) -> bool:
        if self.active:
            return False
        self._reactivated(actor=actor)
        return True

    @event(Reactivated)
    def _reactivated(self, actor: str) -> None:
        self.active = True


def new_user(
    workspace_id: UUID, name: str, email: str, actor: str, role: Role | str = Role.MANAGER
) -> User:
    """A user with a checked name, a valid, normalised email and a role (manager unless
    given)."""
    return User(
        workspace_id=workspace_id,
        name=user_name(name),
        email=user_email(email),
        actor=actor,
        role=user_role(role),
    )


class UserSession(Aggregate):
    """One sign-in to the web app: who, until when, and whether it was ended. The browser
    holds only the session's id (in a signed cookie); signing out ends the session here,
    so a copied cookie stops working too. Failed sign-ins are not events (they would let
    anyone write to the log); they are counted for the rate limit only."""

    class Started(Aggregate.Created):
        workspace_id: UUID
        user_id: UUID
        expires_at: datetime

    class Ended(Aggregate.Event):
        # "signed_out" (the user), or a later reason such as "password_changed".
        reason: str

    @event(Started)
    def __init__(self, workspace_id: UUID, user_id: UUID, expires_at: datetime) -> None:
        self.workspace_id = workspace_id
        self.user_id = user_id
        self.expires_at = expires_at
        self.ended = False

    def live_at(self, now: datetime) -> bool:
        return not self.ended and now < self.expires_at

    def end(self, reason: str) -> bool:
        if self.ended:
            return False
        self._ended(reason=reason)
        return True

    @event(Ended)
    def _ended(self, reason: str) -> None:
        self.ended = True


class UserGroup(Aggregate):
    """A named, ordered list of users (e.g. a sales team leads are shared out among)."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        member_ids: list[UUID]
        actor: str

    class MembersSet(Aggregate.Event):
        member_ids: list[UUID]
        actor: str

    class Renamed(Aggregate.Event):
        old: str
        name: str
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, name: str, member_ids: list[UUID], actor: str) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.member_ids = list(member_ids)
        self.deleted = False

    def ensure_live(self) -> None:
        if self.deleted:
            raise InvalidUser(f"user group {self.id} is deleted")

    def rename(self, name: str, actor: str) -> bool:
        self.ensure_live()
        new_name = user_name(name)
        if new_name == self.name:
            return False
        self._renamed(old=self.name, name=new_name, actor=actor)
        return True

    @event(Renamed)
    def _renamed(self, old: str, name: str, actor: str) -> None:
        self.name = name

    def set_members(self, member_ids: Iterable[UUID], actor: str) -> bool:
        """Replace the members (order kept, repeats dropped); False when nothing changes."""
        self.ensure_live()
        members = member_list(member_ids)
        if members == self.member_ids:
            return False
        self._members_set(member_ids=members, actor=actor)
        return True

    @event(MembersSet)
    def _members_set(self, member_ids: list[UUID], actor: str) -> None:
        self.member_ids = list(member_ids)

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


def new_group(workspace_id: UUID, name: str, member_ids: Iterable[UUID], actor: str) -> UserGroup:
    """A group with a checked name and its members in order, each once."""
    return UserGroup(
        workspace_id=workspace_id,
        name=user_name(name),
        member_ids=member_list(member_ids),
        actor=actor,
    )
