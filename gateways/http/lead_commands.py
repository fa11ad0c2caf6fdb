"""Routes that work a lead: stage and pipeline, assignment, notes, fields and tags,
delete/restore, bulk, status (and the workspace's statuses), referral and returns,
conversion (and contacts).

Every command answers with the lead as it is after the command and the `position` of its
events (0 when the command changed nothing): pass it as `?after=` to a list or board to read
your own write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from domain.contacts import Contact
from domain.leads import InvalidTransition, Lead, LeadPatch, Note
from domain.milestones import InvalidStatuses, StatusDefinition
from domain.workspaces import Permission
from gateways.http.auth import actor_of, engine_of, requires, workspace_of
from gateways.http.errors import ApiError
from gateways.http.lead_json import lead_json
from gateways.http.payloads import parse_json_object, validation_error
from gateways.http.query import StrictQuery
from gateways.http.views import After, await_position, read_view
from handlers import lead_commands as commands
from handlers.lead_commands import (
    BulkAction,
    Done,
    LeadNotFound,
    UnknownPartner,
    UnknownPipeline,
)
from handlers.payloads import is_json
from handlers.submission_commands import submit_many
from handlers.users import UnknownUser
from handlers.workspaces import Principal

router = APIRouter(prefix="/v1", tags=["leads"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]

T = TypeVar("T")


class Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class StageBody(Body):
    stage_id: UUID


class PipelineBody(Body):
    pipeline_id: UUID
    # Left out: the pipeline's first stage (a lead already in the pipeline stays put).
    stage_id: UUID | None = None


class AssignBody(Body):
    # An active user of the workspace (`/v1/users`), by id; null unassigns.
    assigned_to: str | None = Field(min_length=1, max_length=200)


class NoteBody(Body):
    value: str = Field(min_length=1, max_length=10_000)


class StatusBody(Body):
    status: str = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=500)


class StatusesBody(Body):
    statuses: list[StatusDefinition] = Field(min_length=1, max_length=100)


class ReferBody(Body):
    partner_id: UUID


class ReturnBody(Body):
    reason: str = Field(min_length=1, max_length=500)
    partner_id: UUID | None = None


class DecisionBody(Body):
    reason: str = Field(default="", max_length=500)


class BulkBody(Body):
    action: BulkAction
    lead_ids: list[UUID] = Field(min_length=1, max_length=commands.MAX_BULK)
    stage_id: UUID | None = None
    pipeline_id: UUID | None = None
    assigned_to: str | None = Field(default=None, min_length=1, max_length=200)
    add_tags: list[str] = Field(default_factory=list, max_length=100)
    remove_tags: list[str] = Field(default_factory=list, max_length=100)
    campaign_id: UUID | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_tag_names(cls, data: Any) -> Any:
        # `tagsAdd` / `tagsRemove`: the names earlier docs gave; same meaning.
        if isinstance(data, dict):
            data = dict(data)
            for old, canonical in (("tagsAdd", "addTags"), ("tagsRemove", "removeTags")):
                if old in data:
                    if canonical in data:
                        raise ValueError(f"give {canonical} or {old}, not both")
                    data[canonical] = data.pop(old)
        return data


# PATCH /v1/leads/{id} reads its body itself (415 for non-JSON, the body limits), so the
# OpenAPI gets the schema from the model it is validated with.
_PATCH_SCHEMA = LeadPatch.model_json_schema(by_alias=True, mode="validation")


def note_json(note: Note) -> dict[str, Any]:
    return {
        "id": str(note.id),
        "value": note.value,
        "author": note.author,
        "createdAt": note.created_at.isoformat(),
    }


def worked_lead_json(lead: Lead) -> dict[str, Any]:
    """The lead with what working it adds (assignment, notes, milestones, conversion...)."""
    return {
        **lead_json(lead),
        "assignedTo": lead.assigned_to,
        "leadTypeId": str(lead.lead_type_id) if lead.lead_type_id else None,
        "deleted": lead.deleted,
        "milestones": [str(m) for m in lead.milestones],
        "notes": [note_json(n) for n in lead.notes],
        "referredTo": str(lead.referred_to) if lead.referred_to else None,
        "referrals": lead.referrals,
        "openReturn": {"partnerId": str(lead.open_return)} if lead.open_return else None,
        "contactId": str(lead.contact_id) if lead.contact_id else None,
        "convertedAt": lead.converted_at.isoformat() if lead.converted_at else None,
    }


def done_json(done: Done[Any]) -> dict[str, Any]:
    return {**worked_lead_json(done.lead), "changed": done.changed, "position": done.position}


async def run(command: Callable[[], Awaitable[T]]) -> T:
    """A command's refusals as the API's errors (a lost race keeps the app's 409)."""
    try:
        return await command()
    except LeadNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None
    except UnknownPartner as error:
        raise ApiError(422, "unknown_partner", str(error)) from None
    except UnknownPipeline as error:
        raise ApiError(422, "unknown_pipeline", str(error)) from None
    except UnknownUser as error:
        raise ApiError(422, "unknown_user", str(error)) from None
    except InvalidTransition as error:
        raise ApiError(422, "invalid_transition", str(error)) from None


@router.patch("/leads/{lead_id}/stage")
async def move_stage(
    lead_id: UUID, body: StageBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Move the lead to another stage of its pipeline (a `won` stage records the Converted
    milestone, a `lost` one Closed, once per lead). A stage of another pipeline is a 422:
    moving between pipelines is `PATCH /v1/leads/{id}/pipeline`."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.move_stage(store, ws, lead_id, body.stage_id, actor_of(caller))
    )
    return done_json(done)


@router.patch("/leads/{lead_id}/pipeline")
async def move_pipeline(
    lead_id: UUID, body: PipelineBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Move the lead to another of the workspace's pipelines, into `stageId` (a stage of
    that pipeline) or, left out, its first stage. A pipeline that is not the workspace's is
    a 422 `unknown_pipeline`; a stage not of that pipeline a 422 `invalid_transition`."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.move_pipeline(
            store, ws, lead_id, body.pipeline_id, body.stage_id, actor_of(caller)
        )
    )
    return done_json(done)


