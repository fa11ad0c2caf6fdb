"""Turning any incoming lead payload (JSON or form) into LeadDetails, whatever tool sent it."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from domain.leads import LeadDetails
from domain.payload_fields import (
    Entry,
    Target,
    UnusablePayload,
    camel_case,
    normalise_key,
    scalar_text,
)
from domain.source_formats import SourceFormat, detect_format, extract, fits_format

MAX_MAPPING_ENTRIES = 200
MAX_MAPPING_KEY = 500


class InvalidFieldMapping(ValueError):
    """A per-webhook field mapping with a bad key or an unknown target."""


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Normalised synonyms per field, best first: when two keys name the same field the better wins.
_SYNONYMS: dict[Target, tuple[str, ...]] = {
    Target.NAME: _words(
        "name fullname yourname yourfullname contactname leadname customername "
        "clientname completename namefull"
    ),
    Target.FIRST_NAME: _words("firstname fname first givenname forename namefirst yourfirstname"),
    Target.LAST_NAME: _words("lastname lname last surname familyname namelast yourlastname"),
    Target.EMAIL: _words(
        "email emailaddress mail youremail youremailaddress contactemail email1 "
        "primaryemail useremail workemail workemailaddress businessemail"
    ),
    Target.PHONE: _words(
        "phone phonenumber phone1 mobile mobilephone mobilenumber mobilephonenumber "
        "cell cellphone cellnumber tel telephone telephonenumber yourphone "
        "yourphonenumber contactphone contactnumber primaryphone userphone workphone "
        "workphonenumber businessphone homephone"
    ),
    Target.COMPANY: _words(
        "company companyname organization organisation organizationname "
        "organisationname org business businessname employer yourcompany "
        "yourcompanyname"
    ),
    Target.TITLE: _words(
        "jobtitle title job position role jobrole designation occupation yourjobtitle"
    ),
    Target.DESCRIPTION: _words(
        "description message comments comment notes note details enquiry inquiry "
        "yourmessage additionalinformation question questions"
    ),
    Target.TAGS: _words("tags tag labels"),
    Target.CATEGORY: _words("category leadcategory"),
    Target.PRODUCT: _words("product productname productinterest"),
}
_CORE: dict[str, tuple[Target, int]] = {
    name: (target, rank) for target, names in _SYNONYMS.items() for rank, name in enumerate(names)
}
# Question-style labels ("What is your first name?") reduce to a synonym once these go.
_FILLER_PREFIXES = (
    "whatisyour",
    "whatsyour",
    "pleaseenteryour",
    "pleaseprovideyour",
    "enteryour",
    "provideyour",
    "your",
)
_FILLER_SUFFIXES = ("optional", "required")
# Containers that hold the person's own fields: `contact.email` is the lead's email, while
# `owner.email` or `form.name` are not, so a key is only matched by its tail below these.
_PERSON_CONTAINERS = frozenset(
    _words(
        "contact lead person customer client user applicant submitter respondent "
        "prospect fields data formdata answers properties values payload body "
        "submission entry details info personal personalinfo personaldetails "
        "contactinfo contactdetails customfields hidden inputs record attributes name"
    )
)
_ATTRIBUTION: dict[str, str] = {
    "gclid": "gclid",
    "gbraid": "gbraid",
    "wbraid": "wbraid",
    "dclid": "dclid",
    "fbclid": "fbclid",
    "msclkid": "msclkid",
    "ttclid": "ttclid",
    "twclid": "twclid",
    "lifatid": "li_fat_id",
    "yclid": "yclid",
    "adid": "ad_id",
    "adname": "ad_name",
    "adsetid": "adset_id",
    "adsetname": "adset_name",
    "adgroupid": "adgroup_id",
    "campaignid": "campaign_id",
    "campaignname": "campaign_name",
    "creativeid": "creative_id",
    "keyword": "keyword",
    "placement": "placement",
    "pageurl": "page_url",
    "pageuri": "page_url",
    "landingpage": "page_url",
    "landingpageurl": "page_url",
    "sourceurl": "page_url",
    "referrer": "referrer",
    "referer": "referrer",
    "httpreferer": "referrer",
}
_CONSENT = frozenset(
    _words(
        "consent gdprconsent marketingconsent privacyconsent tcpaconsent optin "
        "acceptterms termsaccepted legalconsentoptions"
    )
)


@dataclass(frozen=True)
class Mapped:
    """The cleaned lead, the format it was read as, and the sender's own id for it if any."""

    details: LeadDetails
    format: SourceFormat
    provider_id: str | None = None


# ---- per-webhook field mappings -------------------------------------------------------------

_TARGETS = {normalise_key(t.value): t for t in Target} | {"fullname": Target.NAME}


