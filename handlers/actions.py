"""The lead-type action runner: decides, once per trigger, what a lead's actions do.

For one committed lead event the runner finds the triggers it fires (`domain.triggers`),
the lead type the lead had at that event, and that type's actions for each trigger
(Assign to User first, then the configured order). It then decides them one after another
against one copy of the lead, so what an action changes (assignment, status, lead type,
referral) is what the next action sees; a webhook's payload is the lead as it is at that
point. A Change Lead Type action does not change which actions run for the rest of the
trigger: they were chosen from the type the trigger started with.

A referral (however it was made: by hand, by a Refer action, or on receipt by a lead type
that refers immediately) also schedules the partner's referral webhook, in the same append.

Everything decided (the lead's own events, an `ActionTaken` record per action that ran or
was skipped for a reason, and the deliveries scheduled) is returned as one `Append`; the
worker adds its checkpoint, so a trigger's actions are decided exactly once. The changes
actions make fire triggers of their own (an Assign fires User Changed). A chain of
action-made changes stops at `MAX_DEPTH`, so two actions that undo each other cannot loop.

A deleted lead runs no actions. Actions whose conditions do not hold are passed over
without a record (a type's actions are tested on every trigger; recording every miss
would bury the timeline).
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.base import DomainEvent, LoggedEvent
from domain.deliveries import Delivery, DeliveryKind
from domain.lead_types import (
    Action,
    ActionBase,
    AssignMode,
    AssignUser,
    ChangeLeadType,
    ChangeStatus,
    ContactCustomer,
    ContactUser,
    EmailAction,
    LeadType,
    MessageAction,
    NotifyUser,
    Refer,
    ReferralMethod,
    StartWorkflow,
    StopWorkflow,
    TextCustomer,
    Webhook,
    ordered,
)
from domain.leads import InvalidTransition, Lead
from domain.milestones import StatusDefinition
from domain.partners import Partner
from domain.triggers import EVENT_TYPE_CODES, Trigger, triggers_of
from domain.users import User
from handlers.lead_commands import statuses_of
from handlers.partners import referral_delivery
from handlers.ports import Allocation, Append, EventStore
from handlers.users import UnknownGroup, group_members

MAX_DEPTH = 5

DONE = "done"
SKIPPED = "skipped"
UNCHANGED = "unchanged"
SCHEDULED = "scheduled"


def actor_of_action(action: Action) -> str:
    return f"action:{action.id}"


def round_robin_counter(group_id: UUID) -> str:
    return f"round_robin:{group_id}"


def lead_facts(lead: Lead) -> dict[str, Any]:
    """What conditions test: the lead's fields by wire name, custom fields as
    `customFields.<key>`."""
    d = lead.details
    facts: dict[str, Any] = {
        "status": lead.status,
        "source": str(lead.source),
        "channel": lead.channel,
        "tags": list(d.tags),
        "isDuplicate": lead.is_duplicate,
        "assignedTo": lead.assigned_to,
        "stageId": str(lead.stage_id) if lead.stage_id else None,
        "pipelineId": str(lead.pipeline_id) if lead.pipeline_id else None,
        "referredTo": str(lead.referred_to) if lead.referred_to else None,
        "email": d.email,
        "phone": d.phone,
        "company": d.company,
        "category": d.category,
        "product": d.product,
    }
    for key, value in d.custom_fields.items():
        facts[f"customFields.{key}"] = value
    return facts


def lead_payload(lead: Lead, lead_type: LeadType | None, users: dict[UUID, User]) -> dict[str, Any]:
    """The lead as an outbound webhook shows it (wire names in docs/architecture.md)."""
    d = lead.details
    assignee_id = _uuid(lead.assigned_to)
    assignee = users.get(assignee_id) if assignee_id else None
    return {
        "id": str(lead.id),
        "requestId": lead.request_id,
        "name": lead.name,
        "email": d.email,
        "phone": d.phone,
        "company": d.company,
        "title": d.title,
        "tags": list(d.tags),
        "source": str(lead.source),
        "channel": lead.channel,
        "status": lead.status,
        "pipelineId": str(lead.pipeline_id) if lead.pipeline_id else None,
        "stageId": str(lead.stage_id) if lead.stage_id else None,
        "assignedTo": lead.assigned_to,
        "assignedToName": assignee.name if assignee else None,
        "assignedToEmail": assignee.email if assignee else None,
        "leadTypeId": str(lead.lead_type_id) if lead.lead_type_id else None,
        "leadType": lead_type.name if lead_type else None,
        "isDuplicate": lead.is_duplicate,
        "duplicateOf": str(lead.duplicate_of) if lead.duplicate_of else None,
        "referredTo": str(lead.referred_to) if lead.referred_to else None,
        "contactId": str(lead.contact_id) if lead.contact_id else None,
        "createdAt": lead.created_on.isoformat(),
        "customFields": dict(d.custom_fields),
    }


_PLACEHOLDER = re.compile(r"\{([A-Za-z][A-Za-z0-9_.]*)\}")


def render(template: str, payload: dict[str, Any]) -> str:
    """`{name}`, `{customFields.budget}`...: the payload's values; unknown ones are empty."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        found: Any = payload.get(key)
        if found is None and key.startswith("customFields."):
            found = payload.get("customFields", {}).get(key.partition(".")[2])
        if isinstance(found, list):
            return ", ".join(str(v) for v in found)
        return "" if found is None else str(found)

    return _PLACEHOLDER.sub(value, template)


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


