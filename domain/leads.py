"""The lead: the person who came in, and the rules for receiving one (names, dedup, status)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from domain.base import Aggregate, snake
from domain.milestones import Milestone, StatusDefinition, find_status
from domain.normalize import Normalised
from domain.pipelines import Pipeline, StageType
from domain.text import clean_json, clean_text

SHORT_TEXT = 500
LONG_TEXT = 10_000
MAX_TAGS = 100
MAX_CUSTOM_FIELDS = 500


class Source(StrEnum):
    MANUAL = "manual"
    WEBHOOK = "webhook"
    FORM = "form"
    API = "api"
    IMPORT = "import"
    NATS = "nats"


class Status(StrEnum):
    """The statuses intake assigns; a workspace may define more for later changes."""

    NEW = "new"
    PENDING = "pending"
    BACKLOG = "backlog"
    ABANDONED = "abandoned"


class ReturnStatus(StrEnum):
    """Where the latest return of a referred lead stands (None: no return since referral)."""

    OPEN = "open"
    ACCEPTED = "accepted"
    DECLINED = "declined"


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; frozen; unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid"
    )


class Attachment(WireModel):
    url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(default=None, max_length=SHORT_TEXT)
    file_type: str | None = Field(default=None, max_length=200)
    size: int | None = Field(default=None, ge=0)


STORED = "stored"


def stored(info: ValidationInfo) -> bool:
    """True while decoding an event from the log: it was cleaned when it came in, and
    cleaning it again on every read would only cost time."""
    return bool(info.context and info.context.get(STORED))


def _short(value: Any) -> Any:
    return clean_text(value, max_length=SHORT_TEXT) or None if isinstance(value, str) else value


class LeadDetails(WireModel):
    """What a submission says about the person, cleaned; every channel produces one."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    company: str | None = None
    title: str | None = None
    tags: tuple[str, ...] = ()
    category: str | None = None
    product: str | None = None
    description: str | None = None
    customer_id: UUID | None = None
    vendor_id: UUID | None = None
    attachments: tuple[Attachment, ...] = Field(default=(), max_length=50)
    expires_at: datetime | None = None
    created_by: str | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict)
    display_names: dict[str, str] = Field(default_factory=dict)
    attribution: dict[str, str] = Field(default_factory=dict)
    answers: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, Any] = Field(default_factory=dict)
    campaign_id: UUID | None = None

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any, info: ValidationInfo) -> Any:
        # One pass over the raw input; skipped for events read back from the log.
        if stored(info) or not isinstance(data, dict):
            return data
        data = _split_display_names(data)
        for key, clean in _CLEANERS_BY_KEY:
            if key in data:
                data[key] = clean(data[key])
        return data


def _split_display_names(data: dict[str, Any]) -> dict[str, Any]:
    """On the wire the display names travel inside customFields as `_displayNames`."""
    data = dict(data)
    fields = data.get("customFields", data.get("custom_fields"))
    if isinstance(fields, dict) and "_displayNames" in fields:
        fields = dict(fields)
        names = fields.pop("_displayNames")
        data.pop("custom_fields", None)
        data["customFields"] = fields
        if isinstance(names, dict):
            data.setdefault("displayNames", names)
    return data


def _long(value: Any) -> Any:
    return clean_text(value, max_length=LONG_TEXT) or None if isinstance(value, str) else value


def _tags(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list | tuple):
        seen: dict[str, str] = {}
        for tag in value:
            cleaned = clean_text(str(tag), max_length=100)
            if cleaned:
                seen.setdefault(tag_key(cleaned), cleaned)
        if len(seen) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        return tuple(seen.values())
    return value


def tag_key(tag: str) -> str:
    """Tags match case-insensitively (`Hot` is `hot`); the first spelling seen is shown."""
    return tag.casefold()


def merge_tags(
    current: list[str] | tuple[str, ...],
    replace: tuple[str, ...] | None,
    add: tuple[str, ...],
    remove: tuple[str, ...],
) -> list[str]:
    """`current` replaced by `replace` (if given), then `add` appended and `remove` dropped,
    all compared case-insensitively; a tag kept keeps the spelling it had."""
    tags: dict[str, str] = {}
    for tag in replace if replace is not None else current:
        tags.setdefault(tag_key(tag), tag)
    for tag in add:
        tags.setdefault(tag_key(tag), tag)
    for tag in remove:
        tags.pop(tag_key(tag), None)
    return list(tags.values())


