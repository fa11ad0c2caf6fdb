"""Routes for lead automations (`/v1/lead-automations`), their stats, retries, and a lead's
automation timeline (`/v1/leads/{id}/automation-timeline`).

An automation's JSON is its configuration as it was given (camelCase, defaults filled in,
a `delay` given as `5 min` shown as `delaySeconds`) beside its `id`, `createdAt` and
`updatedAt`; a command's response adds `position`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError

from domain.automations import Automation, AutomationConfig
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.inbound_webhooks import documented_body
from gateways.http.payloads import parse_settings_object, validation_error
from gateways.http.query import StrictQuery
from gateways.http.timeline import await_view, lead_in_workspace, table_of
from gateways.http.views import After
from handlers import automations as commands
from handlers.automations import (
    AutomationNotFound,
    InvalidAutomation,
    UnknownChannelReference,
    UnknownWebhookSource,
    config_json,
)
from handlers.payloads import is_json
from handlers.workspaces import Principal
from projections.automation_runs import STAT_COUNTS, AutomationRunsView
from projections.automations import AutomationsView

router = APIRouter(tags=["automations"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]
Page = Annotated[int, Query(ge=1, le=100_000)]
Limit = Annotated[int, Query(ge=1, le=200)]

AUTOMATIONS = AutomationsView.name
RUNS = AutomationRunsView.name

T = TypeVar("T")

RetryHandler = Callable[[UUID, UUID, UUID, str], Awaitable[UUID | int]]
"""`retry(workspace_id, automation_id, lead_id, actor)` → the run retried (or the log
position of the retry); raises `LookupError` when the lead has no run of the automation,
`ValueError` when its last run has no failed step to retry."""

_hooks: dict[str, RetryHandler] = {}


def set_retry_handler(handler: RetryHandler | None) -> None:
    """Who re-attempts a failed step, in place of the engine's `messaging.retry`; with
    neither, a retry answers 503 `not_ready`."""
    if handler is None:
        _hooks.pop("retry", None)
    else:
        _hooks["retry"] = handler


def automation_json(automation: Automation) -> dict[str, Any]:
    return {
        "id": str(automation.id),
        **config_json(automation.config),
        "createdAt": automation.created_on.isoformat(),
        "updatedAt": automation.modified_on.isoformat(),
    }


def saved_json(automation: Automation, position: int) -> dict[str, Any]:
    return {**automation_json(automation), "position": position}


def _location(field: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in field.split(".")]


async def _run(command: Callable[[], Awaitable[T]]) -> T:
    try:
        return await command()
    except AutomationNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except UnknownChannelReference as error:
        raise ApiError(
            422,
            "unknown_channel",
            str(error),
            {"field": error.field, "channelId": str(error.channel_id)},
        ) from None
    except UnknownWebhookSource as error:
        raise ApiError(
            422,
            "unknown_webhook_source",
            str(error),
            {"field": error.field, "webhookSourceId": str(error.webhook_id)},
        ) from None
    except InvalidAutomation as error:
        raise ApiError(
            422,
            "validation_failed",
            f"the automation is not valid: {error}",
            [{"location": _location(error.field), "message": error.problem, "type": "value"}],
        ) from None
    except ValidationError as error:
        raise validation_error(error, "automation") from None


async def _body(request: Request) -> dict[str, Any]:
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the automation as application/json")
    return parse_settings_object(await request.body(), "automation")


def _check_delays(data: dict[str, Any]) -> None:
    """A step's `delay` is a number or text; anything else is named here, before the model
    tries to read it as text."""
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or "delay" not in step:
            continue
        delay = step["delay"]
        if isinstance(delay, bool) or not isinstance(delay, str | int | float):
            message = "a delay is seconds, `immediate`, `5 min` … `24 h`, or `90s`/`45m`/`3h`/`2d`"
            raise ApiError(
                422,
                "validation_failed",
                f"the automation is not valid: steps.{index}.delay: {message}",
                [{"location": ["steps", index, "delay"], "message": message, "type": "value"}],
            )


# What an automation's JSON shows beside its configuration: sent back on a PUT or PATCH of
# what a GET returned, they are ignored rather than refused.
READ_ONLY = ("id", "createdAt", "updatedAt", "position")


def _writable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in READ_ONLY}


def _config(data: dict[str, Any]) -> AutomationConfig:
    _check_delays(data)
    try:
        return AutomationConfig.model_validate(data)
    except ValidationError as error:
        raise validation_error(error, "automation") from None


_CONFIG_BODY = documented_body(AutomationConfig)
# A PATCH names any of the configuration's top-level fields, none of them required.
_PATCH_BODY = orjson.loads(orjson.dumps(_CONFIG_BODY))
_PATCH_BODY["requestBody"]["content"]["application/json"]["schema"].pop("required", None)


@router.post("/v1/lead-automations", status_code=201, openapi_extra=_CONFIG_BODY)
async def create_automation(request: Request, caller: Manager) -> dict[str, Any]:
    """An automation: when it starts (`webhookSourceId`, `sources`, `leadTrigger`), its
    safety lock, and its ordered steps `{channel, channelId, delaySeconds | delay, template,
    fallbackChannel, fallbackChannelId, fallbackTemplate}`. A step without `channelId` sends
    on the workspace's first active channel of its type at send time. A channel that is not
    a live channel of the workspace of the step's type is a 422 `unknown_channel`, a webhook
    source the workspace does not have a 422 `unknown_webhook_source`, a template that
    cannot be filled a 422 naming `steps.N.template`."""
    ws = workspace_of(caller, request)
    config = _config(await _body(request))
    store = engine_of(request).store
    automation, position = await _run(
        lambda: commands.create_automation(store, ws, config, actor_of(caller))
    )
    return saved_json(automation, position)


def _listed_json(row: Any) -> dict[str, Any]:
    config = row["config"]
    return {
        "id": str(row["id"]),
        **(orjson.loads(config) if isinstance(config, str | bytes) else config),
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


@router.get("/v1/lead-automations", dependencies=[StrictQuery])
async def list_automations(
    request: Request,
    caller: Viewer,
    active: bool | None = None,
    page: Page = 1,
    limit: Limit = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's automations by name; `active=true|false` keeps the running or the
    paused ones."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    await await_view(request, AUTOMATIONS, after)
    table = table_of(engine, AUTOMATIONS, "automations")
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
    return {
        "items": [_listed_json(r) for r in rows],
        "total": int(total),
        "page": page,
        "limit": limit,
    }


@router.get("/v1/lead-automations/{automation_id}", dependencies=[StrictQuery])
async def get_automation(automation_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    return automation_json(await _run(lambda: commands.get_automation(store, ws, automation_id)))


@router.put("/v1/lead-automations/{automation_id}", openapi_extra=_CONFIG_BODY)
async def replace_automation(
    automation_id: UUID, request: Request, caller: Manager
) -> dict[str, Any]:
    """Replace the whole configuration (what the body leaves out takes its default). Runs
    already started keep the configuration they started with."""
    ws = workspace_of(caller, request)
    config = _config(_writable(await _body(request)))
    store = engine_of(request).store
    automation, position = await _run(
        lambda: commands.update_automation(store, ws, automation_id, config, actor_of(caller))
    )
    return saved_json(automation, position)


@router.patch("/v1/lead-automations/{automation_id}", openapi_extra=_PATCH_BODY)
async def patch_automation(
    automation_id: UUID, request: Request, caller: Manager
) -> dict[str, Any]:
    """Change the given top-level fields (each replaced whole: `steps` is the whole list);
    the result is checked as a whole automation."""
    ws = workspace_of(caller, request)
    fields = _writable(await _body(request))
    _check_delays(fields)
    store = engine_of(request).store
    automation, position = await _run(
        lambda: commands.patch_automation(store, ws, automation_id, fields, actor_of(caller))
    )
    return saved_json(automation, position)


@router.delete("/v1/lead-automations/{automation_id}")
async def delete_automation(
    automation_id: UUID, request: Request, caller: Manager
) -> dict[str, Any]:
    """The automation starts no new runs; its runs keep their timeline and stats."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    position = await _run(
        lambda: commands.delete_automation(store, ws, automation_id, actor_of(caller))
    )
    return {"id": str(automation_id), "deleted": True, "position": position}


