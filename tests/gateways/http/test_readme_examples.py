"""The request bodies the README gives, posted exactly as written there: hosted forms, lead
types with one action of each type, bulk actions and statuses (issue 14, item 16).

The README shows these dicts verbatim (as indented JSON). The ids in them are placeholders:
the test swaps each for a real id of the test's workspace before posting.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import make_campaign, make_user
from tests.gateways.http.test_partners import make_partner
from tests.gateways.http.test_views import add

# Placeholder ids the examples use, as the README shows them.
USER_ID = "0c4f6e9a-1b2d-4e3f-8a5b-6c7d8e9f0a1b"
GROUP_ID = "1d5a7fab-2c3e-4f40-9b6c-7d8e9fa0b1c2"
PARTNER_ID = "2e6b80bc-3d4f-4051-8c7d-8e9fa0b1c2d3"
LEAD_TYPE_ID = "3f7c91cd-4e50-4162-9d8e-9fa0b1c2d3e4"
STAGE_ID = "4a8da2de-5f61-4273-8e9f-a0b1c2d3e4f5"
PIPELINE_ID = "5b9eb3ef-6a72-4384-9fa0-b1c2d3e4f5a6"
LEAD_1 = "6cafc4f0-7b83-4495-a0b1-c2d3e4f5a6b7"
LEAD_2 = "7db0d501-8c94-45a6-b1c2-d3e4f5a6b7c8"
ACTION_ID = "8ec1e612-9da5-46b7-82d3-e4f5a6b7c8d9"
# One of the workspace's campaigns (`POST /v1/campaigns` first): the form's leads are sent to
# it, and checked for duplicates within it.
CAMPAIGN_ID = "9fd2f723-aeb6-47c8-93e4-f5a6b7c8d9ea"

# ---- POST /v1/lead-forms, PATCH /v1/lead-forms/{id} -----------------------------------------

CREATE_FORM: dict[str, Any] = {
    "name": "Get a roofing quote",
    "fields": [
        {"key": "name", "required": True},
        {"key": "email", "label": "Work email", "required": True},
        {"key": "phone"},
        {"key": "company"},
        {"key": "title"},
        {"key": "message", "label": "What do you need?"},
        {"key": "roofType", "label": "Roof type", "required": True},
        {"key": "roofArea", "label": "Roof area (m²)", "type": "number"},
        {"key": "startDate", "label": "Preferred start", "type": "date"},
        {"key": "details", "label": "Anything else", "type": "textarea"},
        {"key": "postcode", "label": "Postcode", "autocomplete": "postal-code"},
    ],
    "thankYouMessage": "Thanks! We will call you within one working day.",
    "redirectUrl": None,
    "campaignId": CAMPAIGN_ID,
    "submitLabel": "Get my quote",
    "active": True,
}

UPDATE_FORM: dict[str, Any] = {
    "fields": [
        {"key": "name", "required": True},
        {"key": "email", "required": True},
        {"key": "message"},
    ],
    "redirectUrl": "https://www.example.com/thank-you",
    "submitLabel": "Send",
}

# ---- POST /v1/lead-types, PATCH /v1/lead-types/{id} -----------------------------------------

PARTNER_LEAD_TYPE: dict[str, Any] = {
    "name": "Partner leads",
    "referral": {"method": "immediately", "partnerId": PARTNER_ID},
    "default": False,
}

CREATE_LEAD_TYPE: dict[str, Any] = {
    "name": "Roofing",
    "referral": {"method": "manually"},
    "default": True,
    "actions": [
        {
            "type": "assign_user",
            "name": "Share new leads among the sales team",
            "trigger": "received_not_duplicate",
            "mode": "round_robin",
            "groupId": GROUP_ID,
        },
        {
            "type": "change_status",
            "trigger": "user_changed",
            "status": "contacted",
            "conditions": [{"field": "assignedTo", "op": "exists"}],
        },
        {
            "type": "change_lead_type",
            "trigger": "received",
            "leadTypeId": LEAD_TYPE_ID,
            "conditions": [{"field": "source", "op": "in", "value": ["api", "webhook"]}],
        },
        {
            "type": "refer",
            "trigger": "qualified",
            "partnerId": PARTNER_ID,
            "conditions": [{"field": "customFields.roofType", "op": "eq", "value": "flat"}],
        },
        {
            "type": "webhook",
            "name": "Copy to the CRM",
            "trigger": "received",
            "url": "https://crm.example.com/hooks/leadlog",
            "format": "json",
            "timeoutSeconds": 10,
            "maxRetries": 5,
            "headers": {"X-Api-Key": "crm-key-123"},
            "conditions": [{"field": "isDuplicate", "op": "eq", "value": False}],
        },
        {
            "type": "contact_customer",
            "trigger": "received_not_duplicate",
            "subject": "We have your request, {name}",
            "body": "Hello {name},\n\nthank you for asking about {customFields.roofType}"
            " roofing. We will call you on {phone} soon.",
            "conditions": [{"field": "email", "op": "exists"}],
        },
        {
            "type": "contact_user",
            "trigger": "user_changed",
            "subject": "Lead #{requestId} is yours: {name}",
            "body": "{name} ({email}, {phone}) is now assigned to you. Status: {status}.",
        },
        {
            "type": "notify_user",
            "trigger": "return_started",
            "userId": USER_ID,
            "subject": "A partner returned {name}",
            "body": "Lead #{requestId} ({name}) was returned by its partner.",
            "enabled": False,
        },
    ],
}

UPDATE_LEAD_TYPE: dict[str, Any] = {
    "name": "Roofing (residential)",
    "referral": {"method": "never"},
    "actions": [
        {
            "id": ACTION_ID,
            "type": "webhook",
            "name": "Copy to the CRM",
            "trigger": "updated",
            "url": "https://crm.example.com/hooks/leadlog",
            "format": "form",
        },
        {
            "type": "change_status",
            "trigger": "received_duplicate",
            "status": "invalid",
            "conditions": [
                {"field": "tags", "op": "contains", "value": "spam"},
                {"field": "status", "op": "not_in", "value": ["qualified", "converted"]},
                {"field": "company", "op": "ne", "value": "Acme"},
                {"field": "phone", "op": "not_exists"},
            ],
        },
    ],
}

# ---- POST /v1/leads/bulk-action -----------------------------------------------------------

BULK_MOVE_STAGE: dict[str, Any] = {
    "action": "move_stage",
    "leadIds": [LEAD_1, LEAD_2],
    "stageId": STAGE_ID,
}
BULK_MOVE_PIPELINE: dict[str, Any] = {
    "action": "move_pipeline",
    "leadIds": [LEAD_1, LEAD_2],
    "pipelineId": PIPELINE_ID,
}
BULK_ASSIGN: dict[str, Any] = {
    "action": "assign",
    "leadIds": [LEAD_1, LEAD_2],
    "assignedTo": USER_ID,
}
BULK_UNASSIGN: dict[str, Any] = {
    "action": "assign",
    "leadIds": [LEAD_1, LEAD_2],
    "assignedTo": None,
}
BULK_TAG: dict[str, Any] = {
    "action": "tag",
    "leadIds": [LEAD_1, LEAD_2],
    "addTags": ["hot", "roofing"],
    "removeTags": ["cold"],
}
BULK_DELETE: dict[str, Any] = {"action": "delete", "leadIds": [LEAD_1, LEAD_2]}

# ---- PUT /v1/lead-statuses, PATCH /v1/leads/{id}/status -----------------------------------

STATUSES: dict[str, Any] = {
    "statuses": [
        {"name": "new"},
        {"name": "pending"},
        {"name": "backlog"},
        {"name": "abandoned"},
        {"name": "validated", "progress": "validated"},
        {"name": "invalid", "progress": "invalidated"},
        {"name": "called", "progress": "contacted"},
        {"name": "on hold"},
        {"name": "qualified", "progress": "qualified"},
        {"name": "won", "progress": "converted"},
        {"name": "lost", "progress": "closed"},
    ]
}
SET_STATUS: dict[str, Any] = {"status": "called", "reason": "left a voicemail"}


def filled(example: Any, ids: dict[str, str]) -> Any:
    """The example with each placeholder id swapped for a real one."""
    if isinstance(example, dict):
        return {k: filled(v, ids) for k, v in example.items()}
    if isinstance(example, list):
        return [filled(v, ids) for v in example]
    return ids.get(example, example) if isinstance(example, str) else example


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_form_examples(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    campaign = await make_campaign(client, ws["h"], "Roofing quotes")
    body = filled(CREATE_FORM, {CAMPAIGN_ID: campaign})
    created = ok(await client.post("/v1/lead-forms", json=body, headers=ws["h"]), 201)
    assert [f["key"] for f in created["fields"]] == [f["key"] for f in CREATE_FORM["fields"]]
    assert created["campaignId"] == campaign and created["submitLabel"] == "Get my quote"
    page = await client.get(created["url"])
    assert page.status_code == 200
    assert 'name="message"' in page.text and "<textarea" in page.text
    assert 'type="number"' in page.text and 'autocomplete="postal-code"' in page.text

    url = f"/v1/lead-forms/{created['id']}"
    updated = ok(await client.patch(url, json=UPDATE_FORM, headers=ws["h"]))
    assert [f["key"] for f in updated["fields"]] == ["name", "email", "message"]
    assert updated["redirectUrl"] == "https://www.example.com/thank-you"
    assert updated["thankYouMessage"] == CREATE_FORM["thankYouMessage"]  # left out: kept
    assert updated["campaignId"] == campaign


async def test_lead_type_examples(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    h = ws["h"]
    user = await make_user(client, h, "Uma")
    group = ok(
        await client.post(
            "/v1/user-groups", json={"name": "Sales", "memberIds": [user["id"]]}, headers=h
        ),
        201,
    )
    partner = await make_partner(client, ws, "Acme Roofing Partners")
    ids = {USER_ID: user["id"], GROUP_ID: group["id"], PARTNER_ID: partner["id"]}
    first = ok(
        await client.post("/v1/lead-types", json=filled(PARTNER_LEAD_TYPE, ids), headers=h), 201
    )
    assert first["referral"] == {"method": "immediately", "partnerId": partner["id"]}
    ids[LEAD_TYPE_ID] = first["id"]

    created = ok(
        await client.post("/v1/lead-types", json=filled(CREATE_LEAD_TYPE, ids), headers=h), 201
    )
    assert [a["type"] for a in created["actions"]] == [
        "assign_user",
        "change_status",
        "change_lead_type",
        "refer",
        "webhook",
        "contact_customer",
        "contact_user",
        "notify_user",
    ]
    webhook = created["actions"][4]
    assert list(created["secrets"]) == [webhook["id"]]
    assert created["secrets"][webhook["id"]].startswith("whsec_")
    assert webhook["headers"] == {"X-Api-Key": "crm-key-123"} and webhook["format"] == "json"
    assert created["actions"][7]["enabled"] is False
    listed = ok(await client.get("/v1/lead-types", headers=h))
    assert {t["name"]: t["default"] for t in listed["items"]} == {
        "Partner leads": False,
        "Roofing": True,
    }

    ids[ACTION_ID] = webhook["id"]
    updated = ok(
        await client.patch(
            f"/v1/lead-types/{created['id']}", json=filled(UPDATE_LEAD_TYPE, ids), headers=h
        )
    )
    assert updated["referral"] == {"method": "never", "partnerId": None}
    assert [a["type"] for a in updated["actions"]] == ["webhook", "change_status"]
    kept = updated["actions"][0]
    # The same id keeps its signing secret: no new one is issued.
    assert kept["id"] == webhook["id"] and kept["hasSecret"] and "secrets" not in updated
    assert len(updated["actions"][1]["conditions"]) == 4


async def test_bulk_action_examples(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    h = ws["h"]
    user = await make_user(client, h, "Uma")
    leads = [await add(client, ws, name="Ann", tags=["cold"]), await add(client, ws, name="Bo")]
    second = ok(
        await client.post(
            "/v1/lead-pipelines",
            json={"name": "Renewals", "stages": [{"name": "Due"}, {"name": "Renewed"}]},
            headers=h,
        ),
        201,
    )
    ids = {
        LEAD_1: leads[0]["id"],
        LEAD_2: leads[1]["id"],
        USER_ID: user["id"],
        STAGE_ID: ws["pipeline"]["stages"][2]["id"],
        PIPELINE_ID: second["id"],
    }
    for example in (
        BULK_MOVE_STAGE,
        BULK_ASSIGN,
        BULK_UNASSIGN,
        BULK_TAG,
        BULK_MOVE_PIPELINE,
        BULK_DELETE,
    ):
        body = ok(await client.post("/v1/leads/bulk-action", json=filled(example, ids), headers=h))
        assert body["action"] == example["action"]
        assert body["succeeded"] == 2 and body["failed"] == 0, body
        assert all(r["changed"] for r in body["results"]), (example, body)
    for lead in leads:
        gone = ok(await client.get(f"/v1/leads/{lead['id']}", headers=h))
        assert gone["deleted"] and gone["pipelineId"] == second["id"]
        assert gone["stageId"] == second["stages"][0]["id"]
        assert "hot" in gone["tags"] and "cold" not in gone["tags"]


async def test_status_examples(client: httpx.AsyncClient, ws: dict[str, Any]) -> None:
    h = ws["h"]
    replaced = ok(await client.put("/v1/lead-statuses", json=STATUSES, headers=h))
    assert [{k: v for k, v in s.items() if v is not None} for s in replaced["items"]] == (
        STATUSES["statuses"]
    )
    assert replaced["position"] > 0
    listed = ok(await client.get("/v1/lead-statuses", headers=h))
    assert [s["name"] for s in listed["items"]] == [s["name"] for s in STATUSES["statuses"]]
    lead = await add(client, ws, name="Ann")
    changed = ok(await client.patch(f"/v1/leads/{lead['id']}/status", json=SET_STATUS, headers=h))
    assert changed["status"] == "called" and "contacted" in changed["milestones"]