CUSTOM_PREFIX = "customFields."
"""A mapping target naming a custom field, as stored: `customFields.<key>`."""
# The spellings CSV import accepts for a custom field (domain/csv_mapping.py), any case.
_CUSTOM_PREFIXES = ("custom:", "customfields.", "custom.")
_CUSTOM_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def _custom_target(target: str) -> str | None:
    """`custom:roofType`, `customFields.roofType` or `custom.roofType` → `roofType`; None
    when `target` does not name a custom field; InvalidFieldMapping for a bad key."""
    lowered = target.strip().lower()
    for prefix in _CUSTOM_PREFIXES:
        if lowered.startswith(prefix):
            key = target.strip()[len(prefix) :].strip()
            if not _CUSTOM_KEY.fullmatch(key):
                raise InvalidFieldMapping(
                    f"custom field key {key!r} must be a letter then letters, digits or _"
                    " (at most 64)"
                )
            return key
    return None


def clean_field_mapping(mapping: Mapping[str, Any]) -> dict[str, str]:
    """Incoming key or dot path → lead field (any case or separator) or custom field
    (`custom:<key>` or `customFields.<key>`, as CSV import takes them; stored as
    `customFields.<key>`), checked."""
    if len(mapping) > MAX_MAPPING_ENTRIES:
        raise InvalidFieldMapping(f"a field mapping has at most {MAX_MAPPING_ENTRIES} entries")
    cleaned: dict[str, str] = {}
    for key, target in mapping.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_MAPPING_KEY:
            raise InvalidFieldMapping(f"mapping keys must be 1 to {MAX_MAPPING_KEY} characters")
        if not key.isprintable():
            raise InvalidFieldMapping(f"mapping key {key!r} holds control characters")
        custom = _custom_target(target) if isinstance(target, str) else None
        if custom is not None:
            cleaned[key.strip()] = CUSTOM_PREFIX + custom
            continue
        found = _TARGETS.get(normalise_key(target)) if isinstance(target, str) else None
        if found is None:
            allowed = ", ".join([*(t.value for t in Target), "custom:<key>"])
            raise InvalidFieldMapping(f"mapping target {target!r} is not one of: {allowed}")
        cleaned[key.strip()] = found.value
    return cleaned


# ---- placing entries in the lead ------------------------------------------------------------


def _split(entry: Entry) -> list[str]:
    """The path as matching sees it: dots and Zapier's `__` both separate levels."""
    return [part for segment in entry.path for part in re.split(r"\.|__", segment) if part]


def _tails(entry: Entry, *, anywhere: bool) -> Iterator[tuple[int, str]]:
    """The joined path, then shorter tails of it (below person containers unless `anywhere`)."""
    parts = [normalise_key(p) for p in _split(entry)]
    for start in range(len(parts)):
        if start and not anywhere and parts[start - 1] not in _PERSON_CONTAINERS:
            return
        yield start, "".join(parts[start:])


def _synonym(text: str) -> tuple[Target, int] | None:
    found = _CORE.get(text)
    if found is None:
        for prefix in _FILLER_PREFIXES:
            if text.startswith(prefix) and text != prefix:
                text = text[len(prefix) :]
                break
        for suffix in _FILLER_SUFFIXES:
            text = text.removesuffix(suffix)
        found = _CORE.get(text)
    return found


def _core_value(target: Target, value: Any) -> Any:
    """The value as the lead field takes it, or None when it cannot be that field."""
    if target is Target.TAGS:
        if isinstance(value, list):
            tags = [str(v) for v in value if scalar_text(v)]
            return tags or None
        text = scalar_text(value)
        return text if text and text.strip() else None
    if isinstance(value, list):
        items = [text for text in (scalar_text(v) for v in value) if text and text.strip()]
        if not items:
            return None
        return "\n".join(items) if target is Target.DESCRIPTION else items[0]
    if isinstance(value, bool):
        return None
    text = scalar_text(value)
    return text if text and text.strip() else None


Score = tuple[int, int, int, int]


MappingTarget = Target | str
"""A core field, or (a str) the key of the custom field a mapping sends an entry to."""


def _mapping_lookup(
    mapping: Mapping[str, str],
) -> tuple[dict[str, MappingTarget], dict[str, MappingTarget]]:
    exact: dict[str, MappingTarget] = {
        key: target.removeprefix(CUSTOM_PREFIX)
        if target.startswith(CUSTOM_PREFIX)
        else Target(target)
        for key, target in mapping.items()
    }
    loose = {normalise_key(key): target for key, target in exact.items()}
    return exact, loose


def _mapped(
    entry: Entry, exact: Mapping[str, MappingTarget], loose: Mapping[str, MappingTarget]
) -> MappingTarget | None:
    """The target the webhook's own mapping gives an entry, if any."""
    names = (entry.dotted, *entry.aliases, entry.display)
    for name in names:
        if name in exact:
            return exact[name]
    for name in names:
        found = loose.get(normalise_key(name))
        if found is not None:
            return found
    return None