async def _automation_of(request: Request, ws: UUID, automation_id: UUID) -> Automation:
    """The workspace's automation, deleted or not (its stats stay readable); else 404."""
    automation = await engine_of(request).store.load(Automation, automation_id)
    if automation is None or automation.workspace_id != ws:
        raise ApiError(404, "not_found", f"automation {automation_id} does not exist")
    return automation


@router.get("/v1/lead-automations/{automation_id}/stats", dependencies=[StrictQuery])
async def automation_stats(
    automation_id: UUID, request: Request, caller: Viewer, after: After = None
) -> dict[str, Any]:
    """How the automation's runs went: `triggered` (every run), and how many runs are
    `running`, `completed`, `failed`, `skipped` or `stopped` now (a failed run retried
    counts by its new outcome)."""
    ws = workspace_of(caller, request)
    await _automation_of(request, ws, automation_id)
    engine = engine_of(request)
    await await_view(request, RUNS, after)
    table = table_of(engine, RUNS, "automation_stats")
    async with engine.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"""SELECT {", ".join(STAT_COUNTS)} FROM {table}
                 WHERE workspace_id = $1 AND automation_id = $2""",
            ws,
            automation_id,
        )
    return {
        "automationId": str(automation_id),
        **{name: int(row[name]) if row is not None else 0 for name in STAT_COUNTS},
    }


