"""Messaging decisions: queueing a message for a lead, and running automations step by step.

Nothing here calls a provider. A message is decided (queued) in the same append as the
decision that wants it (an automation step, a quick send, a broadcast), and the message
worker sends it. What happens to a sent message (sent, failed, delivered late as failed)
comes back as message events, which the automation runner reacts to: the next step, a
fallback, completion. Every decision is appended with optimistic concurrency on the run, so
it is taken once however many workers see the event.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from domain.automations import (
    Automation,
    AutomationConfig,
    AutomationRun,
    RunStatus,
    SafetyLock,
    Step,
    Template,
)
from domain.base import DomainEvent, LoggedEvent
from domain.broadcasts import Audience, Broadcast
from domain.channels import Channel, ChannelType, UnknownChannel
from domain.lead_context import lead_context
from domain.lead_types import (
    MESSAGING_ACTIONS,
    ContactPartner,
    LeadType,
    MessageAction,
    NotifyUserByText,
    StartWorkflow,
    StopWorkflow,
)
from domain.leads import Lead
from domain.message_templates import render_message
from domain.messages import FAILURES, Message, MessageStatus, Origin
from domain.normalize import normalise_phone
from domain.partners import Partner
from domain.suppressions import Suppression, is_start, is_stop, suppression_id
from domain.triggers import triggers_of
from handlers.ports import Append, Claim, ConcurrencyConflict, EventStore

MAX_CONFLICT_RETRIES = 20
MESSAGE_NAMESPACE = uuid.UUID("5d0b8c61-2f7e-4b39-8a56-71c9e3f04d12")


def utc_now() -> datetime:
    return datetime.now(UTC)


class ChannelDirectory(Protocol):
    """The workspace's channels, as the gateway keeps them (cached)."""

    async def get(self, channel_id: UUID) -> Channel | None: ...

    async def first_of(self, workspace_id: UUID, kind: ChannelType) -> Channel | None: ...


class AutomationDirectory(Protocol):
    """The workspace's live automations, and runs by automation and lead."""

    async def active_for(self, workspace_id: UUID) -> Sequence[Automation]: ...

    async def latest_run(self, automation_id: UUID, lead_id: UUID) -> UUID | None: ...

    async def running_runs(self, lead_id: UUID, automation_id: UUID | None) -> Sequence[UUID]: ...


@dataclass(frozen=True)
class Queued:
    """A message decided, or why not (`reason`: missing_contact, suppressed, missing_value,
    no_channel, inactive_channel)."""

    message: Message | None
    reason: str | None = None
    detail: str | None = None
    events: Sequence[DomainEvent] = ()

    @property
    def ok(self) -> bool:
        return self.message is not None


def message_id_for(origin_id: UUID, lead_id: UUID, step: int = 0, fallback: bool = False) -> UUID:
    """A message's id from what asked for it: deciding it again makes the same message, so a
    replayed decision never sends twice."""
    return uuid.uuid5(MESSAGE_NAMESPACE, f"{origin_id}:{lead_id}:{step}:{int(fallback)}")


def address_of(lead: Lead, kind: ChannelType) -> str | None:
    """Where a lead is reached on a channel: its phone (E.164) or email, if valid."""
    if kind is ChannelType.EMAIL:
        return lead.email_normal if lead.email_valid else None
    return lead.phone_normal if lead.phone_valid else None


def lead_wire(lead: Lead) -> dict[str, Any]:
    wire = lead.details.model_dump(mode="json", by_alias=True)
    wire.update(name=lead.name, email=lead.email_normal or wire.get("email"))
    wire.update(phone=lead.phone_normal or wire.get("phone"), id=str(lead.id))
    wire.update(status=lead.status, assignedTo=lead.assigned_to)
    return wire


