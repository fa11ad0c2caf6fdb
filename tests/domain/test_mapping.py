"""Unit tests of the pure payload mapping: every source format, synonyms, flattening, overrides."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from domain.leads import LeadDetails, merge_tags
from domain.mapping import InvalidFieldMapping, clean_field_mapping, map_payload
from domain.normalize import phone_digits, phone_search_keys
from domain.payload_fields import UnusablePayload, camel_case, normalise_key
from domain.source_formats import SourceFormat, detect_format

# ---- sample payloads, shaped after each provider's public documentation ---------------------

# Meta Lead Ads: a lead as the Graph API returns it (`GET /{lead-id}`).
META_LEAD: dict[str, Any] = {
    "created_time": "2015-02-28T08:49:14+0000",
    "id": "444444444444",
    "ad_id": "111111111111",
    "adset_id": "222222222222",
    "campaign_id": "333333333333",
    "form_id": "555555555555",
    "platform": "fb",
    "is_organic": False,
    "field_data": [
        {"name": "car_make", "values": ["Honda"]},
        {"name": "full_name", "values": ["Joe Example"]},
        {"name": "email", "values": ["joe@example.com"]},
        {"name": "phone_number", "values": ["+15555550123"]},
        {"name": "selected_dealer", "values": ["99213450"]},
        {"name": "which_services?", "values": ["oil_change", "tyres"]},
    ],
    "custom_disclaimer_responses": [{"checkbox_key": "marketing_optin", "is_checked": "1"}],
}

# Meta's page webhook: `entry[].changes[].value`, here forwarded with the lead's field_data.
META_WEBHOOK: dict[str, Any] = {
    "object": "page",
    "entry": [
        {
            "id": "153125381133",
            "time": 1438292065,
            "changes": [
                {
                    "field": "leadgen",
                    "value": {
                        "leadgen_id": "123123123123",
                        "form_id": "12341234",
                        "adgroup_id": "0",
                        "ad_id": "0",
                        "created_time": 1440120384,
                        "field_data": [
                            {"name": "first_name", "values": ["Ann"]},
                            {"name": "last_name", "values": ["Lee"]},
                            {"name": "work_email", "values": ["ann@lee.test"]},
                            {"name": "company_name", "values": ["Lee & Co"]},
                            {"name": "job_title", "values": ["Founder"]},
                        ],
                    },
                }
            ],
        }
    ],
}


def _column(name: str, value: str, column_id: str) -> dict[str, str]:
    return {"column_name": name, "string_value": value, "column_id": column_id}


# Google Ads lead form webhook (developers.google.com/google-ads/webhook/docs/implementation).
GOOGLE_LEAD: dict[str, Any] = {
    "lead_id": "TeSter-123-ABCDEFGHIJKLMNOPQRSTUVWXYZ-abcdefghijklmnopqrstuvwxyz-0123456789",
    "user_column_data": [
        {
            "column_name": "Full Name",
            "string_value": "FirstName LastName",
            "column_id": "FULL_NAME",
        },
        {"column_name": "User Phone", "string_value": "+16505550123", "column_id": "PHONE_NUMBER"},
        {"column_name": "User Email", "string_value": "test@example.com", "column_id": "EMAIL"},
        {
            "column_name": "Work Email",
            "string_value": "work@example.com",
            "column_id": "WORK_EMAIL",
        },
        {"column_name": "Company Name", "string_value": "CompanyName", "column_id": "COMPANY_NAME"},
        {"column_name": "Job Title", "string_value": "JobTitle", "column_id": "JOB_TITLE"},
        {"column_name": "City", "string_value": "Mountain View", "column_id": "CITY"},
        {
            "column_name": "What is your budget?",
            "string_value": "$10k",
            "column_id": "what_is_your_budget?",
        },
    ],
    "api_version": "1.0",
    "form_id": 40000000000,
    "campaign_id": 20000000000,
    "google_key": "the-shared-secret",
    "is_test": False,
    "gcl_id": "EAIaIQobChMI-gclid",
    "adgroup_id": 20000000000,
    "creative_id": 30000000000,
}

# HubSpot Forms API v3 submission (`fields` of {objectTypeId, name, value} plus `context`).
HUBSPOT_SUBMISSION: dict[str, Any] = {
    "submittedAt": "1517927174000",
    "fields": [
        {"objectTypeId": "0-1", "name": "email", "value": "example@example.com"},
        {"objectTypeId": "0-1", "name": "firstname", "value": "Jeff"},
        {"objectTypeId": "0-1", "name": "lastname", "value": "Example"},
        {"objectTypeId": "0-1", "name": "mobilephone", "value": "+44 20 7946 0958"},
        {"objectTypeId": "0-1", "name": "jobtitle", "value": "Buyer"},
        {"objectTypeId": "0-1", "name": "hs_persona", "value": "persona_1"},
    ],
    "context": {
        "hutk": "ee6ec0be6a1c03d3f3d4b1e6ac6c0bc9",
        "pageUri": "https://www.example.com/page",
        "pageName": "Example page",
    },
    "legalConsentOptions": {
        "consent": {
            "consentToProcess": True,
            "text": "I agree to allow Example Company to store and process my personal data.",
        }
    },
}

# HubSpot form submissions API (`values` of {name, value}).
HUBSPOT_VALUES: dict[str, Any] = {
    "conversionId": "b5d1f7c0-5f6d-4c8b-8d2a-1f0e0e0e0e0e",
    "submittedAt": 1554131863041,
    "values": [
        {"name": "email", "value": "jane@example.com"},
        {"name": "company", "value": "Example Inc"},
        {"name": "message", "value": "Call me back"},
    ],
    "pageUrl": "https://www.example.com/contact",
}

# HubSpot's legacy contact payload (workflow webhooks): `properties` of {value, versions}.
HUBSPOT_CONTACT: dict[str, Any] = {
    "vid": 3234574,
    "portal-id": 62515,
    "properties": {
        "firstname": {"value": "Codey", "versions": [{"value": "Codey", "source-type": "API"}]},
        "lastname": {"value": "Huang"},
        "email": {"value": "codey@hubspot.test"},
        "company": {"value": "HubSpot"},
        "lifecyclestage": {"value": "lead"},
    },
}

# Typeform webhook (typeform.com/developers/webhooks/example-payload), abridged.
TYPEFORM: dict[str, Any] = {
    "event_id": "LtWXD3crgy",
    "event_type": "form_response",
    "form_response": {
        "form_id": "lT4Z3j",
        "token": "a3a12ec67a1365927098a606107fac15",
        "submitted_at": "2018-01-18T18:17:02Z",
        "landed_at": "2018-01-18T18:07:02Z",
        "calculated": {"score": 9},
        "hidden": {"user_id": "abc123456", "utm_source": "newsletter"},
        "definition": {
            "id": "lT4Z3j",
            "title": "Webhooks example",
            "fields": [
                {
                    "id": "DlXFaesGBpoF",
                    "title": "What's it like where you live? Tell us in a few sentences.",
                    "type": "long_text",
                    "ref": "readable_ref_long_text",
                },
                {
                    "id": "SMEUb7VJz92Q",
                    "title": "If you're OK with following up, please give us your email address.",
                    "type": "email",
                    "ref": "readable_ref_email",
                },
                {
                    "id": "JwWggjAKtOkA",
                    "title": "What is your first name?",
                    "type": "short_text",
                    "ref": "ecbb3121-1bc9-42f0-ae29-29aeee5d39d3",
                },
                {
                    "id": "U4i2uXoZzXPZ",
                    "title": "Your Last Name:",
                    "type": "short_text",
                    "ref": "93bcd199-2648-4d4b-9f01-acc47da04fd8",
                },
                {
                    "id": "PNe8ZKBK8C2Q",
                    "title": "Which pictures do you like?",
                    "type": "picture_choice",
                    "ref": "readable_ref_picture_choice",
                },
                {"id": "k6TP9oLGgHjl", "title": "Your phone", "type": "phone_number"},
                {
                    "id": "gFFf3xAkJKsr",
                    "title": "Which city?",
                    "type": "dropdown",
                    "ref": "readable_ref_dropdown",
                },
                {"id": "Q7M2XAwY04dW", "title": "Agree?", "type": "yes_no", "ref": "agree"},
            ],
        },
        "answers": [
            {
                "type": "text",
                "text": "It's cold right now! I live in an older medium-sized city.",
                "field": {
                    "id": "DlXFaesGBpoF",
                    "type": "long_text",
                    "ref": "readable_ref_long_text",
                },
            },
            {
                "type": "email",
                "email": "laura@example.com",
                "field": {"id": "SMEUb7VJz92Q", "type": "email", "ref": "readable_ref_email"},
            },
            {
                "type": "text",
                "text": "Laura",
                "field": {
                    "id": "JwWggjAKtOkA",
                    "type": "short_text",
                    "ref": "ecbb3121-1bc9-42f0-ae29-29aeee5d39d3",
                },
            },
            {
                "type": "text",
                "text": "Diaz",
                "field": {
                    "id": "U4i2uXoZzXPZ",
                    "type": "short_text",
                    "ref": "93bcd199-2648-4d4b-9f01-acc47da04fd8",
                },
            },
            {
                "type": "choices",
                "choices": {"labels": ["London", "Sydney"]},
                "field": {
                    "id": "PNe8ZKBK8C2Q",
                    "type": "picture_choice",
                    "ref": "readable_ref_picture_choice",
                },
            },
            {
                "type": "phone_number",
                "phone_number": "+34612345678",
                "field": {"id": "k6TP9oLGgHjl", "type": "phone_number"},
            },
            {
                "type": "choice",
                "choice": {"label": "Barcelona"},
                "field": {"id": "gFFf3xAkJKsr", "type": "dropdown", "ref": "readable_ref_dropdown"},
            },
            {
                "type": "boolean",
                "boolean": True,
                "field": {"id": "Q7M2XAwY04dW", "type": "yes_no", "ref": "agree"},
            },
        ],
    },
}

# Unbounce form webhook: form-encoded envelope with the answers, as arrays, in `data.json`.
UNBOUNCE_DATA = {
    "name": ["Sam Smith"],
    "email": ["test@test.com"],
    "phone_number": ["604-555-0199"],
    "budget": ["$5k"],
    "services": ["design", "hosting"],
    "ip_address": ["1.1.1.1"],
    "page_uuid": ["a2838d98-4cf4-11df-a3fd-00163e372d58"],
    "variant": ["a"],
    "time_submitted": ["10:57 PM UTC"],
    "date_submitted": ["2023-06-06"],
    "page_url": ["http://my-landing-page.ca/"],
    "page_name": ["My Landing Page"],
}
UNBOUNCE_FORM: dict[str, Any] = {
    "page_id": "a2838d98-4cf4-11df-a3fd-00163e372d58",
    "page_url": "http://my-landing-page.ca/",
    "page_name": "My Landing Page",
    "variant": "a",
    "data.json": json.dumps(UNBOUNCE_DATA),
    "data.xml": "<?xml version='1.0'?><form_data></form_data>",
}

# Gravity Forms entry object as the Webhooks add-on sends it ("all fields"), no definition.
GRAVITY_ENTRY: dict[str, Any] = {
    "id": "42",
    "form_id": "3",
    "post_id": None,
    "date_created": "2024-03-01 10:15:00",
    "date_updated": "2024-03-01 10:15:00",
    "is_starred": 0,
    "is_read": 0,
    "ip": "203.0.113.9",
    "source_url": "https://example.com/contact/",
    "user_agent": "Mozilla/5.0",
    "currency": "USD",
    "payment_status": None,
    "created_by": "1",
    "status": "active",
    "1.2": "",
    "1.3": "Ann",
    "1.4": "",
    "1.6": "Lee",
    "1.8": "",
    "2": "ann@example.com",
    "3": "(415) 555-2671",
    "4": "Blue",
    "5.1": "1 Main St",
    "5.3": "Springfield",
    "5.5": "12345",
}

# The same with the form definition (labels and field types).
GRAVITY_WITH_FORM: dict[str, Any] = {
    "form": {
        "id": 3,
        "title": "Contact us",
        "fields": [
            {
                "id": 1,
                "type": "name",
                "label": "Name",
                "inputs": [
                    {"id": "1.3", "label": "First"},
                    {"id": "1.6", "label": "Last"},
                ],
            },
            {"id": 2, "type": "email", "label": "Email"},
            {"id": 3, "type": "phone", "label": "Phone"},
            {"id": 4, "type": "text", "label": "Favourite colour"},
            {"id": 6, "type": "text", "label": "Company"},
            {"id": 7, "type": "textarea", "label": "Message"},
        ],
    },
    "entry": {
        "id": "43",
        "form_id": "3",
        "date_created": "2024-03-01 10:16:00",
        "source_url": "https://example.com/contact/",
        "1.3": "Bo",
        "1.6": "Chen",
        "2": "bo@example.com",
        "3": "(415) 555-2672",
        "4": "Green",
        "6": "Chen Ltd",
        "7": "Please call",
    },
}

# Zapier "Webhooks by Zapier" POST: flat keys as the Zap author named them.
ZAPIER: dict[str, Any] = {
    "First Name": "Mia",
    "Last Name": "Wong",
    "Email Address": "mia@wong.test",
    "Phone 1": "+1 212 555 0100",
    "Organisation": "Wong Partners",
    "Position": "COO",
    "Lead Source": "Zapier",
    "utm_campaign": "spring",
    "contact__address__city": "New York",
}

# Make (Integromat) HTTP module: JSON built by the scenario, often nested.
MAKE: dict[str, Any] = {
    "lead": {
        "contact": {"first_name": "Leo", "last_name": "Ruiz", "email": "leo@ruiz.test"},
        "company": {"name": "Ruiz SA", "size": "11-50"},
        "phone": "+34 600 000 000",
        "notes": "From the expo",
    },
    "form": {"name": "Expo scanner"},
    "owner": {"email": "sales@us.test"},
    "tags": ["expo", "2024"],
}


# ---- detection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (META_LEAD, SourceFormat.META_LEAD_ADS),
        (META_WEBHOOK, SourceFormat.META_LEAD_ADS),
        (GOOGLE_LEAD, SourceFormat.GOOGLE_ADS),
        (HUBSPOT_SUBMISSION, SourceFormat.HUBSPOT),
        (HUBSPOT_VALUES, SourceFormat.HUBSPOT),
        (HUBSPOT_CONTACT, SourceFormat.HUBSPOT),
        (TYPEFORM, SourceFormat.TYPEFORM),
        (UNBOUNCE_FORM, SourceFormat.UNBOUNCE),
        (UNBOUNCE_DATA, SourceFormat.UNBOUNCE),
        (GRAVITY_ENTRY, SourceFormat.GRAVITY_FORMS),
        (GRAVITY_WITH_FORM, SourceFormat.GRAVITY_FORMS),
        (ZAPIER, SourceFormat.GENERIC),
        (MAKE, SourceFormat.GENERIC),
        ({"properties": {"email": "a@b.test"}}, SourceFormat.GENERIC),
    ],
)
def test_formats_are_recognised_from_the_payload(
    payload: dict[str, Any], expected: SourceFormat
) -> None:
    assert detect_format(payload) is expected
    assert map_payload(payload).format is expected


# ---- each format ----------------------------------------------------------------------------


def test_meta_lead() -> None:
    mapped = map_payload(META_LEAD)
    d = mapped.details
    assert (d.name, d.email, d.phone) == ("Joe Example", "joe@example.com", "+15555550123")
    assert d.custom_fields["carMake"] == "Honda"
    assert d.custom_fields["whichServices"] == ["oil_change", "tyres"]
    assert d.display_names["whichServices"] == "which_services?"
    assert d.custom_fields["selectedDealer"] == "99213450"
    assert d.attribution == {
        "meta_leadgen_id": "444444444444",
        "meta_ad_id": "111111111111",
        "meta_adset_id": "222222222222",
        "meta_campaign_id": "333333333333",
        "meta_form_id": "555555555555",
        "meta_platform": "fb",
    }
    assert d.consent == {"marketing_optin": "1"}
    assert d.custom_fields["createdTime"] == "2015-02-28T08:49:14+0000"
    assert mapped.provider_id == "meta:444444444444"


def test_meta_webhook_wrapper() -> None:
    mapped = map_payload(META_WEBHOOK)
    d = mapped.details
    assert (d.name, d.email, d.company, d.title) == (
        "Ann Lee",
        "ann@lee.test",
        "Lee & Co",
        "Founder",
    )
    assert d.attribution["meta_leadgen_id"] == "123123123123"
    assert d.attribution["meta_page_id"] == "153125381133"
    assert mapped.provider_id == "meta:123123123123"


def test_meta_webhook_without_field_data_keeps_the_ids() -> None:
    bare = json.loads(json.dumps(META_WEBHOOK))
    del bare["entry"][0]["changes"][0]["value"]["field_data"]
    d = map_payload(bare).details
    assert d.name is None and d.email is None
    assert d.attribution["meta_leadgen_id"] == "123123123123"


def test_meta_batch_of_several_leads_is_refused() -> None:
    batch = json.loads(json.dumps(META_WEBHOOK))
    batch["entry"].append(batch["entry"][0])
    with pytest.raises(UnusablePayload) as refused:
        map_payload(batch)
    assert refused.value.code == "multiple_leads"


def test_google_ads_lead_form() -> None:
    mapped = map_payload(GOOGLE_LEAD)
    d = mapped.details
    assert d.name == "FirstName LastName"
    assert d.email == "test@example.com"  # EMAIL beats WORK_EMAIL
    assert d.phone == "+16505550123"
    assert (d.company, d.title) == ("CompanyName", "JobTitle")
    assert d.custom_fields["workEmail"] == "work@example.com"
    assert d.display_names["workEmail"] == "Work Email"
    assert d.custom_fields["city"] == "Mountain View"
    assert d.custom_fields["whatIsYourBudget"] == "$10k"
    assert d.display_names["whatIsYourBudget"] == "What is your budget?"
    assert d.attribution["gclid"] == "EAIaIQobChMI-gclid"
    assert d.attribution["google_lead_id"] == GOOGLE_LEAD["lead_id"]
    assert d.attribution["google_campaign_id"] == "20000000000"
    assert d.attribution["google_creative_id"] == "30000000000"
    # the shared secret proving the sender is Google is never stored
    assert "the-shared-secret" not in json.dumps(d.model_dump(mode="json"))
    assert mapped.provider_id == f"google:{GOOGLE_LEAD['lead_id']}"


def test_google_test_leads_are_not_deduped_on_their_fixed_id() -> None:
    assert map_payload({**GOOGLE_LEAD, "is_test": True}).provider_id is None


def test_google_first_and_last_name_columns() -> None:
    payload = {
        "lead_id": "x",
        "user_column_data": [
            {"string_value": "Ada", "column_id": "FIRST_NAME"},
            {"string_value": "Lovelace", "column_id": "LAST_NAME"},
        ],
    }
    assert map_payload(payload).details.name == "Ada Lovelace"


def test_hubspot_form_submission() -> None:
    d = map_payload(HUBSPOT_SUBMISSION).details
    assert (d.name, d.email, d.phone, d.title) == (
        "Jeff Example",
        "example@example.com",
        "+44 20 7946 0958",
        "Buyer",
    )
    assert d.custom_fields["hsPersona"] == "persona_1"
    assert d.display_names["hsPersona"] == "hs_persona"
    assert d.attribution["hubspot_utk"] == "ee6ec0be6a1c03d3f3d4b1e6ac6c0bc9"
    assert d.attribution["page_url"] == "https://www.example.com/page"
    assert d.custom_fields["pageName"] == "Example page"
    assert d.consent["consent"]["consentToProcess"] is True


def test_hubspot_values_and_properties() -> None:
    values = map_payload(HUBSPOT_VALUES)
    assert (values.details.email, values.details.company) == ("jane@example.com", "Example Inc")
    assert values.details.description == "Call me back"
    assert values.details.attribution["page_url"] == "https://www.example.com/contact"
    assert values.provider_id == f"hubspot:{HUBSPOT_VALUES['conversionId']}"
    contact = map_payload(HUBSPOT_CONTACT).details
    assert (contact.name, contact.email, contact.company) == (
        "Codey Huang",
        "codey@hubspot.test",
        "HubSpot",
    )
    assert contact.custom_fields == {"lifecyclestage": "lead"}
    assert contact.attribution == {"hubspot_contact_id": "3234574", "hubspot_portal_id": "62515"}


def test_typeform_response() -> None:
    mapped = map_payload(TYPEFORM)
    d = mapped.details
    assert d.email == "laura@example.com"  # by the answer's type
    assert d.phone == "+34612345678"
    assert d.name == "Laura Diaz"  # by the questions' titles: the refs are UUIDs
    assert d.custom_fields["readableRefLongText"].startswith("It's cold")
    assert d.display_names["readableRefLongText"].startswith("What's it like")
    assert d.custom_fields["readableRefPictureChoice"] == ["London", "Sydney"]
    assert d.custom_fields["readableRefDropdown"] == "Barcelona"
    assert d.display_names["readableRefDropdown"] == "Which city?"
    assert d.custom_fields["agree"] is True
    assert d.custom_fields["userId"] == "abc123456"  # a hidden field
    assert d.custom_fields["score"] == 9
    assert d.attribution["utm_source"] == "newsletter"
    assert d.attribution["typeform_form_id"] == "lT4Z3j"
    assert d.attribution["typeform_token"] == "a3a12ec67a1365927098a606107fac15"
    assert d.attribution["typeform_event_id"] == "LtWXD3crgy"
    assert d.custom_fields["submittedAt"] == "2018-01-18T18:17:02Z"
    assert not any("definition" in k for k in d.custom_fields)
    assert mapped.provider_id == "typeform:a3a12ec67a1365927098a606107fac15"


def test_unbounce_form_post() -> None:
    d = map_payload(UNBOUNCE_FORM).details
    assert (d.name, d.email, d.phone) == ("Sam Smith", "test@test.com", "604-555-0199")
    assert d.custom_fields["budget"] == "$5k"
    assert d.custom_fields["services"] == ["design", "hosting"]
    assert d.custom_fields["ipAddress"] == "1.1.1.1"
    assert d.attribution["unbounce_page_id"] == "a2838d98-4cf4-11df-a3fd-00163e372d58"
    assert d.attribution["unbounce_variant"] == "a"
    assert d.attribution["page_url"] == "http://my-landing-page.ca/"
    assert not any("xml" in k.lower() for k in d.custom_fields)


def test_unbounce_with_data_json_already_parsed() -> None:
    parsed = {**UNBOUNCE_FORM, "data.json": UNBOUNCE_DATA}
    assert map_payload(parsed).details.email == "test@test.com"


def test_gravity_forms_entry_without_definition() -> None:
    d = map_payload(GRAVITY_ENTRY).details
    assert d.name == "Ann Lee"  # 1.3 and 1.6 of a name field
    assert d.email == "ann@example.com"
    assert d.phone == "(415) 555-2671"
    assert d.custom_fields["field4"] == "Blue"
    assert d.display_names["field4"] == "4"
    assert d.custom_fields["field5_3"] == "Springfield"  # an address: not a name
    assert d.attribution["gravity_forms_entry_id"] == "42"
    assert d.attribution["gravity_forms_form_id"] == "3"
    assert d.attribution["page_url"] == "https://example.com/contact/"
    assert "isStarred" not in d.custom_fields and "currency" not in d.custom_fields


def test_gravity_forms_guesses_only_plain_emails_and_phone_numbers() -> None:
    entry = {"id": "1", "form_id": "2", "date_created": "x", "ip": "y"}
    d = map_payload({**entry, "1": "2024-03-01", "2": "12", "3": "+44 20 7946 0958"}).details
    assert d.phone == "+44 20 7946 0958"
    assert (d.custom_fields["field1"], d.custom_fields["field2"]) == ("2024-03-01", "12")


def test_gravity_forms_entry_with_definition() -> None:
    d = map_payload(GRAVITY_WITH_FORM).details
    assert (d.name, d.email, d.phone) == ("Bo Chen", "bo@example.com", "(415) 555-2672")
    assert (d.company, d.description) == ("Chen Ltd", "Please call")
    assert d.custom_fields["favouriteColour"] == "Green"
    assert d.display_names["favouriteColour"] == "Favourite colour"


def test_gravity_forms_labelled_fields() -> None:
    labelled = {
        "form_id": "3",
        "date_created": "2024-03-01 10:15:00",
        "source_url": "https://example.com/",
        "Name (First)": "Cy",
        "Name (Last)": "Twombly",
        "Email": "cy@example.com",
    }
    mapped = map_payload(labelled)
    assert mapped.format is SourceFormat.GRAVITY_FORMS
    assert (mapped.details.name, mapped.details.email) == ("Cy Twombly", "cy@example.com")


def test_zapier_flat_post() -> None:
    d = map_payload(ZAPIER).details
    assert (d.name, d.email, d.phone) == ("Mia Wong", "mia@wong.test", "+1 212 555 0100")
    assert (d.company, d.title) == ("Wong Partners", "COO")
    assert d.custom_fields["leadSource"] == "Zapier"
    assert d.display_names["leadSource"] == "Lead Source"
    assert d.custom_fields["contactAddressCity"] == "New York"
    assert d.attribution == {"utm_campaign": "spring"}


def test_make_nested_post() -> None:
    d = map_payload(MAKE).details
    assert (d.name, d.email, d.phone) == ("Leo Ruiz", "leo@ruiz.test", "+34 600 000 000")
    assert d.company == "Ruiz SA"  # `company.name` is the company, not the person
    assert d.description == "From the expo"
    assert d.tags == ("expo", "2024")
    # a form's or an owner's name and email are not the lead's
    assert d.custom_fields["formName"] == "Expo scanner"
    assert d.custom_fields["ownerEmail"] == "sales@us.test"
    assert d.custom_fields["leadCompanySize"] == "11-50"
    assert d.display_names["leadCompanySize"] == "lead.company.size"


# ---- synonyms, flattening, display names ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("full_name", "name"),
        ("FullName", "name"),
        ("Your Name", "name"),
        ("your-name", "name"),
        ("E-mail", "email"),
        ("email_address", "email"),
        ("Mail", "email"),
        ("phone1", "phone"),
        ("Phone Number", "phone"),
        ("mobile_phone", "phone"),
        ("Cell", "phone"),
        ("tel", "phone"),
        ("job_title", "title"),
        ("JobTitle", "title"),
        ("Position", "title"),
        ("company_name", "company"),
        ("Organization", "company"),
        ("organisation", "company"),
        ("Business", "company"),
        ("comments", "description"),
        ("Message", "description"),
        ("What is your email?", "email"),
        ("Phone (optional)", "phone"),
    ],
)
def test_synonyms(key: str, field: str) -> None:
    d = map_payload({key: "value@example.test"}).details
    assert getattr(d, field) == "value@example.test", key
    assert d.custom_fields == {}


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        ({"first_name": "A", "last_name": "B"}, "A B"),
        ({"firstname": "A", "lastname": "B"}, "A B"),
        ({"First Name": "A", "Surname": "B"}, "A B"),
        ({"fname": "A"}, "A"),
        ({"lastname": "B"}, "B"),
        ({"name": {"first": "A", "last": "B"}}, "A B"),
    ],
)
def test_name_from_parts(payload: dict[str, Any], name: str) -> None:
    assert map_payload(payload).details.name == name


def test_a_full_name_wins_and_the_parts_are_kept() -> None:
    d = map_payload({"first_name": "A", "last_name": "B", "full_name": "A. B."}).details
    assert d.name == "A. B."
    assert d.custom_fields == {"firstName": "A", "lastName": "B"}


def test_nested_objects_flatten_to_dot_keys_with_display_names() -> None:
    d = map_payload(
        {
            "contact": {"first_name": "Ann", "email": "ann@x.test", "address": {"zip": "94110"}},
            "Roof Type": "flat",
            "extras": {"pets": 2, "garden": True, "rooms": [1, 2]},
        }
    ).details
    assert (d.name, d.email) == ("Ann", "ann@x.test")
    assert d.custom_fields == {
        "contactAddressZip": "94110",
        "roofType": "flat",
        "extrasPets": 2,
        "extrasGarden": True,
        "extrasRooms": [1, 2],
    }
    assert d.display_names["contactAddressZip"] == "contact.address.zip"
    assert d.display_names["roofType"] == "Roof Type"


def test_value_wrappers_are_unwrapped() -> None:
    d = map_payload(
        {
            "data": {
                "name": {"id": "x1", "name": "Full Name", "value": "Jo Doe", "type": "shortText"},
                "budget": {"id": "x2", "name": "Budget", "value": "$9k", "type": "shortText"},
            }
        }
    ).details
    assert d.name == "Jo Doe"
    assert d.custom_fields == {"dataBudget": "$9k"}
    assert d.display_names == {"dataBudget": "Budget"}


def test_attribution_and_click_ids() -> None:
    d = map_payload(
        {
            "name": "A",
            "utm_source": "google",
            "UTM Medium": "cpc",
            "utm": {"campaign": "spring", "content": "banner"},
            "gclid": "g1",
            "fbclid": "f1",
            "msclkid": "m1",
            "tracking": {"ttclid": "t1"},
            "ad_id": "42",
            "referrer": "https://ref.test/",
        }
    ).details
    assert d.attribution == {
        "utm_source": "google",
        "utm_medium": "cpc",
        "utm_campaign": "spring",
        "utm_content": "banner",
        "gclid": "g1",
        "fbclid": "f1",
        "msclkid": "m1",
        "ttclid": "t1",
        "ad_id": "42",
        "referrer": "https://ref.test/",
    }
    assert d.custom_fields == {}


def test_our_own_wire_shape_passes_through() -> None:
    d = map_payload(
        {
            "name": "A",
            "customFields": {"roofType": "flat", "_displayNames": {"roofType": "Roof type"}},
            "attribution": {"utm_source": "x"},
            "tags": "a, b",
        }
    ).details
    assert d.custom_fields == {"roofType": "flat"}
    assert d.display_names == {"roofType": "Roof type"}
    assert d.attribution == {"utm_source": "x"}
    assert d.tags == ("a", "b")


def test_colliding_custom_keys_are_kept_apart() -> None:
    d = map_payload({"name": "A", "roof type": "flat", "roof_type": "tiled"}).details
    assert d.custom_fields == {"roofType": "flat", "roofType2": "tiled"}
    assert d.display_names == {"roofType": "roof type", "roofType2": "roof_type"}


def test_empty_values_are_dropped_and_numbers_become_text() -> None:
    d = map_payload({"name": "", "email": None, "phone": 4155552671, "note": "", "x": []}).details
    assert d.name is None and d.email is None
    assert d.phone == "4155552671"
    assert d.custom_fields == {}


def test_control_characters_are_cleaned() -> None:
    d = map_payload({"name": "An\x00n\x07", "Roof\x00 Type": "fl\x01at"}).details
    assert d.name == "Ann"
    assert d.custom_fields == {"roofType": "flat"}
    assert d.display_names == {"roofType": "Roof Type"}


def test_the_lead_limits_still_apply() -> None:
    with pytest.raises(ValidationError):
        map_payload({"tags": [f"t{i}" for i in range(150)]})


# ---- per-webhook mapping and pinned formats -------------------------------------------------


def test_field_mapping_wins_over_detection() -> None:
    payload = {"email": "personal@x.test", "Work address": "work@x.test", "contact": {"alt": "555"}}
    d = map_payload(
        payload, field_mapping={"Work address": "email", "contact.alt": "phone"}
    ).details
    assert d.email == "work@x.test"
    assert d.phone == "555"
    assert d.custom_fields == {"email": "personal@x.test"}


def test_field_mapping_is_case_and_separator_insensitive() -> None:
    d = map_payload({"Lead-Owner": "Zed"}, field_mapping={"lead_owner": "name"}).details
    assert d.name == "Zed"


def test_field_mapping_reaches_provider_fields_by_any_of_their_names() -> None:
    google = map_payload(GOOGLE_LEAD, field_mapping={"What is your budget?": "description"})
    assert google.details.description == "$10k"
    typeform = map_payload(TYPEFORM, field_mapping={"readable_ref_dropdown": "company"})
    assert typeform.details.company == "Barcelona"
    meta = map_payload(META_LEAD, field_mapping={"selected_dealer": "company"})
    assert meta.details.company == "99213450"
    gravity = map_payload(GRAVITY_ENTRY, field_mapping={"4": "title"})
    assert gravity.details.title == "Blue"


def test_pinned_format_is_used_and_checked() -> None:
    pinned = map_payload(TYPEFORM, source_format=SourceFormat.GENERIC)
    assert pinned.format is SourceFormat.GENERIC
    assert pinned.details.email is None  # read as plain keys, the answers are just a list
    hubspot = map_payload(
        {"properties": {"email": {"value": "p@x.test"}}}, source_format=SourceFormat.HUBSPOT
    )
    assert hubspot.format is SourceFormat.HUBSPOT
    assert hubspot.details.email == "p@x.test"
    with pytest.raises(UnusablePayload) as refused:
        map_payload({"email": "a@b.test"}, source_format=SourceFormat.TYPEFORM)
    assert refused.value.code == "format_mismatch"


def test_unbounce_with_broken_data_json() -> None:
    with pytest.raises(UnusablePayload) as refused:
        map_payload({"page_id": "p", "data.json": "{nope"})
    assert refused.value.code == "malformed_json"


def test_clean_field_mapping() -> None:
    assert clean_field_mapping({" Work Email ": "EMAIL", "a.b": "first_name"}) == {
        "Work Email": "email",
        "a.b": "firstName",
    }
    for bad in ({"x": "nonsense"}, {"": "email"}, {"x\x00": "email"}, {"x": 5}):
        with pytest.raises(InvalidFieldMapping):
            clean_field_mapping(bad)
    with pytest.raises(InvalidFieldMapping):
        clean_field_mapping({f"k{i}": "email" for i in range(201)})


def test_key_helpers() -> None:
    assert normalise_key("E-mail Address") == "emailaddress"
    assert camel_case("FULL_NAME") == "fullName"
    assert camel_case("roofType") == "roofType"
    assert camel_case("contact.first_name") == "contactFirstName"
    assert camel_case("Café Größe") == "caféGröße"
    assert camel_case("???") == ""


def test_a_mapping_can_target_a_custom_field_in_the_csv_syntax() -> None:
    cleaned = clean_field_mapping(
        {"Roof": "custom:roofType", "notes": "customFields.siteNotes", "mail": "Email"}
    )
    assert cleaned == {
        "Roof": "customFields.roofType",
        "notes": "customFields.siteNotes",
        "mail": "email",
    }
    mapped = map_payload(
        {"Roof": "flat", "notes": "gate code 12", "mail": "a@b.example", "email": "x@y.example"},
        field_mapping=cleaned,
    )
    details = mapped.details
    assert details.email == "a@b.example"
    assert details.custom_fields["roofType"] == "flat"
    # `notes` would otherwise be the description; the mapping sends it to a custom field.
    assert details.custom_fields["siteNotes"] == "gate code 12" and details.description is None
    assert details.display_names["roofType"] == "Roof"
    for bad in ("custom:", "custom:1abc", "customFields.has space", "colour"):
        with pytest.raises(InvalidFieldMapping):
            clean_field_mapping({"x": bad})


def test_tags_dedupe_case_insensitively_keeping_the_first_spelling() -> None:
    assert LeadDetails(tags=("Hot", "hot", " HOT ", "vip")).tags == ("Hot", "vip")
    assert merge_tags(["Hot", "vip"], None, ("HOT", "New"), ("VIP",)) == ["Hot", "New"]
    assert merge_tags(["Hot"], ("hot", "Cold"), (), ()) == ["hot", "Cold"]


def test_phone_search_keys() -> None:
    assert phone_search_keys("(555) 555-2671", "US") == ["5555552671", "15555552671"]
    assert phone_search_keys("030 1234567", "DE") == ["0301234567", "49301234567"]
    assert phone_search_keys("Ann", "US") == [] and phone_search_keys("12", "US") == []
    assert phone_digits("+12015552671", "(201) 555-2671") == "12015552671 2015552671"
