"""Cap counters: which named counters a delivery takes a place in, counted in local time."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from domain.campaigns import Caps


@dataclass(frozen=True)
class CapLimit:
    """One counter a delivery adds `amount` to, refused beyond `ceiling`."""

    name: str
    ceiling: int
    amount: int
    label: str


def cents(amount: Decimal) -> int:
    """A money amount in whole cents (half a cent rounds up)."""
    return int((amount * 100).to_integral_value(rounding=ROUND_HALF_UP))


def _local(caps: Caps, now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("cap counters need an aware datetime")
    return now.astimezone(zoneinfo.ZoneInfo(caps.timezone))


def _hour(local: datetime) -> str:
    name = local.strftime("%Y-%m-%dT%H")
    # When clocks go back the same wall-clock hour happens twice; the second one is its
    # own hour, so it gets its own counter (named with its UTC offset).
    if local.fold and local.replace(fold=0).utcoffset() != local.utcoffset():
        offset = local.strftime("%z")
        name += f"{offset[:3]}:{offset[3:]}"
    return name


def _counts(caps: Caps, scope: str, now: datetime) -> list[tuple[str, str, int]]:
    local = _local(caps, now)
    counters = (
        ("hourly", f"cap:{scope}:hour:{_hour(local)}", caps.hourly),
        ("daily", f"cap:{scope}:day:{local:%Y-%m-%d}", caps.daily),
        ("monthly", f"cap:{scope}:month:{local:%Y-%m}", caps.monthly),
    )
    return [(label, name, ceiling) for label, name, ceiling in counters if ceiling is not None]


def _budget_name(caps: Caps, scope: str, now: datetime) -> str:
    return f"cap:{scope}:budget:{_local(caps, now):%Y-%m}"


def cap_limits(
    caps: Caps | None, scope: str, now: datetime, price: Decimal | None
) -> list[CapLimit]:
    """The counters one delivery at `now` takes a place in, for the caps that are set.

    Counts (hourly, daily, monthly) take 1 each; the monthly budget takes the price in
    cents and is skipped when the delivery has no price. `scope` names whose caps these
    are (`campaign:<id>`, `campaign:<id>:endpoint:<eid>`). `now` must be aware.
    """
    if caps is None:
        return []
    limits = [
        CapLimit(name=name, ceiling=ceiling, amount=1, label=label)
        for label, name, ceiling in _counts(caps, scope, now)
    ]
    if caps.budget is not None and price is not None and cents(price) > 0:
        limits.append(
            CapLimit(
                name=_budget_name(caps, scope, now),
                ceiling=cents(caps.budget),
                amount=cents(price),
                label="budget",
            )
        )
    return limits


def usage_names(caps: Caps | None, scope: str, now: datetime) -> list[tuple[str, str, int]]:
    """(label, counter name, ceiling) of every cap that is set, for reporting usage at
    `now`; the budget's ceiling is in cents."""
    if caps is None:
        return []
    names = _counts(caps, scope, now)
    if caps.budget is not None:
        names.append(("budget", _budget_name(caps, scope, now), cents(caps.budget)))
    return names
