"""A workspace's routing rules: which campaign a lead submitted without one goes to.

The rules are ordered. The first active rule whose conditions all hold picks among its
campaigns (those the caller finds usable: existing and active): `priority` takes the
first, `weighted` draws by the weights (deterministically from the lead id, so a retry
routes the same way), `round_robin` takes turns by a counter the caller draws
(`needs_turn`, `round_robin_counter`). Only the first matching rule decides: when none of
its campaigns is usable the lead is not routed, rather than silently falling to a later
rule the counter was not drawn for.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import event
from pydantic import Field, field_validator, model_validator

from domain.base import Aggregate
from domain.campaigns import MAX_RULES, Condition
from domain.conditions import all_hold, describe
from domain.lead_types import Model
from domain.text import clean_text

MAX_ROUTING_RULES = 100
MAX_RULE_CAMPAIGNS = 50

RoutingStrategy = Literal["priority", "weighted", "round_robin"]


class RoutingRule(Model):
    """`conditions` (all must hold; none: always) send a lead to one of `campaignIds`."""

    id: str = Field(default="", max_length=64)
    name: str = Field(min_length=1, max_length=200)
    conditions: list[Condition] = Field(default_factory=list, max_length=MAX_RULES)
    campaign_ids: list[UUID] = Field(min_length=1, max_length=MAX_RULE_CAMPAIGNS)
    strategy: RoutingStrategy = "priority"
    # One per campaign, for `weighted`: a campaign's share is its weight over their sum.
    weights: list[int] | None = None
    active: bool = True

    @field_validator("name", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=200) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> RoutingRule:
        if len(set(self.campaign_ids)) != len(self.campaign_ids):
            raise ValueError("a campaign is listed twice in a rule")
        if self.strategy == "weighted" and self.weights is None:
            raise ValueError("a weighted rule needs `weights`")
        if self.weights is not None:
            if len(self.weights) != len(self.campaign_ids):
                raise ValueError("`weights` needs one weight per campaign")
            if any(weight < 0 for weight in self.weights):
                raise ValueError("a weight cannot be negative")
            if sum(self.weights) <= 0:
                raise ValueError("the weights cannot all be 0")
        return self


class RoutingConfig(Model):
    """A workspace's routing rules, in the order they are tried."""

    rules: list[RoutingRule] = Field(default_factory=list, max_length=MAX_ROUTING_RULES)

    @model_validator(mode="after")
    def _ids(self) -> RoutingConfig:
        ids: set[str] = set()
        rules = []
        for index, rule in enumerate(self.rules):
            rule_id = rule.id or f"r{index + 1}"
            if rule_id in ids:
                raise ValueError(f"two rules have the id {rule_id!r}")
            ids.add(rule_id)
            rules.append(rule if rule.id else rule.model_copy(update={"id": rule_id}))
        object.__setattr__(self, "rules", rules)
        return self

    def rule(self, rule_id: str) -> RoutingRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)


_NAMESPACE = UUID("3d6f2b8e-9a41-4c57-8e0b-52a1c7d94f16")


def routing_rules_id(workspace_id: UUID) -> UUID:
    """One set of routing rules per workspace, at an id derived from it."""
    return uuid.uuid5(_NAMESPACE, f"routing-rules:{workspace_id}")


class RoutingRules(Aggregate):
    class Created(Aggregate.Created):
        workspace_id: UUID
        config: RoutingConfig
        actor: str

    class Replaced(Aggregate.Event):
        config: RoutingConfig
        actor: str

    @staticmethod
    def create_id(workspace_id: UUID) -> UUID:
        return routing_rules_id(workspace_id)

    @event(Created)
    def __init__(self, workspace_id: UUID, config: RoutingConfig, actor: str) -> None:
        self.workspace_id = workspace_id
        self.config = config

    def replace(self, config: RoutingConfig, actor: str) -> bool:
        """Replace every rule; False when nothing differs."""
        if config == self.config:
            return False
        self._replaced(config=config, actor=actor)
        return True

    @event(Replaced)
    def _replaced(self, config: RoutingConfig, actor: str) -> None:
        self.config = config


@dataclass(frozen=True)
class RoutingDecision:
    """The campaign a lead was routed to, by which rule, and why (in words)."""

    campaign_id: UUID
    rule_id: str
    rule_name: str
    strategy: str
    reason: str

    def json(self) -> dict[str, Any]:
        return {
            "campaignId": str(self.campaign_id),
            "ruleId": self.rule_id,
            "ruleName": self.rule_name,
            "strategy": self.strategy,
            "reason": self.reason,
        }


def matching_rule(config: RoutingConfig, context: Mapping[str, Any]) -> RoutingRule | None:
    """The first active rule whose conditions all hold."""
    return next(
        (rule for rule in config.rules if rule.active and all_hold(rule.conditions, context)),
        None,
    )


def needs_turn(config: RoutingConfig, context: Mapping[str, Any]) -> str | None:
    """The id of the rule that decides, when it takes turns (the caller then draws the
    turn from `round_robin_counter`); None otherwise."""
    rule = matching_rule(config, context)
    return rule.id if rule is not None and rule.strategy == "round_robin" else None


def round_robin_counter(workspace_id: UUID, rule_id: str) -> str:
    """The name of the counter a round-robin rule takes its turns from."""
    return f"{workspace_id}:route:{rule_id}"


def choose(
    config: RoutingConfig,
    context: Mapping[str, Any],
    *,
    turn: int,
    lead_id: UUID,
    usable: Callable[[UUID], bool] = lambda _: True,
) -> RoutingDecision | None:
    """The campaign the first matching rule picks among its usable campaigns; None when
    no rule matches or none of its campaigns is usable (or, weighted, all usable ones
    weigh 0)."""
    rule = matching_rule(config, context)
    if rule is None:
        return None
    weights = rule.weights or [1] * len(rule.campaign_ids)
    candidates = [
        (campaign_id, weight)
        for campaign_id, weight in zip(rule.campaign_ids, weights, strict=True)
        if usable(campaign_id)
    ]
    if not candidates:
        return None
    skipped = len(rule.campaign_ids) - len(candidates)
    if rule.strategy == "weighted":
        total = sum(weight for _, weight in candidates)
        if total <= 0:
            return None
        draw = lead_id.int % total
        campaign_id = _weighted(candidates, draw)
        how = f"weighted draw {draw} of {total}"
    elif rule.strategy == "round_robin":
        campaign_id = candidates[turn % len(candidates)][0]
        how = f"round_robin turn {turn} of {len(candidates)}"
    else:
        campaign_id = candidates[0][0]
        how = "priority"
    if skipped:
        how += f" ({skipped} of {len(rule.campaign_ids)} campaigns not usable)"
    matched = " and ".join(describe(condition) for condition in rule.conditions) or "always"
    return RoutingDecision(
        campaign_id=campaign_id,
        rule_id=rule.id,
        rule_name=rule.name,
        strategy=rule.strategy,
        reason=f"rule {_quoted(rule.name)} matched ({matched}); {how}",
    )


def _weighted(candidates: list[tuple[UUID, int]], draw: int) -> UUID:
    """The campaign whose share of `0 .. total - 1` holds `draw`."""
    for campaign_id, weight in candidates:
        if draw < weight:
            return campaign_id
        draw -= weight
    raise ValueError("the draw is beyond the weights' sum")


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'
