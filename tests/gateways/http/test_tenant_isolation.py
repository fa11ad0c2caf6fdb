"""Every route of the OpenAPI, called by workspace B with workspace A's ids in the path, the
query and the body: B never sees A's data nor changes it, and nothing answers 5xx.

The routes come from `app.openapi()`, so a new route is covered without touching this file;
bodies are generated from each route's schema (every id-like field set to one of A's ids),
plus hand-made bodies for routes whose body the schema does not describe or whose ids sit
deeper. Each route is tried twice: with A's ids in the path too, and with B's own objects in
the path (so only the body and query reach across). B's token is its most powerful one (a
super admin) and, separately, a partner token of B's. Afterwards A's reads are compared with
those taken before, and no read of B's shows any of A's ids.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateways.bootstrap import Engine
from gateways.http.app import create_app
from tests.conftest import OPERATOR, bearer, make_user

pytestmark = pytest.mark.timeout(300)

PUBLIC = ("/webhooks/", "/forms/", "/healthz", "/metrics")


def marker(name: str) -> str:
    """A word only the workspace `name`'s data holds."""
    return f"{name.lower()}secretmarker"


class Receiver:
    """A webhook receiver answering 200, so A's deliveries settle before the run."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.I)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    receiver.server = await asyncio.start_server(receiver._serve, "127.0.0.1", 0)
    receiver.port = receiver.server.sockets[0].getsockname()[1]
    yield receiver
    receiver.server.close()


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code in (status, 200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def tenant(client: httpx.AsyncClient, name: str, hook: str) -> dict[str, Any]:
    """A workspace with one of everything; its ids by the names routes give them."""
    created = await ok(await client.post("/v1/workspaces", json={"name": name}, headers=OPERATOR))
    wid = created["id"]

    async def token(role: str, **extra: Any) -> dict[str, Any]:
        return await ok(
            await client.post(
                f"/v1/workspaces/{wid}/tokens", json={"role": role, **extra}, headers=OPERATOR
            )
        )

    admin = await token("super_admin")
    h = bearer(admin["token"])
    spare = await token("viewer")
    pipelines = await ok(await client.get("/v1/lead-pipelines", headers=h))
    pipeline = pipelines["items"][0]
    second = await ok(
        await client.post(
            "/v1/lead-pipelines",
            json={"name": "Second", "stages": [{"name": "One"}, {"name": "Two"}]},
            headers=h,
        )
    )
    user = await make_user(client, h, f"{name} user", f"{marker(name)}@users.example")
    group = await ok(
        await client.post(
            "/v1/user-groups", json={"name": "G", "memberIds": [user["id"]]}, headers=h
        )
    )
    partner = await ok(
        await client.post(
            "/v1/partners", json={"name": f"{name} partner", "email": "p@p.example"}, headers=h
        )
    )
    partner_token = await ok(await client.post(f"/v1/partners/{partner['id']}/tokens", headers=h))
    customer = await ok(await client.post("/v1/customers", json={"name": "C"}, headers=h))
    lead_type = await ok(
        await client.post(
            "/v1/lead-types",
            json={
                "name": "T",
                "actions": [
                    {"type": "webhook", "trigger": "received", "url": hook, "maxRetries": 0}
                ],
            },
            headers=h,
        )
    )
    webhook = await ok(await client.post("/v1/lead-webhooks", json={"name": "W"}, headers=h))
    channel = await ok(
        await client.post(
            "/v1/channels",
            json={
                "type": "sms",
                "name": f"{name} texts",
                "from": "+15005550006",
                "credentials": {"accountSid": "AC1", "authToken": f"{marker(name)}authtoken"},
            },
            headers=h,
        )
    )
    automation = await ok(
        await client.post(
            "/v1/lead-automations",
            json={
                "name": f"{name} automation {marker(name)}",
                "webhookSourceId": webhook["id"],
                "steps": [
                    {"channel": "sms", "channelId": channel["id"], "template": {"body": "Hi"}}
                ],
            },
            headers=h,
        )
    )
    form = await ok(
        await client.post(
            "/v1/lead-forms",
            json={"name": "F", "fields": [{"key": "name", "required": True}]},
            headers=h,
        )
    )
    lead = await ok(
        await client.post(
            "/v1/leads",
            json={"name": f"Zed {marker(name)}", "email": f"{marker(name)}@leads.example"},
            headers=h,
        ),
        201,
    )
    other_lead = await ok(
        await client.post("/v1/leads", json={"name": f"{name} second"}, headers=h), 201
    )
    await client.post(f"/v1/leads/{lead['id']}/notes", json={"value": "a note"}, headers=h)
    await client.post(f"/v1/leads/{lead['id']}/refer", json={"partnerId": partner["id"]}, headers=h)
    converted = await client.post(f"/v1/leads/{other_lead['id']}/convert", headers=h)
    campaign = (
        await ok(
            await client.post(
                "/v1/campaigns",
                json={
                    "name": f"{name} campaign {marker(name)}",
                    "endpoints": [{"url": hook, "buyerPartnerId": partner["id"]}],
                },
                headers=h,
            )
        )
    )["id"]
    await ok(
        await client.put(
            "/v1/routing-rules",
            json={"rules": [{"name": "All", "campaignIds": [campaign]}]},
            headers=h,
        )
    )
    submitted = await client.post(
        "/api/v1/leads/submit",
        json={"campaignId": campaign, "lead": {"name": f"{name} submitted"}},
        headers=h,
    )
    ids: dict[str, str] = {
        "workspace": wid,
        "token": spare["id"],
        "lead": lead["id"],
        "pipeline": second["id"],
        "stage": pipeline["stages"][1]["id"],
        "user": user["id"],
        "group": group["id"],
        "partner": partner["id"],
        "customer": customer["id"],
        "campaign": campaign,
        "lead_type": lead_type["id"],
        "action": lead_type["actions"][0]["id"],
        "webhook": webhook["id"],
        "form": form["id"],
        "channel": channel["id"],
        "automation": automation["id"],
    }
    if converted.is_success and converted.json().get("contactId"):
        ids["contact"] = converted.json()["contactId"]
    if submitted.is_success and submitted.json().get("submissionId"):
        ids["submission"] = submitted.json()["submissionId"]
    secrets = [
        admin["token"],
        partner_token["token"],
        webhook.get("apiKey", ""),
        form["formKey"],
        f"{marker(name)}authtoken",
    ]
    return {
        "name": name,
        "id": wid,
        "h": h,
        "partner_h": bearer(partner_token["token"]),
        "ids": ids,
        "secrets": [s for s in secrets if s],
        "lead_ids": [lead["id"], other_lead["id"]],
        "pipeline": pipeline,
    }


def id_for(name: str, ids: dict[str, str]) -> str:
    """One of the workspace's ids for a parameter or field named `name`."""
    key = re.sub(r"[^a-z]", "", name.lower()).removesuffix("ids").removesuffix("id")
    for word, which in (
        ("stage", "stage"),
        ("pipeline", "pipeline"),
        ("leadtype", "lead_type"),
        ("action", "action"),
        ("partner", "partner"),
        ("campaign", "campaign"),
        ("customer", "customer"),
        ("contact", "contact"),
        ("delivery", "delivery"),
        ("submission", "submission"),
        ("channel", "channel"),
        ("automation", "automation"),
        ("webhook", "webhook"),
        ("form", "form"),
        ("group", "group"),
        ("member", "user"),
        ("assign", "user"),
        ("user", "user"),
        ("token", "token"),
        ("workspace", "workspace"),
        ("lead", "lead"),
    ):
        if word in key and which in ids:
            return ids[which]
    return ids["lead"]


