"""Command handlers for a workspace's routing rules: read them, replace them all."""

from __future__ import annotations

from uuid import UUID

from domain.routing import RoutingConfig, RoutingRules, routing_rules_id
from domain.workspaces import Workspace
from handlers.campaigns import UnknownCampaign, campaign_usable
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound


async def load_routing(store: EventStore, workspace_id: UUID) -> RoutingRules | None:
    rules = await store.load(RoutingRules, routing_rules_id(workspace_id))
    if rules is None or rules.workspace_id != workspace_id:
        return None
    return rules


async def get_routing(store: EventStore, workspace_id: UUID) -> RoutingConfig:
    """The workspace's rules, in order; none until they are first set."""
    rules = await load_routing(store, workspace_id)
    return rules.config if rules is not None else RoutingConfig()


async def check_campaigns(store: EventStore, workspace_id: UUID, config: RoutingConfig) -> None:
    """Every campaign a rule names is usable, else `UnknownCampaign` naming the field."""
    usable: set[UUID] = set()
    for index, rule in enumerate(config.rules):
        for place, campaign_id in enumerate(rule.campaign_ids):
            if campaign_id in usable:
                continue
            if await campaign_usable(store, workspace_id, campaign_id) is None:
                raise UnknownCampaign(campaign_id, f"rules.{index}.campaignIds.{place}")
            usable.add(campaign_id)


async def replace_routing(
    store: EventStore, workspace_id: UUID, config: RoutingConfig, actor: str
) -> int:
    """Replace every rule (in order); the log position, 0 when nothing differs."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    await check_campaigns(store, workspace_id, config)

    async def attempt() -> int:
        rules = await load_routing(store, workspace_id)
        if rules is None:
            # Two first writers race on version 1: the loser retries as a replacement.
            rules = RoutingRules(workspace_id=workspace_id, config=config, actor=actor)
        elif not rules.replace(config, actor):
            return 0
        appended = await store.append(Append(workspace_id, events=rules.collect_events()))
        return appended.position

    return await retrying(attempt)
