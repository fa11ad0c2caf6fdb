"""Command handlers for hosted lead forms, and turning a form submission into a lead."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from domain.campaigns import Campaign, UnknownCampaign
from domain.forms import FormReading, FormSettings, LeadForm
from domain.leads import LeadDetails, Source
from handlers.intake import Intake, LeadIntake, Receipt
from handlers.listing import aggregates_of
from handlers.ports import Append, Claim, EventStore

FORM_KEY_BYTES = 18
_FORM_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")
_SUBMISSION_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


class FormNotFound(LookupError):
    pass


def new_form_key() -> str:
    return secrets.token_urlsafe(FORM_KEY_BYTES)


def new_submission_token() -> str:
    return secrets.token_urlsafe(16)


def form_key_claim(form_key: str) -> str:
    return f"form:{form_key}"


async def create_form(
    store: EventStore,
    workspace_id: UUID,
    settings: FormSettings,
    generate: Callable[[], str] = new_form_key,
) -> tuple[LeadForm, int]:
    await _check_campaign(store, workspace_id, settings.campaign_id)
    form_key = generate()
    form = LeadForm(workspace_id=workspace_id, form_key=form_key, settings=settings)
    appended = await store.append(
        Append(
            workspace_id,
            events=form.collect_events(),
            claims=[Claim(form_key_claim(form_key), form.id, exclusive=True)],
        )
    )
    return form, appended.position


async def _check_campaign(store: EventStore, workspace_id: UUID, campaign_id: UUID | None) -> None:
    """A form's leads go to its campaign: it must be one of the workspace's."""
    if campaign_id is None:
        return
    campaign = await store.load(Campaign, campaign_id)
    if campaign is None or campaign.deleted or campaign.workspace_id != workspace_id:
        raise UnknownCampaign(f"campaign {campaign_id} does not exist in this workspace")


async def get_form(store: EventStore, workspace_id: UUID, form_id: UUID) -> LeadForm:
    """The workspace's form; another workspace's or a deleted one is simply not found."""
    form = await store.load(LeadForm, form_id)
    if form is None or form.workspace_id != workspace_id or form.deleted:
        raise FormNotFound(f"lead form {form_id} does not exist")
    return form


async def update_form(
    store: EventStore, workspace_id: UUID, form_id: UUID, changes: Mapping[str, Any]
) -> tuple[LeadForm, int]:
    """Apply snake_case `changes` over the current settings; pydantic checks the result."""
    form = await get_form(store, workspace_id, form_id)
    settings = FormSettings.model_validate({**form.settings.model_dump(), **changes})
    if settings == form.settings:
        return form, 0
    if settings.campaign_id != form.settings.campaign_id:
        await _check_campaign(store, workspace_id, settings.campaign_id)
    form.update(settings)
    appended = await store.append(Append(workspace_id, events=form.collect_events()))
    return form, appended.position


async def rotate_form_key(
    store: EventStore,
    workspace_id: UUID,
    form_id: UUID,
    generate: Callable[[], str] = new_form_key,
) -> tuple[LeadForm, int]:
    """A new key; the old URL stops answering at once (its claim goes with the same append)."""
    form = await get_form(store, workspace_id, form_id)
    old_key = form.form_key
    form.rotate_key(generate())
    appended = await store.append(
        Append(
            workspace_id,
            events=form.collect_events(),
            claims=[Claim(form_key_claim(form.form_key), form.id, exclusive=True)],
            releases=[form_key_claim(old_key)],
        )
    )
    return form, appended.position


async def delete_form(store: EventStore, workspace_id: UUID, form_id: UUID) -> int:
    """The form stops answering; the leads it brought in stay."""
    form = await get_form(store, workspace_id, form_id)
    form.delete()
    appended = await store.append(
        Append(
            workspace_id,
            events=form.collect_events(),
            releases=[form_key_claim(form.form_key)],
        )
    )
    return appended.position


async def list_forms(
    store: EventStore, workspace_id: UUID, page_size: int = 1000
) -> list[LeadForm]:
    """The workspace's forms, oldest first (a workspace has few)."""
    return await aggregates_of(store, LeadForm, "lead_form.created", workspace_id, page_size)


async def form_by_key(store: EventStore, form_key: str) -> LeadForm | None:
    """The form a public key opens, if it is live; None for anything else."""
    if not _FORM_KEY.fullmatch(form_key):
        return None
    form_id = await store.holder(form_key_claim(form_key))
    if form_id is None:
        return None
    form = await store.load(LeadForm, form_id)
    if form is None or form.form_key != form_key or not form.accepts_submissions:
        return None
    return form


def submission_key(form: LeadForm, token: str | None) -> str | None:
    """The idempotency key of one rendered page's submission (a re-sent POST replays)."""
    if token and _SUBMISSION_TOKEN.fullmatch(token):
        return f"form:{form.id}:{token}"
    return None


async def submit_form(
    intake: LeadIntake, form: LeadForm, reading: FormReading, token: str | None
) -> Receipt:
    """The lead a valid submission makes; the form's name stands in when it gives no name."""
    return await intake.receive(
        Intake(
            workspace_id=form.workspace_id,
            details=LeadDetails.model_validate(reading.data),
            source=Source.FORM,
            actor=f"form:{form.id}",
            channel=f"form:{form.id}",
            fallback_name=form.settings.name,
            idempotency_key=submission_key(form, token),
        )
    )
