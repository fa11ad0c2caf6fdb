"""A PATCH of a campaign: the given top-level fields laid over the current configuration."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from domain.campaigns import CampaignConfig
from handlers.campaigns import merged_config

CURRENT = CampaignConfig.model_validate(
    {
        "name": "Solar",
        "endpoints": [
            {"url": "https://one.example/leads", "fields": {"email": "{{lead.email}}"}},
            {"id": "backup", "url": "https://two.example/leads"},
        ],
        "caps": {"daily": 10, "timezone": "Europe/Paris"},
        "price": "12.50",
        "dynamicKeys": [{"name": "age", "op": "age", "from": "lead.dob"}],
    }
)


def test_only_the_given_fields_change() -> None:
    merged = merged_config(CURRENT, {"name": "Solar NY", "active": False})
    assert (merged.name, merged.active) == ("Solar NY", False)
    assert merged.endpoints == CURRENT.endpoints
    assert [e.id for e in merged.endpoints] == ["e1", "backup"]
    assert merged.caps == CURRENT.caps and merged.price == CURRENT.price
    assert merged.dynamic_keys == CURRENT.dynamic_keys


def test_null_clears_an_optional_field_and_a_list_is_replaced_whole() -> None:
    merged = merged_config(CURRENT, {"caps": None, "endpoints": [{"url": "https://x.example"}]})
    assert merged.caps is None
    assert [(e.id, e.url) for e in merged.endpoints] == [("e1", "https://x.example")]


def test_python_names_mean_the_same_field_as_the_wire_names() -> None:
    fallback = uuid.uuid4()
    merged = merged_config(CURRENT, {"fallback_campaign_ids": [str(fallback)], "price": "3"})
    assert merged.fallback_campaign_ids == [fallback]
    again = merged_config(merged, {"fallbackCampaignIds": []})
    assert again.fallback_campaign_ids == [] and str(again.price) == "3"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"name": None}, ("name",)),
        ({"endpoints": []}, ("endpoints",)),
        ({"caps": {"daily": -1}}, ("caps", "daily")),
        ({"colour": "red"}, ("colour",)),
        ({"dynamicKeys": [{"name": "x", "op": "age"}]}, ("dynamicKeys", 0)),
    ],
)
def test_the_result_is_checked_as_a_whole_campaign(
    fields: dict[str, object], where: tuple[object, ...]
) -> None:
    with pytest.raises(ValidationError) as raised:
        merged_config(CURRENT, fields)
    assert raised.value.errors()[0]["loc"] == where
