"""Recognising which tool sent a lead payload, and one adapter per tool to read it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Any

from domain.payload_fields import (
    Entry,
    Extracted,
    Target,
    UnusablePayload,
    camel_case,
    scalar_text,
)

# Nesting the flattener follows; a deeper subtree is kept whole as one value.
MAX_FLATTEN_DEPTH = 32


class SourceFormat(StrEnum):
    """The payload shapes recognised without any mapping; `generic` is any flat or nested post."""

    GENERIC = "generic"
    META_LEAD_ADS = "meta_lead_ads"
    GOOGLE_ADS = "google_ads"
    HUBSPOT = "hubspot"
    TYPEFORM = "typeform"
    UNBOUNCE = "unbounce"
    GRAVITY_FORMS = "gravity_forms"


# ---- detection ------------------------------------------------------------------------------


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _meta_changes(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The leadgen changes of a Meta webhook (`entry[].changes[].value`), with their page id."""
    changes = []
    for entry in _dicts(payload.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if isinstance(value, dict) and (
                change.get("field") == "leadgen" or "leadgen_id" in value
            ):
                page = entry.get("id")
                changes.append({"page_id": page, **value} if page is not None else value)
    return changes


def _is_name_value_list(value: Any) -> bool:
    items = _dicts(value)
    return bool(items) and len(items) == len(value) and all("name" in i for i in items[:3])


def _gravity_parts(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The entry and, when the payload carries it, the form definition."""
    entry = payload.get("entry")
    form = payload.get("form")
    if isinstance(entry, dict):
        return entry, form if isinstance(form, dict) else None
    return dict(payload), form if isinstance(form, dict) else None


_GRAVITY_KEY = re.compile(r"^\d+(\.\d+)?$")
_GRAVITY_META = frozenset(
    {"date_created", "source_url", "is_starred", "is_read", "user_agent", "ip", "created_by"}
)


def _looks_gravity(payload: Mapping[str, Any]) -> bool:
    """An entry: `form_id` plus entry metadata, with numbered inputs or labelled fields."""
    entry, form = _gravity_parts(payload)
    if "form_id" not in entry:
        return False
    if form is not None and isinstance(form.get("fields"), list):
        return True
    return len(_GRAVITY_META & entry.keys()) >= 2


def _looks_unbounce(payload: Mapping[str, Any]) -> bool:
    if isinstance(payload.get("data.json"), str | dict):
        return True
    values = [v for k, v in payload.items() if k not in ("page_id", "page_name", "page_url")]
    return "page_uuid" in payload and all(isinstance(v, list) for v in values)


def _looks_typeform(payload: Mapping[str, Any]) -> bool:
    response = payload.get("form_response")
    if isinstance(response, dict):
        return isinstance(response.get("answers"), list)
    return any(isinstance(a.get("field"), dict) for a in _dicts(payload.get("answers")))


def _looks_hubspot(payload: Mapping[str, Any], *, strict: bool) -> bool:
    if _is_name_value_list(payload.get("fields")) or _is_name_value_list(payload.get("values")):
        return True
    markers = {"vid", "canonical-vid", "portal-id", "portalId", "hs_object_id", "objectId"}
    # A bare `properties` object is too common to call HubSpot unless the webhook pins it.
    return isinstance(payload.get("properties"), dict) and (
        not strict or bool(markers & payload.keys())
    )


# In the order they are tried: the more distinctive shapes first.
_DETECTORS: dict[SourceFormat, Callable[[Mapping[str, Any]], bool]] = {
    SourceFormat.TYPEFORM: _looks_typeform,
    SourceFormat.META_LEAD_ADS: lambda p: (
        isinstance(p.get("field_data"), list) or bool(_meta_changes(p))
    ),
    SourceFormat.GOOGLE_ADS: lambda p: isinstance(p.get("user_column_data"), list),
    SourceFormat.UNBOUNCE: _looks_unbounce,
    SourceFormat.HUBSPOT: lambda p: _looks_hubspot(p, strict=True),
    SourceFormat.GRAVITY_FORMS: _looks_gravity,
}


def detect_format(payload: Mapping[str, Any]) -> SourceFormat:
    """Which known source sent this, judged from the payload's shape alone."""
    for source, looks_like in _DETECTORS.items():
        if looks_like(payload):
            return source
    return SourceFormat.GENERIC


def fits_format(payload: Mapping[str, Any], source: SourceFormat) -> bool:
    """Whether a payload can be read as the format a webhook pinned."""
    if source is SourceFormat.GENERIC:
        return True
    if source is SourceFormat.HUBSPOT:
        return _looks_hubspot(payload, strict=False)
    if source is SourceFormat.GRAVITY_FORMS:
        return "form_id" in _gravity_parts(payload)[0]
    return _DETECTORS[source](payload)


# ---- adapters -------------------------------------------------------------------------------

# A dict carrying one answer plus its metadata (`{"value": ..., "label": ...}`) is that answer.
_WRAPPER_KEYS = frozenset(
    {"value", "versions", "id", "name", "label", "title", "type", "field_type", "fieldType"}
)


def _wrapped(item: Any) -> tuple[Any, str | None] | None:
    """`{"value": v, "label": "Email"}` → (v, "Email"); None when `item` is no such wrapper."""
    if isinstance(item, dict) and "value" in item and item.keys() <= _WRAPPER_KEYS:
        for label_key in ("label", "title", "name"):
            label = item.get(label_key)
            if isinstance(label, str) and label.strip():
                return item["value"], label
        return item["value"], None
    return None


def _flatten(value: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[Entry]:
    for key, item in value.items():
        path = (*prefix, str(key))
        wrapped = _wrapped(item)
        if wrapped is not None:
            yield Entry(path, wrapped[0], wrapped[1] or ".".join(path))
        elif isinstance(item, dict) and len(path) < MAX_FLATTEN_DEPTH:
            yield from _flatten(item, path)
        else:
            yield Entry(path, item, ".".join(path))


def _take(
    payload: Mapping[str, Any], into: Extracted, names: Mapping[str, str], prefix: str = ""
) -> set[str]:
    """Copy the envelope's ids into attribution (under the provider's names); the keys used."""
    used = set()
    for key, name in names.items():
        value = scalar_text(payload.get(key))
        if value:
            into.attribution.setdefault(prefix + name, value)
            used.add(key)
    return used


def _rest(
    payload: Mapping[str, Any], into: Extracted, skip: set[str], prefix: tuple[str, ...] = ()
) -> None:
    """Everything the adapter did not read itself goes through the generic path."""
    into.entries.extend(_flatten({k: v for k, v in payload.items() if k not in skip}, prefix))


def _unwrap_list(values: Any) -> Any:
    """Meta and Unbounce send every answer as a list; one item is just that item."""
    if isinstance(values, list):
        items = [v for v in values if v is not None and v != ""]
        return items[0] if len(items) == 1 else items
    return values


def _generic(payload: Mapping[str, Any]) -> Extracted:
    out = Extracted()
    skip = set()
    for key in ("customFields", "custom_fields"):
        fields = payload.get(key)
        if isinstance(fields, dict):
            skip.add(key)
            names = fields.get("_displayNames")
            names = names if isinstance(names, dict) else {}
            for entry in _flatten({k: v for k, v in fields.items() if k != "_displayNames"}):
                display = names.get(entry.dotted)
                out.entries.append(
                    Entry(
                        entry.path,
                        entry.value,
                        display if isinstance(display, str) else entry.display,
                    )
                )
    attribution = payload.get("attribution")
    if isinstance(attribution, dict):
        skip.add("attribution")
        for key, value in attribution.items():
            text = scalar_text(value)
            if text:
                out.attribution[str(key)] = text
    _rest(payload, out, skip)
    return out


_META_IDS = {
    "id": "leadgen_id",
    "leadgen_id": "leadgen_id",
    "form_id": "form_id",
    "form_name": "form_name",
    "ad_id": "ad_id",
    "ad_name": "ad_name",
    "adset_id": "adset_id",
    "adset_name": "adset_name",
    "adgroup_id": "adgroup_id",
    "campaign_id": "campaign_id",
    "campaign_name": "campaign_name",
    "page_id": "page_id",
    "platform": "platform",
}


def _meta(payload: Mapping[str, Any]) -> Extracted:
    lead: Mapping[str, Any] = payload
    if not isinstance(payload.get("field_data"), list):
        changes = _meta_changes(payload)
        if not changes:
            raise UnusablePayload("format_mismatch", "no Meta lead (`field_data`) in the payload")
        if len(changes) > 1:
            raise UnusablePayload(
                "multiple_leads", "the payload holds several Meta leads; send one per request"
            )
        lead = changes[0]
    out = Extracted()
    for item in _dicts(lead.get("field_data")):
        name = item.get("name")
        if isinstance(name, str) and name:
            out.entries.append(Entry((name,), _unwrap_list(item.get("values")), name))
    for item in _dicts(lead.get("custom_disclaimer_responses")):
        key = item.get("checkbox_key")
        if isinstance(key, str) and key:
            out.consent[key] = item.get("is_checked")
    used = _take(lead, out, _META_IDS, "meta_")
    leadgen = out.attribution.get("meta_leadgen_id")
    out.provider_id = f"meta:{leadgen}" if leadgen else None
    _rest(lead, out, used | {"field_data", "custom_disclaimer_responses"})
    return out


_GOOGLE_IDS = {
    "lead_id": "lead_id",
    "form_id": "form_id",
    "campaign_id": "campaign_id",
    "adgroup_id": "adgroup_id",
    "creative_id": "creative_id",
    "asset_group_id": "asset_group_id",
}


def _google(payload: Mapping[str, Any]) -> Extracted:
    out = Extracted()
    for item in _dicts(payload.get("user_column_data")):
        column_id, column_name = item.get("column_id"), item.get("column_name")
        key = column_id if isinstance(column_id, str) and column_id else column_name
        if not isinstance(key, str) or not key:
            continue
        display = column_name if isinstance(column_name, str) and column_name else key
        aliases = (column_name,) if isinstance(column_name, str) and column_name != key else ()
        out.entries.append(Entry((key,), item.get("string_value"), display, aliases))
    used = _take(payload, out, _GOOGLE_IDS, "google_")
    used |= _take(payload, out, {"gcl_id": "gclid"})
    lead_id = out.attribution.get("google_lead_id")
    # Google sends its test leads with one fixed id: deduping on it would keep only the first.
    if lead_id and payload.get("is_test") is not True:
        out.provider_id = f"google:{lead_id}"
    # `google_key` is the shared secret proving the request came from Google: never stored.
    _rest(payload, out, used | {"user_column_data", "google_key", "api_version"})
    return out


def _hubspot(payload: Mapping[str, Any]) -> Extracted:
    out = Extracted()
    for list_key in ("fields", "values"):
        for item in _dicts(payload.get(list_key)):
            name = item.get("name")
            if isinstance(name, str) and name:
                out.entries.append(Entry((name,), item.get("value"), name))
    properties = payload.get("properties")
    if isinstance(properties, dict):
        for name, item in properties.items():
            wrapped = _wrapped(item)
            out.entries.append(Entry((str(name),), wrapped[0] if wrapped else item, str(name)))
    context = payload.get("context")
    if isinstance(context, dict):
        _take(context, out, {"hutk": "utk", "pageId": "page_id"}, "hubspot_")
        _rest(context, out, {"hutk", "pageId"})
    consent = payload.get("legalConsentOptions")
    if isinstance(consent, dict):
        out.consent.update(consent)
    used = _take(
        payload,
        out,
        {
            "conversionId": "conversion_id",
            "portalId": "portal_id",
            "portal-id": "portal_id",
            "formGuid": "form_id",
            "formId": "form_id",
            "vid": "contact_id",
            "canonical-vid": "contact_id",
            "hs_object_id": "contact_id",
            "objectId": "contact_id",
        },
        "hubspot_",
    )
    conversion = out.attribution.get("hubspot_conversion_id")
    out.provider_id = f"hubspot:{conversion}" if conversion else None
    skip = {"fields", "values", "properties", "context", "legalConsentOptions", "skipValidation"}
    # The legacy contact payload repeats every property's history; it is noise on a lead.
    skip |= {"form-submissions", "identity-profiles", "merge-audits", "list-memberships"}
    _rest(payload, out, used | skip)
    return out


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_TYPEFORM_HINTS = {"email": Target.EMAIL, "phone_number": Target.PHONE}


def _typeform_value(answer: Mapping[str, Any]) -> Any:
    kind = answer.get("type")
    if kind == "choice":
        choice = answer.get("choice")
        if isinstance(choice, dict):
            return choice.get("label") or choice.get("other")
        return None
    if kind == "choices":
        choices = answer.get("choices")
        if isinstance(choices, dict):
            labels = list(choices.get("labels") or [])
            if choices.get("other"):
                labels.append(choices["other"])
            return labels
        return None
    return answer.get(kind) if isinstance(kind, str) else None


def _typeform_titles(definition: Any) -> dict[str, str]:
    """Field id → question title, groups' inner fields included."""
    titles: dict[str, str] = {}
    pending = _dicts(definition.get("fields")) if isinstance(definition, dict) else []
    while pending:
        item = pending.pop()
        if isinstance(item.get("id"), str) and isinstance(item.get("title"), str):
            titles[item["id"]] = item["title"]
        properties = item.get("properties")
        if isinstance(properties, dict):
            pending.extend(_dicts(properties.get("fields")))
    return titles


def _typeform(payload: Mapping[str, Any]) -> Extracted:
    response = payload.get("form_response")
    response = response if isinstance(response, dict) else payload
    out = Extracted()
    titles = _typeform_titles(response.get("definition"))
    for answer in _dicts(response.get("answers")):
        field_info = answer.get("field")
        field_info = field_info if isinstance(field_info, dict) else {}
        field_id, ref = field_info.get("id"), field_info.get("ref")
        key = ref if isinstance(ref, str) and ref else field_id
        if not isinstance(key, str) or not key:
            continue
        title = titles.get(field_id) if isinstance(field_id, str) else None
        aliases = tuple(a for a in (field_id, title) if isinstance(a, str) and a and a != key)
        hint = _TYPEFORM_HINTS.get(str(answer.get("type"))) or _TYPEFORM_HINTS.get(
            str(field_info.get("type"))
        )
        # Refs Typeform generates are UUIDs: the question makes the better custom field name.
        named = title if title and (key == field_id or _UUID.match(key)) else key
        out.entries.append(
            Entry((key,), _typeform_value(answer), title or key, aliases, hint, camel_case(named))
        )
    hidden = response.get("hidden")
    if isinstance(hidden, dict):
        _rest(hidden, out, set())
    for variable in _dicts(response.get("variables")):
        key = variable.get("key")
        if isinstance(key, str) and key:
            out.entries.append(Entry((key,), _typeform_value(variable), key))
    calculated = response.get("calculated")
    if isinstance(calculated, dict) and "score" in calculated:
        out.entries.append(Entry(("score",), calculated["score"], "score"))
    _take(response, out, {"form_id": "form_id", "token": "token"}, "typeform_")
    _take(payload, out, {"event_id": "event_id"}, "typeform_")
    token = out.attribution.get("typeform_token")
    out.provider_id = f"typeform:{token}" if token else None
    skip = {"answers", "hidden", "variables", "calculated", "definition", "ending"}
    _rest(response, out, skip | {"form_id", "token", "response_id"})
    return out


def _unbounce(payload: Mapping[str, Any]) -> Extracted:
    data: Any = payload.get("data.json", {})
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            raise UnusablePayload(
                "malformed_json", "the Unbounce `data.json` is not JSON"
            ) from None
    if not isinstance(data, dict):
        raise UnusablePayload("format_mismatch", "the Unbounce `data.json` is not an object")
    # The form's fields are in data.json; the envelope repeats page fields, and data.json wins.
    fields = {str(k): _unwrap_list(v) for k, v in data.items()}
    envelope = {
        k: _unwrap_list(v)
        for k, v in payload.items()
        if k not in ("data.json", "data.xml") and k not in fields
    }
    merged = {**fields, **envelope}
    ids = {"page_id": "page_id", "page_uuid": "page_id", "variant": "variant"}
    _take(merged, out := Extracted(), ids, "unbounce_")
    _rest(merged, out, set(ids))
    return out


# Gravity Forms sub-inputs: `1.3` is the first name of name field 1, `1.6` its last name.
_GRAVITY_NAME_INPUTS = {"3": Target.FIRST_NAME, "6": Target.LAST_NAME}
_GRAVITY_TYPES = {"email": Target.EMAIL, "phone": Target.PHONE}
_GRAVITY_NOISE = frozenset(
    {"is_starred", "is_read", "post_id", "date_updated", "is_fulfilled", "status", "currency"}
)
_GRAVITY_NOISE_PREFIXES = ("payment_", "transaction_")


def _gravity_definition(form: Mapping[str, Any] | None) -> dict[str, tuple[str, Target | None]]:
    """Input id → (label, declared field) from a form definition, when one was sent."""
    known: dict[str, tuple[str, Target | None]] = {}
    for item in _dicts(form.get("fields")) if form else []:
        field_id, label, kind = str(item.get("id")), item.get("label"), item.get("type")
        label = label if isinstance(label, str) and label else f"Field {field_id}"
        known[field_id] = (label, _GRAVITY_TYPES.get(str(kind)))
        for sub in _dicts(item.get("inputs")):
            sub_id, sub_label = str(sub.get("id")), sub.get("label")
            hint = None
            if kind == "name":
                hint = _GRAVITY_NAME_INPUTS.get(sub_id.rpartition(".")[2])
            elif kind == "email":
                hint = Target.EMAIL
            known[sub_id] = (
                f"{label} ({sub_label})" if isinstance(sub_label, str) else label,
                hint,
            )
    return known


def _gravity_name_fields(keys: Sequence[str]) -> set[str]:
    """Without a definition: field ids whose inputs look like a name (.3 and .6, no .1 or .5)."""
    inputs: dict[str, set[str]] = {}
    for key in keys:
        base, _, sub = key.partition(".")
        if sub:
            inputs.setdefault(base, set()).add(sub)
    return {b for b, s in inputs.items() if {"3", "6"} <= s and not {"1", "5"} & s}


_EMAIL_LIKE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE_LIKE = re.compile(r"^\+?[\d\s().-]{7,20}$")
_DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _looks_like_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return bool(_PHONE_LIKE.match(text)) and not _DATE_LIKE.match(text) and 7 <= digits <= 15


def _gravity(payload: Mapping[str, Any]) -> Extracted:
    entry, form = _gravity_parts(payload)
    if "form_id" not in entry:
        raise UnusablePayload("format_mismatch", "no Gravity Forms entry in the payload")
    definition = _gravity_definition(form)
    numbered = [k for k in entry if _GRAVITY_KEY.match(k)]
    name_fields = _gravity_name_fields(numbered)
    out = Extracted()
    for key in numbered:
        value = entry[key]
        base, _, sub = key.partition(".")
        label, hint = definition.get(key, (None, None))
        if label is None:
            if base in name_fields:
                hint = _GRAVITY_NAME_INPUTS.get(sub)
            elif not sub and isinstance(value, str):
                # With neither labels nor types, a value that is plainly an email or a phone
                # number is the best evidence there is.
                if _EMAIL_LIKE.match(value.strip()):
                    hint = Target.EMAIL
                elif _looks_like_phone(value.strip()):
                    hint = Target.PHONE
        custom_key = camel_case(label) if label else "field" + key.replace(".", "_")
        aliases = (label,) if label else ()
        out.entries.append(Entry((key,), value, label or key, aliases, hint, custom_key or None))
    _take(entry, out, {"id": "entry_id", "form_id": "form_id"}, "gravity_forms_")
    skip = {"id", "form_id", *numbered, *_GRAVITY_NOISE}
    skip |= {k for k in entry if k.startswith(_GRAVITY_NOISE_PREFIXES)}
    _rest(entry, out, skip)
    if isinstance(payload.get("entry"), dict):
        _rest(payload, out, {"entry", "form"})
    return out


_ADAPTERS = {
    SourceFormat.GENERIC: _generic,
    SourceFormat.META_LEAD_ADS: _meta,
    SourceFormat.GOOGLE_ADS: _google,
    SourceFormat.HUBSPOT: _hubspot,
    SourceFormat.TYPEFORM: _typeform,
    SourceFormat.UNBOUNCE: _unbounce,
    SourceFormat.GRAVITY_FORMS: _gravity,
}


def extract(payload: Mapping[str, Any], source: SourceFormat) -> Extracted:
    """Read a payload's answers, ids and consent as the given format lays them out."""
    return _ADAPTERS[source](payload)