def _classify(
    entry: Entry, exact: Mapping[str, MappingTarget], loose: Mapping[str, MappingTarget]
) -> tuple[Target, Score] | None:
    """Which lead field an entry fills, and how sure: mapping, then hint, key, label.
    An entry the mapping sends to a custom field fills no core field."""
    names = (entry.dotted, *entry.aliases, entry.display)
    for name in names:
        if name in exact:
            found = exact[name]
            return (found, (0, 0, 0, 0)) if isinstance(found, Target) else None
    for name in names:
        loose_found = loose.get(normalise_key(name))
        if loose_found is not None:
            return (loose_found, (0, 1, 0, 0)) if isinstance(loose_found, Target) else None
    if entry.hint is not None:
        return entry.hint, (1, 0, 0, 0)
    for start, tail in _tails(entry, anywhere=False):
        synonym = _synonym(tail) if start == 0 else _CORE.get(tail)
        if synonym is not None:
            return synonym[0], (2, synonym[1], start, len(entry.path))
    for label in (*entry.aliases, entry.display):
        synonym = _synonym(normalise_key(label))
        if synonym is not None:
            return synonym[0], (3, synonym[1], 0, 0)
    return None


def _attribution_key(entry: Entry) -> str | None:
    for _, tail in _tails(entry, anywhere=True):
        if tail in _ATTRIBUTION:
            return _ATTRIBUTION[tail]
        if tail.startswith("utm") and len(tail) > 3:
            return "utm_" + tail[3:]
    return None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def map_payload(
    payload: Mapping[str, Any],
    *,
    field_mapping: Mapping[str, str] | None = None,
    source_format: SourceFormat | None = None,
) -> Mapped:
    """Read a payload as its (detected or pinned) format and place every answer in the lead.

    Core fields come from the webhook's mapping first, then from what the source declares,
    then from the key's synonyms, then from its label; UTM and click ids go to attribution;
    everything else to custom fields under a camelCase key, its original name kept.
    Raises UnusablePayload, or pydantic's ValidationError when the lead breaks its limits.
    """
    if source_format is not None and not fits_format(payload, source_format):
        raise UnusablePayload(
            "format_mismatch", f"the payload is not in the {source_format} format this webhook pins"
        )
    chosen = source_format or detect_format(payload)
    extracted = extract(payload, chosen)
    exact, loose = _mapping_lookup(field_mapping or {})

    winners: dict[Target, tuple[Score, int, Any]] = {}
    for order, entry in enumerate(extracted.entries):
        if _is_empty(entry.value):
            continue
        found = _classify(entry, exact, loose)
        if found is None:
            continue
        target, score = found
        value = _core_value(target, entry.value)
        if value is None:
            continue
        current = winners.get(target)
        if current is None or (score, order) < (current[0], current[1]):
            winners[target] = (score, order, value)

    core: dict[str, Any] = {t.value: v for t, (_, _, v) in winners.items()}
    used = {order for _, order, _ in winners.values()}
    first, last = core.pop(Target.FIRST_NAME.value, None), core.pop(Target.LAST_NAME.value, None)
    if Target.NAME.value not in core and (first or last):
        core[Target.NAME.value] = " ".join(p for p in (first, last) if p)
    elif Target.NAME.value in core:
        # The full name won; the parts stay on the lead as custom fields.
        used -= {winners[t][1] for t in (Target.FIRST_NAME, Target.LAST_NAME) if t in winners}

    custom: dict[str, Any] = {}
    display: dict[str, str] = {}
    # Entries the mapping sends to a custom field first: their keys are the ones asked for.
    for order, entry in enumerate(extracted.entries):
        mapped = _mapped(entry, exact, loose)
        if isinstance(mapped, Target) or mapped is None or order in used:
            continue
        used.add(order)
        if not _is_empty(entry.value):
            custom.setdefault(mapped, entry.value)
            display.setdefault(mapped, entry.display)
    attribution = dict(extracted.attribution)
    consent = dict(extracted.consent)
    for order, entry in enumerate(extracted.entries):
        if order in used or _is_empty(entry.value):
            continue
        text = scalar_text(entry.value)
        key = _attribution_key(entry)
        if key is not None and text:
            attribution.setdefault(key, text)
            continue
        if normalise_key(entry.path[-1]) in _CONSENT:
            consent[camel_case(entry.dotted) or "consent"] = entry.value
            continue
        base = entry.custom_key or camel_case(entry.dotted) or "field"
        name, suffix = base, 2
        while name in custom:
            name, suffix = f"{base}{suffix}", suffix + 1
        custom[name] = entry.value
        display[name] = entry.display
    details = LeadDetails.model_validate(
        {
            **core,
            "custom_fields": custom,
            "display_names": display,
            "attribution": attribution,
            "consent": consent,
        }
    )
    return Mapped(details, chosen, extracted.provider_id)
