"""Working a lead: each command loads the lead, decides (domain), appends its events.

A command that loses a race (another change to the lead committed since it loaded) is
decided again on the reloaded lead, a few times, with a little jitter: a move to a stage
that is still valid simply lands after the other change; one the new state refuses (the
lead was deleted meanwhile) fails with that reason. Only a command that keeps losing gets
the `ConcurrencyConflict` (409) back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar
from uuid import UUID

from domain.base import DomainEvent
from domain.contacts import Contact, contact_keys
from domain.lead_types import LeadType, ReferralMethod
from domain.leads import CONVERSION_REASON, InvalidTransition, Lead, LeadPatch, Note
from domain.milestones import (
    DEFAULT_STATUSES,
    Milestone,
    StatusDefinition,
    StatusList,
    status_list_id,
)
from domain.normalize import normalise_email, normalise_phone
from domain.partners import Partner
from domain.pipelines import Pipeline
from domain.workspaces import Workspace
from handlers.pipelines import STAGE_KEY
from handlers.ports import Allocation, Append, Claim, ConcurrencyConflict, EventStore
from handlers.retry import ATTEMPTS, retrying
from handlers.users import assignable_user
from handlers.workspaces import WorkspaceNotFound

T = TypeVar("T")

BULK_CONCURRENCY = 16
MAX_BULK = 500


class LeadNotFound(LookupError):
    """No such lead in this workspace (another workspace's lead looks exactly like this)."""


class UnknownPartner(InvalidTransition):
    pass


class UnknownPipeline(InvalidTransition):
    """A pipeline id in a body that is not one of the workspace's live pipelines."""


class ContactRace(ConcurrencyConflict):
    """Another contact took the lead's email or phone while the conversion was appending."""


@dataclass(frozen=True)
class Done(Generic[T]):
    """A command's outcome: the lead after it, its log position (0 if nothing changed)."""

    lead: Lead
    position: int
    changed: bool
    value: T


async def load_lead(store: EventStore, workspace_id: UUID, lead_id: UUID) -> Lead:
    lead = await store.load(Lead, lead_id)
    if lead is None or lead.workspace_id != workspace_id:
        raise LeadNotFound(f"lead {lead_id} does not exist")
    return lead


async def change_lead(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    decide: Callable[[Lead], Awaitable[T]],
    attempts: int = ATTEMPTS,
) -> Done[T]:
    """Load, decide, append; again on a lost race."""

    async def decide_reading(lead: Lead, reads: dict[UUID, int]) -> T:
        return await decide(lead)

    return await change_lead_reading(store, workspace_id, lead_id, decide_reading, attempts)


async def change_lead_reading(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    decide: Callable[[Lead, dict[UUID, int]], Awaitable[T]],
    attempts: int = ATTEMPTS,
) -> Done[T]:
    """`change_lead` for a decision that rests on other aggregates (the pipeline a lead
    moves in): `decide` notes each one's version in `reads`, and the append fails, to be
    decided again, if any of them changed meanwhile (a stage removed, a pipeline deleted)."""

    async def attempt() -> Done[T]:
        lead = await load_lead(store, workspace_id, lead_id)
        reads: dict[UUID, int] = {}
        value = await decide(lead, reads)
        events = lead.collect_events()
        if not events:
            return Done(lead, 0, False, value)
        appended = await store.append(Append(workspace_id, events=events, expect=reads))
        return Done(lead, appended.position, True, value)

    return await retrying(attempt, attempts)


async def load_pipeline(store: EventStore, workspace_id: UUID, pipeline_id: UUID) -> Pipeline:
    """One of the workspace's live pipelines, named in a body (`UnknownPipeline` if not)."""
    pipeline = await store.load(Pipeline, pipeline_id)
    if pipeline is None or pipeline.workspace_id != workspace_id or pipeline.deleted:
        raise UnknownPipeline(f"pipeline {pipeline_id} does not exist")
    return pipeline


async def _other_pipeline_of(
    store: EventStore, workspace_id: UUID, stage_id: UUID, lead: Lead
) -> Pipeline | None:
    """The workspace's other live pipeline that holds `stage_id`, if one does (stage ids are
    claimed by their pipeline: `handlers.pipelines.stage_claims`). Only a pipeline of the
    lead's own workspace is named: another workspace's stage tells nothing of it."""
    holder = await store.holder(f"{STAGE_KEY}{stage_id}")
    if holder is None or holder == lead.pipeline_id:
        return None
    pipeline = await store.load(Pipeline, holder)
    if pipeline is None or pipeline.workspace_id != workspace_id or pipeline.deleted:
        return None
    return pipeline if pipeline.stage(stage_id) is not None else None


# ---- stage, assignment, notes, fields ------------------------------------------------------


async def move_stage(
    store: EventStore, workspace_id: UUID, lead_id: UUID, stage_id: UUID, actor: str
) -> Done[bool]:
    async def decide(lead: Lead, reads: dict[UUID, int]) -> bool:
        lead.ensure_live()
        pipeline_id = lead.pipeline_id
        if pipeline_id is None:
            workspace = await store.load(Workspace, workspace_id)
            pipeline_id = workspace.active_pipeline_id if workspace else None
        pipeline = await store.load(Pipeline, pipeline_id) if pipeline_id else None
        if pipeline is None or pipeline.workspace_id != workspace_id:
            raise InvalidTransition("the lead has no pipeline to move in")
        reads[pipeline.id] = pipeline.version
        if pipeline.stage(stage_id) is None:
            elsewhere = await _other_pipeline_of(store, workspace_id, stage_id, lead)
            if elsewhere is not None:
                raise InvalidTransition(
                    f"stage {stage_id} is a stage of pipeline {elsewhere.id} "
                    f"({elsewhere.name!r}), not of the lead's: move the lead to that pipeline "
                    "with PATCH /v1/leads/{id}/pipeline"
                )
        return lead.move_stage(pipeline, stage_id, actor)

    return await change_lead_reading(store, workspace_id, lead_id, decide)


async def move_pipeline(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    pipeline_id: UUID,
    stage_id: UUID | None,
    actor: str,
) -> Done[bool]:
    """Move the lead to another of the workspace's pipelines: into `stage_id` (a stage of
    that pipeline) or its first stage. Its board, list and timeline follow the event."""

    async def decide(lead: Lead, reads: dict[UUID, int]) -> bool:
        lead.ensure_live()
        pipeline = await load_pipeline(store, workspace_id, pipeline_id)
        reads[pipeline.id] = pipeline.version
        return lead.move_to_pipeline(pipeline, stage_id, actor)

    return await change_lead_reading(store, workspace_id, lead_id, decide)


async def assign(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    user: str | None,
    actor: str,
    by_user: bool = True,
) -> Done[bool]:
    """Give the lead to an active user of the workspace, by id (`UnknownUser` otherwise), or
    to nobody (None)."""
    if user is not None:
        user = str((await assignable_user(store, workspace_id, user)).id)
    return await _assign(store, workspace_id, lead_id, user, actor, by_user)


async def _assign(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    user: str | None,
    actor: str,
    by_user: bool,
) -> Done[bool]:
    """`assign` with `user` already checked."""

    async def decide(lead: Lead) -> bool:
        return lead.assign(user, actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


async def add_note(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    value: str,
    actor: str,
    by_user: bool = True,
) -> Done[Note]:
    note_id = uuid.uuid4()

    async def decide(lead: Lead) -> Note:
        return lead.add_note(note_id, value, actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


async def update_lead(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    patch: LeadPatch,
    actor: str,
    by_user: bool = True,
) -> Done[bool]:
    workspace = await store.load(Workspace, workspace_id)
    if workspace is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    email = normalise_email(patch.email)
    phone = normalise_phone(patch.phone, workspace.default_region)

    async def decide(lead: Lead) -> bool:
        return lead.update(
            patch,
            actor,
            by_user,
            email.normal,
            phone.normal,
            email_valid=email.valid,
            phone_valid=phone.valid,
        )

    return await change_lead(store, workspace_id, lead_id, decide)


async def delete_lead(
    store: EventStore, workspace_id: UUID, lead_id: UUID, actor: str, by_user: bool = True
) -> Done[bool]:
    async def decide(lead: Lead) -> bool:
        return lead.delete(actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


async def restore_lead(
    store: EventStore, workspace_id: UUID, lead_id: UUID, actor: str, by_user: bool = True
) -> Done[bool]:
    async def decide(lead: Lead) -> bool:
        return lead.restore(actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


# ---- statuses and milestones ---------------------------------------------------------------


async def statuses_of(store: EventStore, workspace_id: UUID) -> list[StatusDefinition]:
    """The workspace's statuses: its own list, else the defaults."""
    found = await store.load(StatusList, status_list_id(workspace_id))
    return list(found.statuses) if found is not None else list(DEFAULT_STATUSES)


async def set_statuses(
    store: EventStore, workspace_id: UUID, statuses: list[StatusDefinition], actor: str
) -> int:
    """Replace the workspace's statuses; the log position (0 when nothing changed)."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")

    async def attempt() -> int:
        found = await store.load(StatusList, status_list_id(workspace_id))
        events: Sequence[DomainEvent]
        if found is None:
            events = StatusList(workspace_id=workspace_id, statuses=statuses).collect_events()
        elif found.change(statuses, actor):
            events = found.collect_events()
        else:
            return 0
        return (await store.append(Append(workspace_id, events=events))).position

    return await retrying(attempt)


async def set_status(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    status: str,
    reason: str,
    actor: str,
) -> Done[bool]:
    statuses = await statuses_of(store, workspace_id)

    async def decide(lead: Lead) -> bool:
        return lead.set_status(status, statuses, reason, actor)

    return await change_lead(store, workspace_id, lead_id, decide)


# ---- referral and returns ------------------------------------------------------------------


async def load_partner(store: EventStore, workspace_id: UUID, partner_id: UUID) -> Partner | None:
    partner = await store.load(Partner, partner_id)
    if partner is None or partner.workspace_id != workspace_id or partner.deleted:
        return None
    return partner


async def refer(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    partner_id: UUID,
    actor: str,
    by_user: bool = True,
) -> Done[None]:
    partner = await load_partner(store, workspace_id, partner_id)
    if partner is None:
        raise UnknownPartner(f"partner {partner_id} does not exist")
    if not partner.details.active:
        raise UnknownPartner(f"partner {partner_id} is not active")

    async def decide(lead: Lead) -> None:
        if lead.lead_type_id is not None:
            lead_type = await store.load(LeadType, lead.lead_type_id)
            if lead_type is not None and lead_type.referral.method is ReferralMethod.NEVER:
                raise InvalidTransition(f"leads of type {lead_type.name!r} are never referred")
        lead.refer(partner_id, actor, by_user)

    return await change_lead(store, workspace_id, lead_id, decide)


async def start_return(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    reason: str,
    actor: str,
    partner_id: UUID | None = None,
    as_partner: bool = False,
) -> Done[None]:
    """A partner hands a referred lead back, with a reason (the lead's current partner when
    `partner_id` is not given). `as_partner`: the partner itself asks, and may not learn
    of a lead that is not referred to it (LeadNotFound)."""

    async def decide(lead: Lead) -> None:
        if as_partner and (partner_id is None or lead.referred_to != partner_id):
            raise LeadNotFound(f"lead {lead_id} does not exist")
        partner = partner_id or lead.referred_to
        if partner is None:
            raise InvalidTransition("the lead is not referred to a partner")
        lead.start_return(partner, reason, actor)

    return await change_lead(store, workspace_id, lead_id, decide)


async def decide_return(
    store: EventStore,
    workspace_id: UUID,
    lead_id: UUID,
    accept: bool,
    reason: str,
    actor: str,
) -> Done[None]:
    async def decide(lead: Lead) -> None:
        lead.decide_return(accept, reason, actor)

    return await change_lead(store, workspace_id, lead_id, decide)


# ---- conversion ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    lead: Lead
    contact_id: UUID
    linked_existing: bool
    position: int
    replayed: bool


async def convert(
    store: EventStore, workspace_id: UUID, lead_id: UUID, actor: str, by_user: bool = True
) -> Conversion:
    """Convert the lead into a Contact, or link it to the contact that already holds its
    email or phone. Repeated and concurrent converts of a lead give the same contact: the
    lead's version admits one conversion, and the losers find it when they reload."""

    async def attempt() -> Conversion:
        lead = await load_lead(store, workspace_id, lead_id)
        lead.ensure_live()
        if lead.contact_id is not None:
            return await _converted_already(store, lead)
        loaded_version = lead.version
        # Conversion moves the lead to its pipeline's won stage (`Lead.convert`), so it
        # rests on the pipeline's stages as loaded: a concurrent change of them retries.
        pipeline = await store.load(Pipeline, lead.pipeline_id) if lead.pipeline_id else None
        reads = {pipeline.id: pipeline.version} if pipeline is not None else {}
        keys = contact_keys(workspace_id, lead.email_normal, lead.phone_normal)
        existing: UUID | None = None
        for key in keys:
            existing = await store.holder(key)
            if existing is not None:
                break
        notes = list(lead.notes)
        if existing is not None:
            contact = await store.load(Contact, existing)
            if contact is None:
                raise ConcurrencyConflict(f"contact {existing} is not readable yet")
            contact.link(lead.id, dict(lead.details.custom_fields), notes, actor)
            lead.convert(existing, True, actor, by_user, pipeline)
            appended = await store.append(
                Append(
                    workspace_id,
                    events=[*contact.collect_events(), *lead.collect_events()],
                    expect=reads,
                    claims=[Claim(k, existing) for k in keys],
                )
            )
            return Conversion(lead, existing, True, appended.position, False)
        d = lead.details
        contact = Contact(
            workspace_id=workspace_id,
            lead_id=lead.id,
            name=lead.name,
            email=d.email,
            phone=d.phone,
            email_normal=lead.email_normal,
            phone_normal=lead.phone_normal,
            company=d.company,
            title=d.title,
            custom_fields=dict(d.custom_fields),
            notes=notes,
            actor=actor,
        )
        lead.convert(contact.id, False, actor, by_user, pipeline)
        events = [*contact.collect_events(), *lead.collect_events()]

        def build(allocation: Allocation) -> Sequence[DomainEvent]:
            for key in keys:
                if allocation.holder(key) != contact.id:
                    raise ContactRace(f"{key} was taken by another contact meanwhile")
            return events

        appended = await store.append(
            Append(
                workspace_id,
                build=build,
                expect={lead.id: loaded_version, **reads},
                claims=[Claim(k, contact.id) for k in keys],
            )
        )
        return Conversion(lead, contact.id, False, appended.position, False)

    return await retrying(attempt)


async def _converted_already(store: EventStore, lead: Lead) -> Conversion:
    assert lead.contact_id is not None
    position = 0
    linked = False
    events = await store.history(lead.id)
    for index, logged in enumerate(events):
        if isinstance(logged.event, Lead.Converted):
            # The conversion's position is that of its last event (Converted, then the
            # Converted milestone and the move to the won stage appended with it), as the
            # first answer gave.
            position = logged.position
            linked = logged.event.linked_existing
            for following in events[index + 1 :]:
                if not _part_of_conversion(following.event):
                    break
                position = following.position
    return Conversion(lead, lead.contact_id, linked, position, True)


def _part_of_conversion(event: DomainEvent) -> bool:
    if isinstance(event, Lead.MilestoneReached):
        return event.milestone == Milestone.CONVERTED and event.stage_id is None
    return isinstance(event, Lead.StageChanged) and event.reason == CONVERSION_REASON


async def load_contact(store: EventStore, workspace_id: UUID, contact_id: UUID) -> Contact | None:
    contact = await store.load(Contact, contact_id)
    if contact is None or contact.workspace_id != workspace_id:
        return None
    return contact


# ---- bulk ----------------------------------------------------------------------------------


class BulkAction(StrEnum):
    MOVE_STAGE = "move_stage"
    MOVE_PIPELINE = "move_pipeline"
    ASSIGN = "assign"
    DELETE = "delete"
    TAG = "tag"
    # Send each lead to a campaign (`campaignId`): see `handlers.submission_commands`.
    SUBMIT = "submit"


@dataclass(frozen=True)
class BulkResult:
    lead_id: UUID
    ok: bool
    changed: bool = False
    position: int = 0
    code: str | None = None
    message: str | None = None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": str(self.lead_id), "ok": self.ok}
        if self.ok:
            out.update(changed=self.changed, position=self.position)
        else:
            out["error"] = {"code": self.code, "message": self.message}
        return out


async def bulk(
    store: EventStore,
    workspace_id: UUID,
    action: BulkAction,
    lead_ids: Sequence[UUID],
    actor: str,
    *,
    stage_id: UUID | None = None,
    pipeline_id: UUID | None = None,
    assigned_to: str | None = None,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
    by_user: bool = True,
) -> list[BulkResult]:
    """Apply `action` to each lead on its own (one lead's refusal does not stop the rest) and
    report per lead, in the order given. Each lead is its own aggregate, so there is no
    all-or-nothing across leads; concurrent per-lead appends share group commits."""
    if action is BulkAction.SUBMIT:
        raise InvalidTransition("submit is `handlers.submission_commands.submit_many`")
    if action is BulkAction.MOVE_STAGE and stage_id is None:
        raise InvalidTransition("move_stage needs a stageId")
    if action is BulkAction.MOVE_PIPELINE:
        if pipeline_id is None:
            raise InvalidTransition("move_pipeline needs a pipelineId")
        # One destination for every lead: checked once (refuses the whole request).
        target = await load_pipeline(store, workspace_id, pipeline_id)
        if stage_id is not None and target.stage(stage_id) is None:
            raise InvalidTransition(
                f"stage {stage_id} is not a stage of pipeline {target.id} ({target.name!r})"
            )
    patch = LeadPatch(add_tags=tuple(add_tags), remove_tags=tuple(remove_tags))
    if action is BulkAction.TAG and not (patch.add_tags or patch.remove_tags):
        raise InvalidTransition("tag needs addTags or removeTags")
    if action is BulkAction.ASSIGN and assigned_to is not None:
        # One user for every lead: checked once (`UnknownUser` refuses the whole request).
        assigned_to = str((await assignable_user(store, workspace_id, assigned_to)).id)
    gate = asyncio.Semaphore(BULK_CONCURRENCY)

    async def one(lead_id: UUID) -> BulkResult:
        async with gate:
            try:
                done: Done[Any]
                if action is BulkAction.MOVE_STAGE:
                    assert stage_id is not None
                    done = await move_stage(store, workspace_id, lead_id, stage_id, actor)
                elif action is BulkAction.MOVE_PIPELINE:
                    assert pipeline_id is not None
                    done = await move_pipeline(
                        store, workspace_id, lead_id, pipeline_id, stage_id, actor
                    )
                elif action is BulkAction.ASSIGN:
                    done = await _assign(store, workspace_id, lead_id, assigned_to, actor, by_user)
                elif action is BulkAction.DELETE:
                    done = await delete_lead(store, workspace_id, lead_id, actor, by_user)
                else:
                    done = await update_lead(store, workspace_id, lead_id, patch, actor, by_user)
            except LeadNotFound as error:
                return BulkResult(lead_id, False, code="not_found", message=str(error))
            except InvalidTransition as error:
                return BulkResult(lead_id, False, code="invalid_transition", message=str(error))
            except ConcurrencyConflict as error:
                return BulkResult(lead_id, False, code="conflict", message=str(error))
            return BulkResult(lead_id, True, done.changed, done.position)

    return list(await asyncio.gather(*(one(i) for i in dict.fromkeys(lead_ids))))
