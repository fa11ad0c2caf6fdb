"""The context campaign rules read: paths into the lead, keys, source and time; templates."""

from __future__ import annotations

import random
import string
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.lead_context import (
    is_blank,
    lead_context,
    missing_values,
    placeholders,
    render,
    resolve,
)
from domain.leads import LeadDetails

NOW = datetime(2024, 3, 4, 13, 30, tzinfo=UTC)  # a Monday


def wire_lead(**overrides: Any) -> dict[str, Any]:
    details = LeadDetails.model_validate(
        {
            "name": "Ada King Lovelace",
            "email": "ada@example.com",
            "phone": "+12015550123",
            "tags": ["vip", "Returning"],
            "customFields": {"State": "NY", "age": "42", "dob": "1990-05-17"},
            "answers": {"q1": ["yes", "no"], "state": "NJ", "zip": "10001"},
            "attribution": {"utm_source": "google", "state": "CT"},
            **overrides,
        }
    )
    return details.model_dump(mode="json", by_alias=True)


@pytest.fixture
def context() -> dict[str, Any]:
    return lead_context(wire_lead(), source="api", keys={"age": 33}, now=NOW)


def test_the_context_holds_the_lead_keys_source_and_time(context: dict[str, Any]) -> None:
    assert context["lead"]["email"] == "ada@example.com"
    assert context["key"] == {"age": 33}
    assert context["source"] == "api"
    assert context["time"] == {
        "hour": 13,
        "minute": 30,
        "weekday": "monday",
        "date": "2024-03-04",
        "iso": "2024-03-04T13:30:00+00:00",
        "timezone": "UTC",
    }


def test_time_is_seen_in_the_time_zone_given() -> None:
    # 13:30 UTC on a Monday is 22:30 in Tokyo and 08:30 in New York.
    tokyo = lead_context({}, now=NOW, timezone="Asia/Tokyo")["time"]
    assert (tokyo["hour"], tokyo["weekday"], tokyo["date"]) == (22, "monday", "2024-03-04")
    late = datetime(2024, 3, 4, 23, 30, tzinfo=UTC)
    tokyo_late = lead_context({}, now=late, timezone="Asia/Tokyo")["time"]
    assert (tokyo_late["hour"], tokyo_late["weekday"]) == (8, "tuesday")
    assert tokyo_late["date"] == "2024-03-05"
    assert tokyo_late["iso"].endswith("+09:00")
    new_york = lead_context({}, now=NOW, timezone="America/New_York")["time"]
    assert (new_york["hour"], new_york["weekday"]) == (8, "monday")


def test_a_naive_now_is_utc_and_no_now_is_the_current_time() -> None:
    naive = lead_context({}, now=datetime(2024, 3, 4, 13, 30), timezone="Asia/Tokyo")
    assert naive["time"]["hour"] == 22
    before = datetime.now(UTC)
    current = lead_context({})["time"]
    assert datetime.fromisoformat(current["iso"]) >= before.replace(microsecond=0)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        lead_context({}, timezone="Mars/Olympus")


def test_extra_is_merged_at_the_top_and_the_lead_is_not_mutated() -> None:
    lead = wire_lead()
    context = lead_context(lead, extra={"campaign": {"name": "Solar"}})
    assert resolve(context, "campaign.name") == "Solar"
    assert "firstName" not in lead
    context["key"]["x"] = 1
    assert lead_context(lead)["key"] == {}


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("Ada King Lovelace", "Ada", "King Lovelace"),
        ("Ada", "Ada", None),
        ("  Ada   Lovelace ", "Ada", "Lovelace"),
        ("Lovelace, Ada", "Ada", "Lovelace"),
        ("Lovelace,", "Lovelace", None),
        (None, None, None),
        ("", None, None),
    ],
)
def test_first_and_last_names_are_split_from_the_name(
    name: str | None, first: str | None, last: str | None
) -> None:
    context = lead_context({"name": name})
    assert resolve(context, "lead.firstName") == first
    assert resolve(context, "lastName") == last


def test_given_first_and_last_names_win_over_the_split() -> None:
    given = lead_context({"name": "Mary Ann Smith", "firstName": "Mary Ann", "lastName": ""})
    assert resolve(given, "lead.firstName") == "Mary Ann"
    assert resolve(given, "lead.lastName") == "Ann Smith"
    from_fields = lead_context(
        {"name": "Mary Ann Smith", "customFields": {"first_name": "x", "FirstName": "Mary Ann"}}
    )
    assert resolve(from_fields, "lead.firstName") == "Mary Ann"
    from_answers = lead_context({"name": "Mary Ann Smith", "answers": {"lastName": "Smith"}})
    assert resolve(from_answers, "lead.lastName") == "Smith"
    assert resolve(from_answers, "lead.firstName") == "Mary"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("lead.email", "ada@example.com"),
        ("email", "ada@example.com"),
        ("  lead.email  ", "ada@example.com"),
        ("lead.customFields.age", "42"),
        ("lead.customFields.STATE", "NY"),
        ("lead.answers.q1", ["yes", "no"]),
        ("lead.answers.q1[1]", "no"),
        ("lead.answers.q1 [ 0 ]", "yes"),
        ("lead.answers.q1[ 0 ]", "yes"),
        ("lead.answers.q1.0", "yes"),
        ("lead.answers.q1[2]", None),
        ("lead.answers.q1[0][0]", None),
        ("lead.tags[0]", "vip"),
        ("lead.attribution.utm_source", "google"),
        ("lead.attribution.UTM_SOURCE", "google"),
        ("lead.utm_source", "google"),
        ("utm_source", "google"),
        ("lead.zip", "10001"),
        ("key.age", 33),
        ("key.nope", None),
        ("source", "api"),
        ("time.hour", 13),
        ("time.weekday", "monday"),
        ("lead.nope", None),
        ("nope", None),
        ("lead.email.domain", None),
        ("lead.customFields.age.value", None),
        ("lead.company", None),
    ],
)
def test_paths_resolve(context: dict[str, Any], path: str, value: Any) -> None:
    assert resolve(context, path) == value