def _json_fields(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > MAX_CUSTOM_FIELDS:
            raise ValueError(f"at most {MAX_CUSTOM_FIELDS} fields")
        return clean_json(value)
    return value


def _string_map(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            clean_text(str(k), max_length=SHORT_TEXT): clean_text(str(v), max_length=LONG_TEXT)
            for k, v in value.items()
            if v is not None
        }
    return value


_CLEANERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(
        ("name", "email", "phone", "company", "title", "category", "product", "created_by"),
        _short,
    ),
    "description": _long,
    "tags": _tags,
    **dict.fromkeys(("custom_fields", "answers", "consent"), _json_fields),
    **dict.fromkeys(("display_names", "attribution"), _string_map),
}
# Each cleaner under both names a field may arrive by: snake_case and its camelCase alias.
_CLEANERS_BY_KEY: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
    (key, clean)
    for field, clean in _CLEANERS.items()
    for key in dict.fromkeys((field, to_camel(field)))
)


class MissingName(ValueError):
    """A lead needs something to call it by: a name, an email, a phone or a fallback."""


def resolve_name(details: LeadDetails, fallback: str | None = None) -> str:
    """The name, else the email, else the phone, else the channel's own name."""
    for candidate in (details.name, details.email, details.phone, fallback):
        if candidate:
            return candidate
    raise MissingName("a lead needs a name, an email or a phone")


def dedup_scope(workspace_id: UUID, campaign_id: UUID | None) -> str:
    """Duplicates are looked for in the campaign a submission names, else the workspace."""
    return f"{workspace_id}:campaign:{campaign_id}" if campaign_id else f"{workspace_id}:workspace"


def dedup_keys(scope: str, email: Normalised, phone: Normalised) -> list[str]:
    """The unique keys a lead claims; the first lead to claim one is the original."""
    keys = []
    if email.normal:
        keys.append(f"lead:{scope}:email:{email.normal}")
    if phone.normal:
        keys.append(f"lead:{scope}:phone:{phone.normal}")
    return keys


def initial_status(source: Source, customer_active: bool | None) -> tuple[Status, bool]:
    """(status, whether to request an invitation) for a new lead.

    Imported leads are `new` and go no further. A lead for a customer with an active account
    is `backlog`; for a customer without one it is `pending` and the customer is invited. A
    lead with no customer has nobody to invite, so it starts in `backlog`.
    """
    if source is Source.IMPORT:
        return Status.NEW, False
    if customer_active is False:
        return Status.PENDING, True
    return Status.BACKLOG, False


# The reason on the stage move a conversion makes (`Lead.convert`).
CONVERSION_REASON = "converted"


class InvalidTransition(ValueError):
    """A command the lead's current state does not allow (a deleted lead, a stage of another
    pipeline, an unknown status, a return with nothing referred...)."""


class LeadDeleted(InvalidTransition):
    def __init__(self) -> None:
        super().__init__("the lead is deleted: restore it first")


class FieldChange(BaseModel):
    """One field's old → new value in an update (`customFields.<key>` for a custom field)."""

    model_config = ConfigDict(frozen=True)

    field: str
    old: Any = None
    new: Any = None


