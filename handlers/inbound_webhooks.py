"""Command handlers for inbound webhooks, and receiving a lead posted to one."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from domain.inbound_webhooks import InboundWebhook, webhook_key
from domain.leads import Source
from domain.mapping import map_payload
from domain.source_formats import SourceFormat
from domain.workspaces import Workspace
from handlers.intake import Intake, LeadIntake, Receipt
from handlers.ports import Append, Claim, EventStore
from handlers.workspaces import WorkspaceNotFound

KEY_PREFIX = "whk_"
MAX_IDEMPOTENCY_KEY = 255


class WebhookNotFound(LookupError):
    """No such webhook in this workspace (or it was deleted)."""


class UnknownWebhookKey(LookupError):
    """The API key names no active webhook; deliberately silent about why."""


class _Keep(Enum):
    KEEP = "keep"


KEEP = _Keep.KEEP


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def ingest_path(api_key: str) -> str:
    return f"/webhooks/leads/{api_key}"


def _hint(api_key: str) -> str:
    return api_key[: len(KEY_PREFIX) + 4]


@dataclass(frozen=True)
class WebhookView:
    id: UUID
    workspace_id: UUID
    name: str
    key_hint: str
    field_mapping: dict[str, str]
    source_format: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WebhookWithKey:
    """A webhook with its API key: returned once, on creation or regeneration."""

    webhook: WebhookView
    api_key: str
    position: int

    @property
    def path(self) -> str:
        return ingest_path(self.api_key)


def view_of(webhook: InboundWebhook) -> WebhookView:
    return WebhookView(
        id=webhook.id,
        workspace_id=webhook.workspace_id,
        name=webhook.name,
        key_hint=webhook.key_hint,
        field_mapping=dict(webhook.field_mapping),
        source_format=webhook.source_format,
        active=webhook.active,
        created_at=webhook.created_on,
        updated_at=webhook.modified_on,
    )


async def create_webhook(
    store: EventStore,
    workspace_id: UUID,
    name: str,
    field_mapping: Mapping[str, Any] | None = None,
    source_format: SourceFormat | None = None,
    active: bool = True,
    generate: Callable[[], str] = new_api_key,
) -> WebhookWithKey:
    if await store.load(Workspace, workspace_id) is None:
        raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
    api_key = generate()
    digest = hash_key(api_key)
    webhook = InboundWebhook.create(
        workspace_id, name, digest, _hint(api_key), field_mapping, source_format, active
    )
    appended = await store.append(
        Append(
            workspace_id,
            events=webhook.collect_events(),
            claims=[Claim(webhook_key(digest), webhook.id, exclusive=True)],
        )
    )
    return WebhookWithKey(view_of(webhook), api_key, appended.position)


async def _load(store: EventStore, workspace_id: UUID, webhook_id: UUID) -> InboundWebhook:
    webhook = await store.load(InboundWebhook, webhook_id)
    if webhook is None or webhook.workspace_id != workspace_id or webhook.deleted:
        raise WebhookNotFound(f"webhook {webhook_id} does not exist")
    return webhook


async def get_webhook(store: EventStore, workspace_id: UUID, webhook_id: UUID) -> WebhookView:
    return view_of(await _load(store, workspace_id, webhook_id))


async def update_webhook(
    store: EventStore,
    workspace_id: UUID,
    webhook_id: UUID,
    *,
    name: str | None = None,
    field_mapping: Mapping[str, Any] | None = None,
    source_format: SourceFormat | Literal[_Keep.KEEP] | None = KEEP,
    active: bool | None = None,
) -> tuple[WebhookView, int]:
    """Change the given settings (a `source_format` of None means: detect it again)."""
    webhook = await _load(store, workspace_id, webhook_id)
    changed = webhook.change(
        name=webhook.name if name is None else name,
        field_mapping=webhook.field_mapping if field_mapping is None else field_mapping,
        source_format=webhook.pinned_format if source_format is KEEP else source_format,
        active=webhook.active if active is None else active,
    )
    if not changed:
        return view_of(webhook), 0
    appended = await store.append(Append(workspace_id, events=webhook.collect_events()))
    return view_of(webhook), appended.position


async def regenerate_key(
    store: EventStore,
    workspace_id: UUID,
    webhook_id: UUID,
    generate: Callable[[], str] = new_api_key,
) -> WebhookWithKey:
    """A new API key; the old one stops working in the same transaction."""
    webhook = await _load(store, workspace_id, webhook_id)
    old = webhook.key_hash
    api_key = generate()
    digest = hash_key(api_key)
    webhook.regenerate_key(digest, _hint(api_key))
    appended = await store.append(
        Append(
            workspace_id,
            events=webhook.collect_events(),
            releases=[webhook_key(old)],
            claims=[Claim(webhook_key(digest), webhook.id, exclusive=True)],
        )
    )
    return WebhookWithKey(view_of(webhook), api_key, appended.position)


async def delete_webhook(store: EventStore, workspace_id: UUID, webhook_id: UUID) -> int:
    """The webhook and its key go; the leads it received stay."""
    webhook = await _load(store, workspace_id, webhook_id)
    webhook.delete()
    appended = await store.append(
        Append(
            workspace_id,
            events=webhook.collect_events(),
            releases=[webhook_key(webhook.key_hash)],
        )
    )
    return appended.position


# Every event of an inbound webhook: what a reader of its settings or its key must follow.
WEBHOOK_EVENT_TYPES = (
    "inbound_webhook.created",
    "inbound_webhook.updated",
    "inbound_webhook.key_regenerated",
    "inbound_webhook.deleted",
)


async def list_webhooks_from_log(
    store: EventStore, workspace_id: UUID, page_size: int = 1000
) -> list[WebhookView]:
    """The workspace's webhooks, folded straight from the log until a read model exists."""
    found: dict[UUID, WebhookView] = {}
    after = 0
    while page := await store.read(
        after, page_size, WEBHOOK_EVENT_TYPES, workspace_id=workspace_id
    ):
        for logged in page:
            event, at = logged.event, logged.event.timestamp
            if logged.workspace_id != workspace_id:
                continue
            if isinstance(event, InboundWebhook.Created):
                found[event.originator_id] = WebhookView(
                    event.originator_id,
                    event.workspace_id,
                    event.name,
                    event.key_hint,
                    dict(event.field_mapping),
                    event.source_format,
                    event.active,
                    at,
                    at,
                )
            elif (previous := found.get(event.originator_id)) is None:
                continue
            elif isinstance(event, InboundWebhook.Updated):
                found[event.originator_id] = replace(
                    previous,
                    name=event.name,
                    field_mapping=dict(event.field_mapping),
                    source_format=event.source_format,
                    active=event.active,
                    updated_at=at,
                )
            elif isinstance(event, InboundWebhook.KeyRegenerated):
                found[event.originator_id] = replace(
                    previous, key_hint=event.key_hint, updated_at=at
                )
            elif isinstance(event, InboundWebhook.Deleted):
                del found[event.originator_id]
        after = page[-1].position
    return list(found.values())