@router.patch("/leads/{lead_id}/assign")
async def assign(
    lead_id: UUID, body: AssignBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Give the lead to a user (`assignedTo`), or to nobody (null)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.assign(store, ws, lead_id, body.assigned_to, actor_of(caller))
    )
    return done_json(done)


@router.post("/leads/{lead_id}/notes", status_code=201)
async def add_note(
    lead_id: UUID, body: NoteBody, request: Request, caller: Manager
) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(lambda: commands.add_note(store, ws, lead_id, body.value, actor_of(caller)))
    return {**note_json(done.value), "leadId": str(lead_id), "position": done.position}


@router.patch(
    "/leads/{lead_id}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _PATCH_SCHEMA}},
        }
    },
)
async def update_lead(lead_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Change fields (null clears one), tags (`tags` replaces them, `addTags` / `removeTags`
    edit them; `tagsAdd` / `tagsRemove` are accepted too; case-insensitive) and custom fields
    (merged; null drops a key). A new email or phone is normalised and checked as at intake
    (`emailValid`, `phoneValid`). Recorded as a user's change with old → new values."""
    ws = workspace_of(caller, request)
    if not is_json(request.headers.get("content-type")):
        raise ApiError(415, "unsupported_media_type", "send the changes as application/json")
    try:
        patch = LeadPatch.model_validate(parse_json_object(await request.body()))
    except ValidationError as error:
        raise validation_error(error) from None
    store = engine_of(request).store
    done = await run(lambda: commands.update_lead(store, ws, lead_id, patch, actor_of(caller)))
    return done_json(done)


@router.delete("/leads/{lead_id}")
async def delete_lead(lead_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Hide the lead from lists and boards; it stays in the log and can be restored."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(lambda: commands.delete_lead(store, ws, lead_id, actor_of(caller)))
    return done_json(done)


@router.post("/leads/{lead_id}/restore")
async def restore_lead(lead_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(lambda: commands.restore_lead(store, ws, lead_id, actor_of(caller)))
    return done_json(done)


@router.post("/leads/bulk-action")
async def bulk_action(body: BulkBody, request: Request, caller: Manager) -> dict[str, Any]:
    """Apply one action to many leads; each lead succeeds or fails on its own, reported in
    `results` (with the `position` to read the whole batch back: the highest).
    `move_pipeline` takes `pipelineId` and optionally `stageId` (else the first stage); an
    unknown pipeline, or a stage not of it, refuses the whole request."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    if body.action is BulkAction.SUBMIT:
        return await _bulk_submit(body, ws, store, actor_of(caller))
    try:
        results = await commands.bulk(
            store,
            ws,
            body.action,
            body.lead_ids,
            actor_of(caller),
            stage_id=body.stage_id,
            pipeline_id=body.pipeline_id,
            assigned_to=body.assigned_to,
            add_tags=body.add_tags,
            remove_tags=body.remove_tags,
        )
    except UnknownPipeline as error:
        raise ApiError(422, "unknown_pipeline", str(error)) from None
    except InvalidTransition as error:
        raise ApiError(422, "invalid_transition", str(error)) from None
    except UnknownUser as error:
        raise ApiError(422, "unknown_user", str(error)) from None
    return {
        "action": body.action,
        "succeeded": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "results": [r.json() for r in results],
        "position": max((r.position for r in results), default=0),
    }


async def _bulk_submit(body: BulkBody, ws: UUID, store: Any, actor: str) -> dict[str, Any]:
    """`submit`: each lead gets a new submission to `campaignId` (origin `bulk`), processed
    at once; imported leads wait for this."""
    if body.campaign_id is None:
        raise ApiError(422, "validation_failed", "submit needs a campaignId")
    submitted = await submit_many(store, ws, body.lead_ids, body.campaign_id, actor)
    return {
        "action": body.action,
        "succeeded": sum(s.ok for s in submitted),
        "failed": sum(not s.ok for s in submitted),
        "results": [{"id": str(s.lead_id), **s.json()} for s in submitted],
        "position": max((s.position for s in submitted), default=0),
    }


@router.patch("/leads/{lead_id}/status")
async def set_status(
    lead_id: UUID, body: StatusBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Give the lead one of the workspace's statuses; a status's progress milestone is
    recorded the first time the lead reaches it."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    status = body.status.strip().lower()
    done = await run(
        lambda: commands.set_status(store, ws, lead_id, status, body.reason, actor_of(caller))
    )
    return done_json(done)


@router.get("/lead-statuses", tags=["statuses"], dependencies=[StrictQuery])
async def list_statuses(request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    statuses = await commands.statuses_of(engine_of(request).store, ws)
    return {"items": [s.model_dump(mode="json") for s in statuses], "total": len(statuses)}


@router.put("/lead-statuses", tags=["statuses"])
async def replace_statuses(body: StatusesBody, request: Request, caller: Manager) -> dict[str, Any]:
    """Replace the workspace's statuses (`{name, progress?}`; new, pending, backlog and
    abandoned must stay)."""
    ws = workspace_of(caller, request)
    try:
        position = await commands.set_statuses(
            engine_of(request).store, ws, body.statuses, actor_of(caller)
        )
    except InvalidStatuses as error:
        raise ApiError(422, "invalid_statuses", str(error)) from None
    return {"items": [s.model_dump(mode="json") for s in body.statuses], "position": position}


@router.post("/leads/{lead_id}/refer", tags=["partners"])
async def refer(
    lead_id: UUID, body: ReferBody, request: Request, caller: Manager
) -> dict[str, Any]:
    """Refer the lead to a partner (a Referred event every time)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(lambda: commands.refer(store, ws, lead_id, body.partner_id, actor_of(caller)))
    return done_json(done)


Returner = Annotated[Principal, Depends(requires(Permission.RETURNS_START))]


@router.post("/leads/{lead_id}/returns", tags=["partners"])
async def start_return(
    lead_id: UUID, body: ReturnBody, request: Request, caller: Returner
) -> dict[str, Any]:
    """The partner the lead is referred to returns it, with a reason: with the partner's
    own token (`POST /v1/partners/{id}/tokens`), or recorded by a manager on its behalf.
    A partner token sees only leads referred to its partner (any other is a 404)."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    if caller.partner_id is not None:
        if body.partner_id not in (None, caller.partner_id):
            raise ApiError(403, "forbidden", "a partner token returns for its own partner only")
        done = await run(
            lambda: commands.start_return(
                store, ws, lead_id, body.reason, actor_of(caller), caller.partner_id, True
            )
        )
        return {"id": str(lead_id), "returnStarted": True, "position": done.position}
    done = await run(
        lambda: commands.start_return(
            store, ws, lead_id, body.reason, actor_of(caller), body.partner_id
        )
    )
    return done_json(done)


@router.post("/leads/{lead_id}/returns/accept", tags=["partners"])
async def accept_return(
    lead_id: UUID, body: DecisionBody, request: Request, caller: Manager
) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.decide_return(store, ws, lead_id, True, body.reason, actor_of(caller))
    )
    return done_json(done)


@router.post("/leads/{lead_id}/returns/decline", tags=["partners"])
async def decline_return(
    lead_id: UUID, body: DecisionBody, request: Request, caller: Manager
) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(
        lambda: commands.decide_return(store, ws, lead_id, False, body.reason, actor_of(caller))
    )
    return done_json(done)


@router.post("/leads/{lead_id}/convert")
async def convert(lead_id: UUID, request: Request, caller: Manager) -> dict[str, Any]:
    """Convert into a new Contact, or link to the contact already holding the lead's email
    or phone; a repeated (or concurrent) convert answers with the same contact
    (`replayed`, and the position of the original conversion). The lead reaches the
    Converted milestone and moves to its pipeline's first `won` stage (unless it is in a
    won stage already, or the pipeline has none), in the same append."""
    ws = workspace_of(caller, request)
    store = engine_of(request).store
    done = await run(lambda: commands.convert(store, ws, lead_id, actor_of(caller)))
    return {
        "leadId": str(lead_id),
        "contactId": str(done.contact_id),
        "linkedExisting": done.linked_existing,
        "convertedAt": done.lead.converted_at.isoformat() if done.lead.converted_at else None,
        "replayed": done.replayed,
        "pipelineId": str(done.lead.pipeline_id) if done.lead.pipeline_id else None,
        "stageId": str(done.lead.stage_id) if done.lead.stage_id else None,
        "position": done.position,
    }


def contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "id": str(contact.id),
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "company": contact.company,
        "title": contact.title,
        "customFields": contact.custom_fields,
        "notes": [note_json(n) for n in contact.notes],
        "leadIds": [str(i) for i in contact.lead_ids],
        "createdAt": contact.created_on.isoformat(),
    }


@router.get("/contacts", tags=["contacts"], dependencies=[StrictQuery])
async def list_contacts(
    request: Request,
    caller: Viewer,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: After = None,
) -> dict[str, Any]:
    """The workspace's contacts (what its leads were converted into), the most recently
    converted into first, paged."""
    ws = workspace_of(caller, request)
    engine = engine_of(request)
    await await_position(request, after)
    ids, total = await read_view(engine.lead_views.contacts(ws, page=page, limit=limit))
    items = []
    for contact_id in ids:
        contact = await commands.load_contact(engine.store, ws, contact_id)
        if contact is not None:
            items.append(contact_json(contact))
    return {"items": items, "total": total, "page": page, "limit": limit}


@router.get("/contacts/{contact_id}", tags=["contacts"], dependencies=[StrictQuery])
async def get_contact(contact_id: UUID, request: Request, caller: Viewer) -> dict[str, Any]:
    ws = workspace_of(caller, request)
    contact = await commands.load_contact(engine_of(request).store, ws, contact_id)
    if contact is None:
        raise ApiError(404, "not_found", f"contact {contact_id} does not exist")
    return contact_json(contact)
