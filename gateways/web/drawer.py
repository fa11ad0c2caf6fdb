"""The lead drawer: a lead's details, notes and timeline beside the board, and its commands."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from domain.leads import InvalidTransition, Lead
from domain.partners import Partner
from domain.pipelines import Pipeline
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.consumers.read_models import pipeline_names
from gateways.web.pages import age, environment, page
from gateways.web.routes import csrf_guard
from gateways.web.session import SignedIn, form_fields, require_user
from handlers import lead_commands as commands
from handlers import users as user_commands
from handlers.lead_commands import LeadNotFound
from handlers.ports import ConcurrencyConflict
from handlers.users import UnknownUser
from projections.timeline import (
    LEAD,
    LeadTimeline,
    Names,
    referenced_pipelines,
    render_changes,
    render_summary,
)

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
Signed = Annotated[SignedIn, Depends(require_user)]

TIMELINE_PAGE = 20
# A refresh of an open drawer keeps the older entries opened, up to this many.
KEPT_ON_REFRESH = 500
# How long a command's re-render waits for the timeline to show it (as the API's `after`).
MAX_WAIT = 5.0
TIMELINE = LeadTimeline.name
EVENT = "leadlog:lead-changed"
_ACTORS = {"operator": "Operator", "system": "System"}
# Ids the entry's sentence already stands for; not worth a line of their own.
_INTERNAL = frozenset({"noteId"})


@dataclass
class Drawer:
    """What `_drawer.html` shows of one lead."""

    lead: Lead
    card: dict[str, Any]
    stage: str | None
    pipeline: str | None
    partner: str | None
    users: dict[str, str]
    assignable: list[tuple[str, str]]
    statuses: list[str]
    timeline: Timeline
    can_manage: bool
    error: str | None = None
    notice: str | None = None

    @property
    def custom_fields(self) -> list[tuple[str, str, Any]]:
        """(key, display name, value) of each custom field, in the lead's order."""
        names = self.lead.details.display_names
        return [(k, names.get(k) or k, v) for k, v in self.lead.details.custom_fields.items()]


@dataclass
class Timeline:
    lead_id: UUID
    everything: bool
    entries: list[dict[str, Any]] = field(default_factory=list)
    older: int | None = None
    """The position to read older entries before; None when these are the oldest."""
    behind: bool = False
    head: int = 0
    """The position of the lead's newest entry in any category (what the drawer shows)."""


def actor_name(actor: str | None, users: dict[str, str]) -> str:
    """`user:<id>` → the person's name; the log's other actors as they are."""
    if not actor:
        return "System"
    kind, _, ident = actor.partition(":")
    if kind == "user" and ident in users:
        return users[ident]
    return _ACTORS.get(actor, actor)


def ago(at: str) -> str:
    shown = age(at)
    return "just now" if shown == "now" else f"{shown} ago"


environment.filters["actor"] = actor_name
environment.filters["ago"] = ago


def show_value(value: Any) -> str:
    if value is None or value in ("", []):
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def card_of(lead: Lead) -> dict[str, Any]:
    """The lead as `_card.html` reads it (the board's read-model row, in wire names)."""
    d = lead.details
    return {
        "id": str(lead.id),
        "name": lead.name,
        "email": d.email,
        "phone": d.phone,
        "company": d.company,
        "title": d.title,
        "tags": list(d.tags),
        "source": str(lead.source),
        "assignedTo": lead.assigned_to,
        "stageId": str(lead.stage_id) if lead.stage_id else None,
        "createdAt": lead.created_on.isoformat(),
    }


