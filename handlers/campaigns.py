"""Command handlers for campaigns: create, replace, patch, delete, and what they may name."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.campaigns import Campaign, CampaignConfig
from domain.campaigns import UnknownCampaign as CampaignUnknown
from domain.workspaces import Workspace
from handlers.lead_commands import load_partner
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound

# A PATCH names fields as the wire does (`fallbackCampaignIds`); the Python names are
# accepted too and mapped onto the wire's, so a merged body never holds both spellings.
_WIRE_NAMES = {name: field.alias or name for name, field in CampaignConfig.model_fields.items()}


class CampaignNotFound(LookupError):
    """No campaign of that id in the workspace (unknown, deleted, or another's)."""


class UnknownCampaign(CampaignUnknown):
    """A configuration names a campaign the workspace cannot use, at `field`."""

    def __init__(self, campaign_id: UUID, field: str, why: str = "does not exist") -> None:
        super().__init__(f"{field}: campaign {campaign_id} {why}")
        self.campaign_id = campaign_id
        self.field = field


class UnknownPartner(LookupError):
    """A configuration names a buyer that is not a partner of the workspace."""

    def __init__(self, partner_id: UUID, field: str) -> None:
        super().__init__(f"{field}: partner {partner_id} does not exist")
        self.partner_id = partner_id
        self.field = field


async def campaign_usable(
    store: EventStore, workspace_id: UUID, campaign_id: UUID
) -> Campaign | None:
    """The campaign when it exists, belongs to the workspace and is not deleted."""
    campaign = await store.load(Campaign, campaign_id)
    if campaign is None or campaign.workspace_id != workspace_id or campaign.deleted:
        return None
    return campaign


async def get_campaign(store: EventStore, workspace_id: UUID, campaign_id: UUID) -> Campaign:
    campaign = await campaign_usable(store, workspace_id, campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    return campaign


def _buyers(config: CampaignConfig) -> list[tuple[UUID, str]]:
    buyers: list[tuple[UUID, str]] = []
    if config.buyer_partner_id is not None:
        buyers.append((config.buyer_partner_id, "buyerPartnerId"))
    for index, endpoint in enumerate(config.endpoints):
        if endpoint.buyer_partner_id is not None:
            buyers.append((endpoint.buyer_partner_id, f"endpoints.{index}.buyerPartnerId"))
    return buyers


async def check_references(
    store: EventStore,
    workspace_id: UUID,
    config: CampaignConfig,
    itself: UUID | None = None,
    before: CampaignConfig | None = None,
) -> None:
    """Every fallback campaign usable (and not the campaign itself), every buyer a partner
    of the workspace; else `UnknownCampaign` / `UnknownPartner` naming the field. A change
    checks only what it adds to the configuration `before` it: a fallback deleted since
    does not block renaming the campaign (the pipeline passes over it)."""
    kept_campaigns = set(before.fallback_campaign_ids) if before else set()
    for index, fallback_id in enumerate(config.fallback_campaign_ids):
        field = f"fallbackCampaignIds.{index}"
        if fallback_id == itself:
            raise UnknownCampaign(fallback_id, field, "is this campaign itself")
        if fallback_id in kept_campaigns:
            continue
        if await campaign_usable(store, workspace_id, fallback_id) is None:
            raise UnknownCampaign(fallback_id, field)
    checked = {partner_id for partner_id, _ in _buyers(before)} if before else set()
    for partner_id, field in _buyers(config):
        if partner_id in checked:
            continue
        if await load_partner(store, workspace_id, partner_id) is None:
            raise UnknownPartner(partner_id, field)
        checked.add(partner_id)


async def create_campaign(
    store: EventStore, workspace_id: UUID, config: CampaignConfig, actor: str
) -> tuple[Campaign, int]:
    """A new campaign and the log position of its creation."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    await check_references(store, workspace_id, config)
    campaign = Campaign(workspace_id=workspace_id, config=config, actor=actor)
    appended = await store.append(Append(workspace_id, events=campaign.collect_events()))
    return campaign, appended.position


async def update_campaign(
    store: EventStore, workspace_id: UUID, campaign_id: UUID, config: CampaignConfig, actor: str
) -> tuple[Campaign, int]:
    """Replace the whole configuration (PUT); position 0 when nothing differs."""

    async def attempt() -> tuple[Campaign, int]:
        campaign = await get_campaign(store, workspace_id, campaign_id)
        await check_references(store, workspace_id, config, campaign_id, campaign.config)
        if not campaign.update(config, actor):
            return campaign, 0
        appended = await store.append(Append(workspace_id, events=campaign.collect_events()))
        return campaign, appended.position

    return await retrying(attempt)


def merged_config(current: CampaignConfig, fields: dict[str, Any]) -> CampaignConfig:
    """`fields` (top-level keys, camelCase) laid over `current`, validated as a whole;
    raises pydantic's `ValidationError` naming the field at fault."""
    data = current.snapshot()
    for key, value in fields.items():
        data[_WIRE_NAMES.get(key, key)] = value
    return CampaignConfig.model_validate(data)


async def patch_campaign(
    store: EventStore, workspace_id: UUID, campaign_id: UUID, fields: dict[str, Any], actor: str
) -> tuple[Campaign, int]:
    """Change the given top-level fields (PATCH); the rest stays as it is."""

    async def attempt() -> tuple[Campaign, int]:
        campaign = await get_campaign(store, workspace_id, campaign_id)
        config = merged_config(campaign.config, fields)
        await check_references(store, workspace_id, config, campaign_id, campaign.config)
        if not campaign.update(config, actor):
            return campaign, 0
        appended = await store.append(Append(workspace_id, events=campaign.collect_events()))
        return campaign, appended.position

    return await retrying(attempt)


async def delete_campaign(
    store: EventStore, workspace_id: UUID, campaign_id: UUID, actor: str
) -> int:
    """Delete the campaign: it takes no new submissions; those it has keep their history."""

    async def attempt() -> int:
        campaign = await get_campaign(store, workspace_id, campaign_id)
        campaign.delete(actor)
        appended = await store.append(Append(workspace_id, events=campaign.collect_events()))
        return appended.position

    return await retrying(attempt)
