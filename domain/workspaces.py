"""Workspaces, their API tokens, and the roles that grant permissions."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate


class Permission(StrEnum):
    LEADS_VIEW = "leads:view"
    LEADS_MANAGE = "leads:manage"
    # Hand back a lead referred to the token's partner (partner tokens; managers too).
    RETURNS_START = "returns:start"


class Role(StrEnum):
    SUPER_ADMIN = "super_admin"
    ADMIN = "admin"
    MANAGER = "manager"
    MARKETER = "marketer"
    VIEWER = "viewer"
    # A partner's own credential: it may only return the leads referred to that partner.
    PARTNER = "partner"


# Everyone in a workspace may look at its leads; only viewers may not change them.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.SUPER_ADMIN: frozenset(Permission),
    Role.ADMIN: frozenset(Permission),
    Role.MANAGER: frozenset(Permission),
    Role.MARKETER: frozenset(Permission),
    Role.VIEWER: frozenset({Permission.LEADS_VIEW}),
    Role.PARTNER: frozenset({Permission.RETURNS_START}),
}

MAX_NAME_LENGTH = 200

# A pending lead without its own `expiresAt` is abandoned this long after it was received,
# unless the workspace set another value (`Workspace.set_abandon_after`). Fractional hours
# are allowed (the tests use seconds); at most a year.
DEFAULT_ABANDON_AFTER_HOURS = 72.0
MAX_ABANDON_AFTER_HOURS = 24.0 * 366


class InvalidSetting(ValueError):
    """A workspace setting out of its allowed range."""


class InvalidName(ValueError):
    """A name that is empty, too long, or holds control characters."""


def clean_name(name: str, what: str = "name") -> str:
    """Trimmed and checked: 1 to 200 printable characters."""
    cleaned = name.strip()
    if not cleaned:
        raise InvalidName(f"{what} must not be empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise InvalidName(f"{what} must be at most {MAX_NAME_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise InvalidName(f"{what} must not contain control characters")
    return cleaned


class Workspace(Aggregate):
    """A tenant: every lead, pipeline and token belongs to exactly one workspace."""

    class Created(Aggregate.Created):
        name: str
        default_region: str

    class Renamed(Aggregate.Event):
        name: str

    class PipelineActivated(Aggregate.Event):
        pipeline_id: UUID

    class AbandonAfterSet(Aggregate.Event):
        """How long (hours) a pending lead without `expiresAt` waits for its customer,
        for leads received from now on; the default before any such event is
        `DEFAULT_ABANDON_AFTER_HOURS`."""

        hours: float

    class DefaultLeadTypeSet(Aggregate.Event):
        """The lead type new leads get (None: none, so no lead-type actions run)."""

        lead_type_id: UUID | None

    @event(Created)
    def __init__(self, name: str, default_region: str = "US") -> None:
        self.name = name
        self.default_region = default_region
        self.active_pipeline_id: UUID | None = None
        self.abandon_after_hours = DEFAULT_ABANDON_AFTER_HOURS
        self.default_lead_type_id: UUID | None = None

    def set_default_lead_type(self, lead_type_id: UUID | None) -> bool:
        if lead_type_id == self.default_lead_type_id:
            return False
        self._default_lead_type_set(lead_type_id=lead_type_id)
        return True

    @event(DefaultLeadTypeSet)
    def _default_lead_type_set(self, lead_type_id: UUID | None) -> None:
        self.default_lead_type_id = lead_type_id

    def activate_pipeline(self, pipeline_id: UUID) -> None:
        """New leads land in the first stage of the active pipeline."""
        if pipeline_id != self.active_pipeline_id:
            self._pipeline_activated(pipeline_id=pipeline_id)

    @event(PipelineActivated)
    def _pipeline_activated(self, pipeline_id: UUID) -> None:
        self.active_pipeline_id = pipeline_id

    @event(Renamed)
    def rename(self, name: str) -> None:
        self.name = name

    def set_abandon_after(self, hours: float) -> bool:
        """Set the abandonment delay for leads received from now on; False (no event) when
        it is already `hours`."""
        if not 0 < hours <= MAX_ABANDON_AFTER_HOURS:  # NaN fails too
            raise InvalidSetting(
                f"abandonAfterHours must be above 0 and at most {MAX_ABANDON_AFTER_HOURS:g}"
            )
        if hours == self.abandon_after_hours:
            return False
        self._abandon_after_set(hours=float(hours))
        return True

    @event(AbandonAfterSet)
    def _abandon_after_set(self, hours: float) -> None:
        self.abandon_after_hours = hours


class ApiToken(Aggregate):
    """A bearer token for one workspace; only the SHA-256 of its secret is ever stored."""

    class Issued(Aggregate.Created):
        workspace_id: UUID
        role: Role
        token_hash: str
        name: str
        hint: str
        # Set on a `partner` token: the partner it speaks for.
        partner_id: UUID | None = None
        # Set on a token that belongs to a person: it acts as that user.
        user_id: UUID | None = None

    class Revoked(Aggregate.Event):
        pass

    @event(Issued)
    def __init__(
        self,
        workspace_id: UUID,
        role: Role,
        token_hash: str,
        name: str,
        hint: str,
        partner_id: UUID | None = None,
        user_id: UUID | None = None,
    ) -> None:
        if (role is Role.PARTNER) != (partner_id is not None):
            raise InvalidSetting("a partner token, and only one, names its partner")
        if partner_id is not None and user_id is not None:
            raise InvalidSetting("a partner token cannot belong to a user")
        self.workspace_id = workspace_id
        self.partner_id = partner_id
        self.user_id = user_id
        self.role = role
        self.token_hash = token_hash
        self.name = name
        self.hint = hint
        self.revoked = False

    @property
    def permissions(self) -> frozenset[Permission]:
        return frozenset() if self.revoked else ROLE_PERMISSIONS[self.role]

    def revoke(self) -> None:
        if not self.revoked:
            self._revoked()

    @event(Revoked)
    def _revoked(self) -> None:
        self.revoked = True