@dataclass
class Context:
    """What deciding a trigger's actions needs, loaded before the append's transaction
    (the decision itself runs inside it and must not wait on I/O)."""

    lead: Lead
    lead_type: LeadType
    event: DomainEvent
    position: int
    depth: int
    users: dict[UUID, User] = field(default_factory=dict)
    groups: dict[UUID, list[User]] = field(default_factory=dict)
    partners: dict[UUID, Partner] = field(default_factory=dict)
    lead_types: dict[UUID, LeadType] = field(default_factory=dict)
    statuses: list[StatusDefinition] = field(default_factory=list)


class LeadTypes:
    """Lead types by id, remembered briefly: read on every lead event, changed rarely. A
    change made in another process is used within `TTL` seconds."""

    TTL = 2.0

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._cache: dict[UUID, tuple[LeadType | None, float]] = {}

    async def get(self, lead_type_id: UUID) -> LeadType | None:
        cached = self._cache.get(lead_type_id)
        if cached and time.monotonic() - cached[1] < self.TTL:
            return cached[0]
        found = await self.store.load(LeadType, lead_type_id)
        self._cache[lead_type_id] = (found, time.monotonic())
        return found

    def forget(self, lead_type_id: UUID) -> None:
        self._cache.pop(lead_type_id, None)


