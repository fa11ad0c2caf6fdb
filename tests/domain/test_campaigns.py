"""Campaign configuration: validation, defaults, the documented example, header redaction."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from domain.campaigns import REDACTED, CampaignConfig, redact_headers

DOCS = Path(__file__).parents[2] / "docs" / "campaigns.md"


def documented_example() -> dict[str, Any]:
    text = DOCS.read_text()
    body = text.split("<<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0]
    body = re.sub(r"<[^>]+ id>", lambda _: str(uuid.uuid4()), body)
    example: dict[str, Any] = json.loads(body)
    return example


def test_the_documented_campaign_is_valid() -> None:
    config = CampaignConfig.model_validate(documented_example())
    assert [e.id for e in config.endpoints] == ["acme", "globex"]
    assert config.caps is not None and config.caps.timezone == "America/Los_Angeles"
    assert config.first_submission_action is not None
    assert config.snapshot()["endpoints"][0]["responseRules"]["successMatch"] == "accepted|sold"


def minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "C", "endpoints": [{"url": "https://buyer.example/x"}], **extra}


def test_endpoints_get_ids_by_position() -> None:
    config = CampaignConfig.model_validate(
        minimal(endpoints=[{"url": "https://a.example"}, {"url": "https://b.example", "id": "b"}])
    )
    assert [e.id for e in config.endpoints] == ["e1", "b"]


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": [{"url": "ftp://x.example"}]}, "endpoints.0.url"),
        ({"endpoints": [{"url": "https://u:p@x.example"}]}, "endpoints.0.url"),
        ({"caps": {"daily": 5, "timezone": "Mars/Olympus"}}, "caps.timezone"),
        ({"disqualify": [{"field": "lead.state", "op": "in", "value": "NY"}]}, "disqualify.0"),
        ({"disqualify": [{"field": "x", "op": "regex", "value": "("}]}, "disqualify.0"),
        ({"dynamicKeys": [{"name": "1bad", "op": "copy", "from": "lead.email"}]}, "dynamicKeys.0"),
        ({"dynamicKeys": [{"name": "age", "op": "age"}]}, "dynamicKeys.0"),
        ({"qualification": [{"field": "lead.x", "type": "regex"}]}, "qualification.0"),
        ({"firstSubmissionAction": {"type": "webhook"}}, "firstSubmissionAction"),
        ({"mode": "auction"}, "mode"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_bad_configuration_names_the_field(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CampaignConfig.model_validate(minimal(**extra))
    locations = [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]
    assert any(location.startswith(where) for location in locations), locations


def test_a_fallback_listed_twice_is_refused() -> None:
    twice = str(uuid.uuid4())
    with pytest.raises(ValidationError, match="listed twice"):
        CampaignConfig.model_validate(minimal(fallbackCampaignIds=[twice, twice]))


def test_headers_are_redacted_wherever_they_are() -> None:
    config = CampaignConfig.model_validate(documented_example()).snapshot()
    hidden = redact_headers({"config": config, "changes": [{"old": config, "new": None}]})
    text = json.dumps(hidden)
    assert "acme-secret" not in text
    assert hidden["config"]["endpoints"][0]["headers"] == {"X-Api-Key": REDACTED}
    assert hidden["config"]["endpoints"][0]["url"] == config["endpoints"][0]["url"]
    assert "acme-secret" in json.dumps(config)  # the original is left alone
