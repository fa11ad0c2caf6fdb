"""Routes for campaigns (`/v1/campaigns`), their stats, and the routing rules (`/v1/routing-rules`).

A campaign's JSON is its configuration as it was given (camelCase, with the defaults filled
in and each endpoint's `id`) beside its `id`, `createdAt` and `updatedAt`; a command's
response adds `position`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from domain.campaigns import Campaign, CampaignConfig, redact_headers
from domain.caps import usage_names
from domain.lead_types import private_target
from domain.routing import RoutingConfig
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.inbound_webhooks import documented_body
from gateways.http.payloads import parse_settings_object, validation_error
from gateways.http.query import StrictQuery
from gateways.http.timeline import await_view, table_of
from gateways.http.views import After
from handlers import campaigns as commands
from handlers import routing
from handlers.campaigns import CampaignNotFound, UnknownCampaign, UnknownPartner
from handlers.payloads import is_json
from handlers.workspaces import Principal
from projections.campaign_stats import COUNTS, CampaignStats
from projections.campaigns import CampaignsView

router = APIRouter(tags=["campaigns"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

CAMPAIGNS = CampaignsView.name
STATS = CampaignStats.name
REASON_KINDS = {
    "disqualified": "disqualifiedByReason",
    "rejected": "rejectedByReason",
    "failed": "failedByReason",
}

T = TypeVar("T")


def campaign_json(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": str(campaign.id),
        **campaign.config.snapshot(),
        "createdAt": campaign.created_on.isoformat(),
        "updatedAt": campaign.modified_on.isoformat(),
    }


def saved_json(campaign: Campaign, position: int) -> dict[str, Any]:
    return {**campaign_json(campaign), "position": position}


async def _run(command: Callable[[], Awaitable[T]]) -> T:
    try:
        return await command()
    except CampaignNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except UnknownCampaign as error:
        raise ApiError(
            422,
            "unknown_campaign",
            str(error),
            {"field": error.field, "campaignId": str(error.campaign_id)},
        ) from None
    except UnknownPartner as error:
        raise ApiError(
            422,
            "unknown_partner",
            str(error),
            {"field": error.field, "partnerId": str(error.partner_id)},
        ) from None
    except ValidationError as error:
        raise validation_error(error, "campaign") from None


async def _body(request: Request) -> dict[str, Any]:
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the campaign as application/json")
    return parse_settings_object(await request.body(), "campaign")


def _targets(config: CampaignConfig) -> Iterator[tuple[str, str]]:
    """Every URL the campaign sends to, with where it sits in the body."""
    for index, endpoint in enumerate(config.endpoints):
        yield f"endpoints.{index}.url", endpoint.url
        if endpoint.ping is not None:
            yield f"endpoints.{index}.ping.url", endpoint.ping.url
    for index, rule in enumerate(config.qualification):
        if rule.url:
            yield f"qualification.{index}.url", rule.url
    action = config.first_submission_action
    if action is not None and action.url:
        yield "firstSubmissionAction.url", action.url


def _check_targets(request: Request, config: CampaignConfig) -> None:
    """A literal internal address is refused as for a lead type's webhook: leads are sent
    there."""
    if getattr(engine_of(request).settings, "allow_private_webhook_targets", False):
        return
    for where, url in _targets(config):
        if private_target(url):
            raise ApiError(
                422,
                "validation_failed",
                f"the campaign is not valid: {where}: {url} is a loopback or private address;"
                " deliveries there are off unless LEADLOG_ALLOW_PRIVATE_WEBHOOK_TARGETS=1",
                [
                    {
                        "location": [int(p) if p.isdigit() else p for p in where.split(".")],
                        "message": "private address",
                        "type": "value",
                    }
                ],
            )


# What a campaign's JSON shows beside its configuration: sent back on a PUT or PATCH of
# what a GET returned, they are ignored rather than refused.
READ_ONLY = ("id", "createdAt", "updatedAt", "position")


def _writable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in READ_ONLY}


def _config(request: Request, data: dict[str, Any]) -> CampaignConfig:
    try:
        config = CampaignConfig.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, "campaign") from None
    _check_targets(request, config)
    return config


_CONFIG_BODY = documented_body(CampaignConfig)
# A PATCH names any of the configuration's top-level fields, none of them required.
_PATCH_BODY = orjson.loads(orjson.dumps(_CONFIG_BODY))
_PATCH_BODY["requestBody"]["content"]["application/json"]["schema"].pop("required", None)


@router.post("/v1/campaigns", status_code=201, openapi_extra=_CONFIG_BODY)
async def create_campaign(request: Request, caller: Manager) -> dict[str, Any]:
    """A campaign: its buyer endpoints, required fields, disqualification, dynamic keys,
    qualification, first-submission action, fallbacks, caps and price. A fallback campaign
    or buyer partner the workspace does not have is a 422 (`unknown_campaign`,
    `unknown_partner`)."""
    ws = workspace_of(caller, request)
    config = _config(request, await _body(request))
    store = engine_of(request).store
    campaign, position = await _run(
        lambda: commands.create_campaign(store, ws, config, actor_of(caller))
    )
    return saved_json(campaign, position)


def _for(caller: Principal) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Header values (buyers' API keys) are shown to those who may change the campaign."""
    if caller.can(Permission.LEADS_MANAGE):
        return lambda shown: shown
    return lambda shown: dict(redact_headers(shown))


