"""Command handlers for lead types: create, configure actions, rotate secrets, default, delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from domain.lead_types import (
    Action,
    AssignMode,
    AssignUser,
    ChangeLeadType,
    ChangeStatus,
    InvalidLeadType,
    LeadType,
    NotifyUser,
    Refer,
    Referral,
    ReferralMethod,
    Webhook,
    private_target,
)
from domain.leads import Lead
from domain.milestones import find_status
from domain.workspaces import Workspace, clean_name
from handlers.lead_commands import Done, change_lead, load_partner, statuses_of
from handlers.listing import aggregates_of
from handlers.ports import Append, Claim, EventStore
from handlers.retry import retrying
from handlers.users import UnknownGroup, UnknownUser, assignable_user, group_members
from handlers.workspaces import WorkspaceNotFound

DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


class LeadTypeNotFound(LookupError):
    pass


@dataclass
class Saved:
    """A lead type after a command, the log position, and any secret issued by it (shown
    to the caller this once)."""

    lead_type: LeadType
    position: int
    secrets: dict[UUID, str] = field(default_factory=dict)


def name_key(workspace_id: UUID, name: str) -> str:
    return f"lead_type:{workspace_id}:name:{name.lower()}"


async def get_lead_type(store: EventStore, workspace_id: UUID, lead_type_id: UUID) -> LeadType:
    found = await store.load(LeadType, lead_type_id)
    if found is None or found.workspace_id != workspace_id or found.deleted:
        raise LeadTypeNotFound(f"lead type {lead_type_id} does not exist")
    return found


async def list_lead_types(store: EventStore, workspace_id: UUID) -> list[LeadType]:
    return await aggregates_of(store, LeadType, "lead_type.created", workspace_id)


async def check_actions(
    store: EventStore,
    workspace_id: UUID,
    actions: list[Action],
    *,
    allow_private_targets: bool,
    own_id: UUID | None = None,
) -> None:
    """Refuse an action list whose references do not exist in the workspace (a user, a
    group, a partner, a status, a lead type) or whose webhook targets an internal host."""
    statuses = None
    for action in actions:
        where = f"action {action.id} ({action.type})"
        try:
            if isinstance(action, AssignUser):
                if action.mode is AssignMode.USER:
                    await assignable_user(store, workspace_id, str(action.user_id))
                elif action.group_id is not None:
                    await group_members(store, workspace_id, action.group_id)
            elif isinstance(action, NotifyUser):
                await assignable_user(store, workspace_id, str(action.user_id))
        except (UnknownUser, UnknownGroup) as error:
            raise InvalidLeadType(f"{where}: {error}") from None
        if isinstance(action, ChangeStatus):
            statuses = statuses or await statuses_of(store, workspace_id)
            if find_status(statuses, action.status) is None:
                raise InvalidLeadType(f"{where}: {action.status!r} is not a workspace status")
        elif isinstance(action, ChangeLeadType):
            if action.lead_type_id != own_id:
                try:
                    await get_lead_type(store, workspace_id, action.lead_type_id)
                except LeadTypeNotFound as error:
                    raise InvalidLeadType(f"{where}: {error}") from None
        elif isinstance(action, Refer):
            await _check_partner(store, workspace_id, action.partner_id, where)
        elif (
            isinstance(action, Webhook) and not allow_private_targets and private_target(action.url)
        ):
            raise InvalidLeadType(
                f"{where}: {action.url} is a loopback or private address; deliveries"
                " there are off unless LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS=1"
            )


async def _check_partner(
    store: EventStore, workspace_id: UUID, partner_id: UUID, where: str
) -> None:
    partner = await load_partner(store, workspace_id, partner_id)
    if partner is None or not partner.details.active:
        raise InvalidLeadType(f"{where}: partner {partner_id} does not exist or is inactive")


async def _check_referral(store: EventStore, workspace_id: UUID, referral: Referral) -> None:
    if referral.method is ReferralMethod.IMMEDIATELY and referral.partner_id is not None:
        await _check_partner(store, workspace_id, referral.partner_id, "referral")


def _issue_missing_secrets(lead_type: LeadType, actor: str) -> dict[UUID, str]:
    return {
        hook.id: lead_type.issue_secret(hook.id, timedelta(0), actor)
        for hook in lead_type.webhooks_without_secret()
    }


async def create_lead_type(
    store: EventStore,
    workspace_id: UUID,
    name: str,
    referral: Referral,
    actions: list[Action],
    actor: str,
    *,
    make_default: bool | None = None,
    allow_private_targets: bool = False,
) -> Saved:
    """A new lead type. The workspace's first lead type becomes its default (new leads
    get it) unless `make_default` is False."""
    name = clean_name(name)
    await check_actions(store, workspace_id, actions, allow_private_targets=allow_private_targets)
    await _check_referral(store, workspace_id, referral)

    async def attempt() -> Saved:
        workspace = await store.load(Workspace, workspace_id)
        if workspace is None:
            raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
        lead_type = LeadType(
            workspace_id=workspace_id, name=name, referral=referral, actions=actions, actor=actor
        )
        secrets = _issue_missing_secrets(lead_type, actor)
        events = list(lead_type.collect_events())
        first = workspace.default_lead_type_id is None
        if make_default or (make_default is None and first):
            workspace.set_default_lead_type(lead_type.id)
            events.extend(workspace.collect_events())
        appended = await store.append(
            Append(
                workspace_id,
                events=events,
                claims=[Claim(name_key(workspace_id, name), lead_type.id, exclusive=True)],
            )
        )
        return Saved(lead_type, appended.position, secrets)

    return await retrying(attempt)


async def update_lead_type(
    store: EventStore,
    workspace_id: UUID,
    lead_type_id: UUID,
    actor: str,
    *,
    name: str | None = None,
    referral: Referral | None = None,
    actions: list[Action] | None = None,
    allow_private_targets: bool = False,
) -> Saved:
    """Rename, change the referral method, and/or replace the action list (in order).
    Webhook actions new to the list get a secret, returned this once."""
    if name is not None:
        name = clean_name(name)
    if actions is not None:
        await check_actions(
            store,
            workspace_id,
            actions,
            allow_private_targets=allow_private_targets,
            own_id=lead_type_id,
        )
    if referral is not None:
        await _check_referral(store, workspace_id, referral)

    async def attempt() -> Saved:
        lead_type = await get_lead_type(store, workspace_id, lead_type_id)
        old_name = lead_type.name
        lead_type.change(name or lead_type.name, referral or lead_type.referral, actor)
        secrets: dict[UUID, str] = {}
        if actions is not None and lead_type.set_actions(actions, actor):
            secrets = _issue_missing_secrets(lead_type, actor)
        events = lead_type.collect_events()
        if not events:
            return Saved(lead_type, 0)
        renamed = lead_type.name.lower() != old_name.lower()
        appended = await store.append(
            Append(
                workspace_id,
                events=events,
                claims=(
                    [Claim(name_key(workspace_id, lead_type.name), lead_type.id, exclusive=True)]
                    if renamed
                    else []
                ),
                releases=[name_key(workspace_id, old_name)] if renamed else [],
            )
        )
        return Saved(lead_type, appended.position, secrets)

    return await retrying(attempt)


async def rotate_secret(
    store: EventStore,
    workspace_id: UUID,
    lead_type_id: UUID,
    action_id: UUID,
    actor: str,
    overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
) -> Saved:
    """A new signing secret for a webhook action; the old one keeps signing for `overlap`."""
    if overlap < timedelta(0) or overlap > timedelta(days=30):
        raise InvalidLeadType("the overlap must be between 0 and 30 days")

    async def attempt() -> Saved:
        lead_type = await get_lead_type(store, workspace_id, lead_type_id)
        secret = lead_type.issue_secret(action_id, overlap, actor)
        appended = await store.append(Append(workspace_id, events=lead_type.collect_events()))
        return Saved(lead_type, appended.position, {action_id: secret})

    return await retrying(attempt)


async def set_default(store: EventStore, workspace_id: UUID, lead_type_id: UUID | None) -> int:
    """Make a lead type the one new leads get (None: new leads get none)."""

    async def attempt() -> int:
        if lead_type_id is not None:
            await get_lead_type(store, workspace_id, lead_type_id)
        workspace = await store.load(Workspace, workspace_id)
        if workspace is None:
            raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
        if not workspace.set_default_lead_type(lead_type_id):
            return 0
        appended = await store.append(Append(workspace_id, events=workspace.collect_events()))
        return appended.position

    return await retrying(attempt)


async def delete_lead_type(
    store: EventStore, workspace_id: UUID, lead_type_id: UUID, actor: str
) -> int:
    """Delete a lead type (its leads keep it, and run no more of its actions); when it was
    the default, new leads get no lead type until another is made the default."""

    async def attempt() -> int:
        lead_type = await get_lead_type(store, workspace_id, lead_type_id)
        lead_type.delete(actor)
        events = list(lead_type.collect_events())
        workspace = await store.load(Workspace, workspace_id)
        if workspace is not None and workspace.default_lead_type_id == lead_type_id:
            workspace.set_default_lead_type(None)
            events.extend(workspace.collect_events())
        appended = await store.append(
            Append(workspace_id, events=events, releases=[name_key(workspace_id, lead_type.name)])
        )
        return appended.position

    return await retrying(attempt)


async def change_lead_type_of(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    lead_type_id: UUID,
    actor: str,
    by_user: bool,
) -> Done[bool]:
    """`PATCH /v1/leads/{id}/lead-type`: from now on the lead runs that type's actions."""
    await get_lead_type(store, workspace_id, lead_type_id)

    async def decide(lead: Lead) -> bool:
        return lead.change_lead_type(lead_type_id, actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


async def default_of(store: EventStore, workspace_id: UUID) -> UUID | None:
    """The lead type new leads of the workspace get."""
    workspace = await store.load(Workspace, workspace_id)
    return workspace.default_lead_type_id if workspace is not None else None
