"""Lead automations: waterfall message sequences with delays, fallback and a safety lock.

An automation (`/v1/lead-automations`) says when it starts (a lead from an inbound webhook
source, from an intake channel, or a lead-type trigger) and its ordered steps: after a delay,
send a template on a channel, falling back to another channel when that fails. Each time it
starts for a lead it is an `AutomationRun` (one per automation, lead and starting event),
whose events are the seed's timeline: triggered, step sent, step failed, fallback,
completed, skipped.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import event
from pydantic import Field, field_validator, model_validator

from domain.base import Aggregate
from domain.channels import ChannelType
from domain.lead_types import Model
from domain.text import clean_text

# The seed's delays; any other duration is written `90s`, `45m`, `3h`, `2d` or in seconds.
NAMED_DELAYS = {
    "immediate": 0,
    "immediately": 0,
    "5 min": 300,
    "15 min": 900,
    "30 min": 1800,
    "1 h": 3600,
    "2 h": 7200,
    "24 h": 86_400,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400}
MAX_STEPS = 20
RUN_NAMESPACE = uuid.UUID("3b1f8f4e-2a41-4c87-9d0e-5a7c1f0b9e21")
LOCK_NAMESPACE = uuid.UUID("8d2e6c1a-77b4-4f0a-a1c3-0f6e2b9d4c55")


def parse_delay(value: str | float | int) -> float:
    """Seconds of a delay: a number, a seed name (`5 min`, `24 h`) or `90s`/`45m`/`3h`/`2d`."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a delay is a number of seconds or a duration such as `5 min`")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a delay is not negative")
        return float(value)
    text = value.strip().lower()
    if text in NAMED_DELAYS:
        return float(NAMED_DELAYS[text])
    found = _DURATION.match(text.replace(" ", ""))
    if not found:
        raise ValueError(
            f"{value!r} is not a delay: use seconds, `immediate`, `5 min` … `24 h`,"
            " or `90s`, `45m`, `3h`, `2d`"
        )
    return float(found.group(1)) * _UNITS[found.group(2)]


class Template(Model):
    """What a step sends: `{body}` (SMS), `{subject, body}` (email), or a WhatsApp template
    `{name, language, parameters}`; placeholders `{{lead.name}}` read the lead."""

    body: str | None = Field(default=None, max_length=5000)
    subject: str | None = Field(default=None, max_length=500)
    name: str | None = Field(default=None, max_length=512)
    language: str | None = Field(default=None, max_length=20)
    parameters: list[str] = Field(default_factory=list, max_length=20)

    def fits(self, channel: ChannelType) -> str | None:
        """Why this template cannot go out on `channel`, or None."""
        if channel is ChannelType.WHATSAPP:
            if not self.name or not self.language:
                return "a WhatsApp template needs `name` and `language`"
            return None
        if not self.body:
            return f"a {channel} template needs `body`"
        if channel is ChannelType.EMAIL and not self.subject:
            return "an email template needs `subject`"
        return None


class Step(Model):
    channel: ChannelType
    channel_id: UUID | None = None
    delay_seconds: float = Field(default=0, ge=0, le=365 * 86_400)
    template: Template
    fallback_channel: ChannelType | None = None
    fallback_channel_id: UUID | None = None
    fallback_template: Template | None = None

    @model_validator(mode="before")
    @classmethod
    def _delay(cls, data: Any) -> Any:
        if isinstance(data, dict) and "delay" in data:
            data = dict(data)
            delay = data.pop("delay")
            if "delaySeconds" in data or "delay_seconds" in data:
                raise ValueError("give delay or delaySeconds, not both")
            data["delaySeconds"] = parse_delay(delay)
        return data

    @model_validator(mode="after")
    def _templates(self) -> Step:
        problem = self.template.fits(self.channel)
        if problem:
            raise ValueError(f"template: {problem}")
        if self.fallback_channel is not None:
            fallback = self.fallback_template or self.template
            problem = fallback.fits(self.fallback_channel)
            if problem:
                raise ValueError(
                    f"fallbackTemplate: {problem} (the step's template does not fit the "
                    f"fallback channel {self.fallback_channel}; give a fallbackTemplate)"
                )
        return self

    def template_for(self, fallback: bool) -> Template:
        return (self.fallback_template or self.template) if fallback else self.template