@dataclass(frozen=True)
class Ingested:
    receipt: Receipt
    format: SourceFormat
    webhook_id: UUID


# Finds the webhook holding the key with a given SHA-256 digest, in whatever state it is.
WebhookResolver = Callable[[str], Awaitable[InboundWebhook | None]]


async def webhook_by_digest(store: EventStore, digest: str) -> InboundWebhook | None:
    """The webhook whose key has SHA-256 `digest`, as the log has it now (active or not);
    None when no webhook holds that key (never issued, regenerated away, deleted)."""
    webhook_id = await store.holder(webhook_key(digest))
    return await store.load(InboundWebhook, webhook_id) if webhook_id is not None else None


class WebhookIntake:
    """Receiving a lead posted to a webhook's URL: authenticate by key, map, hand to intake.

    `resolve` finds the webhook by its key's digest; by default it asks the store each time
    (a gateway may answer from memory instead, e.g. a cache kept current from the log).
    """

    def __init__(
        self, store: EventStore, intake: LeadIntake, resolve: WebhookResolver | None = None
    ) -> None:
        self.store = store
        self.intake = intake
        self.resolve = resolve

    async def authenticate(self, api_key: str) -> InboundWebhook:
        """The active webhook this key opens; UnknownWebhookKey alike for every failure."""
        if not api_key.startswith(KEY_PREFIX):
            raise UnknownWebhookKey("the API key is not valid")
        digest = hash_key(api_key)
        if self.resolve is not None:
            webhook = await self.resolve(digest)
        else:
            webhook = await webhook_by_digest(self.store, digest)
        if (
            webhook is None
            or webhook.deleted
            or not webhook.active
            or not hmac.compare_digest(webhook.key_hash, digest)
        ):
            raise UnknownWebhookKey("the API key is not valid")
        return webhook

    async def ingest(
        self, api_key: str, payload: Mapping[str, Any], idempotency_key: str | None = None
    ) -> Ingested:
        return await self.receive(await self.authenticate(api_key), payload, idempotency_key)

    async def receive(
        self,
        webhook: InboundWebhook,
        payload: Mapping[str, Any],
        idempotency_key: str | None = None,
    ) -> Ingested:
        """Map the payload (UnusablePayload, ValidationError) and record the lead.

        Without an Idempotency-Key, the sender's own lead id (Meta leadgen_id, Google lead_id,
        Typeform token...) stands in for one, so the provider's retries add nothing.
        """
        mapped = map_payload(
            payload, field_mapping=webhook.field_mapping, source_format=webhook.pinned_format
        )
        key = idempotency_key
        if key is None and mapped.provider_id:
            derived = f"webhook:{webhook.id}:{mapped.provider_id}"
            usable = len(derived) <= MAX_IDEMPOTENCY_KEY and derived.isprintable()
            key = derived if usable else None
        receipt = await self.intake.receive(
            Intake(
                workspace_id=webhook.workspace_id,
                details=mapped.details,
                source=Source.WEBHOOK,
                actor=f"webhook:{webhook.id}",
                channel=f"webhook:{webhook.id}",
                fallback_name=webhook.name,
                idempotency_key=key,
            )
        )
        return Ingested(receipt, mapped.format, webhook.id)