@router.post("/v1/lead-automations/{automation_id}/retry/{lead_id}")
async def retry_automation(
    automation_id: UUID, lead_id: UUID, request: Request, caller: Manager
) -> dict[str, Any]:
    """Re-attempt the last failed step of the lead's latest run of the automation (a new
    message for the step, its fallback usable again) → `{automationId, leadId, runId,
    retried, position}`. 404 when the lead has no run of it, 409 `nothing_to_retry` when
    that run has no failed step."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    await _run(lambda: commands.get_automation(engine.store, ws, automation_id))
    await lead_in_workspace(engine, lead_id, ws)
    messaging = getattr(engine, "messaging", None)
    handler = _hooks.get("retry") or getattr(messaging, "retry", None)
    if handler is None:
        raise ApiError(
            503, "not_ready", "retries are not available yet: the message runner is not running"
        )
    try:
        outcome = await handler(ws, automation_id, lead_id, actor_of(caller))
    except LookupError as error:
        raise ApiError(404, "not_found", str(error)) from None
    except ValueError as error:
        raise ApiError(409, "nothing_to_retry", str(error)) from None
    # The retry has committed: the log's head is at or past its events (for `?after=`).
    position = outcome if isinstance(outcome, int) else await engine.log.max_position()
    return {
        "automationId": str(automation_id),
        "leadId": str(lead_id),
        "runId": str(outcome) if isinstance(outcome, UUID) else None,
        "retried": True,
        "position": position,
    }


def _entry_json(row: Any) -> dict[str, Any]:
    detail = row["detail"]
    return {
        "position": row["position"],
        "type": row["type"],
        "at": row["at"].isoformat(),
        "automationId": str(row["automation_id"]),
        "automationName": row["automation_name"],
        "runId": str(row["run_id"]),
        "step": row["step"],
        "channel": row["channel"],
        "messageId": str(row["message_id"]) if row["message_id"] else None,
        "status": row["status"],
        **(orjson.loads(detail) if isinstance(detail, str | bytes) else detail),
    }


@router.get("/v1/leads/{lead_id}/automation-timeline", dependencies=[StrictQuery])
async def automation_timeline(
    lead_id: UUID,
    request: Request,
    caller: Viewer,
    automation_id: Annotated[UUID | None, Query(alias="automationId")] = None,
    page: Page = 1,
    limit: Limit = 100,
    after: After = None,
) -> dict[str, Any]:
    """The lead's automation entries, oldest first (as the seed lists them): `type` is one
    of `automation_triggered`, `step_scheduled`, `step_sent`, `step_failed`, `fallback`,
    `automation_completed`, `automation_failed`, `automation_skipped` (with `reason`
    `safety_lock` or `missing_contact`), `automation_stopped`, `retry_requested`; `status`
    is the current delivery status of the entry's message; `error`, `reason`,
    `fromChannel`/`toChannel`, `dueAt`, `providerId` and `fallback` where they apply.
    `automationId` keeps one automation's entries."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    await lead_in_workspace(engine, lead_id, ws)
    await await_view(request, RUNS, after)
    timeline = table_of(engine, RUNS, "automation_timeline")
    automations = table_of(engine, AUTOMATIONS, "automations")
    args: list[Any] = [lead_id, ws]
    where = "t.lead_id = $1 AND t.workspace_id = $2"
    if automation_id is not None:
        args.append(automation_id)
        where += " AND t.automation_id = $3"
    async with engine.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM {timeline} t WHERE {where}", *args)
        rows = await conn.fetch(
            f"""SELECT t.position, t.type, t.at, t.automation_id, t.run_id, t.step, t.channel,
                       t.message_id, t.status, t.detail, a.name AS automation_name
                  FROM {timeline} t LEFT JOIN {automations} a ON a.id = t.automation_id
                 WHERE {where}
                 ORDER BY t.position LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
        )
    return {
        "items": [_entry_json(r) for r in rows],
        "total": int(total),
        "page": page,
        "limit": limit,
    }