class ActionRunner:
    """Decides the actions of one lead event (see the module docstring)."""

    def __init__(self, store: EventStore, lead_types: LeadTypes | None = None) -> None:
        self.store = store
        self.lead_types = lead_types or LeadTypes(store)

    async def decide(self, logged: LoggedEvent) -> Append | None:
        """The writes the event leads to, or None when there are none: its triggers'
        actions, and for a referral the partner's referral webhook (scheduled here, with
        the shard's checkpoint, so once per referral however it was made)."""
        referral = await self._referral(logged)
        decided = await self._actions(logged)
        if not referral:
            return decided
        if decided is None:
            return Append(logged.workspace_id, events=referral)
        decided.events = [*referral, *decided.events]
        return decided

    async def _referral(self, logged: LoggedEvent) -> list[DomainEvent]:
        """The partner's referral webhook for a `Referred` event (the lead as it was right
        after the referral), if the partner is sent referrals."""
        event = logged.event
        if not isinstance(event, Lead.Referred):
            return []
        partner = await self.store.load(Partner, event.partner_id)
        if partner is None or partner.workspace_id != logged.workspace_id:
            return []
        lead = await self.store.load(Lead, event.originator_id, version=event.originator_version)
        delivery = referral_delivery(lead, partner, event) if lead is not None else None
        return list(delivery.collect_events()) if delivery is not None else []

    async def _actions(self, logged: LoggedEvent) -> Append | None:
        """The writes the event's triggers' actions lead to, or None."""
        event = logged.event
        # Both receipt variants: whether the lead is referred on receipt is decided later.
        triggers = list(
            dict.fromkeys(
                triggers_of(event, referred_on_receipt=False)
                + triggers_of(event, referred_on_receipt=True)
            )
        )
        if not triggers:
            return None
        if isinstance(event, Lead.Received):
            # Known from the event: a type with nothing to do costs no load of the lead.
            if event.lead_type_id is None:
                return None
            known = await self.lead_types.get(event.lead_type_id)
            if known is None or not _has_work(known, triggers, receipt=True):
                return None
        lead = await self.store.load(Lead, event.originator_id)
        if lead is None or lead.deleted:
            return None
        lead_type_id = lead.lead_type_id
        if lead.version != event.originator_version:
            then = await self.store.load(Lead, lead.id, version=event.originator_version)
            lead_type_id = then.lead_type_id if then is not None else None
        if lead_type_id is None:
            return None
        lead_type = await self.lead_types.get(lead_type_id)
        receipt = isinstance(event, Lead.Received)
        if lead_type is None or not _has_work(lead_type, triggers, receipt=receipt):
            return None
        immediate = receipt and _refers_on_receipt(lead_type)
        depth = await self._depth_of(event)
        ctx = Context(lead, lead_type, event, logged.position, depth)
        await self._load_references(ctx, triggers, immediate)
        counters = sorted(
            {
                round_robin_counter(a.group_id)
                for t in triggers
                for a in ordered(lead_type.actions, t)
                if isinstance(a, AssignUser)
                and a.mode is AssignMode.ROUND_ROBIN
                and a.group_id is not None
            }
        )
        base_version = lead.version

        def build(allocation: Allocation) -> Sequence[DomainEvent]:
            return Decision(ctx, copy.deepcopy(lead), allocation).run(immediate)

        return Append(
            logged.workspace_id,
            build=build,
            expect={lead.id: base_version},
            counters=counters,
        )

    async def _depth_of(self, event: DomainEvent) -> int:
        """0 for a change a person or a channel made; for one an action made, one more than
        the depth of the decision that made it (recorded by the `ActionTaken` events
        appended with it, right after it in the lead's history)."""
        actor = getattr(event, "actor", "") or ""
        if not actor.startswith("action:"):
            return 0
        for logged in await self.store.history(event.originator_id):
            taken = logged.event
            if (
                isinstance(taken, Lead.ActionTaken)
                and taken.originator_version > event.originator_version
            ):
                return taken.depth + 1
        return MAX_DEPTH

    async def _load_references(
        self, ctx: Context, triggers: list[Trigger], immediate: bool
    ) -> None:
        actions = [a for t in triggers for a in ordered(ctx.lead_type.actions, t)]
        user_ids: set[UUID] = set()
        assignee = _uuid(ctx.lead.assigned_to)
        if assignee:
            user_ids.add(assignee)
        partner_ids: set[UUID] = set()
        if immediate and ctx.lead_type.referral.partner_id is not None:
            partner_ids.add(ctx.lead_type.referral.partner_id)
        for action in actions:
            if isinstance(action, AssignUser):
                if action.user_id is not None:
                    user_ids.add(action.user_id)
                if action.group_id is not None and action.group_id not in ctx.groups:
                    try:
                        members = await group_members(
                            self.store, ctx.lead_type.workspace_id, action.group_id
                        )
                    except UnknownGroup:
                        members = []
                    ctx.groups[action.group_id] = members
                    for member in members:
                        ctx.users[member.id] = member
            elif isinstance(action, NotifyUser):
                user_ids.add(action.user_id)
            elif isinstance(action, Refer):
                partner_ids.add(action.partner_id)
            elif isinstance(action, ChangeLeadType):
                found = await self.lead_types.get(action.lead_type_id)
                if found is not None:
                    ctx.lead_types[found.id] = found
            elif isinstance(action, ChangeStatus) and not ctx.statuses:
                ctx.statuses = await statuses_of(self.store, ctx.lead_type.workspace_id)
        workspace_id = ctx.lead_type.workspace_id
        for user_id in user_ids - set(ctx.users):
            user = await self.store.load(User, user_id)
            if user is not None and user.workspace_id == workspace_id:
                ctx.users[user_id] = user
        for partner_id in partner_ids:
            partner = await self.store.load(Partner, partner_id)
            if partner is not None and partner.workspace_id == workspace_id:
                ctx.partners[partner_id] = partner