def id_like(name: str) -> bool:
    return bool(re.search(r"(Id|_id|Ids|_ids|^id|^lead|assignedTo|assigned_to)$", name))


class Faker:
    """A value for a JSON schema, every id-like field set to one of `ids`."""

    def __init__(self, spec: dict[str, Any], ids: dict[str, str]) -> None:
        self.schemas = spec.get("components", {}).get("schemas", {})
        self.ids = ids

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def value(self, schema: dict[str, Any], name: str = "", depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if depth > 6:
            return None
        for union in ("anyOf", "oneOf", "allOf"):
            if union in schema:
                options = [self.resolve(s) for s in schema[union]]
                options = [s for s in options if s.get("type") != "null"] or options
                return self.value(options[0], name, depth + 1)
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            properties = schema.get("properties", {})
            if properties:
                return {
                    key: self.value(sub, key, depth + 1)
                    for key, sub in properties.items()
                    if key != "order"
                }
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                key = self.ids["stage"] if id_like(name) or "move" in name.lower() else "k"
                return {key: self.value(extra, name, depth + 1)}
            return {"k": "x"}
        if kind == "array":
            return [self.value(schema.get("items", {}), name, depth + 1)]
        if kind == "integer":
            return max(int(schema.get("minimum", 1)), 1)
        if kind == "number":
            return 1
        if kind == "boolean":
            return True
        if schema.get("format") == "uuid" or id_like(name):
            return id_for(name, self.ids)
        if "pattern" in schema and "#" in schema["pattern"]:
            return "#112233"
        if schema.get("format") in ("uri", "url") or name.lower().endswith("url"):
            return "https://b.example/x"
        return "x"


def crafted(method: str, path: str, a: dict[str, str], b: dict[str, Any]) -> list[Any]:
    """Bodies the schema does not describe, or whose ids sit deeper than it says."""
    bulk = [
        {"action": action, "leadIds": [a["lead"], *b["lead_ids"]], **extra}
        for action, extra in (
            ("move_stage", {"stageId": a["stage"]}),
            ("move_stage", {"stageId": b["pipeline"]["stages"][1]["id"]}),
            ("assign", {"assignedTo": a["user"]}),
            ("assign", {"assignedTo": b["ids"]["user"]}),
            ("tag", {"addTags": ["x"]}),
            ("delete", {}),
        )
    ]
    actions = [
        {"type": "assign_user", "trigger": "received", "mode": "user", "userId": a["user"]},
        {"type": "assign_user", "trigger": "received", "mode": "group", "groupId": a["group"]},
        {"type": "refer", "trigger": "received", "partnerId": a["partner"]},
        {"type": "change_lead_type", "trigger": "received", "leadTypeId": a["lead_type"]},
        {
            "type": "notify_user",
            "trigger": "received",
            "userId": a["user"],
            "subject": "s",
            "body": "b",
        },
    ]
    stages = [{"id": s["id"], "name": s["name"]} for s in b["pipeline"]["stages"]]
    endpoint = {"url": "https://b.example/x"}
    campaigns = [
        {"name": "X", "endpoints": [endpoint], "fallbackCampaignIds": [a["campaign"]]},
        {"name": "X", "endpoints": [endpoint], "buyerPartnerId": a["partner"]},
        {"name": "X", "endpoints": [{**endpoint, "buyerPartnerId": a["partner"]}]},
    ]
    sms_step = {"channel": "sms", "template": {"body": "Hi"}}
    automations = [
        {"name": "X", "steps": [{**sms_step, "channelId": a["channel"]}]},
        {
            "name": "X",
            "steps": [{**sms_step, "fallbackChannel": "sms", "fallbackChannelId": a["channel"]}],
        },
        {"name": "X", "webhookSourceId": a["webhook"], "steps": [sms_step]},
    ]
    table: dict[tuple[str, str], list[Any]] = {
        ("POST", "/v1/leads"): [
            {"name": "n", "assignedTo": a["user"]},
            {"name": "n", "stageId": a["stage"], "pipelineId": a["pipeline"]},
            {"name": "n", "leadTypeId": a["lead_type"], "partnerId": a["partner"]},
            {"name": "n", "campaignId": a["campaign"], "customerId": a["customer"]},
        ],
        ("POST", "/v1/leads/bulk-action"): bulk,
        ("POST", "/v1/lead-types"): [{"name": "X", "actions": [x]} for x in actions]
        + [{"name": "X", "referral": {"method": "immediately", "partnerId": a["partner"]}}],
        ("PATCH", "/v1/lead-types/{lead_type_id}"): [{"actions": [x]} for x in actions]
        + [{"referral": {"method": "immediately", "partnerId": a["partner"]}}],
        ("PATCH", "/v1/lead-pipelines/{pipeline_id}"): [
            {"stages": [*stages, {"id": a["stage"], "name": "Theirs"}]},
            {"stages": stages[1:], "moveLeadsTo": {stages[0]["id"]: a["stage"]}},
        ],
        ("POST", "/v1/lead-pipelines"): [
            {"name": "X", "stages": [{"id": a["stage"], "name": "A"}, {"name": "B"}]}
        ],
        ("POST", "/v1/user-groups"): [{"name": "X", "memberIds": [a["user"]]}],
        ("PATCH", "/v1/user-groups/{group_id}"): [{"memberIds": [a["user"]]}],
        ("POST", "/api/v1/leads/submit"): [
            {"campaignId": a["campaign"], "lead": {"name": "n", "assignedTo": a["user"]}}
        ],
        ("POST", "/v1/lead-forms"): [
            {"name": "X", "fields": [{"key": "name"}], "campaignId": a["campaign"]}
        ],
        ("PATCH", "/v1/lead-forms/{form_id}"): [{"campaignId": a["campaign"]}],
        ("POST", "/v1/leads/{lead_id}/returns"): [{"reason": "r", "partnerId": a["partner"]}],
        ("POST", "/v1/partners/{partner_id}/tokens"): [{"name": "x"}],
        ("POST", "/v1/campaigns"): campaigns,
        ("PUT", "/v1/campaigns/{campaign_id}"): campaigns,
        ("PATCH", "/v1/campaigns/{campaign_id}"): campaigns,
        ("POST", "/v1/lead-automations"): automations,
        ("PUT", "/v1/lead-automations/{automation_id}"): automations,
        ("PATCH", "/v1/lead-automations/{automation_id}"): automations,
        ("PUT", "/v1/routing-rules"): [
            {"rules": [{"name": "x", "campaignIds": [a["campaign"]]}]},
            {"rules": [{"name": "x", "campaignIds": [b["ids"]["campaign"], a["campaign"]]}]},
        ],
        ("POST", "/v1/workspaces/{workspace_id}/tokens"): [
            {"role": "super_admin"},
            {"role": "partner", "partnerId": a["partner"]},
        ],
    }
    return table.get((method, path), [])


def leaked(text: str, a: dict[str, Any]) -> list[str]:
    markers = [*a["ids"].values(), *a["lead_ids"], *a["secrets"], marker(a["name"])]
    return sorted({m for m in markers if m and m in text})


def without_refusals(value: Any) -> Any:
    """An answer without its per-item refusals (`{"ok": false, "error": ...}`), which may
    name the ids the caller sent."""
    if isinstance(value, dict):
        if value.get("ok") is False or "error" in value:
            return None
        return {k: without_refusals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_refusals(v) for v in value]
    return value


async def reads(
    client: httpx.AsyncClient, spec: dict[str, Any], who: dict[str, Any], after: int
) -> dict[str, Any]:
    """Every GET of the workspace's own objects, as its own super admin sees it."""
    seen: dict[str, Any] = {}
    for path, operations in spec["paths"].items():
        if "get" not in operations or path.startswith(PUBLIC) or "history" in path:
            continue
        url = path
        for name in re.findall(r"{(\w+)}", path):
            url = url.replace(f"{{{name}}}", id_for(name, who["ids"]))
        params = {
            p["name"]: after
            for p in operations["get"].get("parameters", [])
            if p["in"] == "query" and p["name"] == "after"
        }
        answer = await client.get(url, params=params, headers=who["h"])
        seen[url] = (answer.status_code, answer.json() if answer.content else None)
    return seen


def scrub(value: Any) -> Any:
    """Reads without what changes by itself (the time a list was read at)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in ("now", "generatedAt")}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


RUNNING = ("pending", "processing", "qualified", "delivered")


async def settled(client: httpx.AsyncClient, who: dict[str, Any]) -> None:
    """A's webhook deliveries and submissions done (they change A's reads while they run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        listed = await client.get("/v1/deliveries", headers=who["h"])
        items = listed.json().get("items", []) if listed.is_success else []
        submissions = await client.get("/v1/submissions", headers=who["h"])
        running = [s for s in submissions.json().get("items", []) if s.get("status") in RUNNING]
        if items and all(i.get("state") != "pending" for i in items) and not running:
            who["ids"]["delivery"] = items[0]["id"]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("A's deliveries and submissions did not settle")


async def test_workspace_b_never_reaches_workspace_a(
    engine: Engine, client: httpx.AsyncClient, running: None, receiver: Receiver
) -> None:
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    a = await tenant(client, "Alpha", hook)
    b = await tenant(client, "Beta", hook)
    await settled(client, a)
    await settled(client, b)
    spec = create_app(engine).openapi()
    head = await engine.log.max_position()
    before = await reads(client, spec, a, head)

    problems: list[str] = []
    calls = 0
    deletes: list[tuple[str, str, dict[str, Any]]] = []
    for path, operations in spec["paths"].items():
        if path.startswith(PUBLIC):
            continue
        for verb, operation in operations.items():
            method = verb.upper()
            faker = Faker(spec, a["ids"])
            body_schema = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            bodies: list[Any] = [None] if body_schema is None else [faker.value(body_schema)]
            bodies += crafted(method, path, a["ids"], b)
            if body_schema is None and not crafted(method, path, a["ids"], b):
                bodies.append({k: id_for(k, a["ids"]) for k in ("leadId", "stageId", "userId")})
            query = {
                p["name"]: (
                    id_for(p["name"], a["ids"])
                    if id_like(p["name"]) or p["name"] in ("campaignId", "assignedTo")
                    else None
                )
                for p in operation.get("parameters", [])
                if p["in"] == "query"
            }
            query = {k: v for k, v in query.items() if v is not None}
            for owner in (a, b):  # A's objects in the path, then B's own
                url = path
                for name in re.findall(r"{(\w+)}", path):
                    url = url.replace(f"{{{name}}}", id_for(name, owner["ids"]))
                for body in bodies:
                    for headers in (b["h"], b["partner_h"]):
                        if method == "DELETE" and owner is b:
                            deletes.append((url, method, headers))
                            continue
                        calls += 1
                        answer = await client.request(
                            method,
                            url,
                            params=query,
                            json=body,
                            headers=headers,
                        )
                        problems += judge(method, url, body, answer, a)
    for url, method, headers in deletes:
        calls += 1
        answer = await client.request(method, url, headers=headers)
        problems += judge(method, url, None, answer, a)

    assert calls > 150
    assert not problems, "\n".join(problems)

    head = await engine.log.max_position()
    after = await reads(client, spec, a, head)
    changed = [url for url in before if scrub(before[url]) != scrub(after.get(url))]
    assert not changed, {url: (before[url], after.get(url)) for url in changed}
    for url, (status, body) in (await reads(client, spec, b, head)).items():
        found = leaked(str(body), a)
        assert not found, f"B's read {url} ({status}) holds A's {found}"


def judge(method: str, url: str, body: Any, answer: httpx.Response, a: dict[str, Any]) -> list[str]:
    what = f"{method} {url} {body!r} -> {answer.status_code}"
    if answer.status_code >= 500:
        return [f"{what}: 5xx {answer.text[:300]}"]
    if answer.is_success:
        shown = without_refusals(answer.json()) if answer.content else None
        found = leaked(str(shown), a)
        if found:
            return [f"{what}: answers with A's {found}: {answer.text[:300]}"]
    return []


def test_the_id_names_map_to_ids() -> None:
    ids = {k: str(uuid.uuid4()) for k in ("lead", "stage", "lead_type", "user", "partner")}
    assert id_for("stageId", ids) == ids["stage"]
    assert id_for("lead_type_id", ids) == ids["lead_type"]
    assert id_for("leadTypeId", ids) == ids["lead_type"]
    assert id_for("assignedTo", ids) == ids["user"]
    assert id_for("lead", ids) == ids["lead"]
    assert id_for("partnerId", ids) == ids["partner"]