class AutomationConfig(Model):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    # Starts for a lead received through this inbound webhook (the seed's trigger) ...
    webhook_source_id: UUID | None = None
    # ... or through any of these intake channels (`api`, `form`, `webhook`, `nats`, ...),
    sources: list[str] = Field(default_factory=list, max_length=10)
    # ... or on this lead-type trigger (`status_changed`, `referred`, ...).
    lead_trigger: str | None = Field(default=None, max_length=100)
    safety_lock_minutes: float = Field(default=5, ge=0, le=30 * 24 * 60)
    active: bool = True
    # How long after a step's message went out a `failed`/`undelivered` report still sends
    # the step's fallback.
    failure_window_seconds: float = Field(default=3600, ge=0, le=7 * 86_400)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @field_validator("name", "description", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value, max_length=2000) or None if isinstance(value, str) else value


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    STOPPED = "stopped"


def run_id(automation_id: UUID, lead_id: UUID, cause: UUID) -> UUID:
    """One run per automation, lead and starting event: a replayed event starts nothing."""
    return uuid.uuid5(RUN_NAMESPACE, f"{automation_id}:{lead_id}:{cause}")


def lock_id(automation_id: UUID, contact: str) -> UUID:
    """The safety lock of one automation for one phone number or email address."""
    return uuid.uuid5(LOCK_NAMESPACE, f"{automation_id}:{contact.lower()}")


class Automation(Aggregate):
    class Created(Aggregate.Created):
        workspace_id: UUID
        config: AutomationConfig
        actor: str

    class Updated(Aggregate.Event):
        config: AutomationConfig
        actor: str

    class Deleted(Aggregate.Event):
        actor: str

    @event(Created)
    def __init__(self, workspace_id: UUID, config: AutomationConfig, actor: str) -> None:
        self.workspace_id = workspace_id
        self.config = config
        self.deleted = False

    def update(self, config: AutomationConfig, actor: str) -> bool:
        if config == self.config:
            return False
        self._updated(config=config, actor=actor)
        return True

    @event(Updated)
    def _updated(self, config: AutomationConfig, actor: str) -> None:
        self.config = config

    def delete(self, actor: str) -> bool:
        if self.deleted:
            return False
        self._deleted(actor=actor)
        return True

    @event(Deleted)
    def _deleted(self, actor: str) -> None:
        self.deleted = True


class SafetyLock(Aggregate):
    """When an automation last started for one phone or email (its safety lock)."""

    class Created(Aggregate.Created):
        automation_id: UUID
        contact: str

    class Taken(Aggregate.Event):
        run_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate.taken_at = self.timestamp

    @event(Created)
    def __init__(self, automation_id: UUID, contact: str) -> None:
        self.automation_id = automation_id
        self.contact = contact
        self.taken_at: datetime | None = None

    def held(self, now: datetime, minutes: float) -> bool:
        return self.taken_at is not None and now - self.taken_at < timedelta(minutes=minutes)

    def take(self, run: UUID) -> None:
        self.trigger_event(SafetyLock.Taken, run_id=run)

    @classmethod
    def create_id(cls, automation_id: UUID, contact: str) -> UUID:
        return lock_id(automation_id, contact)


