"""Cap counters: names in the campaign's time zone (across DST changes), budgets in cents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from domain.campaigns import Caps
from domain.caps import CapLimit, cap_limits, cents, usage_names

NEW_YORK = "America/New_York"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def names(caps: Caps, now: datetime, price: Decimal | None = None) -> list[str]:
    return [limit.name for limit in cap_limits(caps, "campaign:c1", now, price)]


def test_no_caps_no_limits() -> None:
    assert cap_limits(None, "campaign:c1", at("2025-01-01T00:00"), Decimal("5")) == []
    assert cap_limits(Caps(), "campaign:c1", at("2025-01-01T00:00"), Decimal("5")) == []
    assert usage_names(None, "campaign:c1", at("2025-01-01T00:00")) == []


def test_every_cap_in_order_with_labels_ceilings_and_amounts() -> None:
    caps = Caps(hourly=5, daily=10, monthly=100, budget=Decimal("250.00"))
    limits = cap_limits(caps, "campaign:c1", at("2025-06-15T13:45"), Decimal("12.34"))
    assert limits == [
        CapLimit("cap:campaign:c1:hour:2025-06-15T13", 5, 1, "hourly"),
        CapLimit("cap:campaign:c1:day:2025-06-15", 10, 1, "daily"),
        CapLimit("cap:campaign:c1:month:2025-06", 100, 1, "monthly"),
        CapLimit("cap:campaign:c1:budget:2025-06", 25_000, 1234, "budget"),
    ]


def test_only_the_caps_that_are_set_and_zero_is_a_cap() -> None:
    caps = Caps(daily=0)
    limits = cap_limits(caps, "campaign:c1:endpoint:e2", at("2025-06-15T13:45"), None)
    assert limits == [CapLimit("cap:campaign:c1:endpoint:e2:day:2025-06-15", 0, 1, "daily")]


def test_budget_skipped_without_a_price() -> None:
    caps = Caps(budget=Decimal("100"))
    assert cap_limits(caps, "campaign:c1", at("2025-06-15T13:45"), None) == []
    assert cap_limits(caps, "campaign:c1", at("2025-06-15T13:45"), Decimal("0")) == []
    # ...but reporting still shows it.
    assert usage_names(caps, "campaign:c1", at("2025-06-15T13:45")) == [
        ("budget", "cap:campaign:c1:budget:2025-06", 10_000)
    ]


def test_cents() -> None:
    assert cents(Decimal("1234.50")) == 123_450
    assert cents(Decimal("0.01")) == 1
    assert cents(Decimal("19.99")) == 1999
    assert cents(Decimal("0.005")) == 1


def test_local_day_and_month_not_utc() -> None:
    caps = Caps(hourly=1, daily=1, monthly=1, timezone=NEW_YORK)
    # 03:30 UTC on 1 July is 23:30 on 30 June in New York (EDT, UTC-4).
    assert names(caps, at("2025-07-01T03:30")) == [
        "cap:campaign:c1:hour:2025-06-30T23",
        "cap:campaign:c1:day:2025-06-30",
        "cap:campaign:c1:month:2025-06",
    ]
    # Tokyo is ahead: 20:00 UTC on 31 Jan is 05:00 on 1 Feb.
    tokyo = Caps(daily=1, monthly=1, timezone="Asia/Tokyo")
    assert names(tokyo, at("2025-01-31T20:00")) == [
        "cap:campaign:c1:day:2025-02-01",
        "cap:campaign:c1:month:2025-02",
    ]


def test_spring_forward_skips_the_missing_hour() -> None:
    caps = Caps(hourly=1, daily=1, timezone=NEW_YORK)
    # 9 March 2025: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    before = names(caps, at("2025-03-09T06:59"))
    after = names(caps, at("2025-03-09T07:00"))
    assert before == ["cap:campaign:c1:hour:2025-03-09T01", "cap:campaign:c1:day:2025-03-09"]
    assert after == ["cap:campaign:c1:hour:2025-03-09T03", "cap:campaign:c1:day:2025-03-09"]
    # The local day of 9 March is 23 hours long, and every one of them is in its counter.
    days = {names(caps, at("2025-03-09T05:00") + timedelta(minutes=30 * i))[1] for i in range(46)}
    assert days == {"cap:campaign:c1:day:2025-03-09"}
    hour_names = {
        names(caps, at("2025-03-09T05:00") + timedelta(minutes=30 * i))[0] for i in range(46)
    }
    assert len(hour_names) == 23
    assert "cap:campaign:c1:hour:2025-03-09T02" not in hour_names


def test_fall_back_repeated_hour_is_a_second_counter() -> None:
    caps = Caps(hourly=1, daily=1, timezone=NEW_YORK)
    # 2 November 2025: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:xx happens twice.
    first = names(caps, at("2025-11-02T05:30"))  # 01:30 EDT
    second = names(caps, at("2025-11-02T06:30"))  # 01:30 EST
    later = names(caps, at("2025-11-02T07:30"))  # 02:30 EST
    assert first[0] == "cap:campaign:c1:hour:2025-11-02T01"
    assert second[0] == "cap:campaign:c1:hour:2025-11-02T01-05:00"
    assert later[0] == "cap:campaign:c1:hour:2025-11-02T02"
    assert first[1] == second[1] == later[1] == "cap:campaign:c1:day:2025-11-02"
    # Within the repeated hour the name is stable.
    assert names(caps, at("2025-11-02T06:00"))[0] == second[0]
    assert names(caps, at("2025-11-02T06:59"))[0] == second[0]
    assert names(caps, at("2025-11-02T05:00"))[0] == first[0]
    # The local day of 2 November is 25 hours, one day counter.
    days = {names(caps, at("2025-11-02T04:00") + timedelta(hours=i))[1] for i in range(25)}
    assert days == {"cap:campaign:c1:day:2025-11-02"}
    hours = {names(caps, at("2025-11-02T04:00") + timedelta(hours=i))[0] for i in range(25)}
    assert len(hours) == 25


def test_month_boundary_in_local_time_for_the_budget() -> None:
    caps = Caps(budget=Decimal("10"), timezone=NEW_YORK)
    # 04:59 UTC on 1 December is still 23:59 on 30 November in New York (EST).
    assert names(caps, at("2025-12-01T04:59"), Decimal("1")) == ["cap:campaign:c1:budget:2025-11"]
    assert names(caps, at("2025-12-01T05:00"), Decimal("1")) == ["cap:campaign:c1:budget:2025-12"]


def test_aware_datetimes_in_other_zones_give_the_same_names() -> None:
    caps = Caps(hourly=1, daily=1, monthly=1, timezone=NEW_YORK)
    moment = at("2025-08-10T15:20")
    elsewhere = moment.astimezone(datetime.fromisoformat("2025-01-01T00:00+05:30").tzinfo)
    assert names(caps, moment) == names(caps, elsewhere)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        cap_limits(Caps(daily=1), "campaign:c1", datetime(2025, 1, 1), None)


def test_usage_names_match_the_limits_taken() -> None:
    caps = Caps(hourly=2, daily=3, monthly=4, budget=Decimal("5.50"), timezone=NEW_YORK)
    now = at("2025-11-02T06:30")
    usage = usage_names(caps, "campaign:c1", now)
    limits = cap_limits(caps, "campaign:c1", now, Decimal("1.25"))
    assert [(label, name) for label, name, _ in usage] == [
        (limit.label, limit.name) for limit in limits
    ]
    assert [ceiling for _, _, ceiling in usage] == [2, 3, 4, 550]
