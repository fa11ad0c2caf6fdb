"""Dynamic keys: each operation, keys reading earlier keys, missing and unconvertible values."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from domain.campaigns import DynamicKey
from domain.dynamic_keys import birth_date, compute_keys
from domain.lead_context import lead_context
from domain.postal_states import ZIP3_RANGES, state_of_zip

NOW = datetime(2024, 5, 16, 12, 0, tzinfo=UTC)


def key(**fields: Any) -> DynamicKey:
    return DynamicKey.model_validate(fields)


@pytest.fixture
def context() -> dict[str, Any]:
    lead = {
        "name": "Ada Lovelace",
        "email": "  Ada@Example.com ",
        "phone": "(201) 555-0123",
        "company": None,
        "tags": ["vip"],
        "customFields": {
            "dob": "1990-05-17",
            "dobUs": "5/16/1990",
            "dobSlash": "1990/05/15",
            "zip": "02108-1234",
            "zipNumber": 2108,
            "state": "ny",
            "score": 7,
            "optIn": True,
            "blank": "   ",
        },
        "answers": {"plan": "Gold"},
    }
    return lead_context(lead, source="api", now=NOW)


def one(spec: dict[str, Any], context: dict[str, Any]) -> tuple[Any, str | None]:
    values, errors = compute_keys([key(name="k", **spec)], context)
    assert list(values) == ["k"]
    return values["k"], errors.get("k")


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ({"op": "copy", "from": "lead.email"}, "  Ada@Example.com "),
        ({"op": "copy", "from": "lead.tags"}, ["vip"]),
        ({"op": "copy", "from": "lead.score"}, 7),
        ({"op": "constant", "value": "ACME"}, "ACME"),
        ({"op": "constant", "value": 12}, 12),
        ({"op": "constant", "value": {"a": [1]}}, {"a": [1]}),
        ({"op": "upper", "from": "lead.state"}, "NY"),
        ({"op": "lower", "from": "email"}, "  ada@example.com "),
        ({"op": "trim", "from": "lead.email"}, "Ada@Example.com"),
        ({"op": "upper", "from": "lead.score"}, "7"),
        ({"op": "lower", "from": "lead.optIn"}, "true"),
        ({"op": "digits", "from": "lead.phone"}, "2015550123"),
        ({"op": "digits", "from": "lead.zip"}, "021081234"),
        ({"op": "digits", "from": "lead.score"}, "7"),
        ({"op": "phone_e164", "from": "lead.phone"}, "+12015550123"),
        ({"op": "phone_national", "from": "lead.phone"}, "(201) 555-0123"),
        ({"op": "phone_e164", "from": "lead.phone", "region": "gb"}, "+442015550123"),
        ({"op": "age", "from": "lead.dob"}, 33),  # the birthday is tomorrow
        ({"op": "age", "from": "lead.dobUs"}, 34),  # the birthday is today
        ({"op": "age", "from": "lead.dobSlash"}, 34),
        ({"op": "state_from_postal", "from": "lead.zip"}, "MA"),
        ({"op": "state_from_postal", "from": "lead.zipNumber"}, "MA"),
        ({"op": "lookup", "from": "lead.plan", "table": {"gold": "G", "silver": "S"}}, "G"),
        ({"op": "lookup", "from": "lead.plan", "table": {"Gold": "exact", "GOLD": "x"}}, "exact"),
        ({"op": "lookup", "from": "lead.plan", "table": {"a": "A"}, "default": "Z"}, "Z"),
        ({"op": "lookup", "from": "lead.nope", "table": {"a": "A"}, "default": "Z"}, "Z"),
        ({"op": "lookup", "from": "lead.score", "table": {"7": "seven"}}, "seven"),
        ({"op": "default", "from": "lead.company", "default": "n/a"}, "n/a"),
        ({"op": "default", "from": "lead.blank", "default": "n/a"}, "n/a"),
        ({"op": "default", "from": "lead.plan", "default": "n/a"}, "Gold"),
        ({"op": "default", "from": "lead.nope"}, None),
        (
            {
                "op": "concat",
                "parts": ["{{lead.lastName}}", "{{lead.firstName}}"],
                "separator": ", ",
            },
            "Lovelace, Ada",
        ),
        (
            {"op": "concat", "parts": ["{{lead.company}}", "{{lead.firstName}}", "  ", "x"]},
            "Adax",
        ),
        (
            {"op": "concat", "parts": ["id-{{lead.score}}", "{{lead.score}}"], "separator": "/"},
            "id-7/7",
        ),
        ({"op": "concat", "parts": ["{{lead.company}}", "{{lead.nope}}"]}, None),
        (
            {"op": "concat", "parts": ["{{source}}", "{{time.date}}"], "separator": " "},
            "api 2024-05-16",
        ),
    ],
)
def test_operations(context: dict[str, Any], spec: dict[str, Any], value: Any) -> None:
    assert one(spec, context) == (value, None)


@pytest.mark.parametrize(
    "op",
    [
        "copy",
        "upper",
        "lower",
        "trim",
        "digits",
        "phone_e164",
        "phone_national",
        "age",
        "state_from_postal",
    ],
)
@pytest.mark.parametrize("source", ["lead.nope", "lead.company", "lead.blank", "key.nope"])
def test_a_missing_source_is_none_without_an_error(
    context: dict[str, Any], op: str, source: str
) -> None:
    assert one({"op": op, "from": source}, context) == (None, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"op": "age", "from": "lead.plan"}, "'Gold' is not a date of birth"),
        ({"op": "age", "from": "lead.score"}, "7 is not a date of birth"),
        ({"op": "age", "from": "lead.bad"}, "not a date of birth"),
        ({"op": "age", "from": "lead.future"}, "in the future"),
        ({"op": "age", "from": "lead.ancient"}, "over 130 years"),
        ({"op": "phone_e164", "from": "lead.plan"}, "'Gold' is not a phone number"),
        (
            {"op": "phone_national", "from": "lead.shortPhone"},
            "not a valid phone number (region US)",
        ),
        ({"op": "phone_e164", "from": "lead.phone", "region": "ZZ"}, "not a phone number"),
        ({"op": "state_from_postal", "from": "lead.plan"}, "'Gold' is not a US ZIP code"),
        ({"op": "state_from_postal", "from": "lead.military"}, "'09001' is not a US ZIP code"),
        ({"op": "digits", "from": "lead.plan"}, "has no digits"),
        (
            {"op": "lookup", "from": "lead.plan", "table": {"silver": "S"}},
            "'Gold' is not in the table",
        ),
        ({"op": "upper", "from": "lead.tags"}, "is a list, not text"),
        ({"op": "concat", "parts": ["{{lead.tags}}"]}, "is a list, not text"),
    ],
)
def test_an_unconvertible_value_is_none_with_an_error(spec: dict[str, Any], message: str) -> None:
    context = lead_context(
        {
            "phone": "(201) 555-0123",
            "tags": ["a"],
            "customFields": {
                "plan": "Gold",
                "score": 7,
                "bad": "1990-02-30",
                "future": "2030-01-01",
                "ancient": "1850-01-01",
                "shortPhone": "555-01",
                "military": "09001",
            },
        },
        now=NOW,
    )
    value, error = one(spec, context)
    assert value is None
    assert error is not None and message in error


def test_keys_read_earlier_keys_in_order(context: dict[str, Any]) -> None:
    keys = [
        key(name="phone", op="phone_e164", **{"from": "lead.phone"}),
        key(name="phoneDigits", op="digits", **{"from": "key.phone"}),
        key(name="state", op="state_from_postal", **{"from": "lead.zip"}),
        key(name="region", op="lookup", table={"ma": "Northeast"}, **{"from": "key.state"}),
        key(
            name="label",
            op="concat",
            parts=["{{key.region}}", "{{key.phoneDigits}}"],
            separator=":",
        ),
        key(name="later", op="copy", **{"from": "key.after"}),  # not computed yet: missing
        key(name="after", op="constant", value="x"),
    ]
    values, errors = compute_keys(keys, context)
    assert values == {
        "phone": "+12015550123",
        "phoneDigits": "12015550123",
        "state": "MA",
        "region": "Northeast",
        "label": "Northeast:12015550123",
        "later": None,
        "after": "x",
    }
    assert errors == {}
    assert context["key"] == {}  # the context given is left as it was


def test_a_failed_key_is_none_for_the_keys_after_it(context: dict[str, Any]) -> None:
    keys = [
        key(name="age", op="age", **{"from": "lead.plan"}),
        key(name="ageText", op="default", default="unknown", **{"from": "key.age"}),
        key(name="dob", op="age", **{"from": "lead.dob"}),
    ]
    values, errors = compute_keys(keys, context)
    assert values == {"age": None, "ageText": "unknown", "dob": 33}
    assert list(errors) == ["age"]


def test_keys_start_from_the_context_s_keys() -> None:
    context = lead_context({}, keys={"given": "Yes"}, now=NOW)
    values, errors = compute_keys([key(name="k", op="upper", **{"from": "key.given"})], context)
    assert values == {"k": "YES"} and errors == {}


def test_an_odd_context_does_not_make_keys_raise() -> None:
    keys = [
        key(name="a", op="copy", **{"from": "key.x"}),
        key(name="b", op="upper", **{"from": "x"}),
    ]
    for odd in ({}, {"key": None}, {"key": ["x"]}, {"lead": "text", "time": "noon"}):
        values, errors = compute_keys(keys, odd)
        assert values == {"a": None, "b": None} and errors == {}


def test_age_counts_in_the_context_s_day() -> None:
    # 23:30 UTC on the 16th is already the 17th in Tokyo: a birthday there.
    late = datetime(2024, 5, 16, 23, 30, tzinfo=UTC)
    spec = {"op": "age", "from": "lead.dob"}
    lead = {"customFields": {"dob": "1990-05-17"}}
    assert one(spec, lead_context(lead, now=late)) == (33, None)
    assert one(spec, lead_context(lead, now=late, timezone="Asia/Tokyo")) == (34, None)
    # a leap-day birthday is a year older only once the 29th has passed (1 March)
    leap = {"customFields": {"dob": "2000-02-29"}}
    assert one(spec, lead_context(leap, now=datetime(2023, 2, 28, tzinfo=UTC)))[0] == 22
    assert one(spec, lead_context(leap, now=datetime(2023, 3, 1, tzinfo=UTC)))[0] == 23
    # born today: 0
    assert one(spec, lead_context({"customFields": {"dob": "2024-05-16"}}, now=NOW)) == (0, None)


def test_age_without_a_day_in_the_context_uses_today() -> None:
    born = date(2000, 1, 1)
    values, errors = compute_keys(
        [key(name="age", op="age", **{"from": "lead.dob"})], {"lead": {"dob": born.isoformat()}}
    )
    today = datetime.now(UTC).date()
    assert values["age"] in (today.year - 2000 - 1, today.year - 2000)
    assert errors == {}


@pytest.mark.parametrize(
    ("text", "day"),
    [
        ("1990-05-17", date(1990, 5, 17)),
        ("1990-5-7", date(1990, 5, 7)),
        ("1990-05-17T00:00:00Z", date(1990, 5, 17)),
        (" 05/17/1990 ", date(1990, 5, 17)),
        ("5/7/1990", date(1990, 5, 7)),
        ("1990/05/17", date(1990, 5, 17)),
        ("17/05/1990", None),  # day first is not one of the formats
        ("1990-02-29", None),
        ("02/30/1990", None),
        ("1990-05", None),
        ("May 17, 1990", None),
        ("", None),
        (19900517, None),
        (datetime(1990, 5, 17, 9, 0), date(1990, 5, 17)),
        (date(1990, 5, 17), date(1990, 5, 17)),
    ],
)
def test_birth_dates(text: Any, day: date | None) -> None:
    assert birth_date(text) == day


def test_keys_are_checked_when_configured() -> None:
    with pytest.raises(ValidationError, match="needs `from`"):
        key(name="k", op="upper")
    with pytest.raises(ValidationError, match="needs `parts`"):
        key(name="k", op="concat")
    with pytest.raises(ValidationError, match="needs `table`"):
        key(name="k", op="lookup", **{"from": "lead.x"})
    with pytest.raises(ValidationError, match="key name"):
        key(name="1k", op="constant", value="x")


def test_nothing_is_evaluated_as_code(context: dict[str, Any]) -> None:
    sneaky = {"customFields": {"x": "__import__('os').system('false')"}}
    values, errors = compute_keys(
        [
            key(name="a", op="concat", parts=["{{ __import__('os') }}", "{{lead.x}}"]),
            key(name="b", op="copy", **{"from": "lead.__class__"}),
            key(name="c", op="copy", **{"from": "lead.x"}),
        ],
        lead_context(sneaky, now=NOW),
    )
    assert values == {
        "a": "__import__('os').system('false')",
        "b": None,
        "c": sneaky["customFields"]["x"],
    }
    assert errors == {}
    assert context["lead"]["email"]  # the fixture context is untouched by another run


# ---- states from ZIP codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zip_code", "state"),
    [
        ("10001", "NY"),
        ("90210", "CA"),
        ("60601", "IL"),
        ("33101", "FL"),
        ("75201", "TX"),
        ("02108", "MA"),
        ("98101", "WA"),
        ("30301", "GA"),
        ("20001", "DC"),
        ("00901", "PR"),
        ("99501", "AK"),
        ("96813", "HI"),
        ("00501", "NY"),  # Holtsville
        ("05501", "MA"),  # Andover, in Vermont's range
        ("03301", "NH"),
        ("04101", "ME"),
        ("05401", "VT"),
        ("02903", "RI"),
        ("06103", "CT"),
        ("07102", "NJ"),
        ("19901", "DE"),
        ("19103", "PA"),
        ("21201", "MD"),
        ("20166", "VA"),  # Dulles
        ("23219", "VA"),
        ("25301", "WV"),
        ("27601", "NC"),
        ("29201", "SC"),
        ("35203", "AL"),
        ("37203", "TN"),
        ("39201", "MS"),
        ("39901", "GA"),
        ("40202", "KY"),
        ("43215", "OH"),
        ("46204", "IN"),
        ("48226", "MI"),
        ("50309", "IA"),
        ("53202", "WI"),
        ("55401", "MN"),
        ("57101", "SD"),
        ("58102", "ND"),
        ("59601", "MT"),
        ("63101", "MO"),
        ("66101", "KS"),
        ("68102", "NE"),
        ("70112", "LA"),
        ("72201", "AR"),
        ("73102", "OK"),
        ("73301", "TX"),  # Austin
        ("74103", "OK"),
        ("79901", "TX"),
        ("88510", "TX"),  # El Paso
        ("80202", "CO"),
        ("82001", "WY"),
        ("83702", "ID"),
        ("84101", "UT"),
        ("85001", "AZ"),
        ("87101", "NM"),
        ("89101", "NV"),
        ("97201", "OR"),
        ("00802", "VI"),
        ("06390", "NY"),  # Fishers Island
        ("83414", "WY"),  # Alta
        ("96799", "AS"),
        ("10001-1234", "NY"),
        ("100011234", "NY"),
        (" 90210 ", "CA"),
        ("10001 1234", "NY"),
    ],
)
def test_state_of_zip(zip_code: str, state: str) -> None:
    assert state_of_zip(zip_code) == state


@pytest.mark.parametrize(
    "zip_code",
    [
        "",
        "1000",
        "100011",
        "10001-12",
        "ABCDE",
        "00001",
        "09001",
        "34001",
        "96201",
        "96910",
        "99999x",
    ],
)
def test_no_state_for_what_is_no_state_s_zip(zip_code: str) -> None:
    # too short or long, not digits, unassigned (000), military (090, 340, 962), Guam (969)
    assert state_of_zip(zip_code) is None


def test_the_zip3_table_is_ordered_without_overlaps_and_covers_every_state() -> None:
    previous_last = -1
    for first, last, state in ZIP3_RANGES:
        assert previous_last < first <= last <= 999, (first, last, state)
        assert len(state) == 2 and state.isupper()
        previous_last = last
    states = {state for _, _, state in ZIP3_RANGES}
    assert len(states - {"DC", "PR", "VI"}) == 50
    assert {"DC", "PR"} <= states
