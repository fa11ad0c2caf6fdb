"""Command handlers for lead automations: create, replace, patch, delete, and what they name."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

from domain.automations import Automation, AutomationConfig, Step, Template
from domain.channels import Channel, ChannelType
from domain.inbound_webhooks import InboundWebhook
from domain.leads import Source
from domain.message_templates import template_problems
from domain.triggers import Trigger
from domain.workspaces import Workspace
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound

# A PATCH names fields as the wire does (`safetyLockMinutes`); the Python names are accepted
# too and mapped onto the wire's, so a merged body never holds both spellings.
_WIRE_NAMES = {name: field.alias or name for name, field in AutomationConfig.model_fields.items()}
_SOURCES = frozenset(str(source) for source in Source)
_TRIGGERS = frozenset(str(trigger) for trigger in Trigger)


class AutomationNotFound(LookupError):
    """No automation of that id in the workspace (unknown, deleted, or another's)."""


class UnknownChannelReference(LookupError):
    """A step names a channel the workspace cannot use there, at `field`."""

    def __init__(self, channel_id: UUID, field: str, why: str = "does not exist") -> None:
        super().__init__(f"{field}: channel {channel_id} {why}")
        self.channel_id = channel_id
        self.field = field


class UnknownWebhookSource(LookupError):
    """`webhookSourceId` is not an inbound webhook of the workspace."""

    def __init__(self, webhook_id: UUID, field: str = "webhookSourceId") -> None:
        super().__init__(f"{field}: inbound webhook {webhook_id} does not exist")
        self.webhook_id = webhook_id
        self.field = field


class InvalidAutomation(ValueError):
    """A configuration the model accepts but the automation cannot run, at `field`
    (`steps.0.template`, `leadTrigger`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def config_json(config: AutomationConfig) -> dict[str, Any]:
    """The configuration as the API shows it (camelCase, defaults filled in)."""
    return config.model_dump(mode="json", by_alias=True)


def merged_config(current: AutomationConfig, fields: dict[str, Any]) -> AutomationConfig:
    """`fields` (top-level keys, camelCase) laid over `current`, validated as a whole;
    raises pydantic's `ValidationError` naming the field at fault."""
    data = config_json(current)
    for key, value in fields.items():
        data[_WIRE_NAMES.get(key, key)] = value
    return AutomationConfig.model_validate(data)


async def automation_usable(
    store: EventStore, workspace_id: UUID, automation_id: UUID
) -> Automation | None:
    """The automation when it exists, belongs to the workspace and is not deleted."""
    automation = await store.load(Automation, automation_id)
    if automation is None or automation.workspace_id != workspace_id or automation.deleted:
        return None
    return automation


async def get_automation(store: EventStore, workspace_id: UUID, automation_id: UUID) -> Automation:
    automation = await automation_usable(store, workspace_id, automation_id)
    if automation is None:
        raise AutomationNotFound(f"automation {automation_id} does not exist")
    return automation


async def channel_usable(store: EventStore, workspace_id: UUID, channel_id: UUID) -> Channel | None:
    """The channel when it exists, belongs to the workspace and is not deleted."""
    channel = await store.load(Channel, channel_id)
    if channel is None or channel.workspace_id != workspace_id or channel.deleted:
        return None
    return channel


def _channel_references(config: AutomationConfig) -> Iterator[tuple[UUID, ChannelType, str]]:
    """Every channel the steps name: its id, the type the step sends it, and where."""
    for index, step in enumerate(config.steps):
        if step.channel_id is not None:
            yield step.channel_id, step.channel, f"steps.{index}.channelId"
        if step.fallback_channel_id is not None and step.fallback_channel is not None:
            yield (
                step.fallback_channel_id,
                step.fallback_channel,
                f"steps.{index}.fallbackChannelId",
            )


def _template_checks(step: Step) -> Iterator[tuple[Template, ChannelType, str]]:
    yield step.template, step.channel, "template"
    if step.fallback_channel is not None:
        field = "fallbackTemplate" if step.fallback_template is not None else "template"
        yield step.template_for(fallback=True), step.fallback_channel, field


def check_config(config: AutomationConfig) -> None:
    """What needs no store: the trigger and sources name real ones, and every template can
    be rendered on the channel it goes out on; else `InvalidAutomation` naming the field."""
    if config.lead_trigger is not None and config.lead_trigger not in _TRIGGERS:
        raise InvalidAutomation(
            "leadTrigger", f"{config.lead_trigger!r} is not a trigger (known: {sorted(_TRIGGERS)})"
        )
    for index, source in enumerate(config.sources):
        if source not in _SOURCES:
            raise InvalidAutomation(
                f"sources.{index}",
                f"{source!r} is not an intake channel (known: {sorted(_SOURCES)})",
            )
    for index, step in enumerate(config.steps):
        if step.fallback_channel_id is not None and step.fallback_channel is None:
            raise InvalidAutomation(
                f"steps.{index}.fallbackChannelId", "give fallbackChannel (its type) with it"
            )
        for template, channel, field in _template_checks(step):
            problems = template_problems(template, channel)
            if problems:
                on = f" (on the fallback channel {channel})" if channel != step.channel else ""
                raise InvalidAutomation(f"steps.{index}.{field}", "; ".join(problems) + on)


async def check_references(
    store: EventStore,
    workspace_id: UUID,
    config: AutomationConfig,
    before: AutomationConfig | None = None,
) -> None:
    """Every channel a step names a live channel of the workspace of the step's type, the
    webhook source an inbound webhook of the workspace; else `UnknownChannelReference` /
    `UnknownWebhookSource` naming the field. A change checks only what it adds to the
    configuration `before` it: a channel deleted since does not block renaming the
    automation (a step without a usable channel fails at send time, visibly)."""
    check_config(config)
    checked = {(c, kind) for c, kind, _ in _channel_references(before)} if before else set()
    for channel_id, kind, field in _channel_references(config):
        if (channel_id, kind) in checked:
            continue
        channel = await channel_usable(store, workspace_id, channel_id)
        if channel is None:
            raise UnknownChannelReference(channel_id, field)
        if channel.config.type is not kind:
            raise UnknownChannelReference(
                channel_id, field, f"is of type {channel.config.type}, not {kind}"
            )
        checked.add((channel_id, kind))
    source = config.webhook_source_id
    if source is None or (before is not None and before.webhook_source_id == source):
        return
    webhook = await store.load(InboundWebhook, source)
    if webhook is None or webhook.workspace_id != workspace_id or webhook.deleted:
        raise UnknownWebhookSource(source)


async def create_automation(
    store: EventStore, workspace_id: UUID, config: AutomationConfig, actor: str
) -> tuple[Automation, int]:
    """A new automation and the log position of its creation."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    await check_references(store, workspace_id, config)
    automation = Automation(workspace_id=workspace_id, config=config, actor=actor)
    appended = await store.append(Append(workspace_id, events=automation.collect_events()))
    return automation, appended.position


async def update_automation(
    store: EventStore,
    workspace_id: UUID,
    automation_id: UUID,
    config: AutomationConfig,
    actor: str,
) -> tuple[Automation, int]:
    """Replace the whole configuration (PUT); position 0 when nothing differs. Runs already
    started keep the configuration they started with."""

    async def attempt() -> tuple[Automation, int]:
        automation = await get_automation(store, workspace_id, automation_id)
        await check_references(store, workspace_id, config, automation.config)
        if not automation.update(config, actor):
            return automation, 0
        appended = await store.append(Append(workspace_id, events=automation.collect_events()))
        return automation, appended.position

    return await retrying(attempt)


async def patch_automation(
    store: EventStore,
    workspace_id: UUID,
    automation_id: UUID,
    fields: dict[str, Any],
    actor: str,
) -> tuple[Automation, int]:
    """Change the given top-level fields (PATCH; `steps` is the whole list); the rest stays."""

    async def attempt() -> tuple[Automation, int]:
        automation = await get_automation(store, workspace_id, automation_id)
        config = merged_config(automation.config, fields)
        await check_references(store, workspace_id, config, automation.config)
        if not automation.update(config, actor):
            return automation, 0
        appended = await store.append(Append(workspace_id, events=automation.collect_events()))
        return automation, appended.position

    return await retrying(attempt)


async def delete_automation(
    store: EventStore, workspace_id: UUID, automation_id: UUID, actor: str
) -> int:
    """Delete the automation: it starts no new runs; its runs keep their timeline and stats."""

    async def attempt() -> int:
        automation = await get_automation(store, workspace_id, automation_id)
        automation.delete(actor)
        appended = await store.append(Append(workspace_id, events=automation.collect_events()))
        return appended.position

    return await retrying(attempt)