class Note(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    value: str
    author: str
    created_at: datetime


# The lead's own fields a PATCH may change, by wire name.
EDITABLE = ("name", "email", "phone", "company", "title", "category", "product", "description")


class LeadPatch(WireModel):
    """`PATCH /v1/leads/{id}`: the fields given (null clears one, but not the name); tags
    replaced (`tags`) or edited (`addTags` / `removeTags`); custom fields merged (null drops
    a key)."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    company: str | None = None
    title: str | None = None
    category: str | None = None
    product: str | None = None
    description: str | None = None
    tags: tuple[str, ...] | None = None
    add_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    custom_fields: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _clean(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        # `tagsAdd` / `tagsRemove`: the names earlier docs gave; same meaning.
        for old, canonical in (("tagsAdd", "addTags"), ("tagsRemove", "removeTags")):
            if old in data:
                if canonical in data or snake(canonical) in data:
                    raise ValueError(f"give {canonical} or {old}, not both")
                data[canonical] = data.pop(old)
        cleaners = {**_CLEANERS, "add_tags": _tags, "remove_tags": _tags}
        for field, clean in cleaners.items():
            for key in (field, to_camel(field)):
                if key in data and data[key] is not None:
                    data[key] = clean(data[key])
        return data


def note_text(value: str) -> str:
    cleaned = clean_text(value, max_length=LONG_TEXT)
    if not cleaned:
        raise InvalidTransition("a note needs some text")
    return cleaned


class Lead(Aggregate):
    """A person who came in through some channel; every later change is one of its events."""

    # Chosen by the intake handler before the append: the lead's claims name it as owner.
    id: UUID

    class Received(Aggregate.Created):
        workspace_id: UUID
        request_id: int
        source: Source
        channel: str | None
        actor: str
        by_user: bool
        name: str
        details: LeadDetails
        email_normal: str | None
        email_valid: bool | None
        phone_normal: str | None
        phone_valid: bool | None
        is_duplicate: bool
        duplicate_of: UUID | None
        status: Status
        idempotency_key: str | None = None
        pipeline_id: UUID | None = None
        stage_id: UUID | None = None
        lead_type_id: UUID | None = None

    class InvitationRequested(Aggregate.Event):
        customer_id: UUID

    class StatusChanged(Aggregate.Event):
        old: str
        new: str
        reason: str
        actor: str

    class StageChanged(Aggregate.Event):
        pipeline_id: UUID
        old_stage_id: UUID | None
        new_stage_id: UUID
        reason: str
        actor: str

    class Assigned(Aggregate.Event):
        """The lead's user changed (the "User Changed" trigger); `new` None unassigns."""

        old: str | None
        new: str | None
        actor: str
        by_user: bool

    class NoteAdded(Aggregate.Event):
        note_id: UUID
        value: str
        actor: str
        by_user: bool

        def apply(self, aggregate: Any) -> None:
            aggregate.notes.append(
                Note(
                    id=self.note_id, value=self.value, author=self.actor, created_at=self.timestamp
                )
            )

    class Updated(Aggregate.Event):
        """Fields changed, old → new; `by_user` tells "Updated (User)" from "Updated (Other)".
        `email_normal` / `phone_normal` are the lead's normal forms after the change."""

        changes: list[FieldChange]
        actor: str
        by_user: bool
        tags_added: list[str] = Field(default_factory=list)
        tags_removed: list[str] = Field(default_factory=list)
        email_normal: str | None = None
        phone_normal: str | None = None
        email_valid: bool | None = None
        phone_valid: bool | None = None

    class Deleted(Aggregate.Event):
        actor: str
        by_user: bool

    class Restored(Aggregate.Event):
        actor: str
        by_user: bool

    class MilestoneReached(Aggregate.Event):
        """The first time the lead's progress reached `milestone` (once per milestone): by
        a status (`status`), by entering a won/lost stage (`stage_id`), or by conversion
        (neither)."""

        milestone: Milestone
        status: str | None
        actor: str
        stage_id: UUID | None = None

    class Referred(Aggregate.Event):
        """Referred to a partner; recorded every time (the "Referred" trigger)."""

        partner_id: UUID
        actor: str
        by_user: bool

        def apply(self, aggregate: Any) -> None:
            aggregate.referred_to = self.partner_id
            aggregate.referred_at = self.timestamp
            aggregate.referrals += 1
            aggregate.return_status = None

    class ReturnStarted(Aggregate.Event):
        partner_id: UUID
        reason: str
        actor: str

    class ReturnAccepted(Aggregate.Event):
        partner_id: UUID
        reason: str
        actor: str

    class ReturnDeclined(Aggregate.Event):
        partner_id: UUID
        reason: str
        actor: str

    class MessageActivity(Aggregate.Event):
        """What a message to or from the lead did: a reply, an open, a click, a failure, an
        unsubscribe or a spam report (the Lead Actions guide's message triggers)."""

        kind: str
        channel: str
        message_id: UUID | None = None
        detail: str | None = None
        actor: str

    class LeadTypeChanged(Aggregate.Event):
        old: UUID | None
        new: UUID
        actor: str
        by_user: bool

    class ActionTaken(Aggregate.Event):
        """A lead-type action decided for a trigger: what it did (`done`), or why not
        (`skipped`, `unchanged`), or that it handed work to a delivery (`scheduled`).
        `depth` counts how many actions in a row led here (the loop guard)."""

        trigger: str
        event_code: str
        lead_type_id: UUID
        action_id: UUID
        action_type: str
        outcome: str
        detail: str
        depth: int
        delivery_id: UUID | None = None
        cause_position: int | None = None

    class Converted(Aggregate.Event):
        """Converted into a Contact: a new one, or (`linked_existing`) one that already had
        the lead's email or phone."""

        contact_id: UUID
        linked_existing: bool
        actor: str
        by_user: bool

        def apply(self, aggregate: Any) -> None:
            aggregate.contact_id = self.contact_id
            aggregate.converted_at = self.timestamp

    @event(Received)
    def __init__(
        self,
        workspace_id: UUID,
        request_id: int,
        source: Source,
        channel: str | None,
        actor: str,
        by_user: bool,
        name: str,
        details: LeadDetails,
        email_normal: str | None,
        email_valid: bool | None,
        phone_normal: str | None,
        phone_valid: bool | None,
        is_duplicate: bool,
        duplicate_of: UUID | None,
        status: Status,
        idempotency_key: str | None = None,
        pipeline_id: UUID | None = None,
        stage_id: UUID | None = None,
        lead_type_id: UUID | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.lead_type_id = lead_type_id
        self.request_id = request_id
        self.source = source
        self.channel = channel
        self.name = name
        self.details = details
        self.email_valid = email_valid
        self.phone_valid = phone_valid
        self.is_duplicate = is_duplicate
        self.duplicate_of = duplicate_of
        self.status: str = status
        self.pipeline_id = pipeline_id
        self.stage_id = stage_id
        self.invited: UUID | None = None
        self.email_normal = email_normal
        self.phone_normal = phone_normal
        self.assigned_to: str | None = None
        self.notes: list[Note] = []
        self.deleted = False
        self.milestones: list[Milestone] = []
        self.referred_to: UUID | None = None
        self.referred_at: datetime | None = None
        self.referrals = 0
        self.return_status: ReturnStatus | None = None
        self.open_return: UUID | None = None
        self.contact_id: UUID | None = None
        self.converted_at: datetime | None = None

    @event(InvitationRequested)
    def request_invitation(self, customer_id: UUID) -> None:
        self.invited = customer_id

    def change_status(self, new: str, reason: str, actor: str) -> bool:
        """Move to `new`; False (and no event) when the lead is already there."""
        if new == self.status:
            return False
        self._status_changed(old=self.status, new=new, reason=reason, actor=actor)
        return True

    @event(StatusChanged)
    def _status_changed(self, old: str, new: str, reason: str, actor: str) -> None:
        self.status = new

    def move_to_stage(self, pipeline_id: UUID, stage_id: UUID, reason: str, actor: str) -> bool:
        """Put the lead in `stage_id` of `pipeline_id`; False when it is there already."""
        if self.pipeline_id == pipeline_id and self.stage_id == stage_id:
            return False
        self._stage_changed(
            pipeline_id=pipeline_id,
            old_stage_id=self.stage_id,
            new_stage_id=stage_id,
            reason=reason,
            actor=actor,
        )
        return True

    @event(StageChanged)
    def _stage_changed(
        self,
        pipeline_id: UUID,
        old_stage_id: UUID | None,
        new_stage_id: UUID,
        reason: str,
        actor: str,
    ) -> None:
        self.pipeline_id = pipeline_id
        self.stage_id = new_stage_id

    # ---- working the lead ---------------------------------------------------------------

    def ensure_live(self) -> None:
        if self.deleted:
            raise LeadDeleted()

    def enter_stage(self, pipeline: Pipeline, stage_id: UUID, reason: str, actor: str) -> bool:
        """Put the lead in `stage_id` of `pipeline` and, when it moved into a won or lost
        stage, record that stage type's milestone (Converted, Closed) the first time the
        lead reaches it. False when the lead is in that stage already."""
        stage = pipeline.stage(stage_id)
        if stage is None:
            raise InvalidTransition(f"stage {stage_id} is not a stage of pipeline {pipeline.id}")
        if not self.move_to_stage(pipeline.id, stage_id, reason, actor):
            return False
        if stage.milestone is not None:
            self.reach(stage.milestone, None, actor, stage_id=stage_id)
        return True

    def move_stage(self, pipeline: Pipeline, stage_id: UUID, actor: str) -> bool:
        """A move on the board: `stage_id` must be a stage of the lead's own pipeline (of
        `pipeline`, the workspace's active one, when the lead has none yet)."""
        self.ensure_live()
        if pipeline.deleted or (self.pipeline_id is not None and pipeline.id != self.pipeline_id):
            raise InvalidTransition(f"stage {stage_id} is not a stage of the lead's pipeline")
        if pipeline.stage(stage_id) is None:
            raise InvalidTransition(f"stage {stage_id} is not a stage of the lead's pipeline")
        return self.enter_stage(pipeline, stage_id, "", actor)

    def move_to_pipeline(self, pipeline: Pipeline, stage_id: UUID | None, actor: str) -> bool:
        """Move the lead to `pipeline` (one of its workspace's), into `stage_id` or, when it
        is not given, the first stage; a lead already in `pipeline` with no stage given
        stays where it is (so a repeated move changes nothing). False when nothing moved."""
        self.ensure_live()
        if pipeline.deleted or pipeline.workspace_id != self.workspace_id:
            raise InvalidTransition(f"pipeline {pipeline.id} does not exist")
        if stage_id is None:
            if self.pipeline_id == pipeline.id:
                return False
            stage_id = pipeline.first_stage.id
        if pipeline.stage(stage_id) is None:
            raise InvalidTransition(
                f"stage {stage_id} is not a stage of pipeline {pipeline.id} ({pipeline.name!r})"
            )
        return self.enter_stage(pipeline, stage_id, "", actor)

    def assign(self, user: str | None, actor: str, by_user: bool) -> bool:
        self.ensure_live()
        if user == self.assigned_to:
            return False
        self._assigned(old=self.assigned_to, new=user, actor=actor, by_user=by_user)
        return True

    @event(Assigned)
    def _assigned(self, old: str | None, new: str | None, actor: str, by_user: bool) -> None:
        self.assigned_to = new

    def add_note(self, note_id: UUID, value: str, actor: str, by_user: bool) -> Note:
        self.ensure_live()
        self.trigger_event(
            Lead.NoteAdded, note_id=note_id, value=note_text(value), actor=actor, by_user=by_user
        )
        return self.notes[-1]

    def update(
        self,
        patch: LeadPatch,
        actor: str,
        by_user: bool,
        email_normal: str | None,
        phone_normal: str | None,
        email_valid: bool | None = None,
        phone_valid: bool | None = None,
    ) -> bool:
        """Apply the fields `patch` gives; False (no event) when nothing differs.
        `email_normal` / `phone_normal` (and `_valid`) are the normal forms of the patched
        email and phone and whether they looked valid, as intake computes them (the handler
        does; ignored for a field the patch leaves alone). Tags compare case-insensitively."""
        self.ensure_live()
        given = patch.model_fields_set
        changes: list[FieldChange] = []
        for field in EDITABLE:
            if field not in given:
                continue
            new = getattr(patch, field)
            old = self.name if field == "name" else getattr(self.details, field)
            if field == "name" and not new:
                raise InvalidTransition("a lead's name cannot be cleared")
            if new != old:
                changes.append(FieldChange(field=field, old=old, new=new))
        old_tags = list(self.details.tags)
        tags = merge_tags(old_tags, patch.tags, patch.add_tags, patch.remove_tags)
        if len(tags) > MAX_TAGS:
            raise InvalidTransition(f"at most {MAX_TAGS} tags")
        if tags != old_tags:
            changes.append(FieldChange(field="tags", old=old_tags, new=tags))
        custom = self.details.custom_fields
        for key, value in patch.custom_fields.items():
            if custom.get(key) != value and (value is not None or key in custom):
                changes.append(
                    FieldChange(field=f"customFields.{key}", old=custom.get(key), new=value)
                )
        if len({**custom, **patch.custom_fields}) > MAX_CUSTOM_FIELDS:
            raise InvalidTransition(f"at most {MAX_CUSTOM_FIELDS} custom fields")
        if not changes:
            return False
        changed = {c.field for c in changes}
        old_keys = {tag_key(t) for t in old_tags}
        new_keys = {tag_key(t) for t in tags}
        self._updated(
            changes=changes,
            actor=actor,
            by_user=by_user,
            tags_added=[t for t in tags if tag_key(t) not in old_keys],
            tags_removed=[t for t in old_tags if tag_key(t) not in new_keys],
            email_normal=email_normal if "email" in changed else self.email_normal,
            phone_normal=phone_normal if "phone" in changed else self.phone_normal,
            email_valid=email_valid if "email" in changed else self.email_valid,
            phone_valid=phone_valid if "phone" in changed else self.phone_valid,
        )
        return True

    @event(Updated)
    def _updated(
        self,
        changes: list[FieldChange],
        actor: str,
        by_user: bool,
        tags_added: list[str],
        tags_removed: list[str],
        email_normal: str | None,
        phone_normal: str | None,
        email_valid: bool | None = None,
        phone_valid: bool | None = None,
    ) -> None:
        updates: dict[str, Any] = {}
        custom = dict(self.details.custom_fields)
        for item in changes:
            if item.field == "name":
                self.name = item.new
            elif item.field.startswith("customFields."):
                key = item.field.partition(".")[2]
                if item.new is None:
                    custom.pop(key, None)
                else:
                    custom[key] = item.new
            elif item.field == "tags":
                updates["tags"] = tuple(item.new)
            else:
                updates[snake(item.field)] = item.new
        updates["custom_fields"] = custom
        self.details = self.details.model_copy(update=updates)
        self.email_normal = email_normal
        self.phone_normal = phone_normal
        changed = {item.field for item in changes}
        # Events before validity was recorded carry None: unknown, rather than stale.
        if "email" in changed:
            self.email_valid = email_valid
        if "phone" in changed:
            self.phone_valid = phone_valid

    def delete(self, actor: str, by_user: bool) -> bool:
        """Hide the lead from views (it stays in the log); False when already deleted."""
        if self.deleted:
            return False
        self._deleted(actor=actor, by_user=by_user)
        return True

    @event(Deleted)
    def _deleted(self, actor: str, by_user: bool) -> None:
        self.deleted = True

    def restore(self, actor: str, by_user: bool) -> bool:
        if not self.deleted:
            return False
        self._restored(actor=actor, by_user=by_user)
        return True

    @event(Restored)
    def _restored(self, actor: str, by_user: bool) -> None:
        self.deleted = False

    def set_status(
        self,
        new: str,
        statuses: tuple[StatusDefinition, ...] | list[StatusDefinition],
        reason: str,
        actor: str,
    ) -> bool:
        """Give the lead one of the workspace's `statuses`, and record the status's progress
        milestone the first time it is reached. False when nothing changed."""
        self.ensure_live()
        definition = find_status(statuses, new)
        if definition is None:
            raise InvalidTransition(f"{new!r} is not one of the workspace's statuses")
        changed = self.change_status(new, reason, actor)
        if definition.progress is not None:
            changed = self.reach(definition.progress, new, actor) or changed
        return changed

    def reach(
        self, milestone: Milestone, status: str | None, actor: str, stage_id: UUID | None = None
    ) -> bool:
        if milestone in self.milestones:
            return False
        self._milestone_reached(milestone=milestone, status=status, actor=actor, stage_id=stage_id)
        return True

    @event(MilestoneReached)
    def _milestone_reached(
        self, milestone: Milestone, status: str | None, actor: str, stage_id: UUID | None = None
    ) -> None:
        self.milestones.append(milestone)

    def refer(self, partner_id: UUID, actor: str, by_user: bool) -> None:
        """Refer the lead to a partner: an event every time, even to the same partner."""
        self.ensure_live()
        if self.open_return is not None:
            raise InvalidTransition("a return is open: accept or decline it first")
        self.trigger_event(Lead.Referred, partner_id=partner_id, actor=actor, by_user=by_user)

    def message_activity(
        self,
        kind: str,
        channel: str,
        message_id: UUID | None,
        detail: str | None,
        actor: str,
    ) -> None:
        """Record a message happening on the lead (see `domain.triggers.MESSAGE_TRIGGERS`)."""
        self.trigger_event(
            Lead.MessageActivity,
            kind=kind,
            channel=channel,
            message_id=message_id,
            detail=detail,
            actor=actor,
        )

    def start_return(self, partner_id: UUID, reason: str, actor: str) -> None:
        self.ensure_live()
        if self.referred_to != partner_id:
            raise InvalidTransition("the lead is not referred to this partner")
        if self.open_return is not None:
            raise InvalidTransition("a return is already open")
        reason = clean_text(reason, max_length=SHORT_TEXT)
        if not reason:
            raise InvalidTransition("a return needs a reason")
        self._return_started(partner_id=partner_id, reason=reason, actor=actor)

    @event(ReturnStarted)
    def _return_started(self, partner_id: UUID, reason: str, actor: str) -> None:
        self.open_return = partner_id
        self.return_status = ReturnStatus.OPEN

    def decide_return(self, accept: bool, reason: str, actor: str) -> None:
        """Accept (the partner gives the lead back) or decline the open return."""
        self.ensure_live()
        if self.open_return is None:
            raise InvalidTransition("the lead has no open return")
        reason = clean_text(reason, max_length=SHORT_TEXT)
        if accept:
            self._return_accepted(partner_id=self.open_return, reason=reason, actor=actor)
        else:
            self._return_declined(partner_id=self.open_return, reason=reason, actor=actor)

    @event(ReturnAccepted)
    def _return_accepted(self, partner_id: UUID, reason: str, actor: str) -> None:
        self.open_return = None
        self.referred_to = None
        self.referred_at = None
        self.return_status = ReturnStatus.ACCEPTED

    @event(ReturnDeclined)
    def _return_declined(self, partner_id: UUID, reason: str, actor: str) -> None:
        self.open_return = None
        self.return_status = ReturnStatus.DECLINED

    def change_lead_type(self, lead_type_id: UUID, actor: str, by_user: bool) -> bool:
        """Give the lead another lead type; False when it has that one already."""
        self.ensure_live()
        if lead_type_id == self.lead_type_id:
            return False
        self._lead_type_changed(
            old=self.lead_type_id, new=lead_type_id, actor=actor, by_user=by_user
        )
        return True

    @event(LeadTypeChanged)
    def _lead_type_changed(self, old: UUID | None, new: UUID, actor: str, by_user: bool) -> None:
        self.lead_type_id = new

    def take_action(self, **fields: Any) -> None:
        """Record one lead-type action's outcome (see `ActionTaken`)."""
        self.trigger_event(Lead.ActionTaken, **fields)

    def convert(
        self,
        contact_id: UUID,
        linked_existing: bool,
        actor: str,
        by_user: bool,
        pipeline: Pipeline | None = None,
    ) -> None:
        """Mark the lead converted into `contact_id`, reach Converted (once), and move it to
        the first won stage of `pipeline` (its own pipeline, loaded by the caller) unless it
        sits in a won stage already or the pipeline has none."""
        self.ensure_live()
        if self.contact_id is not None:
            raise InvalidTransition(f"the lead is already converted into {self.contact_id}")
        self.trigger_event(
            Lead.Converted,
            contact_id=contact_id,
            linked_existing=linked_existing,
            actor=actor,
            by_user=by_user,
        )
        self.reach(Milestone.CONVERTED, None, actor)
        if pipeline is None or pipeline.deleted or pipeline.id != self.pipeline_id:
            return
        won = pipeline.won_stage
        current = pipeline.stage(self.stage_id) if self.stage_id is not None else None
        if won is not None and (current is None or current.type is not StageType.WON):
            self.enter_stage(pipeline, won.id, CONVERSION_REASON, actor)