class Messaging:
    """Queues messages and runs automations; the gateways call it and append nothing else."""

    def __init__(
        self,
        store: EventStore,
        channels: ChannelDirectory,
        automations: AutomationDirectory,
        *,
        clock: Callable[[], datetime] = utc_now,
        user_of: Callable[[str | None], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.store = store
        self.channels = channels
        self.automations = automations
        self.clock = clock
        self.user_of = user_of

    # ---- one message --------------------------------------------------------------------------

    async def channel_for(
        self, workspace_id: UUID, kind: ChannelType, channel_id: UUID | None
    ) -> Channel | None:
        if channel_id is not None:
            channel = await self.channels.get(channel_id)
            if channel is None or channel.deleted or channel.workspace_id != workspace_id:
                return None
            return channel
        return await self.channels.first_of(workspace_id, kind)

    async def decide(
        self,
        lead: Lead,
        kind: ChannelType,
        channel_id: UUID | None,
        template: Template,
        *,
        origin: Origin,
        origin_id: UUID | None,
        step: int | None = None,
        message_id: UUID | None = None,
        to: str | None = None,
    ) -> Queued:
        """The message to send the lead (or, with `to`, about the lead to that address), or
        why there is none. Nothing is appended."""
        channel = await self.channel_for(lead.workspace_id, kind, channel_id)
        if channel is None:
            return Queued(None, "no_channel", f"the workspace has no {kind} channel")
        if not channel.config.active:
            return Queued(None, "inactive_channel", f"channel {channel.config.name} is off")
        address = to or address_of(lead, kind)
        if address is None:
            what = "email address" if kind is ChannelType.EMAIL else "phone number"
            return Queued(None, "missing_contact", f"the lead has no valid {what}")
        suppressed = await self.store.load(Suppression, suppression_id(lead.workspace_id, address))
        if suppressed is not None and suppressed.active:
            return Queued(None, "suppressed", f"{address} unsubscribed ({suppressed.reason})")
        user = await self.user_of(lead.assigned_to) if self.user_of else {}
        context = lead_context(lead_wire(lead), extra={"user": user})
        content, missing = render_message(template, kind, context)
        if missing:
            return Queued(None, "missing_value", f"no value for {', '.join(missing)}")
        message = Message(  # type: ignore[call-arg]  # `id` from the library's metaclass
            id=message_id or uuid.uuid4(),
            workspace_id=lead.workspace_id,
            lead_id=lead.id,
            channel_id=channel.id,
            channel=str(kind),
            to=address,
            content=content,
            origin=str(origin),
            origin_id=origin_id,
            step=step,
            template=template.model_dump(mode="json", by_alias=True, exclude_none=True),
        )
        return Queued(message, events=list(message.collect_events()))

    async def quick_send(
        self,
        workspace_id: UUID,
        lead_ids: Sequence[UUID],
        kind: ChannelType,
        channel_id: UUID | None,
        template: Template,
        actor: str,
    ) -> list[dict[str, Any]]:
        """One message per lead, each on its own; a lead that cannot get one is `skipped`
        with the reason named."""
        batch = uuid.uuid4()
        results: list[dict[str, Any]] = []
        for lead_id in dict.fromkeys(lead_ids):
            lead = await self.store.load(Lead, lead_id)
            if lead is None or lead.workspace_id != workspace_id or lead.deleted:
                results.append({"leadId": str(lead_id), "status": "skipped", "reason": "not_found"})
                continue
            decided = await self.decide(
                lead, kind, channel_id, template, origin=Origin.QUICK_SEND, origin_id=batch
            )
            if not decided.ok:
                results.append(
                    {
                        "leadId": str(lead_id),
                        "status": "skipped",
                        "reason": decided.reason,
                        "detail": decided.detail,
                    }
                )
                continue
            appended = await self.store.append(Append(workspace_id, events=decided.events))
            assert decided.message is not None
            results.append(
                {
                    "leadId": str(lead_id),
                    "status": "queued",
                    "messageId": str(decided.message.id),
                    "position": appended.position,
                }
            )
        return results

    # ---- automations: starting ----------------------------------------------------------------

    async def react(self, logged: LoggedEvent) -> Sequence[DomainEvent]:
        """What one committed event decides (the automation reactor appends it with its
        checkpoint, so each event is decided exactly once): runs started by a lead event,
        steps moved on by a message's fate."""
        if logged.event_type.startswith("message."):
            return await self.on_message_event(logged)
        if isinstance(logged.event, Lead.ActionTaken):
            return await self.on_action_taken(logged)
        return await self.on_lead_event(logged)

    async def on_action_taken(self, logged: LoggedEvent) -> list[DomainEvent]:
        """Carry out a lead-type messaging action the action runner recorded `scheduled`:
        a text or email (to the lead, a partner or a person), or starting or stopping an
        automation for the lead. Message ids come from the record, so once each."""
        event = logged.event
        assert isinstance(event, Lead.ActionTaken)
        if event.action_type not in MESSAGING_ACTIONS or event.outcome != "scheduled":
            return []
        lead_type = await self.store.load(LeadType, event.lead_type_id)
        action = lead_type.action(event.action_id) if lead_type is not None else None
        lead = await self.store.load(Lead, event.originator_id)
        if action is None or lead is None or lead.deleted:
            return []
        if isinstance(action, StartWorkflow | StopWorkflow):
            return await self._workflow(action, lead, str(logged.event_id))
        assert isinstance(action, MessageAction)
        to: str | None = None
        kind = ChannelType(action.channel)
        if isinstance(action, NotifyUserByText):
            to = normalise_phone(action.to, "US").normal or action.to
        elif isinstance(action, ContactPartner):
            partner = await self.store.load(Partner, action.partner_id)
            if partner is None or partner.deleted or partner.workspace_id != lead.workspace_id:
                return []
            details = partner.details
            to = details.email if kind is ChannelType.EMAIL else details.phone
            if not to:
                return []
        decided = await self.decide(
            lead,
            kind,
            action.channel_id,
            Template.model_validate(action.template()),
            origin=Origin.ACTION,
            origin_id=action.id,
            message_id=message_id_for(logged.event_id, lead.id),
            to=to,
        )
        return list(decided.events)

    async def _workflow(
        self, action: StartWorkflow | StopWorkflow, lead: Lead, cause: str
    ) -> list[DomainEvent]:
        events: list[DomainEvent] = []
        for run_id in await self.automations.running_runs(lead.id, action.automation_id):
            run = await self.store.load(AutomationRun, run_id)
            if run is not None and run.status is RunStatus.RUNNING:
                run.stop(f"{action.type} action")
                events.extend(run.collect_events())
        if isinstance(action, StartWorkflow):
            automation = await self.store.load(Automation, action.automation_id)
            usable = automation is not None and not automation.deleted
            if usable and automation is not None and automation.workspace_id == lead.workspace_id:
                events.extend(await self.start(automation, lead, cause=cause, forced=True))
        return events

    async def on_lead_event(self, logged: LoggedEvent) -> list[DomainEvent]:
        """Start the automations a lead event triggers (a run's id comes from the event, so
        an event starts each automation once)."""
        event = logged.event
        if logged.workspace_id is None:
            return []
        automations = await self.automations.active_for(logged.workspace_id)
        if not automations:
            return []
        lead = await self.store.load(Lead, event.originator_id)
        if lead is None or lead.deleted:
            return []
        fired = {str(t) for t in triggers_of(event)}
        events: list[DomainEvent] = []
        for automation in automations:
            if _starts(automation.config, event, lead, fired):
                events.extend(await self.start(automation, lead, cause=str(logged.event_id)))
        return events

    async def start(
        self, automation: Automation, lead: Lead, *, cause: str, forced: bool = False
    ) -> list[DomainEvent]:
        """A run of the automation for the lead: skipped (safety lock, no contact), or its
        first step scheduled or sent. Its events, to append (nothing when it already ran)."""
        config = automation.config
        contact = {
            "phone": lead.phone_normal if lead.phone_valid else None,
            "email": lead.email_normal if lead.email_valid else None,
        }
        run_key = AutomationRun.create_id(
            lead.workspace_id, automation.id, lead.id, cause, config, contact
        )
        if await self.store.load(AutomationRun, run_key) is not None:
            return []
        run = AutomationRun(
            workspace_id=lead.workspace_id,
            automation_id=automation.id,
            lead_id=lead.id,
            cause=cause,
            config=config,
            contact=contact,
        )
        now = self.clock()
        events: list[DomainEvent] = []
        addresses = [a for a in (contact["phone"], contact["email"]) if a]
        if not addresses:
            run.skip("missing_contact", "the lead has no valid phone number or email address")
            return list(run.collect_events())
        locks = []
        for address in addresses:
            lock = await self.store.load(SafetyLock, SafetyLock.create_id(automation.id, address))
            locks.append(lock or SafetyLock(automation_id=automation.id, contact=address))
        # A Start Workflow action is a deliberate start: the safety lock guards triggers.
        held = [] if forced else [k for k in locks if k.held(now, config.safety_lock_minutes)]
        if held:
            run.skip(
                "safety_lock",
                f"{held[0].contact} started this automation less than "
                f"{config.safety_lock_minutes:g} minutes ago",
            )
            return list(run.collect_events())
        for lock in locks:
            lock.take(run.id)
            events.extend(lock.collect_events())
        events.extend(await self._schedule_or_send(run, 0, now))
        return [*run.collect_events(), *events]

    # ---- automations: steps -------------------------------------------------------------------

    async def _schedule_or_send(
        self, run: AutomationRun, index: int, now: datetime
    ) -> list[DomainEvent]:
        """Step `index` scheduled after its delay, or sent now when the delay is over; past
        the last step the run completes. Returns the messages' events (the run keeps its own)."""
        steps = run.config.steps
        if index >= len(steps):
            run.complete()
            return []
        step = steps[index]
        due = now + timedelta(seconds=step.delay_seconds)
        if due > now:
            run.schedule(index, due)
            return []
        return await self._send_step(run, index, fallback=False)

    async def _send_step(
        self, run: AutomationRun, index: int, *, fallback: bool
    ) -> list[DomainEvent]:
        step = run.config.steps[index]
        kind, channel_id = _channel_of(step, fallback)
        lead = await self.store.load(Lead, run.lead_id)
        if lead is None or lead.deleted:
            run.stop("the lead was deleted")
            return []
        decided = await self.decide(
            lead,
            kind,
            channel_id,
            step.template_for(fallback),
            origin=Origin.AUTOMATION,
            origin_id=run.id,
            step=index,
            message_id=message_id_for(run.id, run.lead_id, index, fallback),
        )
        if decided.message is None:
            run.step_failed(index, str(kind), decided.detail or str(decided.reason), None, fallback)
            return await self._after_failure(run, index, fallback)
        run.start_step(index, str(kind), decided.message.channel_id, decided.message.id, fallback)
        return list(decided.events)

    async def _after_failure(
        self, run: AutomationRun, index: int, fallback: bool
    ) -> list[DomainEvent]:
        step = run.config.steps[index]
        if not fallback and step.fallback_channel is not None and index not in run.fallback_used:
            run.fall_back(index, str(step.channel), str(step.fallback_channel))
            return await self._send_step(run, index, fallback=True)
        run.fail(index, "the step failed" + (" and its fallback" if fallback else ""))
        return []

    async def on_message_event(self, logged: LoggedEvent) -> list[DomainEvent]:
        """A message of an automation was sent, failed, or was reported failed later: the
        run's next step, its fallback, or its end."""
        event = logged.event
        message = await self.store.load(Message, event.originator_id, position=logged.position)
        if message is None or message.origin != Origin.AUTOMATION or message.origin_id is None:
            return []
        run = await self.store.load(AutomationRun, message.origin_id)
        if run is None or message.id not in run.messages:
            return []
        index, fallback = run.messages[message.id]
        events = await self._message_outcome(run, message, event, index, fallback)
        return [*run.collect_events(), *events]

    async def _message_outcome(
        self,
        run: AutomationRun,
        message: Message,
        event: DomainEvent,
        index: int,
        fallback: bool,
    ) -> list[DomainEvent]:
        if run.status is not RunStatus.RUNNING and not isinstance(event, Message.StatusReported):
            return []
        now = self.clock()
        if isinstance(event, Message.Sent):
            if index in run.sent_at and not fallback:
                return []
            run.step_sent(index, message.channel, message.id, event.provider_id, fallback)
            if run.step is not None and run.step > index:
                return []  # the next step is already on its way (a late fallback's send)
            return await self._schedule_or_send(run, index + 1, now)
        if isinstance(event, Message.SendFailed):
            run.step_failed(index, message.channel, event.error, message.id, fallback)
            return await self._after_failure(run, index, fallback)
        if isinstance(event, Message.StatusReported) and event.status in FAILURES:
            # Failed after it went out: within the window, the step's fallback still goes.
            sent = run.sent_at.get(index)
            window = timedelta(seconds=run.config.failure_window_seconds)
            if sent is None or now - sent > window:
                return []
            error = event.error or f"the message was {event.status}"
            run.step_failed(index, message.channel, error, message.id, fallback)
            step = run.config.steps[index]
            if (
                not fallback
                and step.fallback_channel is not None
                and index not in run.fallback_used
            ):
                run.fall_back(index, str(step.channel), str(step.fallback_channel))
                return await self._send_step(run, index, fallback=True)
        return []

    async def fire_due(self, run_id: UUID) -> bool:
        """Send the step whose delay is over (the timer worker calls this)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            run = await self.store.load(AutomationRun, run_id)
            now = self.clock()
            if (
                run is None
                or run.status is not RunStatus.RUNNING
                or run.due_at is None
                or run.due_at > now
                or run.step is None
            ):
                return False
            events = await self._send_step(run, run.step, fallback=False)
            own = list(run.collect_events())
            try:
                await self.store.append(
                    Append(
                        run.workspace_id,
                        events=[*own, *events],
                        expect={run.id: run.version - len(own)},
                    )
                )
                return True
            except ConcurrencyConflict:
                continue
        return False

    async def retry(
        self, workspace_id: UUID, automation_id: UUID, lead_id: UUID, actor: str
    ) -> UUID:
        """Try the lead's last failed step of the automation again (`ValueError` when none
        failed, `LookupError` when it never ran for the lead)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            found = await self.automations.latest_run(automation_id, lead_id)
            run = await self.store.load(AutomationRun, found) if found else None
            if run is None or run.workspace_id != workspace_id:
                raise LookupError(f"automation {automation_id} never ran for lead {lead_id}")
            index = run.request_retry(actor)
            events = await self._resend(run, index)
            own = list(run.collect_events())
            try:
                await self.store.append(
                    Append(
                        workspace_id,
                        events=[*own, *events],
                        expect={run.id: run.version - len(own)},
                    )
                )
                return run.id
            except ConcurrencyConflict:
                continue
        raise RuntimeError("gave up retrying after conflicting changes")

    async def _resend(self, run: AutomationRun, index: int) -> list[DomainEvent]:
        """A retry: a new message for the step (a new id, so it is sent again)."""
        step = run.config.steps[index]
        lead = await self.store.load(Lead, run.lead_id)
        if lead is None or lead.deleted:
            run.stop("the lead was deleted")
            return []
        decided = await self.decide(
            lead,
            step.channel,
            step.channel_id,
            step.template,
            origin=Origin.AUTOMATION,
            origin_id=run.id,
            step=index,
        )
        if decided.message is None:
            run.step_failed(index, str(step.channel), decided.detail or "", None, False)
            return await self._after_failure(run, index, False)
        run.start_step(
            index, str(step.channel), decided.message.channel_id, decided.message.id, False
        )
        return list(decided.events)

    async def inbound(
        self,
        workspace_id: UUID,
        channel: Channel,
        lead_id: UUID | None,
        sender: str,
        body: str,
        provider_message_id: str | None,
    ) -> int:
        """A message from a lead (an SMS or WhatsApp reply): it lands on the lead (firing
        `smsreplied`, every time); STOP-like words put the number on the suppression list,
        START-like words take it off. Returns the position written (0: nothing)."""
        kind = channel.config.type
        events: list[DomainEvent] = []
        expect: dict[UUID, int] = {}
        address = sender.strip()
        lead = await self.store.load(Lead, lead_id) if lead_id else None
        if lead is not None and (lead.deleted or lead.workspace_id != workspace_id):
            lead = None
        if lead is not None:
            lead.message_activity(
                "sms_replied" if kind is ChannelType.SMS else f"{kind}_replied",
                str(kind),
                None,
                body[:2000],
                f"channel:{channel.id}",
            )
            events.extend(lead.collect_events())
        if is_stop(body) or is_start(body):
            found = await self.store.load(Suppression, suppression_id(workspace_id, address))
            entry = found or Suppression(workspace_id=workspace_id, address=address)
            if found is not None:
                expect[found.id] = found.version
            changed = (
                entry.add("replied " + body.strip().upper(), str(kind), lead_id, "system:inbound")
                if is_stop(body)
                else entry.lift("replied " + body.strip().upper(), lead_id, "system:inbound")
            )
            if changed:
                events.extend(entry.collect_events())
        if not events:
            return 0
        # Providers retry a reply they think was not taken: the same one lands once.
        once = (
            Claim(f"inbound:{channel.id}:{provider_message_id}", uuid.uuid4())
            if provider_message_id
            else None
        )
        appended = await self.store.append(
            Append(workspace_id, events=events, expect=expect, idempotency=once)
        )
        return appended.position

    async def suppress(
        self,
        workspace_id: UUID,
        address: str,
        reason: str,
        channel: str,
        lead_id: UUID | None,
        actor: str,
        activity: tuple[str, UUID | None] | None = None,
    ) -> int:
        """Put an address on the suppression list (an unsubscribe link, a spam report, a
        person); with `activity`, record it on the lead too (`emailunsub`, once)."""
        for _ in range(MAX_CONFLICT_RETRIES):
            found = await self.store.load(Suppression, suppression_id(workspace_id, address))
            entry = found or Suppression(workspace_id=workspace_id, address=address)
            events: list[DomainEvent] = []
            if entry.add(reason, channel, lead_id, actor):
                events.extend(entry.collect_events())
                if activity is not None and lead_id is not None:
                    lead = await self.store.load(Lead, lead_id)
                    if lead is not None and not lead.deleted:
                        lead.message_activity(activity[0], channel, activity[1], reason, actor)
                        events.extend(lead.collect_events())
            if not events:
                return 0
            try:
                appended = await self.store.append(Append(workspace_id, events=events))
            except ConcurrencyConflict:
                continue
            return appended.position
        raise RuntimeError("gave up suppressing after conflicting changes")

    # ---- what comes back from email ------------------------------------------------------

    async def message_happened(
        self,
        message_id: UUID,
        kind: str,
        *,
        status: MessageStatus | None = None,
        detail: str | None = None,
        every_time: bool = False,
        actor: str = "system:tracking",
    ) -> Message | None:
        """Something an email did (opened, clicked, bounced, replied, reported as spam): the
        message's status moves (opened → read; bounced → failed), and the lead records the
        activity (`kind`, firing its trigger): every time for replies and clicks, else once
        per message (only when the status moved). None for an unknown message."""
        for _ in range(MAX_CONFLICT_RETRIES):
            message = await self.store.load(Message, message_id)
            if message is None:
                return None
            moved = message.report(status, error=detail) if status is not None else False
            events: list[DomainEvent] = list(message.collect_events())
            if (moved or every_time) and message.lead_id is not None:
                lead = await self.store.load(Lead, message.lead_id)
                if lead is not None and not lead.deleted:
                    lead.message_activity(kind, message.channel, message.id, detail, actor)
                    events.extend(lead.collect_events())
            if not events:
                return message
            try:
                await self.store.append(Append(message.workspace_id, events=events))
            except ConcurrencyConflict:
                continue
            return message
        raise RuntimeError(f"gave up recording {kind} for {message_id}")

    # ---- audiences and broadcasts ---------------------------------------------------------

    async def create_audience(
        self,
        workspace_id: UUID,
        name: str,
        lead_ids: Sequence[UUID],
        filter: dict[str, Any] | None,
        actor: str,
    ) -> tuple[Audience, int]:
        """A snapshot of the leads (those of the workspace, not deleted, each once)."""
        kept: list[UUID] = []
        for lead_id in dict.fromkeys(lead_ids):
            lead = await self.store.load(Lead, lead_id)
            if lead is not None and lead.workspace_id == workspace_id and not lead.deleted:
                kept.append(lead_id)
        audience = Audience(
            workspace_id=workspace_id, name=name, lead_ids=kept, filter=filter, actor=actor
        )
        appended = await self.store.append(Append(workspace_id, events=audience.collect_events()))
        return audience, appended.position

    async def create_broadcast(
        self,
        workspace_id: UUID,
        name: str,
        audience_id: UUID,
        kind: ChannelType,
        channel_id: UUID | None,
        template: Template,
        actor: str,
    ) -> tuple[Broadcast, int]:
        audience = await self.store.load(Audience, audience_id)
        if audience is None or audience.workspace_id != workspace_id:
            raise LookupError(f"audience {audience_id} does not exist")
        channel = await self.channel_for(workspace_id, kind, channel_id)
        if channel is None or channel.config.type is not kind:
            raise UnknownChannel(f"the workspace has no such {kind} channel")
        broadcast = Broadcast(
            workspace_id=workspace_id,
            name=name,
            audience_id=audience_id,
            lead_ids=list(audience.lead_ids),
            channel=kind,
            channel_id=channel.id,
            template=template,
            actor=actor,
        )
        appended = await self.store.append(Append(workspace_id, events=broadcast.collect_events()))
        return broadcast, appended.position

    async def queue_broadcast(self, broadcast_id: UUID) -> bool:
        """Queue the broadcast's next chunk of messages with its progress, in one append
        (ids from the broadcast and the lead, so a chunk queued twice is refused whole);
        False when every chunk is queued."""
        broadcast = await self.store.load(Broadcast, broadcast_id)
        if broadcast is None or broadcast.finished:
            return False
        chunk = broadcast.next_chunk()
        events: list[DomainEvent] = []
        skipped: dict[str, int] = {}
        queued = 0
        for lead_id in chunk:
            lead = await self.store.load(Lead, lead_id)
            if lead is None or lead.deleted:
                skipped["not_found"] = skipped.get("not_found", 0) + 1
                continue
            decided = await self.decide(
                lead,
                broadcast.channel,
                broadcast.channel_id,
                broadcast.template,
                origin=Origin.BROADCAST,
                origin_id=broadcast.id,
                message_id=message_id_for(broadcast.id, lead_id),
            )
            if not decided.ok:
                reason = decided.reason or "skipped"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            queued += 1
            events.extend(decided.events)
        broadcast.chunk_queued(len(chunk), queued, skipped)
        own = list(broadcast.collect_events())
        try:
            await self.store.append(
                Append(
                    broadcast.workspace_id,
                    events=[*own, *events],
                    expect={broadcast.id: broadcast.version - len(own)},
                )
            )
        except ConcurrencyConflict:
            return True  # another worker queued this chunk: look again
        return not broadcast.finished

    async def stop_runs(self, runs: Sequence[UUID], reason: str) -> None:
        for run_id in runs:
            run = await self.store.load(AutomationRun, run_id)
            if run is None or run.status is not RunStatus.RUNNING:
                continue
            run.stop(reason)
            own = list(run.collect_events())
            try:
                await self.store.append(
                    Append(run.workspace_id, events=own, expect={run.id: run.version - len(own)})
                )
            except ConcurrencyConflict:
                continue


def _channel_of(step: Step, fallback: bool) -> tuple[ChannelType, UUID | None]:
    if fallback:
        assert step.fallback_channel is not None
        return step.fallback_channel, step.fallback_channel_id
    return step.channel, step.channel_id


def _starts(config: AutomationConfig, event: DomainEvent, lead: Lead, fired: set[str]) -> bool:
    """Whether a lead event starts the automation: a lead received through its webhook
    source or one of its intake channels, or one of its lead-type triggers fired."""
    if not config.active:
        return False
    if isinstance(event, Lead.Received):
        if config.webhook_source_id is not None and lead.channel == (
            f"webhook:{config.webhook_source_id}"
        ):
            return True
        if config.sources and str(lead.source) in config.sources:
            return True
    return config.lead_trigger is not None and config.lead_trigger in fired


__all__ = [
    "AutomationDirectory",
    "ChannelDirectory",
    "Messaging",
    "Queued",
    "address_of",
    "lead_wire",
    "message_id_for",
]