async def load_timeline(
    engine: Engine,
    workspace_id: UUID,
    lead_id: UUID,
    users: dict[str, str],
    everything: bool,
    before: int | None = None,
    after: int = 0,
    down_to: int | None = None,
) -> Timeline:
    """A page of the lead's timeline, newest first, from the read model `GET
    /v1/leads/{id}/timeline` reads (waiting for it to reach `after`, a command's position).
    With `down_to`, every entry from there up (at most `KEPT_ON_REFRESH`): a refresh keeps
    the older entries the person had opened."""
    found = Timeline(lead_id, everything)
    if after > 0 and not await engine.projector.wait_for(TIMELINE, after, MAX_WAIT):
        found.behind = True
    table = "timeline_entries"
    conditions = ["lead_id = $1"]
    args: list[Any] = [lead_id]
    if not everything:
        args.append([LEAD])
        conditions.append(f"category = ANY(${len(args)}::text[])")
    if before is not None:
        args.append(before)
        conditions.append(f"position < ${len(args)}")
    size = TIMELINE_PAGE
    async with engine.pool.acquire() as conn:
        head = await conn.fetchval(f"SELECT max(position) FROM {table} WHERE lead_id = $1", lead_id)
        found.head = max(int(head or 0), after)
        if down_to is not None:
            shown = await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE {' AND '.join(conditions)} "
                f"AND position >= ${len(args) + 1}",
                *args,
                down_to,
            )
            size = min(max(size, int(shown)), KEPT_ON_REFRESH)
        args.append(size + 1)
        rows = await conn.fetch(
            f"""SELECT position, event_type, occurred_at, actor, summary, changes, category
                  FROM {table} WHERE {" AND ".join(conditions)}
                 ORDER BY position DESC LIMIT ${len(args)}""",
            *args,
        )
    if len(rows) > size:
        rows = rows[:size]
        found.older = rows[-1]["position"]
    entries = []
    wanted: set[UUID] = set()
    for row in rows:
        changes = row["changes"]
        changes = orjson.loads(changes) if isinstance(changes, str | bytes) else changes
        wanted |= referenced_pipelines(row["summary"], changes)
        entries.append((row, changes))
    names = await pipeline_names(engine.store, wanted, workspace_id) if wanted else Names()
    for row, changes in entries:
        found.entries.append(
            {
                "position": row["position"],
                "type": row["event_type"],
                "at": row["occurred_at"],
                "actor": actor_name(row["actor"], users),
                "summary": render_summary(row["summary"], names),
                "changes": [
                    (c.get("field", ""), show_value(c.get("old")), show_value(c.get("new")))
                    for c in render_changes(changes, names)
                    if isinstance(c, dict) and c.get("field") not in _INTERNAL
                ],
                "category": row["category"],
            }
        )
    return found


async def load_drawer(
    engine: Engine,
    signed: SignedIn,
    lead_id: UUID,
    everything: bool = False,
    after: int = 0,
    down_to: int | None = None,
) -> Drawer:
    store = engine.store
    ws = signed.workspace_id
    lead = await commands.load_lead(store, ws, lead_id)
    people = await user_commands.list_users(store, ws)
    users = {str(u.id): u.name for u in people}
    stage = pipeline = partner = None
    if lead.pipeline_id is not None:
        found = await store.load(Pipeline, lead.pipeline_id)
        if found is not None and found.workspace_id == ws:
            pipeline = found.name
            stage = next((s.name for s in found.stages if s.id == lead.stage_id), None)
    if lead.referred_to is not None:
        referred = await store.load(Partner, lead.referred_to)
        partner = referred.details.name if referred is not None else str(lead.referred_to)
    statuses = [s.name for s in await commands.statuses_of(store, ws)]
    return Drawer(
        lead=lead,
        card=card_of(lead),
        stage=stage,
        pipeline=pipeline,
        partner=partner,
        users=users,
        assignable=sorted(
            ((str(u.id), u.name) for u in people if u.active), key=lambda u: u[1].casefold()
        ),
        statuses=statuses,
        timeline=await load_timeline(
            engine, ws, lead_id, users, everything, after=after, down_to=down_to
        ),
        can_manage=signed.principal.can(Permission.LEADS_MANAGE),
    )