def test_a_name_that_is_not_a_lead_field_is_a_custom_field_then_answer_then_attribution() -> None:
    both = lead_context(wire_lead())
    # `State` (custom field) only matches `state` case-insensitively, while the answer's
    # `state` matches exactly: the exact name wins.
    assert resolve(both, "lead.state") == "NJ"
    assert resolve(both, "lead.State") == "NY"
    assert resolve(both, "state") == "NJ"
    only_attribution = lead_context({"attribution": {"state": "CT"}})
    assert resolve(only_attribution, "lead.state") == "CT"
    exact_field = lead_context({"customFields": {"state": "NY"}, "answers": {"state": "NJ"}})
    assert resolve(exact_field, "lead.state") == "NY"
    insensitive = lead_context({"answers": {"STATE": "NJ"}, "attribution": {"Stat": "x"}})
    assert resolve(insensitive, "lead.state") == "NJ"


def test_a_lead_field_wins_over_a_custom_field_of_the_same_name() -> None:
    context = lead_context({"email": None, "customFields": {"email": "other@example.com"}})
    assert resolve(context, "lead.email") is None
    assert resolve(context, "lead.customFields.email") == "other@example.com"
    upper = lead_context({"email": "a@example.com", "customFields": {"Email": "b@example.com"}})
    assert resolve(upper, "lead.Email") == "b@example.com"  # the exact custom field first
    assert resolve(lead_context({"email": "a@example.com"}), "lead.EMAIL") == "a@example.com"


def test_the_whole_lead_and_top_level_entries() -> None:
    context = lead_context({"email": "a@example.com"}, keys={"x": [1, {"y": 2}]})
    assert resolve(context, "lead")["email"] == "a@example.com"
    assert resolve(context, "key") == {"x": [1, {"y": 2}]}
    assert resolve(context, "key.x[1].y") == 2
    assert resolve(context, "key.x.1.y") == 2
    assert resolve(context, "time.nope") is None


def test_a_missing_part_of_the_context_is_none() -> None:
    assert resolve({}, "lead.email") is None
    assert resolve({}, "email") is None
    assert resolve({"lead": "not a lead"}, "lead.email") is None
    assert resolve({"lead": {"answers": "text"}}, "lead.q1") is None
    assert resolve({"lead": {"a": 1}}, "lead") == {"a": 1}


@pytest.mark.parametrize(
    "path",
    ["", " ", ".", "..", "a..b", "lead.", ".lead", "[0]", "lead[0]", "a[b]", "a]", "a[", "{{x}}"],
)
def test_odd_paths_are_none(context: dict[str, Any], path: str) -> None:
    assert resolve(context, path) is None


def test_no_string_makes_resolve_raise(context: dict[str, Any]) -> None:
    alphabet = string.printable + "éß\u0000\u200b[]{}."
    generator = random.Random(11)
    for _ in range(3000):
        path = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 30)))
        resolve(context, path)
        render(path, context)
        missing_values(path, context)
    assert resolve(context, "a" * 5000) is None
    assert resolve(context, ".".join(["lead"] * 400)) is None
    assert resolve(context, None) is None  # type: ignore[arg-type]


def test_a_single_placeholder_keeps_the_value_s_type(context: dict[str, Any]) -> None:
    assert render("{{key.age}}", context) == 33
    assert render("{{ key.age }}", context) == 33
    assert render(" {{key.age}} ", context) == 33
    assert render("{{lead.answers.q1}}", context) == ["yes", "no"]
    assert render("{{lead.nope}}", context) is None
    assert render("{{}}", context) is None


def test_mixed_text_interpolates(context: dict[str, Any]) -> None:
    assert render("Hi {{lead.firstName}}, you are {{ key.age }}!", context) == "Hi Ada, you are 33!"
    assert render("[{{lead.nope}}]", context) == "[]"
    assert render("{{lead.firstName}} {{lead.lastName}}", context) == "Ada King Lovelace"
    assert render("{{key.age}}{{key.age}}", context) == "3333"


def test_text_without_placeholders_is_a_constant(context: dict[str, Any]) -> None:
    assert render("ACME-1", context) == "ACME-1"
    assert render("", context) == ""
    assert render("{ lead.email }", context) == "{ lead.email }"
    assert render("{{ unclosed", context) == "{{ unclosed"


def test_placeholders_and_missing_values(context: dict[str, Any]) -> None:
    template = "{{lead.email}} {{ lead.company }} {{lead.email}} {{key.blank}} {{lead.tags}}"
    assert placeholders(template) == ["lead.email", "lead.company", "key.blank", "lead.tags"]
    assert placeholders("constant") == []
    with_blank = {**context, "key": {"blank": "   "}}
    assert missing_values(template, with_blank) == ["lead.company", "key.blank"]
    no_tags = lead_context(wire_lead(tags=[]))
    assert "lead.tags" in missing_values("{{lead.tags}}", no_tags)
    assert missing_values("{{key.zero}}", {"key": {"zero": 0}}) == []
    assert missing_values("{{key.no}}", {"key": {"no": False}}) == []


@pytest.mark.parametrize(
    ("value", "blank"),
    [
        (None, True),
        ("", True),
        (" \t\n", True),
        ([], True),
        ({}, True),
        ((), True),
        (0, False),
        (False, False),
        ("0", False),
        ([None], False),
        ({"a": None}, False),
    ],
)
def test_is_blank(value: Any, blank: bool) -> None:
    assert is_blank(value) is blank
