"""Lead list and board filters: strict query strings, bounded `after`, multi-value and new
filters, what the lead JSON shows, the trash, contacts, tags and edits (issue 14: 4, 5, 12,
15, 16)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from domain.leads import Lead
from gateways.bootstrap import Engine
from tests.conftest import make_user
from tests.gateways.http.test_partners import make_partner
from tests.gateways.http.test_views import add


async def leads(client: httpx.AsyncClient, ws: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/leads", params=params, headers=ws["h"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def names(page: dict[str, Any]) -> set[str]:
    return {item["name"] for item in page["items"]}


async def test_control_characters_in_any_filter_are_a_422_naming_it(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    board = f"/v1/lead-pipelines/{ws['pipeline']['id']}/board"
    lead = await add(client, ws, name="Ann")
    cases = [
        ("/v1/leads", name) for name in ("search", "tag", "source", "status", "assignedTo")
    ] + [
        (board, "search"),
        (board, "tag"),
        (board, "source"),
        (board, "assignedTo"),
        ("/v1/submissions", "status"),
        (f"/v1/leads/{lead['id']}/timeline", "include"),
    ]
    for url, name in cases:
        for bad in ("\x00", "a\x00b", "x\x1by", "\x7f"):
            response = await client.get(url, params={name: bad}, headers=ws["h"])
            assert response.status_code == 422, (url, name, response.text)
            error = response.json()["error"]
            assert name in error["message"]
            assert error["details"][0]["location"] == ["query", name]
    too_long = await client.get("/v1/leads", params={"tag": "t" * 2000}, headers=ws["h"])
    assert too_long.status_code == 422 and "tag" in too_long.json()["error"]["message"]


async def test_after_no_commit_can_reach_is_a_422_at_once(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    lead = await add(client, ws, name="Ann")
    urls = [
        "/v1/leads",
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        f"/v1/leads/{lead['id']}/timeline",
        f"/v1/leads/{lead['id']}/submissions",
        "/v1/submissions",
        "/v1/deliveries",
        "/v1/contacts",
    ]
    for url in urls:
        for after in ("303215538218500292608", str(2**63), "-1"):
            response = await client.get(url, params={"after": after}, headers=ws["h"])
            assert response.status_code == 422, (url, after, response.text)
            assert response.json()["error"]["details"][0]["location"] == ["query", "after"]
        highest = await client.get(url, params={"after": str(2**63 - 1 - 10**9)}, headers=ws["h"])
        assert highest.status_code == 503 or url != "/v1/leads", highest.text
        if url == "/v1/leads":
            assert highest.json()["error"]["code"] == "view_behind"
            break


async def test_unknown_query_parameters_are_a_400_naming_them(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    await add(client, ws, name="Ann")
    for url in ("/v1/leads", "/v1/submissions", "/v1/contacts", "/v1/deliveries"):
        response = await client.get(
            url, params={"createdAfterr": "x", "colour": "red"}, headers=ws["h"]
        )
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["code"] == "unknown_parameter"
        assert error["details"]["unknown"] == ["createdAfterr", "colour"]
        assert "createdAfterr" in error["message"] and "colour" in error["message"]
    board = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board", params={"q": "x"}, headers=ws["h"]
    )
    assert board.status_code == 400


async def test_repeated_filters_or_within_and_across(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    a = await add(client, ws, name="A", tags=["Hot"])
    b = await add(client, ws, name="B", tags=["cold"])
    c = await add(client, ws, name="C", tags=["hot", "vip"])
    await add(client, ws, name="D")
    moved = await client.patch(
        f"/v1/leads/{b['id']}/status", json={"status": "new"}, headers=ws["h"]
    )
    assert moved.status_code == 200, moved.text
    user = await make_user(client, ws["h"], "Sam")
    given = await client.patch(
        f"/v1/leads/{c['id']}/assign", json={"assignedTo": user["id"]}, headers=ws["h"]
    )
    after = given.json()["position"]

    both = await leads(client, ws, tag=["HOT", "cold"], after=after)
    assert names(both) == {"A", "B", "C"}
    statuses = await leads(client, ws, status=["new", "Backlog"])
    assert names(statuses) == {"A", "B", "C", "D"}
    assert names(await leads(client, ws, status="new")) == {"B"}
    assert names(await leads(client, ws, tag="hot", status="backlog")) == {"A", "C"}
    assert names(await leads(client, ws, assignedTo="none")) == {"A", "B", "D"}
    assert names(await leads(client, ws, assignedTo=[user["id"], "none"], tag="vip")) == {"C"}
    assert names(await leads(client, ws, assignedTo=user["id"])) == {"C"}
    assert a["id"]


async def test_created_range_filters_and_unreadable_dates(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    first = await add(client, ws, name="Early")
    page = await leads(client, ws, after=first["position"])
    created = datetime.fromisoformat(page["items"][0]["createdAt"])
    last = await add(client, ws, name="Late")
    await leads(client, ws, after=last["position"])
    cut = (created + timedelta(microseconds=1)).isoformat()
    assert names(await leads(client, ws, createdAfter=cut)) == {"Late"}
    assert names(await leads(client, ws, createdBefore=cut)) == {"Early"}
    naive = (created - timedelta(hours=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert names(await leads(client, ws, createdAfter=naive)) == {"Early", "Late"}
    assert names(await leads(client, ws, createdAfter="2000-01-01")) == {"Early", "Late"}
    for bad in ("yesterday", "2024-13-45"):
        response = await client.get("/v1/leads", params={"createdAfter": bad}, headers=ws["h"])
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["location"] == ["query", "createdAfter"]


async def test_a_formatted_phone_number_finds_the_lead(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    await add(client, ws, name="Ann", phone="+1 201 555 2671")
    last = await add(client, ws, name="Bob", phone="2015550000")
    await leads(client, ws, after=last["position"])
    for search in ("555-2671", "(201) 555-2671", "201.555.2671", "+1 (201) 555 2671", "5552671"):
        assert names(await leads(client, ws, search=search)) == {"Ann"}, search
    assert names(await leads(client, ws, search="201 555")) == {"Ann", "Bob"}
    assert names(await leads(client, ws, search="Ann")) == {"Ann"}
    board = await client.get(
        f"/v1/lead-pipelines/{ws['pipeline']['id']}/board",
        params={"search": "(201) 555-2671"},
        headers=ws["h"],
    )
    assert [c["name"] for c in board.json()["columns"][0]["cards"]] == ["Ann"]


async def test_referral_returns_type_and_conversion_show_and_filter(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    partner = await make_partner(client, ws, "Acme Partners")
    returned = await add(client, ws, name="Returned", email="r@x.test")
    referred = await add(client, ws, name="Referred", email="f@x.test")
    converted = await add(client, ws, name="Converted", email="c@x.test")
    await add(client, ws, name="Plain")
    for lead in (returned, referred):
        done = await client.post(
            f"/v1/leads/{lead['id']}/refer", json={"partnerId": partner["id"]}, headers=ws["h"]
        )
        assert done.status_code == 200, done.text
    started = await client.post(
        f"/v1/leads/{returned['id']}/returns",
        json={"reason": "wrong area", "partnerId": partner["id"]},
        headers=ws["h"],
    )
    assert started.status_code == 200, started.text
    solar = await client.post("/v1/lead-types", json={"name": "Solar"}, headers=ws["h"])
    assert solar.status_code == 201, solar.text
    typed = await client.patch(
        f"/v1/leads/{referred['id']}/lead-type",
        json={"leadTypeId": solar.json()["id"]},
        headers=ws["h"],
    )
    assert typed.status_code == 200, typed.text
    conversion = await client.post(f"/v1/leads/{converted['id']}/convert", headers=ws["h"])
    after = conversion.json()["position"]

    one = (await client.get(f"/v1/leads/{returned['id']}", headers=ws["h"])).json()
    assert one["referredTo"] == partner["id"] and one["referredAt"]
    assert one["returnStatus"] == "open"
    listed = {i["name"]: i for i in (await leads(client, ws, after=after))["items"]}
    assert listed["Returned"]["returnStatus"] == "open"
    assert listed["Referred"]["referredTo"] == partner["id"]
    assert listed["Referred"]["returnStatus"] is None
    assert listed["Converted"]["contactId"] == conversion.json()["contactId"]
    assert listed["Converted"]["convertedAt"] and listed["Plain"]["convertedAt"] is None
    assert listed["Referred"]["leadTypeId"] == solar.json()["id"]
    assert listed["Plain"]["leadTypeId"] == one["leadTypeId"]

    assert names(await leads(client, ws, returnOpen="true")) == {"Returned"}
    assert names(await leads(client, ws, returnOpen="false")) == {"Referred", "Converted", "Plain"}
    assert names(await leads(client, ws, referred="true")) == {"Returned", "Referred"}
    assert names(await leads(client, ws, partnerId=partner["id"])) == {"Returned", "Referred"}
    assert names(await leads(client, ws, referred="false")) == {"Converted", "Plain"}
    assert names(await leads(client, ws, converted="true")) == {"Converted"}
    assert names(await leads(client, ws, leadTypeId=solar.json()["id"])) == {"Referred"}

    declined = await client.post(
        f"/v1/leads/{returned['id']}/returns/decline", json={}, headers=ws["h"]
    )
    at = declined.json()["position"]
    assert names(await leads(client, ws, returnStatus="declined", after=at)) == {"Returned"}
    assert names(await leads(client, ws, returnOpen="true")) == set()
    again = (await client.get(f"/v1/leads/{returned['id']}", headers=ws["h"])).json()
    assert again["returnStatus"] == "declined"


async def test_trash_lists_deleted_leads_newest_deleted_first(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    made = [await add(client, ws, name=f"L{i}") for i in range(4)]
    position = 0
    for lead in (made[2], made[0], made[3]):
        position = (await client.delete(f"/v1/leads/{lead['id']}", headers=ws["h"])).json()[
            "position"
        ]
    restored = await client.post(f"/v1/leads/{made[3]['id']}/restore", headers=ws["h"])
    trash = await leads(client, ws, deleted="true", after=restored.json()["position"])
    assert [i["name"] for i in trash["items"]] == ["L0", "L2"] and trash["total"] == 2
    assert all(i["deleted"] and i["deletedAt"] for i in trash["items"])
    assert names(await leads(client, ws)) == {"L1", "L3"}
    assert position


async def test_contacts_are_listed_with_paging(
    client: httpx.AsyncClient, ws: dict[str, Any], other: dict[str, Any]
) -> None:
    contacts = []
    for i in range(3):
        lead = await add(client, ws, name=f"P{i}", email=f"p{i}@x.test")
        done = await client.post(f"/v1/leads/{lead['id']}/convert", headers=ws["h"])
        contacts.append(done.json())
    twin = await add(client, ws, name="P0 again", email="p0@x.test")
    linked = await client.post(f"/v1/leads/{twin['id']}/convert", headers=ws["h"])
    assert linked.json()["linkedExisting"]
    after = linked.json()["position"]
    first = await client.get(
        "/v1/contacts", params={"limit": 2, "after": after}, headers=ws["viewer"]
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["total"] == 3 and len(body["items"]) == 2
    assert [c["name"] for c in body["items"]] == ["P0", "P2"]
    assert set(body["items"][0]["leadIds"]) == {contacts[0]["leadId"], twin["id"]}
    second = (
        await client.get("/v1/contacts", params={"limit": 2, "page": 2}, headers=ws["h"])
    ).json()
    assert [c["name"] for c in second["items"]] == ["P1"]
    assert (await client.get("/v1/contacts", headers=other["h"])).json()["total"] == 0


async def test_tags_are_case_insensitive_keeping_the_first_spelling(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    lead = await add(client, ws, name="Ann", tags=["Hot", "hot", "HOT", "vip"])
    url = f"/v1/leads/{lead['id']}"
    assert (await client.get(url, headers=ws["h"])).json()["tags"] == ["Hot", "vip"]
    same = await client.patch(url, json={"addTags": ["hOT"]}, headers=ws["h"])
    assert same.json()["changed"] is False and same.json()["tags"] == ["Hot", "vip"]
    documented = await client.patch(
        url, json={"tagsAdd": ["Cold"], "tagsRemove": ["VIP"]}, headers=ws["h"]
    )
    assert documented.status_code == 200, documented.text
    assert documented.json()["tags"] == ["Hot", "Cold"]
    both = await client.patch(url, json={"tagsAdd": ["x"], "addTags": ["y"]}, headers=ws["h"])
    assert both.status_code == 422
    other = await add(client, ws, name="Bob", tags=["HOT"])
    bulk = await client.post(
        "/v1/leads/bulk-action",
        json={"action": "tag", "leadIds": [other["id"]], "tagsRemove": ["hot"]},
        headers=ws["h"],
    )
    assert bulk.status_code == 200 and bulk.json()["succeeded"] == 1, bulk.text
    after = bulk.json()["position"]
    assert names(await leads(client, ws, tag="COLD", after=after)) == {"Ann"}
    assert names(await leads(client, ws, tag="hot")) == {"Ann"}


async def test_editing_email_or_phone_recomputes_validity(
    client: httpx.AsyncClient, ws: dict[str, Any], engine: Engine
) -> None:
    lead = await add(client, ws, name="Ann", email="not-an-email", phone="12")
    url = f"/v1/leads/{lead['id']}"
    before = (await client.get(url, headers=ws["h"])).json()
    assert before["emailValid"] is False and before["phoneValid"] is False
    fixed = await client.patch(
        url, json={"email": "ann@example.com", "phone": "+1 201 555 2671"}, headers=ws["h"]
    )
    assert fixed.json()["emailValid"] is True and fixed.json()["phoneValid"] is True
    broken = await client.patch(url, json={"email": "nope@"}, headers=ws["h"])
    assert broken.json()["emailValid"] is False and broken.json()["phoneValid"] is True
    cleared = await client.patch(url, json={"phone": None}, headers=ws["h"])
    assert cleared.json()["phoneValid"] is None
    updates = [
        logged.event
        for logged in await engine.store.read(0, 1000, ["lead.updated"])
        if logged.event.originator_id == lead["id"] or str(logged.event.originator_id) == lead["id"]
    ]
    assert all(isinstance(e, Lead.Updated) for e in updates)
    assert [(e.email_valid, e.phone_valid) for e in updates] == [  # type: ignore[attr-defined]
        (True, True),
        (False, True),
        (False, None),
    ]
    reloaded = await engine.store.load(Lead, updates[0].originator_id)
    assert reloaded is not None and reloaded.email_valid is False


async def test_patch_lead_has_a_request_schema(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/leads/{lead_id}"]["patch"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert {"email", "phone", "tags", "addTags", "removeTags", "customFields"} <= set(
        schema["properties"]
    )
    params = {p["name"] for p in spec["paths"]["/v1/leads"]["get"]["parameters"]}
    assert {"createdAfter", "returnOpen", "partnerId", "deleted", "leadTypeId"} <= params
    assert "/v1/contacts" in spec["paths"]


async def test_renaming_one_stage_keeps_every_colour_and_type(
    client: httpx.AsyncClient, ws: dict[str, Any]
) -> None:
    pipeline = ws["pipeline"]
    stages = [{"id": s["id"], "name": s["name"]} for s in pipeline["stages"]]
    stages[1]["name"] = "Called"
    renamed = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}", json={"stages": stages}, headers=ws["h"]
    )
    assert renamed.status_code == 200, renamed.text
    assert [(s["name"], s["color"], s["type"]) for s in renamed.json()["stages"]] == [
        (s["name"] if i != 1 else "Called", s["color"], s["type"])
        for i, s in enumerate(pipeline["stages"])
    ]
    added = await client.patch(
        f"/v1/lead-pipelines/{pipeline['id']}",
        json={"stages": [*stages, {"name": "Later"}]},
        headers=ws["h"],
    )
    assert added.json()["stages"][-1]["color"] == "#64748B"
    assert added.json()["stages"][-1]["type"] == "open"


@pytest.mark.parametrize(
    ("url_of", "body", "resource", "field"),
    [
        (
            lambda ws, form, lead: f"/v1/lead-forms/{form}",
            {"redirectUrl": "javascript:x"},
            "form",
            "redirectUrl",
        ),
        (lambda ws, form, lead: f"/v1/leads/{lead}", {"customFields": "x"}, "lead", "customFields"),
    ],
)
async def test_validation_errors_name_the_resource_and_field(
    client: httpx.AsyncClient,
    ws: dict[str, Any],
    url_of: Any,
    body: dict[str, Any],
    resource: str,
    field: str,
) -> None:
    form = await client.post(
        "/v1/lead-forms",
        json={"name": "Quote", "fields": [{"key": "email", "required": True}]},
        headers=ws["h"],
    )
    assert form.status_code == 201, form.text
    lead = await add(client, ws, name="Ann")
    response = await client.patch(
        url_of(ws, form.json()["id"], lead["id"]), json=body, headers=ws["h"]
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"].startswith(f"the {resource} is not valid")
    assert field in error["message"]
    assert any(field in d["location"] for d in error["details"])