def _listed_json(row: Any) -> dict[str, Any]:
    config = row["config"]
    return {
        "id": str(row["id"]),
        **(orjson.loads(config) if isinstance(config, str | bytes) else config),
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


@router.get("/v1/campaigns", dependencies=[StrictQuery])
async def list_campaigns(
    request: Request,
    caller: Viewer,
    active: bool | None = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's campaigns by name; `active=true|false` keeps the running or the
    paused ones."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    await await_view(request, CAMPAIGNS, after)
    table = table_of(engine, CAMPAIGNS, "campaigns")
    args: list[Any] = [ws]
    where = "workspace_id = $1 AND NOT deleted"
    if active is not None:
        args.append(active)
        where += " AND active = $2"
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
        rows = await conn.fetch(
            f"""SELECT id, config, created_at, updated_at FROM {table} WHERE {where}
                 ORDER BY name, id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
        )
    shown = _for(caller)
    return {
        "items": [shown(_listed_json(r)) for r in rows],
        "total": int(total),
        "page": page,
        "limit": limit,
    }


@router.get("/v1/campaigns/{campaign_id}", dependencies=[StrictQuery])
async def get_campaign(campaign_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    found = await _run(lambda: commands.get_campaign(store, ws, campaign_id))
    return _for(caller)(campaign_json(found))


@router.put("/v1/campaigns/{campaign_id}", openapi_extra=_CONFIG_BODY)
async def replace_campaign(campaign_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Replace the whole configuration (what the body leaves out takes its default).
    Submissions already running keep the configuration they started with."""
    ws = workspace_of(caller, request)
    config = _config(request, _writable(await _body(request)))
    store = engine_of(request).store
    campaign, position = await _run(
        lambda: commands.update_campaign(store, ws, campaign_id, config, actor_of(caller))
    )
    return saved_json(campaign, position)


@router.patch("/v1/campaigns/{campaign_id}", openapi_extra=_PATCH_BODY)
async def patch_campaign(campaign_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Change the given top-level fields (each replaced whole: `endpoints` is the whole
    list); the result is checked as a whole campaign."""
    ws = workspace_of(caller, request)
    fields = _writable(await _body(request))
    store = engine_of(request).store

    async def patched() -> tuple[Campaign, int]:
        current = await commands.get_campaign(store, ws, campaign_id)
        _check_targets(request, commands.merged_config(current.config, fields))
        return await commands.patch_campaign(store, ws, campaign_id, fields, actor_of(caller))

    campaign, position = await _run(patched)
    return saved_json(campaign, position)


@router.delete("/v1/campaigns/{campaign_id}")
async def delete_campaign(campaign_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """The campaign takes no new submissions; those it has keep their journey and stats."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    position = await _run(
        lambda: commands.delete_campaign(store, ws, campaign_id, actor_of(caller))
    )
    return {"id": str(campaign_id), "deleted": True, "position": position}


def _decimal(amount: Decimal) -> str:
    """An amount with at least two decimal places (more when it has them)."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        return str(amount)
    try:
        return str(amount.quantize(Decimal("0.01")))
    except InvalidOperation:
        return str(amount)


def _money(cents: int) -> str:
    return _decimal(Decimal(cents) / 100)


@router.get("/v1/campaigns/{campaign_id}/stats", dependencies=[StrictQuery])
async def campaign_stats(
    campaign_id: UUID, request: Request, caller: Viewer, after: After = None
) -> dict[str, Any]:
    """How the campaign's submissions went: counts by outcome, revenue (accepted prices
    less accepted returns), the reasons for disqualifications, rejections and failures,
    and how much of each cap the current hour, day and month have used. A deleted
    campaign's stats stay readable."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    campaign = await engine.store.load(Campaign, campaign_id)
    if campaign is None or campaign.workspace_id != ws:
        raise ApiError(404, "not_found", f"campaign {campaign_id} does not exist")
    await await_view(request, STATS, after)
    stats = table_of(engine, STATS, "campaign_stats")
    reasons = table_of(engine, STATS, "campaign_stat_reasons")
    scope = f"campaign:{campaign_id}"
    now = datetime.now(UTC)
    caps: list[tuple[str | None, str, str, int]] = [
        (None, label, name, ceiling)
        for label, name, ceiling in usage_names(campaign.config.caps, scope, now)
    ]
    for endpoint in campaign.config.endpoints:
        caps += [
            (endpoint.id, label, name, ceiling)
            for label, name, ceiling in usage_names(
                endpoint.caps, f"{scope}:endpoint:{endpoint.id}", now
            )
        ]
    async with engine.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"""SELECT {", ".join(COUNTS)}, revenue FROM {stats}
                 WHERE workspace_id = $1 AND campaign_id = $2""",
            ws,
            campaign_id,
        )
        reason_rows = await conn.fetch(
            f"""SELECT kind, reason, count FROM {reasons}
                 WHERE workspace_id = $1 AND campaign_id = $2
                 ORDER BY kind, count DESC, reason""",
            ws,
            campaign_id,
        )
        used: dict[str, int] = {
            r["name"]: int(r["value"])
            for r in await conn.fetch(
                "SELECT name, value FROM counters WHERE name = ANY($1::text[])",
                [name for _, _, name, _ in caps],
            )
        }
    body: dict[str, Any] = {"campaignId": str(campaign_id)}
    for name in COUNTS:
        key = "pendingAction" if name == "pending_action" else name
        body[key] = int(row[name]) if row is not None else 0
    body["revenue"] = _decimal(Decimal(row["revenue"]) if row is not None else Decimal(0))
    for wire in REASON_KINDS.values():
        body[wire] = {}
    for reason in reason_rows:
        body[REASON_KINDS[reason["kind"]]][reason["reason"]] = int(reason["count"])
    body["caps"] = [
        {
            "endpointId": endpoint_id,
            "label": label,
            "used": _money(used.get(name, 0)) if label == "budget" else used.get(name, 0),
            "limit": _money(ceiling) if label == "budget" else ceiling,
        }
        for endpoint_id, label, name, ceiling in caps
    ]
    return body


# ---- routing rules -----------------------------------------------------------------------


def routing_json(config: RoutingConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", by_alias=True)


@router.get("/v1/routing-rules", dependencies=[StrictQuery])
async def get_routing_rules(request: Request, caller: Viewer) -> dict[str, Any]:
    """The rules picking a campaign for a lead submitted without one, in the order tried."""
    ws = workspace_of(caller, request)
    return routing_json(await routing.get_routing(engine_of(request).store, ws))


@router.put("/v1/routing-rules", openapi_extra=documented_body(RoutingConfig))
async def replace_routing_rules(request: Request, caller: Manager) -> dict[str, Any]:
    """Replace every rule, in order. Each rule's `conditions` must all hold; its
    `strategy` picks among its `campaignIds` (`priority`, `weighted` by `weights`,
    `round_robin`). A campaign the workspace cannot use is a 422 `unknown_campaign`."""
    ws = workspace_of(caller, request)
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the rules as application/json")
    data = parse_settings_object(await request.body(), "routing rules")
    try:
        config = RoutingConfig.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, "routing rules") from None
    store = engine_of(request).store
    position = await _run(lambda: routing.replace_routing(store, ws, config, actor_of(caller)))
    return {**routing_json(config), "position": position}
