"""Normalised contact points: the keys duplicate detection compares (pure computation)."""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers
from email_validator import EmailNotValidError, validate_email


@dataclass(frozen=True)
class Normalised:
    """A contact point as given, its normal form, and whether it looked valid."""

    given: str | None
    normal: str | None
    valid: bool | None

    @property
    def present(self) -> bool:
        return self.given is not None


def normalise_email(given: str | None) -> Normalised:
    """Trimmed and lower-cased; an invalid address is kept, flagged, and still compared."""
    if not given or not given.strip():
        return Normalised(None, None, None)
    normal = given.strip().lower()
    try:
        validate_email(normal, check_deliverability=False)
    except EmailNotValidError:
        return Normalised(given, normal, False)
    return Normalised(given, normal, True)


def normalise_phone(given: str | None, region: str) -> Normalised:
    """E.164 read with the workspace's default region; an unreadable number is kept,
    flagged, and not used to match (digits alone say too little)."""
    if not given or not given.strip():
        return Normalised(None, None, None)
    try:
        number = phonenumbers.parse(given, region)
    except phonenumbers.NumberParseException:
        return Normalised(given, None, False)
    if not phonenumbers.is_valid_number(number):
        return Normalised(given, None, False)
    return Normalised(
        given, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), True
    )