def _refers_on_receipt(lead_type: LeadType) -> bool:
    return (
        lead_type.referral.method is ReferralMethod.IMMEDIATELY
        and lead_type.referral.partner_id is not None
    )


def _has_work(lead_type: LeadType, triggers: list[Trigger], *, receipt: bool) -> bool:
    """Whether the type does anything for these triggers (a receipt may refer the lead)."""
    if lead_type.deleted:
        return False
    if receipt and _refers_on_receipt(lead_type):
        return True
    return any(ordered(lead_type.actions, t) for t in triggers)


class Decision:
    """One event's actions decided against a copy of the lead (runs inside the append)."""

    def __init__(self, ctx: Context, lead: Lead, allocation: Allocation) -> None:
        self.ctx = ctx
        self.lead = lead
        self.allocation = allocation
        self.events: list[DomainEvent] = []
        self.used_counters: set[str] = set()

    def run(self, immediate: bool) -> list[DomainEvent]:
        ctx = self.ctx
        referred = False
        if immediate and ctx.lead_type.referral.partner_id is not None:
            partner = ctx.partners.get(ctx.lead_type.referral.partner_id)
            if partner is not None and partner.details.active and not partner.deleted:
                try:
                    self.lead.refer(partner.id, f"lead-type:{ctx.lead_type.id}", by_user=False)
                    referred = True
                except InvalidTransition:
                    referred = False
        for trigger in triggers_of(ctx.event, referred_on_receipt=referred):
            for action in ordered(ctx.lead_type.actions, trigger):
                if not action.applies(lead_facts(self.lead)):
                    continue
                if ctx.depth >= MAX_DEPTH:
                    self._record(trigger, action, SKIPPED, "too many actions in a row (loop guard)")
                    continue
                self._run(trigger, action)
        self.events.extend(self.lead.collect_events())
        return self.events

    def _record(
        self,
        trigger: Trigger,
        action: ActionBase,
        outcome: str,
        detail: str,
        delivery_id: UUID | None = None,
    ) -> None:
        self.lead.take_action(
            trigger=str(trigger),
            event_code=EVENT_TYPE_CODES[trigger],
            lead_type_id=self.ctx.lead_type.id,
            action_id=action.id,
            action_type=action.type,
            outcome=outcome,
            detail=detail,
            depth=self.ctx.depth,
            delivery_id=delivery_id,
            cause_position=self.ctx.position,
        )

    def _run(self, trigger: Trigger, action: Action) -> None:
        actor = actor_of_action(action)
        try:
            if isinstance(action, AssignUser):
                self._assign(trigger, action, actor)
            elif isinstance(action, ChangeStatus):
                changed = self.lead.set_status(
                    action.status, self.ctx.statuses, "lead-type action", actor
                )
                self._record(
                    trigger, action, DONE if changed else UNCHANGED, f"status {action.status}"
                )
            elif isinstance(action, ChangeLeadType):
                target = self.ctx.lead_types.get(action.lead_type_id)
                if target is None or target.deleted:
                    self._record(trigger, action, SKIPPED, "the lead type no longer exists")
                    return
                changed = self.lead.change_lead_type(target.id, actor, by_user=False)
                self._record(
                    trigger, action, DONE if changed else UNCHANGED, f"lead type {target.name}"
                )
            elif isinstance(action, Refer):
                self._refer(trigger, action, actor)
            elif isinstance(action, Webhook):
                self._webhook(trigger, action)
            elif isinstance(action, EmailAction):
                self._email(trigger, action)
            elif isinstance(action, TextCustomer) and not self.lead.phone_valid:
                self._record(trigger, action, SKIPPED, "no one to text: the lead has no phone")
            elif isinstance(action, MessageAction | StartWorkflow | StopWorkflow):
                # Carried out by the automation reaction, from this record (once).
                self._record(trigger, action, SCHEDULED, f"{action.type} queued")
        except InvalidTransition as error:
            self._record(trigger, action, SKIPPED, str(error))

    def _assign(self, trigger: Trigger, action: AssignUser, actor: str) -> None:
        user: User | None
        if action.mode is AssignMode.USER:
            user = self.ctx.users.get(action.user_id) if action.user_id else None
            if user is None or not user.active:
                self._record(trigger, action, SKIPPED, f"user {action.user_id} is not active")
                return
        else:
            assert action.group_id is not None
            members = [m for m in self.ctx.groups.get(action.group_id, []) if m.active]
            if not members:
                self._record(trigger, action, SKIPPED, f"group {action.group_id} has no members")
                return
            if action.mode is AssignMode.ROUND_ROBIN:
                name = round_robin_counter(action.group_id)
                turn = self.allocation.counter(name) - 1
                user = members[turn % len(members)]
            else:
                user = random.choice(members)
        changed = self.lead.assign(str(user.id), actor, by_user=False)
        self._record(
            trigger, action, DONE if changed else UNCHANGED, f"assigned to {user.name} ({user.id})"
        )

    def _refer(self, trigger: Trigger, action: Refer, actor: str) -> None:
        if self.ctx.lead_type.referral.method is ReferralMethod.NEVER:
            self._record(trigger, action, SKIPPED, "the lead type never refers leads")
            return
        partner = self.ctx.partners.get(action.partner_id)
        if partner is None or partner.deleted or not partner.details.active:
            self._record(trigger, action, SKIPPED, f"partner {action.partner_id} is not active")
            return
        self.lead.refer(partner.id, actor, by_user=False)
        self._record(trigger, action, DONE, f"referred to {partner.details.name}")

    def _payload(self, trigger: Trigger) -> dict[str, Any]:
        """The lead as it is now (after the actions before this one), with the trigger."""
        return {
            **lead_payload(self.lead, self.ctx.lead_type, self.ctx.users),
            "eventtype": EVENT_TYPE_CODES[trigger],
            "eventdatetime": _event_time(self.ctx.event),
        }

    def _schedule(
        self,
        trigger: Trigger,
        action: ActionBase,
        kind: DeliveryKind,
        target: str,
        fmt: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        max_attempts: int,
        timeout: float,
    ) -> UUID:
        delivery = Delivery(
            workspace_id=self.ctx.lead_type.workspace_id,
            lead_id=self.lead.id,
            lead_type_id=self.ctx.lead_type.id,
            action_id=action.id,
            trigger=trigger,
            event_code=EVENT_TYPE_CODES[trigger],
            kind=kind,
            target=target,
            format=fmt,
            payload=payload,
            headers=headers,
            max_attempts=max_attempts,
            timeout_seconds=timeout,
        )
        self.events.extend(delivery.collect_events())
        return delivery.id

    def _webhook(self, trigger: Trigger, action: Webhook) -> None:
        payload = self._payload(trigger)
        delivery_id = self._schedule(
            trigger,
            action,
            DeliveryKind.WEBHOOK,
            action.url,
            str(action.format),
            payload,
            dict(action.headers),
            action.max_retries + 1,
            action.timeout_seconds,
        )
        self._record(trigger, action, SCHEDULED, f"webhook to {action.url}", delivery_id)

    def _email(self, trigger: Trigger, action: EmailAction) -> None:
        to: str | None = None
        if isinstance(action, ContactCustomer):
            to = self.lead.details.email
        elif isinstance(action, ContactUser):
            user = self.ctx.users.get(_uuid(self.lead.assigned_to) or UUID(int=0))
            to = user.email if user is not None and user.active else None
        elif isinstance(action, NotifyUser):
            user = self.ctx.users.get(action.user_id)
            to = user.email if user is not None and user.active else None
        if not to:
            self._record(trigger, action, SKIPPED, "no one to email: no address")
            return
        payload = self._payload(trigger)
        message = {
            "subject": render(action.subject, payload),
            "body": render(action.body, payload),
        }
        delivery_id = self._schedule(
            trigger, action, DeliveryKind.EMAIL, to, "text", message, {}, 6, 30.0
        )
        self._record(trigger, action, SCHEDULED, f"email to {to}", delivery_id)


def _event_time(event: DomainEvent) -> str:
    stamp: datetime = event.timestamp
    return stamp.isoformat()
