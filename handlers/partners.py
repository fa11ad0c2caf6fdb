"""Command handlers for partners: create, change, delete; listing from the log."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.partners import Partner, PartnerDetails
from domain.workspaces import Workspace
from handlers.lead_commands import load_partner
from handlers.listing import aggregates_of
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound


class PartnerNotFound(LookupError):
    pass


async def create_partner(
    store: EventStore, workspace_id: UUID, details: PartnerDetails, actor: str
) -> tuple[Partner, int]:
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    partner = Partner(workspace_id=workspace_id, details=details, actor=actor)
    appended = await store.append(Append(workspace_id, events=partner.collect_events()))
    return partner, appended.position


async def get_partner(store: EventStore, workspace_id: UUID, partner_id: UUID) -> Partner:
    partner = await load_partner(store, workspace_id, partner_id)
    if partner is None:
        raise PartnerNotFound(f"partner {partner_id} does not exist")
    return partner


async def list_partners(store: EventStore, workspace_id: UUID) -> list[Partner]:
    """The workspace's partners (a workspace has few)."""
    return await aggregates_of(store, Partner, "partner.created", workspace_id)


async def update_partner(
    store: EventStore, workspace_id: UUID, partner_id: UUID, fields: dict[str, Any], actor: str
) -> tuple[Partner, int]:
    async def attempt() -> tuple[Partner, int]:
        partner = await get_partner(store, workspace_id, partner_id)
        if not partner.update(fields, actor):
            return partner, 0
        appended = await store.append(Append(workspace_id, events=partner.collect_events()))
        return partner, appended.position

    return await retrying(attempt)


async def delete_partner(
    store: EventStore, workspace_id: UUID, partner_id: UUID, actor: str
) -> int:
    async def attempt() -> int:
        partner = await get_partner(store, workspace_id, partner_id)
        partner.delete(actor)
        appended = await store.append(Append(workspace_id, events=partner.collect_events()))
        return appended.position

    return await retrying(attempt)
