"""Normalised contact points: the keys duplicate detection compares (pure computation)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from phonenumbers import ValidationResult

# Plain ASCII addresses of the common shape are valid without asking email-validator, which
# costs ~20x more (IDNA processing). Anything else, and any special-use domain, goes to it.
# tests/test_normalize.py checks on a random corpus that the two never disagree.
_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"(?!..--)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # no `--` at 3-4: IDNA reserves it
_PLAIN_EMAIL = re.compile(rf"({_LOCAL})@((?:{_LABEL}\.)+[a-z]{{2,63}})")
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)


def _plain_domain(email: str) -> str | None:
    """The domain of an address of the plain shape, else None."""
    match = _PLAIN_EMAIL.fullmatch(email)
    if match is None or len(email) > 254 or len(match[1]) > 64 or len(match[2]) > 253:
        return None
    return match[2]


def _special_use(domain: str) -> bool:
    return any(domain == s or domain.endswith("." + s) for s in _SPECIAL_USE)


def plainly_valid(email: str) -> bool:
    """True when `email` (already lower-cased) is certainly valid; False means: ask."""
    domain = _plain_domain(email)
    return domain is not None and not _special_use(domain)


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
    domain = _plain_domain(normal)
    if domain is not None:
        # A plain address is valid unless its domain is special-use (`.test`, `.local`…),
        # which email-validator refuses: answered here, without its slow path.
        return Normalised(given, normal, not _special_use(domain))
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


_PHONE_LIKE = re.compile(r"\+?[\d\s().\-/]+")
MIN_PHONE_SEARCH_DIGITS = 3


def phone_search_keys(text: str, region: str) -> list[str]:
    """The digit strings a search for `text` looks for in phone numbers, when `text` looks
    like (part of) one: its digits as typed, and, when it reads as a whole number in the
    workspace's region, the digits of its E.164 form (`(030) 1234567` → `49301234567`).
    Empty for text that is not phone-like, so a name search never matches by digits."""
    return list(phone_search(text, region).keys)


@dataclass(frozen=True)
class PhoneSearch:
    """What a phone-like search looks for: `keys`, digit strings a phone's digits contain;
    `whole` when the text is a complete number (then a phone matches when one of its forms
    is one of the keys: an exact lookup, not a scan for a substring)."""

    keys: tuple[str, ...] = ()
    whole: bool = False


def phone_search(text: str, region: str) -> PhoneSearch:
    text = text.strip()
    if not _PHONE_LIKE.fullmatch(text):
        return PhoneSearch()
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) < MIN_PHONE_SEARCH_DIGITS:
        return PhoneSearch()
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return PhoneSearch((digits,))
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        return PhoneSearch((digits,))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    keys = (digits,) if e164 == digits else (digits, e164)
    # A number without its area code (local only) is still a part: it is looked for inside.
    return PhoneSearch(keys, whole=reason == ValidationResult.IS_POSSIBLE)


_WHOLE_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")


def email_search(text: str) -> str | None:
    """The address a search for a whole email address looks up, lowercased; None for any
    other text. Such a search finds the leads whose email is that address (by index), not
    every lead whose name, email, phone or company contains the text."""
    text = text.strip()
    return text.lower() if _WHOLE_EMAIL.fullmatch(text) else None


def phone_digits(*numbers: str | None) -> str:
    """What phone search matches against: the digits of each form of the number, spaced."""
    return " ".join("".join(c for c in n if c.isdigit()) for n in numbers if n)