def _lead_id(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _not_found(request: Request, lead_id: str) -> Response:
    return page(
        request,
        "_drawer_missing.html",
        {"message": f"Lead {lead_id} does not exist (or is not in this workspace)."},
        status_code=404,
    )


def _everything(request: Request, form: dict[str, str] | None = None) -> bool:
    value = (form or {}).get("all") or request.query_params.get("all") or ""
    return value in ("1", "true", "on")


def _down_to(request: Request) -> int | None:
    """`down_to`: the oldest entry an open drawer shows, kept by its refresh (a position)."""
    value = request.query_params.get("down_to", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


@router.get("/board/leads/{lead_id}")
async def drawer(request: Request, lead_id: str, signed: Signed) -> Response:
    """The drawer's content (htmx); opened as a page, the board with the drawer open."""
    if not request.headers.get("hx-request"):
        return RedirectResponse(f"/?lead={lead_id}", status_code=303)
    found_id = _lead_id(lead_id)
    if found_id is None:
        return _not_found(request, lead_id)
    web_engine: Engine = request.app.state.web.engine
    try:
        shown = await load_drawer(
            web_engine, signed, found_id, _everything(request), down_to=_down_to(request)
        )
    except LeadNotFound:
        return _not_found(request, lead_id)
    return page(request, "_drawer.html", {"d": shown, "signed": signed})


@router.get("/board/leads/{lead_id}/timeline")
async def timeline(request: Request, lead_id: str, signed: Signed) -> Response:
    """The timeline section (the toggle), or with `before` the next older entries."""
    found_id = _lead_id(lead_id)
    if found_id is None:
        return _not_found(request, lead_id)
    engine: Engine = request.app.state.web.engine
    try:
        await commands.load_lead(engine.store, signed.workspace_id, found_id)
    except LeadNotFound:
        return _not_found(request, lead_id)
    before_text = request.query_params.get("before", "")
    before = int(before_text) if before_text.isdigit() else None
    users = {
        str(u.id): u.name for u in await user_commands.list_users(engine.store, signed.workspace_id)
    }
    shown = await load_timeline(
        engine, signed.workspace_id, found_id, users, _everything(request), before
    )
    template = "_drawer_entries.html" if before is not None else "_drawer_timeline.html"
    return page(request, template, {"t": shown})


# ---- commands ------------------------------------------------------------------------------

Command = Callable[[Engine, SignedIn, UUID, dict[str, str]], Awaitable[tuple[int, str]]]


async def _note(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    value = form.get("value", "").strip()
    if not value:
        raise InvalidTransition("write the note first")
    if len(value) > 10_000:
        raise InvalidTransition("a note holds at most 10,000 characters")
    done = await commands.add_note(engine.store, signed.workspace_id, lead_id, value, signed.actor)
    return done.position, "Note added."


async def _assign(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    user = form.get("assignedTo", "").strip() or None
    done = await commands.assign(engine.store, signed.workspace_id, lead_id, user, signed.actor)
    return done.position, "Assigned." if user else "Unassigned."


async def _status(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    status = form.get("status", "").strip().lower()[:100]
    reason = form.get("reason", "").strip()[:500]
    done = await commands.set_status(
        engine.store, signed.workspace_id, lead_id, status, reason, signed.actor
    )
    return done.position, f"Status set to {status}."


async def _convert(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    done = await commands.convert(engine.store, signed.workspace_id, lead_id, signed.actor)
    return done.position, "Already converted." if done.replayed else "Converted."


async def _delete(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    done = await commands.delete_lead(engine.store, signed.workspace_id, lead_id, signed.actor)
    return done.position, "Deleted: hidden from the board until restored."


async def _restore(
    engine: Engine, signed: SignedIn, lead_id: UUID, form: dict[str, str]
) -> tuple[int, str]:
    done = await commands.restore_lead(engine.store, signed.workspace_id, lead_id, signed.actor)
    return done.position, "Restored."


COMMANDS: dict[str, Command] = {
    "notes": _note,
    "assign": _assign,
    "status": _status,
    "convert": _convert,
    "delete": _delete,
    "restore": _restore,
}


@router.post("/board/leads/{lead_id}/{action}")
async def command(request: Request, lead_id: str, action: str, signed: Signed) -> Response:
    """Run one of the drawer's commands with the signed-in user's principal (the handlers
    the JSON API calls) and answer with the drawer re-rendered, the card on the board
    (out of band), and `leadlog:lead-changed` for the page's other listeners."""
    run = COMMANDS.get(action)
    found_id = _lead_id(lead_id)
    if run is None or found_id is None:
        return _not_found(request, lead_id)
    engine: Engine = request.app.state.web.engine
    if not signed.principal.can(Permission.LEADS_MANAGE):
        return page(
            request,
            "_drawer_missing.html",
            {"message": "Your role may look at leads but not change them."},
            status_code=403,
        )
    form = await form_fields(request)
    error = notice = None
    position = 0
    status_code = 200
    try:
        position, notice = await run(engine, signed, found_id, form)
    except LeadNotFound:
        return _not_found(request, lead_id)
    except (InvalidTransition, UnknownUser) as refused:
        error, status_code = str(refused), 422
    except ConcurrencyConflict:
        error, status_code = "Someone else changed this lead at the same moment; try again.", 409
    shown = await load_drawer(engine, signed, found_id, _everything(request, form), position)
    shown.error, shown.notice = error, notice
    headers = {}
    if position:
        headers["HX-Trigger"] = orjson.dumps(
            {EVENT: {"leadId": str(found_id), "position": position, "source": "drawer"}}
        ).decode()
    return page(
        request,
        "_drawer.html",
        {
            "d": shown,
            "signed": signed,
            "oob": position > 0,
            "card": shown.card,
            "users": shown.users,
        },
        status_code=status_code,
        headers=headers,
    )
