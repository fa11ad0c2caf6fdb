"""Command handlers for partners: create, change, delete, signing secrets; referral webhooks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from domain.deliveries import NO_LEAD_TYPE, Delivery, DeliveryKind
from domain.leads import Lead
from domain.partners import REFERRAL_EVENT_TYPE, Partner, PartnerDetails, referral_payload
from domain.signing import JSON
from domain.triggers import Trigger
from domain.workspaces import Workspace
from handlers.lead_commands import load_partner
from handlers.listing import aggregates_of
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound

DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)
MAX_ROTATION_OVERLAP = timedelta(days=30)
# A referral webhook: the first attempt and up to five retries, ten seconds each.
REFERRAL_MAX_ATTEMPTS = 6
REFERRAL_TIMEOUT_SECONDS = 10.0


class PartnerNotFound(LookupError):
    pass


class InvalidOverlap(ValueError):
    pass


@dataclass(frozen=True)
class SavedPartner:
    """A partner after a command, the log position (0: nothing changed), and the signing
    secret the command issued, if it issued one (shown this once)."""

    partner: Partner
    position: int
    secret: str | None = None


async def create_partner(
    store: EventStore, workspace_id: UUID, details: PartnerDetails, actor: str
) -> SavedPartner:
    """A partner; with a webhook URL it gets its signing secret at once."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    partner = Partner(workspace_id=workspace_id, details=details, actor=actor)
    secret = partner.issue_first_secret(actor)
    appended = await store.append(Append(workspace_id, events=partner.collect_events()))
    return SavedPartner(partner, appended.position, secret)


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
) -> SavedPartner:
    """Change the given fields. The first webhook URL brings the signing secret; setting
    the URL again after a 410 Gone switches the webhook back on."""

    async def attempt() -> SavedPartner:
        partner = await get_partner(store, workspace_id, partner_id)
        changed = partner.update(fields, actor)
        secret = partner.issue_first_secret(actor)
        if not changed and secret is None:
            return SavedPartner(partner, 0)
        appended = await store.append(Append(workspace_id, events=partner.collect_events()))
        return SavedPartner(partner, appended.position, secret)

    return await retrying(attempt)


async def rotate_secret(
    store: EventStore,
    workspace_id: UUID,
    partner_id: UUID,
    actor: str,
    overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
) -> SavedPartner:
    """A new signing secret; the previous one keeps signing for `overlap`."""
    if overlap < timedelta(0) or overlap > MAX_ROTATION_OVERLAP:
        raise InvalidOverlap("the overlap must be between 0 and 30 days")

    async def attempt() -> SavedPartner:
        partner = await get_partner(store, workspace_id, partner_id)
        secret = partner.issue_secret(overlap, actor)
        appended = await store.append(Append(workspace_id, events=partner.collect_events()))
        return SavedPartner(partner, appended.position, secret)

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


def referral_delivery(lead: Lead, partner: Partner, referred: Lead.Referred) -> Delivery | None:
    """The webhook telling `partner` of the referral `referred` (`lead` as it was right
    after it), or None when the partner is not sent referrals (no URL, inactive, deleted,
    or switched off by a 410)."""
    if not partner.sends_referrals or partner.details.webhook_url is None:
        return None
    return Delivery(
        workspace_id=partner.workspace_id,
        lead_id=lead.id,
        lead_type_id=NO_LEAD_TYPE,
        action_id=partner.id,
        trigger=Trigger.REFERRED,
        event_code=REFERRAL_EVENT_TYPE,
        kind=DeliveryKind.WEBHOOK,
        target=partner.details.webhook_url,
        format=JSON,
        payload=referral_payload(lead, referred.timestamp),
        headers={},
        max_attempts=REFERRAL_MAX_ATTEMPTS,
        timeout_seconds=REFERRAL_TIMEOUT_SECONDS,
        partner_id=partner.id,
    )
