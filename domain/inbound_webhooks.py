"""Inbound webhooks: a secret URL per lead source, with its field mapping and pinned format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from domain.base import Aggregate
from domain.mapping import clean_field_mapping
from domain.source_formats import SourceFormat
from domain.workspaces import clean_name


def webhook_key(key_hash: str) -> str:
    """The reservation that finds a webhook by the SHA-256 of its API key."""
    return f"webhook-key:{key_hash}"


class InboundWebhook(Aggregate):
    """Where one lead source posts; only the SHA-256 of its API key is ever stored."""

    class Created(Aggregate.Created):
        workspace_id: UUID
        name: str
        key_hash: str
        key_hint: str
        field_mapping: dict[str, str]
        source_format: str | None
        active: bool

    class Updated(Aggregate.Event):
        """The settings after the change, and which of them changed."""

        name: str
        field_mapping: dict[str, str]
        source_format: str | None
        active: bool
        changed: tuple[str, ...]

    class KeyRegenerated(Aggregate.Event):
        key_hash: str
        key_hint: str

    class Deleted(Aggregate.Event):
        pass

    @event(Created)
    def __init__(
        self,
        workspace_id: UUID,
        name: str,
        key_hash: str,
        key_hint: str,
        field_mapping: dict[str, str],
        source_format: str | None,
        active: bool,
    ) -> None:
        self.workspace_id = workspace_id
        self.name = name
        self.key_hash = key_hash
        self.key_hint = key_hint
        self.field_mapping = field_mapping
        self.source_format = source_format
        self.active = active
        self.deleted = False

    @classmethod
    def create(
        cls,
        workspace_id: UUID,
        name: str,
        key_hash: str,
        key_hint: str,
        field_mapping: Mapping[str, Any] | None = None,
        source_format: SourceFormat | None = None,
        active: bool = True,
    ) -> InboundWebhook:
        """A new webhook with its settings checked (InvalidName, InvalidFieldMapping)."""
        return cls(
            workspace_id=workspace_id,
            name=clean_name(name, "webhook name"),
            key_hash=key_hash,
            key_hint=key_hint,
            field_mapping=clean_field_mapping(field_mapping or {}),
            source_format=source_format.value if source_format else None,
            active=active,
        )

    @property
    def pinned_format(self) -> SourceFormat | None:
        return SourceFormat(self.source_format) if self.source_format else None

    def change(
        self,
        *,
        name: str,
        field_mapping: Mapping[str, Any],
        source_format: SourceFormat | None,
        active: bool,
    ) -> bool:
        """Apply new settings; False (and no event) when nothing differs."""
        settings: dict[str, Any] = {
            "name": clean_name(name, "webhook name"),
            "field_mapping": clean_field_mapping(field_mapping),
            "source_format": source_format.value if source_format else None,
            "active": active,
        }
        changed = tuple(k for k, v in settings.items() if getattr(self, k) != v)
        if not changed:
            return False
        self._updated(**settings, changed=changed)
        return True

    @event(Updated)
    def _updated(
        self,
        name: str,
        field_mapping: dict[str, str],
        source_format: str | None,
        active: bool,
        changed: tuple[str, ...],
    ) -> None:
        self.name = name
        self.field_mapping = field_mapping
        self.source_format = source_format
        self.active = active

    @event(KeyRegenerated)
    def regenerate_key(self, key_hash: str, key_hint: str) -> None:
        self.key_hash = key_hash
        self.key_hint = key_hint

    def delete(self) -> None:
        if not self.deleted:
            self._deleted()

    @event(Deleted)
    def _deleted(self) -> None:
        self.deleted = True
