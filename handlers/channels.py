"""Command handlers for messaging channels: create, change (PATCH), delete, and look them up."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.channels import DEFAULT_BASE_URLS, Channel, ChannelConfig, UnknownChannel
from domain.workspaces import Workspace
from handlers.listing import aggregates_of
from handlers.ports import Append, EventStore
from handlers.retry import retrying
from handlers.workspaces import WorkspaceNotFound

# What the API shows in place of a secret; sent back in a PATCH it keeps the secret as it is.
SET = "[set]"
# A PATCH names fields as the wire does (`baseUrl`); the Python names are mapped onto them.
_WIRE_NAMES = {name: field.alias or name for name, field in ChannelConfig.model_fields.items()}


class InvalidCredentials(ValueError):
    """A credential given as `[set]` with no secret to keep, or credentials not an object."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


async def channel_of(store: EventStore, channel_id: UUID) -> Channel | None:
    """The channel of any workspace, deleted ones too (a provider keeps reporting on the
    messages sent before the deletion); None when no channel has that id."""
    return await store.load(Channel, channel_id)


async def get_channel(store: EventStore, workspace_id: UUID, channel_id: UUID) -> Channel:
    """The workspace's live channel; `UnknownChannel` for an unknown, deleted or another
    workspace's one, alike."""
    channel = await store.load(Channel, channel_id)
    if channel is None or channel.workspace_id != workspace_id or channel.deleted:
        raise UnknownChannel(f"channel {channel_id} does not exist")
    return channel


async def list_channels(store: EventStore, workspace_id: UUID) -> list[Channel]:
    """The workspace's live channels, oldest first (a workspace has few)."""
    return await aggregates_of(store, Channel, "channel.created", workspace_id)


def _credentials(current: dict[str, Any], given: Any) -> dict[str, Any]:
    """`given` laid over `current` key by key: a key left out or `[set]` keeps its value,
    `null` removes it."""
    if not isinstance(given, dict):
        raise InvalidCredentials("credentials", "must be an object of names to values")
    merged = dict(current)
    for key, value in given.items():
        if value is None:
            merged.pop(key, None)
        elif value == SET:
            if key not in current:
                raise InvalidCredentials(
                    f"credentials.{key}", f"{SET} keeps a secret, but none is set; send its value"
                )
        else:
            merged[key] = value
    return merged


def _validated(data: dict[str, Any]) -> ChannelConfig:
    """The configuration; a `baseUrl` that is the provider's default is kept as no
    `baseUrl` (a GET shows the default, and sending it back changes nothing)."""
    base_url = data.get("baseUrl")
    default = next(
        (url for kind, url in DEFAULT_BASE_URLS.items() if kind == data.get("type")), None
    )
    if isinstance(base_url, str) and default and base_url.strip().rstrip("/") == default:
        data = {**data, "baseUrl": None}
    return ChannelConfig.model_validate(data)


def new_config(fields: dict[str, Any]) -> ChannelConfig:
    """A configuration from a create's body; raises pydantic's `ValidationError` (or
    `InvalidCredentials`) naming the field at fault."""
    credentials = fields.get("credentials")
    if isinstance(credentials, dict):
        fields = {**fields, "credentials": _credentials({}, credentials)}
    return _validated({_WIRE_NAMES.get(key, key): value for key, value in fields.items()})


def merged_config(current: ChannelConfig, fields: dict[str, Any]) -> ChannelConfig:
    """`fields` (top-level keys, camelCase) laid over `current` and validated as a whole;
    `credentials` merge key by key, so a secret need not be sent again (unless the type
    changes: another provider's credentials start afresh)."""
    data = current.model_dump(mode="json", by_alias=True)
    for key, value in fields.items():
        wire = _WIRE_NAMES.get(key, key)
        if wire == "credentials" and value is not None:
            changes_type = "type" in fields and fields["type"] != str(current.type)
            data[wire] = _credentials({} if changes_type else current.credentials, value)
        else:
            data[wire] = value
    return _validated(data)


async def create_channel(
    store: EventStore, workspace_id: UUID, config: ChannelConfig, actor: str
) -> tuple[Channel, int]:
    """A new channel and the log position of its creation."""
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    channel = Channel(workspace_id=workspace_id, config=config, actor=actor)
    appended = await store.append(Append(workspace_id, events=channel.collect_events()))
    return channel, appended.position


async def update_channel(
    store: EventStore, workspace_id: UUID, channel_id: UUID, fields: dict[str, Any], actor: str
) -> tuple[Channel, int]:
    """Change the given top-level fields (PATCH, see `merged_config`); position 0 when
    nothing differs."""

    async def attempt() -> tuple[Channel, int]:
        channel = await get_channel(store, workspace_id, channel_id)
        if not channel.update(merged_config(channel.config, fields), actor):
            return channel, 0
        appended = await store.append(Append(workspace_id, events=channel.collect_events()))
        return channel, appended.position

    return await retrying(attempt)


async def delete_channel(
    store: EventStore, workspace_id: UUID, channel_id: UUID, actor: str
) -> int:
    """Delete the channel: nothing is sent through it any more; its messages keep their
    history, and its provider's reports on them are still applied."""

    async def attempt() -> int:
        channel = await get_channel(store, workspace_id, channel_id)
        channel.delete(actor)
        appended = await store.append(Append(workspace_id, events=channel.collect_events()))
        return appended.position

    return await retrying(attempt)
