"""Routing rules: validation, the aggregate, and choosing a campaign by priority, weight or turn."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from domain.lead_context import lead_context
from domain.routing import (
    RoutingConfig,
    RoutingDecision,
    RoutingRule,
    RoutingRules,
    choose,
    matching_rule,
    needs_turn,
    round_robin_counter,
    routing_rules_id,
)
from gateways.postgres.codec import EventCodec

A, B, C = (UUID(int=n) for n in (0xA, 0xB, 0xC))
NOW = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)  # a Monday


def config(*rules: dict[str, Any]) -> RoutingConfig:
    return RoutingConfig.model_validate({"rules": list(rules)})


def context(**custom: Any) -> dict[str, Any]:
    return lead_context({"email": "ada@example.com", "customFields": custom}, source="api", now=NOW)


NY = {"field": "lead.state", "op": "eq", "value": "NY"}


# ---- configuration ------------------------------------------------------------------------


def test_rules_read_camel_case_and_get_ids_by_position() -> None:
    routing = config(
        {"name": "NY", "conditions": [NY], "campaignIds": [str(A)]},
        {"id": "adults", "name": "Adults", "campaignIds": [str(B)], "strategy": "round_robin"},
        {
            "name": "  Rest  ",
            "campaignIds": [str(C), str(A)],
            "strategy": "weighted",
            "weights": [3, 1],
        },
    )
    assert [rule.id for rule in routing.rules] == ["r1", "adults", "r3"]
    assert routing.rules[2].name == "Rest"
    assert routing.rules[0].strategy == "priority"
    assert routing.rules[0].active
    assert routing.rule("adults").campaign_ids == [B]
    with pytest.raises(KeyError):
        routing.rule("r2")
    dumped = routing.model_dump(mode="json", by_alias=True)
    assert dumped["rules"][2]["campaignIds"] == [str(C), str(A)]
    assert RoutingConfig.model_validate(dumped) == routing
    assert config() == RoutingConfig()
    by_name = RoutingRule(name="Direct", campaign_ids=[A], strategy="round_robin")
    assert RoutingConfig(rules=[by_name]).rules[0].id == "r1"
    assert by_name.id == ""  # the rule itself is frozen; the config holds the filled copy


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "x", "campaignIds": []}, "at least 1"),
        ({"name": "x", "campaignIds": [str(A), str(A)]}, "listed twice"),
        ({"name": "", "campaignIds": [str(A)]}, "at least 1 character"),
        ({"name": "   ", "campaignIds": [str(A)]}, "at least 1 character"),
        ({"name": "x", "campaignIds": ["nope"]}, "UUID"),
        ({"name": "x", "campaignIds": [str(A)], "strategy": "random"}, "strategy"),
        ({"name": "x", "campaignIds": [str(A)], "strategy": "weighted"}, "needs `weights`"),
        (
            {"name": "x", "campaignIds": [str(A), str(B)], "strategy": "weighted", "weights": [1]},
            "one weight per campaign",
        ),
        (
            {
                "name": "x",
                "campaignIds": [str(A), str(B)],
                "strategy": "weighted",
                "weights": [1, -1],
            },
            "negative",
        ),
        (
            {
                "name": "x",
                "campaignIds": [str(A), str(B)],
                "strategy": "weighted",
                "weights": [0, 0],
            },
            "all be 0",
        ),
        ({"name": "x", "campaignIds": [str(A)], "weights": [0]}, "all be 0"),
        (
            {
                "name": "x",
                "campaignIds": [str(A)],
                "conditions": [{"field": "lead.state", "op": "in", "value": "NY"}],
            },
            "list",
        ),
        ({"name": "x", "campaignIds": [str(A)], "surprise": 1}, "Extra inputs"),
    ],
)
def test_bad_rules_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(rule)


def test_rule_ids_are_unique_and_the_rules_are_bounded() -> None:
    with pytest.raises(ValidationError, match="two rules have the id 'r2'"):
        config(
            {"id": "r2", "name": "a", "campaignIds": [str(A)]},
            {"name": "b", "campaignIds": [str(B)]},
        )
    with pytest.raises(ValidationError, match="two rules have the id 'x'"):
        config(
            {"id": "x", "name": "a", "campaignIds": [str(A)]},
            {"id": "x", "name": "b", "campaignIds": [str(B)]},
        )
    with pytest.raises(ValidationError, match="at most 100"):
        config(*({"name": f"r{n}", "campaignIds": [str(A)]} for n in range(101)))
    assert (
        len(config(*({"name": f"r{n}", "campaignIds": [str(A)]} for n in range(100))).rules) == 100
    )


# ---- the aggregate ------------------------------------------------------------------------


def test_one_routing_rules_aggregate_per_workspace() -> None:
    workspace, other = uuid.uuid4(), uuid.uuid4()
    assert routing_rules_id(workspace) == routing_rules_id(workspace)
    assert routing_rules_id(workspace) != routing_rules_id(other)
    first = config({"name": "NY", "conditions": [NY], "campaignIds": [str(A)]})
    rules = RoutingRules(workspace_id=workspace, config=first, actor="user:1")
    assert rules.id == routing_rules_id(workspace)
    assert rules.workspace_id == workspace and rules.config == first
    assert not rules.replace(
        config({"name": "NY", "conditions": [NY], "campaignIds": [str(A)]}), "user:1"
    )
    second = config({"name": "All", "campaignIds": [str(B)]})
    assert rules.replace(second, "user:2")
    assert rules.config == second
    events = rules.collect_events()
    assert [type(e).__name__ for e in events] == ["Created", "Replaced"]
    replaced = events[1]
    assert isinstance(replaced, RoutingRules.Replaced) and replaced.actor == "user:2"


def test_the_events_survive_the_log_s_codec() -> None:
    workspace = uuid.uuid4()
    routing = config(
        {
            "name": "NY",
            "conditions": [{**NY, "reason": "New York"}],
            "campaignIds": [str(A), str(B)],
            "strategy": "weighted",
            "weights": [2, 0],
        },
        {"name": "Rest", "campaignIds": [str(C)], "active": False},
    )
    rules = RoutingRules(workspace_id=workspace, config=routing, actor="user:1")
    rules.replace(config({"name": "Other", "campaignIds": [str(C)]}), "user:1")
    codec = EventCodec()
    for original in rules.collect_events():
        record = codec.encode(original)
        assert record.event_type in ("routing_rules.created", "routing_rules.replaced")
        decoded = codec.decode(
            record.topic, record.originator_id, record.originator_version, record.state
        )
        assert decoded == original
        assert isinstance(decoded, RoutingRules.Created | RoutingRules.Replaced)
        assert decoded.config.rules[0].id == "r1"


# ---- choosing -----------------------------------------------------------------------------


def test_the_first_active_matching_rule_decides() -> None:
    routing = config(
        {"name": "Off", "campaignIds": [str(C)], "active": False},
        {"name": "NY leads", "conditions": [NY], "campaignIds": [str(A)]},
        {"name": "Everyone", "campaignIds": [str(B)]},
    )
    lead_id = uuid.uuid4()
    decision = choose(routing, context(state="ny"), turn=0, lead_id=lead_id)
    assert decision == RoutingDecision(
        campaign_id=A,
        rule_id="r2",
        rule_name="NY leads",
        strategy="priority",
        reason='rule "NY leads" matched (lead.state eq "NY"); priority',
    )
    assert decision.json() == {
        "campaignId": str(A),
        "ruleId": "r2",
        "ruleName": "NY leads",
        "strategy": "priority",
        "reason": 'rule "NY leads" matched (lead.state eq "NY"); priority',
    }
    other = choose(routing, context(state="NJ"), turn=0, lead_id=lead_id)
    assert other is not None and other.campaign_id == B
    assert other.reason == 'rule "Everyone" matched (always); priority'
    matched = matching_rule(routing, context())
    assert matched is not None and matched.name == "Everyone"


def test_every_condition_of_a_rule_must_hold() -> None:
    routing = config(
        {
            "name": 'Adults in "NY"',
            "conditions": [NY, {"field": "lead.age", "op": "between", "value": [18, 65]}],
            "campaignIds": [str(A)],
        }
    )
    assert choose(routing, context(state="NY", age="17"), turn=0, lead_id=uuid.uuid4()) is None
    assert choose(routing, context(state="NJ", age="30"), turn=0, lead_id=uuid.uuid4()) is None
    decision = choose(routing, context(state="NY", age="30"), turn=0, lead_id=uuid.uuid4())
    assert decision is not None and decision.campaign_id == A
    assert decision.reason == (
        'rule "Adults in \\"NY\\"" matched '
        '(lead.state eq "NY" and lead.age between [18, 65]); priority'
    )


def test_no_rules_or_no_match_routes_nowhere() -> None:
    assert choose(RoutingConfig(), context(), turn=0, lead_id=uuid.uuid4()) is None
    routing = config({"name": "NY", "conditions": [NY], "campaignIds": [str(A)]})
    assert choose(routing, context(), turn=0, lead_id=uuid.uuid4()) is None
    assert needs_turn(routing, context()) is None


def test_rules_can_read_source_time_answers_and_attribution() -> None:
    routing = config(
        {
            "name": "Weekend",
            "conditions": [{"field": "time.weekday", "op": "in", "value": ["saturday", "sunday"]}],
            "campaignIds": [str(C)],
        },
        {
            "name": "Office hours",
            "conditions": [
                {"field": "time.hour", "op": "between", "value": [9, 17]},
                {"field": "source", "op": "eq", "value": "API"},
            ],
            "campaignIds": [str(A)],
        },
        {
            "name": "Google",
            "conditions": [{"field": "lead.attribution.utm_source", "op": "eq", "value": "google"}],
            "campaignIds": [str(B)],
        },
    )
    monday_ten = lead_context({}, source="api", now=NOW)
    assert choose(routing, monday_ten, turn=0, lead_id=uuid.uuid4()).campaign_id == A  # type: ignore[union-attr]
    monday_eight = lead_context(
        {"attribution": {"utm_source": "Google"}},
        source="api",
        now=NOW,
        timezone="America/New_York",
    )  # 05:00 there
    assert choose(routing, monday_eight, turn=0, lead_id=uuid.uuid4()).campaign_id == B  # type: ignore[union-attr]
    saturday = lead_context({}, now=datetime(2024, 3, 9, 10, 0, tzinfo=UTC))
    assert choose(routing, saturday, turn=0, lead_id=uuid.uuid4()).campaign_id == C  # type: ignore[union-attr]


def test_priority_takes_the_first_usable_campaign() -> None:
    routing = config({"name": "All", "campaignIds": [str(A), str(B), str(C)]})
    lead_id = uuid.uuid4()
    assert choose(routing, context(), turn=5, lead_id=lead_id).campaign_id == A  # type: ignore[union-attr]
    skip_a = choose(routing, context(), turn=5, lead_id=lead_id, usable=lambda c: c != A)
    assert skip_a is not None and skip_a.campaign_id == B
    assert skip_a.reason == 'rule "All" matched (always); priority (1 of 3 campaigns not usable)'
    assert choose(routing, context(), turn=0, lead_id=lead_id, usable=lambda c: False) is None


def test_no_usable_campaign_does_not_fall_through_to_a_later_rule() -> None:
    routing = config(
        {"name": "NY", "conditions": [NY], "campaignIds": [str(A)], "strategy": "round_robin"},
        {"name": "All", "campaignIds": [str(B)]},
    )
    assert needs_turn(routing, context(state="NY")) == "r1"
    assert (
        choose(routing, context(state="NY"), turn=0, lead_id=uuid.uuid4(), usable=lambda c: c != A)
        is None
    )


def test_round_robin_cycles_through_the_usable_campaigns() -> None:
    routing = config(
        {
            "name": "NY leads",
            "conditions": [NY],
            "campaignIds": [str(A), str(B), str(C)],
            "strategy": "round_robin",
        }
    )
    lead_id = uuid.uuid4()
    picks = [choose(routing, context(state="NY"), turn=turn, lead_id=lead_id) for turn in range(7)]
    assert [p.campaign_id for p in picks if p] == [A, B, C, A, B, C, A]
    assert picks[6] is not None
    assert (
        picks[6].reason == 'rule "NY leads" matched (lead.state eq "NY"); round_robin turn 6 of 3'
    )
    assert picks[6].strategy == "round_robin"
    # B paused: the turns go A, C, A, C
    without_b = [
        choose(routing, context(state="NY"), turn=turn, lead_id=lead_id, usable=lambda c: c != B)
        for turn in range(4)
    ]
    assert [p.campaign_id for p in without_b if p] == [A, C, A, C]
    big = choose(routing, context(state="NY"), turn=10**12 + 1, lead_id=lead_id)
    assert big is not None and big.campaign_id == [A, B, C][(10**12 + 1) % 3]


def test_needs_turn_names_the_round_robin_rule_that_decides() -> None:
    workspace = uuid.uuid4()
    routing = config(
        {
            "id": "ny",
            "name": "NY",
            "conditions": [NY],
            "campaignIds": [str(A), str(B)],
            "strategy": "round_robin",
        },
        {
            "name": "Inactive RR",
            "campaignIds": [str(A)],
            "strategy": "round_robin",
            "active": False,
        },
        {"name": "All", "campaignIds": [str(C)]},
    )
    assert needs_turn(routing, context(state="NY")) == "ny"
    assert needs_turn(routing, context(state="CA")) is None
    assert round_robin_counter(workspace, "ny") == f"{workspace}:route:ny"
    assert round_robin_counter(workspace, "ny") != round_robin_counter(uuid.uuid4(), "ny")


def weighted(*weights: int) -> RoutingConfig:
    ids = [str(A), str(B), str(C)][: len(weights)]
    return config(
        {"name": "Split", "campaignIds": ids, "strategy": "weighted", "weights": list(weights)}
    )


def test_weighted_is_deterministic_per_lead() -> None:
    routing = weighted(1, 1, 1)
    lead_id = uuid.uuid4()
    first = choose(routing, context(), turn=0, lead_id=lead_id)
    assert first is not None
    for turn in range(5):
        assert choose(routing, context(), turn=turn, lead_id=lead_id) == first
    assert first.reason.startswith('rule "Split" matched (always); weighted draw ')
    assert first.reason.endswith(f"draw {lead_id.int % 3} of 3")
    # int(lead_id) % 3 picks A for 0, B for 1, C for 2
    for n, expected in [(0, A), (1, B), (2, C), (3, A), (5, C)]:
        assert choose(routing, context(), turn=0, lead_id=UUID(int=n)).campaign_id == expected  # type: ignore[union-attr]


def test_weighted_follows_the_weights() -> None:
    routing = weighted(3, 0, 1)
    picks = Counter(
        choose(routing, context(), turn=0, lead_id=UUID(int=n)).campaign_id  # type: ignore[union-attr]
        for n in range(400)
    )
    assert picks == {A: 300, C: 100}
    spread = Counter(
        choose(weighted(7, 3), context(), turn=0, lead_id=uuid.uuid4()).campaign_id  # type: ignore[union-attr]
        for _ in range(2000)
    )
    assert 1250 < spread[A] < 1550 and spread[A] + spread[B] == 2000


def test_weighted_draws_among_the_usable_campaigns_only() -> None:
    routing = weighted(3, 0, 1)
    picks = Counter(
        choose(routing, context(), turn=0, lead_id=UUID(int=n), usable=lambda c: c != A).campaign_id  # type: ignore[union-attr]
        for n in range(50)
    )
    assert picks == {C: 50}
    only_zero = choose(routing, context(), turn=0, lead_id=uuid.uuid4(), usable=lambda c: c == B)
    assert only_zero is None
    decision = choose(routing, context(), turn=0, lead_id=UUID(int=0), usable=lambda c: c != A)
    assert decision is not None
    assert decision.reason.endswith("weighted draw 0 of 1 (1 of 3 campaigns not usable)")


def test_weights_on_a_priority_rule_do_not_change_the_pick() -> None:
    routing = config({"name": "P", "campaignIds": [str(A), str(B)], "weights": [0, 5]})
    assert choose(routing, context(), turn=0, lead_id=uuid.uuid4()).campaign_id == A  # type: ignore[union-attr]
