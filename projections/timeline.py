"""A lead's timeline: every event on a lead as one human-readable entry, newest first.

One row per event on a lead (`lead.*`, and `submission.created` and `delivery.*` under
their `lead_id`): who or which channel did it, when, a sentence saying what happened, the old → new
values, and a category (`lead`, or `action` / `webhook`, which readers hide by default).

Which events: every event class declared on the `Lead` aggregate (found by looking at the
class, so an event added there later is read without touching this module) plus
`submission.created`. An event type without a renderer of its own gets a generic entry
built from its fields, so new lead events show up without code changes here.

Stage and pipeline names: a `lead.stage_changed` event holds only ids, and names belong to
the Pipeline aggregate, which this projection does not read. So summaries are stored as
templates with `{stage:<pipeline>/<stage>}` and `{pipeline:<pipeline>}` placeholders (and
`{{`/`}}` for literal braces), and `stage`/`pipeline` changes hold ids; the read API fills
them in from the pipelines' histories with `render_summary` / `render_changes`. The choice:
a stage shows its *current* name (as on the board: renaming "Contacted" to "Reached out"
renames it in every lead's timeline too), and a stage since removed shows the last name it
had. A rename is a change of the pipeline, recorded in the pipeline's own history, not a
change of the lead, so it does not rewrite the lead's history; it only relabels it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.base import DomainEvent, LoggedEvent, snake
from domain.deliveries import Delivery, DeliveryKind, Outcome
from domain.leads import Lead, Source
from domain.submissions import Submission, journey_entry
from projections.base import Projection, ProjectionDb, Tables

LEAD = "lead"
ACTION = "action"
WEBHOOK = "webhook"
SUBMISSION = "submission"
CATEGORIES = (LEAD, ACTION, WEBHOOK, SUBMISSION)
HIDDEN_BY_DEFAULT = frozenset({ACTION, WEBHOOK, SUBMISSION})

SUBMISSION_CREATED = "submission.created"
DELIVERY_EVENTS = (Delivery.Scheduled, Delivery.Attempted, Delivery.RedeliveryRequested)
# What an event carries about itself rather than about the lead: never listed as a change.
_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(stage|pipeline):([^{}]*)\}")

_RECEIVED_FROM = {
    Source.MANUAL: "Entered by hand",
    Source.WEBHOOK: "Received from webhook",
    Source.FORM: "Submitted through the hosted form",
    Source.API: "Submitted through the partner API",
    Source.IMPORT: "Imported from a CSV file",
    Source.NATS: "Received from NATS",
}


def class_event_type(cls: type) -> str:
    """The wire name events of `cls` get (`domain.base.event_type`, from the class)."""
    qualname = cls.__qualname__.split(".")
    if len(qualname) >= 2:
        return f"{snake(qualname[-2])}.{snake(qualname[-1])}"
    return snake(qualname[-1])


def event_types_of(aggregate: type) -> frozenset[str]:
    """Every event type declared on an aggregate class (its nested event classes)."""
    prefix = f"{aggregate.__qualname__}."
    found = set()
    for name in dir(aggregate):
        value = getattr(aggregate, name, None)
        if (
            isinstance(value, type)
            and issubclass(value, DomainEvent)
            and value.__qualname__.startswith(prefix)
        ):
            found.add(class_event_type(value))
    return frozenset(found)


def category_of(event_type: str, event: object | None = None) -> str:
    """`action` for `lead.action_*`, `webhook` for `lead.webhook_*`, else `lead`; an event
    may say otherwise with a `timeline_category` attribute (a ClassVar, or a property when
    it depends on the event, as a delivery's does on its kind)."""
    explicit = getattr(event, "timeline_category", None) if event is not None else None
    if explicit in CATEGORIES:
        return str(explicit)
    _, _, name = event_type.partition(".")
    if name.startswith(ACTION):
        return ACTION
    if name.startswith(WEBHOOK):
        return WEBHOOK
    return LEAD


def lead_of(logged: LoggedEvent) -> UUID | None:
    """The lead an event belongs to: its aggregate for `lead.*`, `lead_id` for a submission
    or a delivery."""
    event = logged.event
    if isinstance(event, Submission.Created | Submission.Step):
        return event.lead_id
    if isinstance(event, DELIVERY_EVENTS):
        return event.lead_id
    if logged.event_type.startswith("lead."):
        return event.originator_id
    return None


def humanize(event_type: str) -> str:
    """`lead.note_added` → `Note added`."""
    _, _, name = event_type.partition(".")
    words = (name or event_type).replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def literal(text: str) -> str:
    """Text as it appears in a summary template (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


def stage_ref(pipeline_id: UUID | None, stage_id: UUID) -> str:
    return f"{{stage:{pipeline_id or ''}/{stage_id}}}"


def pipeline_ref(pipeline_id: UUID) -> str:
    return f"{{pipeline:{pipeline_id}}}"


def change(field_name: str, old: Any, new: Any) -> dict[str, Any]:
    return {"field": field_name, "old": _jsonable(old), "new": _jsonable(new)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


@dataclass
class LeadState:
    """What the timeline remembers of a lead between events (table `timeline_leads`)."""

    workspace_id: UUID | None
    request_id: int | None
    actor: str | None
    pipeline_id: UUID | None
    position: int


@dataclass(frozen=True)
class Entry:
    actor: str
    summary: str
    changes: list[dict[str, Any]] = field(default_factory=list)
    category: str = LEAD


# ---- rendering at write time --------------------------------------------------------------


def _actor(event: DomainEvent, fallback: str) -> str:
    for attribute in ("actor", "channel"):
        value = getattr(event, attribute, None)
        if isinstance(value, str) and value:
            return value
    return fallback


def _with_reason(summary: str, reason: object) -> str:
    if isinstance(reason, str) and reason.strip():
        return f"{summary} — {literal(reason.strip())}"
    return summary


def _received(event: Lead.Received, original: int | None) -> Entry:
    summary = literal(_RECEIVED_FROM.get(event.source, f"Received from {event.source}"))
    if event.channel and event.source in (Source.NATS, Source.IMPORT):
        summary += f" ({literal(event.channel)})"
    if event.is_duplicate:
        summary += f" (duplicate of #{original})" if original else " (a duplicate)"
    d = event.details
    changes = [change("requestId", None, event.request_id)]
    for name, value in (
        ("name", event.name),
        ("email", d.email),
        ("phone", d.phone),
        ("company", d.company),
        ("title", d.title),
        ("source", str(event.source)),
        ("status", str(event.status)),
    ):
        if value:
            changes.append(change(name, None, value))
    if d.tags:
        changes.append(change("tags", None, list(d.tags)))
    if event.stage_id is not None:
        changes.append(
            {**change("stage", None, event.stage_id), "newPipelineId": _jsonable(event.pipeline_id)}
        )
    if d.campaign_id is not None:
        changes.append(change("campaignId", None, d.campaign_id))
    if d.customer_id is not None:
        changes.append(change("customerId", None, d.customer_id))
    return Entry(actor=_actor(event, "system"), summary=summary, changes=changes)


def _stage_changed(event: Lead.StageChanged, old_pipeline: UUID | None) -> Entry:
    new = stage_ref(event.pipeline_id, event.new_stage_id)
    moved_pipeline = old_pipeline is not None and old_pipeline != event.pipeline_id
    if moved_pipeline:
        assert old_pipeline is not None
        new = f"{pipeline_ref(event.pipeline_id)} / {new}"
    if event.old_stage_id is None:
        summary = f"Placed in {new}"
    else:
        old = stage_ref(old_pipeline or event.pipeline_id, event.old_stage_id)
        if moved_pipeline:
            assert old_pipeline is not None
            old = f"{pipeline_ref(old_pipeline)} / {old}"
        summary = f"Moved from {old} to {new}"
    changes = [
        {
            **change("stage", event.old_stage_id, event.new_stage_id),
            "oldPipelineId": _jsonable(old_pipeline or event.pipeline_id),
            "newPipelineId": _jsonable(event.pipeline_id),
        }
    ]
    if moved_pipeline:
        changes.append(change("pipeline", old_pipeline, event.pipeline_id))
    return Entry(
        actor=_actor(event, "system"), summary=_with_reason(summary, event.reason), changes=changes
    )


def _generic(logged: LoggedEvent) -> Entry:
    """An entry for an event type nobody wrote a renderer for, from its own fields."""
    event = logged.event
    data = {k: v for k, v in event.model_dump(mode="json").items() if k not in _ENVELOPE}
    actor = _actor(event, "system")
    for who in ("actor", "channel", "by_user"):
        data.pop(who, None)
    reason = data.pop("reason", None)
    changes: list[dict[str, Any]]
    listed = data.get("changes")
    if isinstance(listed, list) and all(isinstance(c, dict) and "field" in c for c in listed):
        changes = [change(str(c["field"]), c.get("old"), c.get("new")) for c in listed]
    elif "old" in data and "new" in data:
        name = data.pop("field", None) or logged.event_type.partition(".")[2]
        changes = [change(camel(str(name)), data["old"], data["new"])]
    else:
        changes = [
            change(camel(k), None, v) for k, v in data.items() if v not in (None, "", [], {})
        ]
    return Entry(
        actor=actor,
        summary=_with_reason(literal(humanize(logged.event_type)), reason),
        changes=changes,
        category=category_of(logged.event_type, event),
    )


def describe(
    logged: LoggedEvent, state: LeadState | None, original: LeadState | None = None
) -> Entry:
    """The timeline entry of one event, given what was known of the lead before it (and of
    the lead it duplicates)."""
    event = logged.event
    if isinstance(event, Lead.Received):
        return _received(event, original.request_id if original else None)
    if isinstance(event, Lead.StatusChanged):
        summary = f"Status changed from {literal(event.old)} to {literal(event.new)}"
        return Entry(
            actor=_actor(event, "system"),
            summary=_with_reason(summary, event.reason),
            changes=[change("status", event.old, event.new)],
        )
    if isinstance(event, Lead.StageChanged):
        return _stage_changed(event, state.pipeline_id if state else None)
    if isinstance(event, Lead.MilestoneReached) and event.stage_id is not None:
        # Reached by entering a won/lost stage: the move is the entry just before this one.
        where = stage_ref(state.pipeline_id if state else None, event.stage_id)
        return Entry(
            actor=_actor(event, "system"),
            summary=f"Milestone reached: {literal(str(event.milestone))} (entered {where})",
            changes=[change("milestone", None, str(event.milestone))],
        )
    if isinstance(event, Lead.InvitationRequested):
        return Entry(
            actor="system:intake",
            summary="Invitation to register requested for the lead's customer",
            changes=[change("customerId", None, event.customer_id)],
        )
    if isinstance(event, Submission.Created):
        fallback = state.actor if state and state.actor else "system"
        return Entry(
            actor=_actor(event, fallback),
            summary=(f"Submitted to campaign {event.campaign_id} (status {literal(event.status)})"),
            changes=[
                change("submissionId", None, event.originator_id),
                change("campaignId", None, event.campaign_id),
                change("status", None, event.status),
            ],
        )
    if isinstance(event, Submission.Step):
        return _submission_step(event)
    if isinstance(event, DELIVERY_EVENTS):
        return _delivery(logged.event_type, event)
    return _generic(logged)


def _submission_step(event: Submission.Step) -> Entry:
    """`Submission 1f…: delivery rejected (buyer said: no coverage)`: one pipeline step."""
    entry = journey_entry(event, event.timestamp)
    words = f"{entry['step'].replace('_', ' ')} {entry.get('outcome', '')}".strip()
    reason = entry.get("reason")
    summary = f"Submission {event.originator_id}: {words}"
    if reason:
        summary += f" ({reason})"
    changes = [change("submissionId", None, event.originator_id)]
    if event.status:
        changes.append(change("status", None, event.status))
    return Entry(
        actor=str(getattr(event, "actor", None) or "system:campaigns"),
        summary=literal(summary),
        changes=changes,
        category=SUBMISSION,
    )


def _delivery_label(kind: DeliveryKind, event_code: str | None, target: str | None) -> str:
    """`Webhook deliveryndupe to https://…` / `Email status to ann@example.com`."""
    label = "Webhook" if kind is DeliveryKind.WEBHOOK else "Email"
    if event_code:
        label += f" {event_code}"
    return literal(f"{label} to {target}" if target else label)


def _delivery(
    event_type: str,
    event: Delivery.Scheduled | Delivery.Attempted | Delivery.RedeliveryRequested,
) -> Entry:
    category = category_of(event_type, event)
    delivery = change("deliveryId", None, event.originator_id)
    if isinstance(event, Delivery.Scheduled):
        return Entry(
            actor="system:actions",
            summary=f"{_delivery_label(event.kind, event.event_code, event.target)} scheduled",
            changes=[delivery, change("target", None, event.target)],
            category=category,
        )
    label = _delivery_label(event.kind, event.event_code, event.target)
    if isinstance(event, Delivery.RedeliveryRequested):
        return Entry(
            actor=event.actor,
            summary=f"{label}: redelivery requested",
            changes=[delivery],
            category=category,
        )
    got = str(event.status_code) if event.status_code is not None else (event.error or "no answer")
    took = f"{event.latency_ms:.0f} ms"
    follow = {
        Outcome.SUCCEEDED: "delivered",
        Outcome.FAILED: "failed",
        Outcome.DISABLED: "gone: the action is disabled",
        Outcome.RETRYING: (
            f"retrying at {event.next_attempt_at.isoformat()}"
            if event.next_attempt_at is not None
            else "retrying"
        ),
    }[event.outcome]
    changes = [
        delivery,
        change("attempt", None, event.attempt),
        change("outcome", None, event.outcome),
    ]
    if event.status_code is not None:
        changes.append(change("statusCode", None, event.status_code))
    if event.error:
        changes.append(change("error", None, event.error))
    return Entry(
        actor="system:deliveries",
        summary=f"{label} — attempt {event.attempt}: {literal(got)} in {took}, {follow}",
        changes=changes,
        category=category,
    )


# ---- rendering at read time ---------------------------------------------------------------


@dataclass
class Names:
    """Current names of pipelines and stages (a removed stage: the last name it had)."""

    pipelines: dict[UUID, str] = field(default_factory=dict)
    stages: dict[UUID, str] = field(default_factory=dict)

    def stage(self, stage_id: object) -> str:
        key = _uuid(stage_id) if stage_id else None
        found = self.stages.get(key) if key is not None else None
        return found or "an unknown stage"

    def pipeline(self, pipeline_id: object) -> str:
        key = _uuid(pipeline_id) if pipeline_id else None
        found = self.pipelines.get(key) if key is not None else None
        return found or "an unknown pipeline"


def _uuid(value: object) -> UUID | None:
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        return None


def referenced_pipelines(summary: str, changes: Iterable[Mapping[str, Any]]) -> set[UUID]:
    """The pipelines whose names an entry needs."""
    found: set[UUID] = set()
    for match in _PLACEHOLDER.finditer(summary):
        if match.group(1):
            pipeline = _uuid(match.group(2).partition("/")[0])
            if pipeline is not None:
                found.add(pipeline)
    for item in changes:
        if item.get("field") == "pipeline":
            candidates = [item.get("old"), item.get("new")]
        else:
            candidates = [item.get("oldPipelineId"), item.get("newPipelineId")]
        found.update(p for p in (_uuid(c) for c in candidates if c) if p is not None)
    return found


def render_summary(template: str, names: Names) -> str:
    def replace(match: re.Match[str]) -> str:
        kind = match.group(1)
        if kind is None:
            return match.group(0)[0]
        ref = match.group(2)
        if kind == "stage":
            return names.stage(ref.partition("/")[2])
        return names.pipeline(ref)

    return _PLACEHOLDER.sub(replace, template)


def render_changes(changes: Iterable[Mapping[str, Any]], names: Names) -> list[dict[str, Any]]:
    """Stage and pipeline changes with names (`old`/`new`) beside their ids (`oldId`/`newId`)."""
    rendered = []
    for item in changes:
        kind = item.get("field")
        if kind in ("stage", "pipeline"):
            label = names.stage if kind == "stage" else names.pipeline
            old, new = item.get("old"), item.get("new")
            rendered.append(
                {
                    "field": kind,
                    "old": label(old) if old else None,
                    "new": label(new) if new else None,
                    "oldId": old,
                    "newId": new,
                }
            )
        else:
            # jsonb keeps keys in its own order: put them back in the wire's
            rendered.append({"field": kind, "old": item.get("old"), "new": item.get("new")})
    return rendered


# ---- the projection -----------------------------------------------------------------------


class LeadTimeline(Projection):
    name = "timeline"
    version = 2
    table_names = ("timeline_entries", "timeline_leads")
    event_types = event_types_of(Lead) | event_types_of(Submission) | event_types_of(Delivery)

    def create_sql(self, tables: Tables) -> str:
        entries = tables["timeline_entries"]
        leads = tables["timeline_leads"]
        return f"""
            CREATE TABLE IF NOT EXISTS {entries} (
                lead_id      uuid        NOT NULL,
                position     bigint      NOT NULL,
                workspace_id uuid        NOT NULL,
                event_id     uuid        NOT NULL,
                event_type   text        NOT NULL,
                occurred_at  timestamptz NOT NULL,
                actor        text        NOT NULL,
                summary      text        NOT NULL,
                changes      jsonb       NOT NULL DEFAULT '[]',
                category     text        NOT NULL,
                PRIMARY KEY (lead_id, position)
            );
            CREATE INDEX IF NOT EXISTS {entries}_category
                ON {entries} (lead_id, category, position DESC);
            CREATE TABLE IF NOT EXISTS {leads} (
                lead_id          uuid   PRIMARY KEY,
                workspace_id     uuid,
                request_id       bigint,
                actor            text,
                pipeline_id      uuid,
                updated_position bigint NOT NULL
            );
        """

    async def apply(self, db: ProjectionDb, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        entries_table = tables["timeline_entries"]
        leads_table = tables["timeline_leads"]
        wanted: set[UUID] = set()
        for logged in events:
            lead_id = lead_of(logged)
            if lead_id is not None:
                wanted.add(lead_id)
            event = logged.event
            if isinstance(event, Lead.Received) and event.duplicate_of is not None:
                wanted.add(event.duplicate_of)
        if not wanted:
            return
        states = {
            row["lead_id"]: LeadState(
                row["workspace_id"],
                row["request_id"],
                row["actor"],
                row["pipeline_id"],
                row["updated_position"],
            )
            for row in await db.fetch(
                f"SELECT * FROM {leads_table} WHERE lead_id = ANY($1::uuid[])", list(wanted)
            )
        }
        touched: set[UUID] = set()
        rows: list[tuple[Any, ...]] = []
        for logged in events:
            lead_id = lead_of(logged)
            if lead_id is None:
                continue
            state = states.get(lead_id)
            if state is not None and state.position >= logged.position:
                continue  # applied before: the state is past it, and so is its entry
            event = logged.event
            original = None
            if isinstance(event, Lead.Received) and event.duplicate_of is not None:
                original = states.get(event.duplicate_of)
            entry = describe(logged, state, original)
            workspace_id = (
                getattr(event, "workspace_id", None)
                or logged.workspace_id
                or (state.workspace_id if state else None)
            )
            if workspace_id is None:
                raise ValueError(f"{logged.event_type} at {logged.position} names no workspace")
            rows.append(
                (
                    lead_id,
                    logged.position,
                    workspace_id,
                    logged.event_id,
                    logged.event_type,
                    event.timestamp,
                    entry.actor,
                    entry.summary,
                    json.dumps(entry.changes),
                    entry.category,
                )
            )
            states[lead_id] = self._next_state(state, event, workspace_id, logged.position)
            touched.add(lead_id)
        if rows:
            await db.execute(
                f"""
                INSERT INTO {entries_table} (lead_id, position, workspace_id, event_id,
                                             event_type, occurred_at, actor, summary, changes,
                                             category)
                SELECT l, p, w, e, t, o, a, s, c::jsonb, g
                  FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[])
                       AS r(l, p, w, e, t, o, a, s, c, g)
                ON CONFLICT (lead_id, position) DO NOTHING
                """,
                *(list(column) for column in zip(*rows, strict=True)),
            )
        if touched:
            changed = [(lead_id, states[lead_id]) for lead_id in sorted(touched)]
            await db.execute(
                f"""
                INSERT INTO {leads_table} AS t (lead_id, workspace_id, request_id, actor,
                                                pipeline_id, updated_position)
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[],
                                     $5::uuid[], $6::bigint[])
                ON CONFLICT (lead_id) DO UPDATE
                   SET workspace_id = EXCLUDED.workspace_id,
                       request_id = EXCLUDED.request_id, actor = EXCLUDED.actor,
                       pipeline_id = EXCLUDED.pipeline_id,
                       updated_position = EXCLUDED.updated_position
                 WHERE t.updated_position < EXCLUDED.updated_position
                """,
                [lead_id for lead_id, _ in changed],
                [s.workspace_id for _, s in changed],
                [s.request_id for _, s in changed],
                [s.actor for _, s in changed],
                [s.pipeline_id for _, s in changed],
                [s.position for _, s in changed],
            )

    @staticmethod
    def _next_state(
        state: LeadState | None, event: DomainEvent, workspace_id: UUID, position: int
    ) -> LeadState:
        if isinstance(event, Lead.Received):
            return LeadState(
                workspace_id, event.request_id, event.actor, event.pipeline_id, position
            )
        if state is None:
            state = LeadState(workspace_id, None, None, None, position)
        state.position = position
        if isinstance(event, Lead.StageChanged):
            state.pipeline_id = event.pipeline_id
        return state