class AutomationRun(Aggregate):
    """One automation running for one lead: its steps, messages and outcome."""

    class Entry(Aggregate.Event):
        """A line of the lead's automation timeline (`type` is the seed's wording)."""

        kind: ClassVar[str] = "entry"
        lead_id: UUID
        automation_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate.apply_entry(self)

    class Triggered(Aggregate.Created):
        workspace_id: UUID
        automation_id: UUID
        lead_id: UUID
        cause: str
        config: AutomationConfig
        contact: dict[str, str | None]

    class Skipped(Entry):
        kind: ClassVar[str] = "automation_skipped"
        reason: str
        detail: str

    class StepScheduled(Entry):
        kind: ClassVar[str] = "step_scheduled"
        index: int
        due_at: datetime

    class StepStarted(Entry):
        kind: ClassVar[str] = "step_started"
        index: int
        channel: str
        channel_id: UUID
        message_id: UUID
        fallback: bool = False

    class StepSent(Entry):
        kind: ClassVar[str] = "step_sent"
        index: int
        channel: str
        message_id: UUID
        provider_id: str | None = None
        fallback: bool = False

    class StepFailed(Entry):
        kind: ClassVar[str] = "step_failed"
        index: int
        channel: str
        error: str
        message_id: UUID | None = None
        fallback: bool = False

    class FellBack(Entry):
        kind: ClassVar[str] = "fallback"
        index: int
        from_channel: str
        to_channel: str

    class Completed(Entry):
        kind: ClassVar[str] = "automation_completed"

    class Failed(Entry):
        kind: ClassVar[str] = "automation_failed"
        index: int
        error: str

    class Stopped(Entry):
        kind: ClassVar[str] = "automation_stopped"
        reason: str

    class RetryRequested(Entry):
        kind: ClassVar[str] = "retry_requested"
        index: int
        actor: str

    @event(Triggered)
    def __init__(
        self,
        workspace_id: UUID,
        automation_id: UUID,
        lead_id: UUID,
        cause: str,
        config: AutomationConfig,
        contact: dict[str, str | None],
    ) -> None:
        self.workspace_id = workspace_id
        self.automation_id = automation_id
        self.lead_id = lead_id
        self.cause = cause
        self.config = config
        self.contact = contact
        self.status = RunStatus.RUNNING
        self.step: int | None = None
        self.due_at: datetime | None = None
        self.fallback_used: set[int] = set()
        self.messages: dict[UUID, tuple[int, bool]] = {}
        self.sent_at: dict[int, datetime] = {}
        self.failed_step: int | None = None

    @classmethod
    def create_id(
        cls,
        workspace_id: UUID,
        automation_id: UUID,
        lead_id: UUID,
        cause: str,
        config: AutomationConfig,
        contact: dict[str, str | None],
    ) -> UUID:
        return run_id(automation_id, lead_id, uuid.uuid5(RUN_NAMESPACE, cause))

    # ---- decisions (the runner calls these; each records one entry) --------------------------

    def _entry(self, cls: type[AutomationRun.Entry], **fields: Any) -> None:
        self.trigger_event(cls, lead_id=self.lead_id, automation_id=self.automation_id, **fields)

    def skip(self, reason: str, detail: str) -> None:
        self._entry(AutomationRun.Skipped, reason=reason, detail=detail)

    def schedule(self, index: int, due_at: datetime) -> None:
        self._entry(AutomationRun.StepScheduled, index=index, due_at=due_at)

    def start_step(
        self, index: int, channel: str, channel_id: UUID, message_id: UUID, fallback: bool
    ) -> None:
        self._entry(
            AutomationRun.StepStarted,
            index=index,
            channel=channel,
            channel_id=channel_id,
            message_id=message_id,
            fallback=fallback,
        )

    def step_sent(
        self, index: int, channel: str, message_id: UUID, provider_id: str | None, fallback: bool
    ) -> None:
        self._entry(
            AutomationRun.StepSent,
            index=index,
            channel=channel,
            message_id=message_id,
            provider_id=provider_id,
            fallback=fallback,
        )

    def step_failed(
        self, index: int, channel: str, error: str, message_id: UUID | None, fallback: bool
    ) -> None:
        self._entry(
            AutomationRun.StepFailed,
            index=index,
            channel=channel,
            error=error,
            message_id=message_id,
            fallback=fallback,
        )

    def fall_back(self, index: int, from_channel: str, to_channel: str) -> None:
        self._entry(
            AutomationRun.FellBack, index=index, from_channel=from_channel, to_channel=to_channel
        )

    def complete(self) -> None:
        self._entry(AutomationRun.Completed)

    def fail(self, index: int, error: str) -> None:
        self._entry(AutomationRun.Failed, index=index, error=error)

    def stop(self, reason: str) -> None:
        self._entry(AutomationRun.Stopped, reason=reason)

    def request_retry(self, actor: str) -> int:
        if self.failed_step is None:
            raise ValueError("no failed step to retry")
        index = self.failed_step
        self._entry(AutomationRun.RetryRequested, index=index, actor=actor)
        return index

    def apply_entry(self, entry: AutomationRun.Entry) -> None:
        if isinstance(entry, AutomationRun.Skipped):
            self.status = RunStatus.SKIPPED
        elif isinstance(entry, AutomationRun.StepScheduled):
            self.step = entry.index
            self.due_at = entry.due_at
        elif isinstance(entry, AutomationRun.StepStarted):
            # A late fallback for an earlier step leaves the step scheduled next alone.
            if self.step is None or entry.index >= self.step:
                self.step = entry.index
                self.due_at = None
            self.messages[entry.message_id] = (entry.index, entry.fallback)
            if entry.fallback:
                self.fallback_used.add(entry.index)
        elif isinstance(entry, AutomationRun.StepSent):
            self.sent_at[entry.index] = entry.timestamp
        elif isinstance(entry, AutomationRun.Completed):
            self.status = RunStatus.COMPLETED
        elif isinstance(entry, AutomationRun.Failed):
            self.status = RunStatus.FAILED
            self.failed_step = entry.index
        elif isinstance(entry, AutomationRun.Stopped):
            self.status = RunStatus.STOPPED
            self.due_at = None
        elif isinstance(entry, AutomationRun.RetryRequested):
            self.status = RunStatus.RUNNING
            self.failed_step = None
            self.fallback_used.discard(entry.index)
