"""Receiving a lead from any channel: request number, duplicates, initial status, idempotency."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from domain.base import DomainEvent
from domain.campaigns import Campaign, UnknownCampaign
from domain.customers import Customer
from domain.lead_context import lead_context
from domain.leads import (
    Lead,
    LeadDetails,
    Source,
    Status,
    dedup_keys,
    dedup_scope,
    initial_status,
    resolve_name,
)
from domain.normalize import normalise_email, normalise_phone
from domain.pipelines import Pipeline
from domain.routing import (
    RoutingDecision,
    RoutingRules,
    choose,
    needs_turn,
    round_robin_counter,
    routing_rules_id,
)
from domain.submissions import Origin, Submission
from domain.workspaces import Workspace
from handlers.ports import Allocation, Append, Appended, Claim, EventStore
from handlers.workspaces import WorkspaceNotFound


class UnknownCustomer(LookupError):
    """The lead names a customer this workspace does not know."""


# Channels whose leads go through their campaign at once; imported leads wait for a user
# to submit them (`POST /v1/leads/bulk-action` `submit`).
PROCESSED_AT_ONCE = {
    Source.API: Origin.API,
    Source.MANUAL: Origin.MANUAL,
    Source.WEBHOOK: Origin.WEBHOOK,
    Source.FORM: Origin.FORM,
    Source.NATS: Origin.NATS,
}


class NoRoute(LookupError):
    """A lead without a campaign for which no routing rule picks one."""


@dataclass(frozen=True)
class CampaignFacts:
    """What intake needs of a campaign: whether it may be named, and its dedup scope."""

    workspace_id: UUID
    usable: bool
    active: bool
    dedup_workspace: bool


@dataclass(frozen=True)
class Intake:
    """A lead as a channel hands it over."""

    workspace_id: UUID
    details: LeadDetails
    source: Source
    actor: str
    by_user: bool = False
    channel: str | None = None
    fallback_name: str | None = None
    idempotency_key: str | None = None
    # Without a campaign, let the workspace's routing rules pick one (the submit API).
    route: bool = False


@dataclass(frozen=True)
class Placement:
    region: str
    pipeline_id: UUID | None
    stage_id: UUID | None
    lead_type_id: UUID | None = None


@dataclass(frozen=True)
class Receipt:
    """What the channel tells the sender."""

    lead_id: UUID
    request_id: int
    is_duplicate: bool
    duplicate_of: UUID | None
    status: str
    position: int
    submission_id: UUID | None = None
    replayed: bool = False


@dataclass(frozen=True)
class _Prepared:
    """A lead ready to append: its id, its append, and (once built) its submission's id."""

    intake: Intake
    lead_id: UUID
    submission_ids: list[UUID]
    append: Append


# The library's topic for the class (`get_topic`); tests/handlers pins that they agree.
LEAD_TOPIC = f"{Lead.__module__}:{Lead.__qualname__}"


def new_lead_events(lead_id: UUID, invite: UUID | None, **received: Any) -> list[DomainEvent]:
    """The events `Lead(id=lead_id, **received)` records (and `request_invitation(invite)`
    after it). Without an invitation the `Received` event is made the way the library
    makes it, without building the aggregate around it: nobody here reads the aggregate,
    and building it was over a tenth of bulk intake's time."""
    if invite is not None:
        lead = Lead(id=lead_id, **received)  # type: ignore[call-arg]  # `id`: the metaclass's
        lead.request_invitation(invite)
        return list(lead.collect_events())
    return [
        Lead.Received(
            originator_id=lead_id,
            originator_version=Lead.INITIAL_VERSION,
            timestamp=Lead.Received.create_timestamp(),
            originator_topic=LEAD_TOPIC,
            **received,
        )
    ]


def request_counter(workspace_id: UUID) -> str:
    return f"{workspace_id}:request_id"


def idempotency_claim(workspace_id: UUID, key: str, owner: UUID) -> Claim:
    return Claim(f"idem:{workspace_id}:{key}", owner)


class LeadIntake:
    """The one path every channel takes into the log."""

    # Read on every lead, changed rarely: remembered this long. A pipeline reconfigured in
    # another process is seen by this one's intake within this many seconds.
    SETTINGS_TTL = 2.0

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._settings: dict[UUID, tuple[Placement, float]] = {}
        self._loading: dict[UUID, asyncio.Future[Placement]] = {}
        self._campaigns: dict[UUID, tuple[CampaignFacts | None, float]] = {}
        self._routing: dict[UUID, tuple[RoutingRules | None, float]] = {}

    async def campaign(self, campaign_id: UUID) -> CampaignFacts | None:
        """The campaign's facts, remembered for `SETTINGS_TTL` like the workspace's."""
        cached = self._campaigns.get(campaign_id)
        if cached and time.monotonic() - cached[1] < self.SETTINGS_TTL:
            return cached[0]
        now = time.monotonic()
        found = await self.store.load(Campaign, campaign_id)
        facts = (
            None
            if found is None
            else CampaignFacts(
                found.workspace_id,
                not found.deleted,
                found.config.active,
                found.config.dedup_scope == "workspace",
            )
        )
        self._campaigns[campaign_id] = (facts, now)
        return facts

    async def routing_rules(self, workspace_id: UUID) -> RoutingRules | None:
        cached = self._routing.get(workspace_id)
        if cached and time.monotonic() - cached[1] < self.SETTINGS_TTL:
            return cached[0]
        now = time.monotonic()
        found = await self.store.load(RoutingRules, routing_rules_id(workspace_id))
        self._routing[workspace_id] = (found, now)
        return found

    async def _route(
        self, intake: Intake, details: LeadDetails
    ) -> tuple[RoutingRules | None, str | None, dict[UUID, bool]]:
        """The workspace's rules, the counter a round-robin rule needs, and which of the
        rules' campaigns may be chosen."""
        rules = await self.routing_rules(intake.workspace_id)
        if rules is None or not rules.config.rules:
            raise NoRoute("name a campaignId: the workspace has no routing rules")
        usable: dict[UUID, bool] = {}
        for rule in rules.config.rules:
            for campaign_id in rule.campaign_ids:
                if campaign_id not in usable:
                    facts = await self.campaign(campaign_id)
                    usable[campaign_id] = bool(
                        facts
                        and facts.usable
                        and facts.active
                        and facts.workspace_id == intake.workspace_id
                    )
        context = lead_context(details.model_dump(mode="json", by_alias=True), source=intake.source)
        probe = choose(
            rules.config, context, turn=0, lead_id=uuid.uuid4(), usable=lambda c: usable[c]
        )
        if probe is None:
            raise NoRoute("no routing rule matches the lead (or its campaigns are paused)")
        rule_id = needs_turn(rules.config, context)
        counter = round_robin_counter(intake.workspace_id, rule_id) if rule_id else None
        return rules, counter, usable

    async def placement(self, workspace_id: UUID) -> Placement:
        """The workspace's phone region and where its new leads land."""
        cached = self._settings.get(workspace_id)
        if cached and time.monotonic() - cached[1] < self.SETTINGS_TTL:
            return cached[0]
        # One load per workspace at a time: when the entry expires under load, every
        # caller but the first waits for that one instead of loading it again.
        loading = self._loading.get(workspace_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Placement] = asyncio.get_running_loop().create_future()
        self._loading[workspace_id] = future
        try:
            placement = await self._load_placement(workspace_id)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiting callers get it, nobody else must
            raise
        else:
            future.set_result(placement)
            return placement
        finally:
            del self._loading[workspace_id]

    async def _load_placement(self, workspace_id: UUID) -> Placement:
        now = time.monotonic()
        workspace = await self.store.load(Workspace, workspace_id)
        if workspace is None:
            raise WorkspaceNotFound(f"workspace {workspace_id} does not exist")
        pipeline_id = stage_id = None
        if workspace.active_pipeline_id is not None:
            pipeline = await self.store.load(Pipeline, workspace.active_pipeline_id)
            if pipeline is not None and not pipeline.deleted:
                pipeline_id, stage_id = pipeline.id, pipeline.first_stage.id
        placement = Placement(
            workspace.default_region, pipeline_id, stage_id, workspace.default_lead_type_id
        )
        self._settings[workspace_id] = (placement, now)
        return placement

    async def region_of(self, workspace_id: UUID) -> str:
        """The workspace's phone region; raises WorkspaceNotFound for an unknown workspace."""
        return (await self.placement(workspace_id)).region

    def forget(self, workspace_id: UUID) -> None:
        """Drop what is remembered of a workspace (after changing its pipelines here)."""
        self._settings.pop(workspace_id, None)

    async def receive(self, intake: Intake) -> Receipt:
        prepared = await self._prepare(intake)
        return await self._receipt(prepared, await self.store.append(prepared.append))

    async def receive_many(self, intakes: Sequence[Intake]) -> list[Receipt | Exception]:
        """Receive several leads at once (bulk channels): each is decided exactly as by
        `receive` (its own claims, request number and idempotency), but they are appended
        together, so that one group commit writes many. A lead refused or failing is
        answered with its exception in its place; the others are received regardless."""
        answers: list[Receipt | Exception | None] = [None] * len(intakes)
        ready: list[tuple[int, _Prepared]] = []
        for index, intake in enumerate(intakes):
            try:
                ready.append((index, await self._prepare(intake)))
            except Exception as error:
                answers[index] = error
        appended = await self.store.append_many([prepared.append for _, prepared in ready])
        replays: list[tuple[int, Awaitable[Receipt]]] = []
        for (index, prepared), result in zip(ready, appended, strict=True):
            if isinstance(result, Exception):
                answers[index] = result
            elif result.replayed:
                replays.append((index, self._receipt(prepared, result)))
            else:
                answers[index] = self._fresh_receipt(prepared, result)
        if replays:
            found = await asyncio.gather(*(r for _, r in replays), return_exceptions=True)
            for (index, _), receipt in zip(replays, found, strict=True):
                if isinstance(receipt, BaseException) and not isinstance(receipt, Exception):
                    raise receipt
                answers[index] = receipt
        filled = [answer for answer in answers if answer is not None]
        assert len(filled) == len(intakes)
        return filled

    async def _prepare(self, intake: Intake) -> _Prepared:
        """Everything about a lead that does not depend on the log's decisions, and the
        append that lets the log decide the rest."""
        details = intake.details
        placement = await self.placement(intake.workspace_id)
        region = placement.region
        name = resolve_name(details, intake.fallback_name)
        email = normalise_email(details.email)
        phone = normalise_phone(details.phone, region)
        customer_active: bool | None = None
        if details.customer_id is not None:
            customer = await self.store.load(Customer, details.customer_id)
            if customer is None or customer.workspace_id != intake.workspace_id:
                raise UnknownCustomer(f"customer {details.customer_id} does not exist")
            customer_active = customer.active
        status, invite = initial_status(intake.source, customer_active)
        lead_id = uuid.uuid4()
        scope_campaign = details.campaign_id
        origin = PROCESSED_AT_ONCE.get(intake.source)
        if details.campaign_id is not None and origin is not None:
            facts = await self.campaign(details.campaign_id)
            if facts is None or not facts.usable or facts.workspace_id != intake.workspace_id:
                raise UnknownCampaign(f"campaign {details.campaign_id} does not exist")
            if facts.dedup_workspace:
                scope_campaign = None
        rules: RoutingRules | None = None
        turn_counter: str | None = None
        usable: dict[UUID, bool] = {}
        if details.campaign_id is None and intake.route:
            rules, turn_counter, usable = await self._route(intake, details)
        keys = dedup_keys(dedup_scope(intake.workspace_id, scope_campaign), email, phone)
        counter = request_counter(intake.workspace_id)
        submission_ids: list[UUID] = []

        def build(allocation: Allocation) -> Sequence[DomainEvent]:
            originals = [h for h in (allocation.holder(k) for k in keys) if h != lead_id]
            events = new_lead_events(
                lead_id,
                invite=details.customer_id if invite else None,
                workspace_id=intake.workspace_id,
                request_id=allocation.counter(counter),
                source=intake.source,
                channel=intake.channel,
                actor=intake.actor,
                by_user=intake.by_user,
                name=name,
                details=details,
                email_normal=email.normal,
                email_valid=email.valid,
                phone_normal=phone.normal,
                phone_valid=phone.valid,
                is_duplicate=bool(originals),
                duplicate_of=originals[0] if originals else None,
                status=status,
                idempotency_key=intake.idempotency_key,
                pipeline_id=placement.pipeline_id,
                stage_id=placement.stage_id,
                lead_type_id=placement.lead_type_id,
            )
            submission_ids.clear()
            campaign_id = details.campaign_id
            decision: RoutingDecision | None = None
            if campaign_id is None and rules is not None:
                decision = choose(
                    rules.config,
                    lead_context(
                        details.model_dump(mode="json", by_alias=True), source=intake.source
                    ),
                    turn=allocation.counter(turn_counter) - 1 if turn_counter else 0,
                    lead_id=lead_id,
                    usable=lambda cid: usable.get(cid, False),
                )
                campaign_id = decision.campaign_id if decision else None
            if campaign_id is not None and origin is not None:
                snapshot = details.model_dump(mode="json", by_alias=True)
                snapshot["name"] = name
                submission = Submission(
                    workspace_id=intake.workspace_id,
                    lead_id=lead_id,
                    campaign_id=campaign_id,
                    source=intake.source,
                    snapshot=snapshot,
                    origin=Origin.ROUTED if decision else origin,
                    actor=intake.actor,
                    routing=decision.json() if decision else None,
                )
                submission_ids.append(submission.id)
                events.extend(submission.collect_events())
            return events

        return _Prepared(
            intake,
            lead_id,
            submission_ids,
            Append(
                intake.workspace_id,
                build=build,
                claims=[Claim(key, lead_id) for key in keys],
                counters=[counter, turn_counter] if turn_counter else [counter],
                idempotency=(
                    idempotency_claim(intake.workspace_id, intake.idempotency_key, lead_id)
                    if intake.idempotency_key
                    else None
                ),
            ),
        )

    async def _receipt(self, prepared: _Prepared, appended: Appended) -> Receipt:
        if appended.replayed:
            intake = prepared.intake
            assert intake.idempotency_key is not None
            original = appended.allocation.holder(
                idempotency_claim(intake.workspace_id, intake.idempotency_key, prepared.lead_id).key
            )
            return await self.receipt_of(original, replayed=True)
        return self._fresh_receipt(prepared, appended)

    @staticmethod
    def _fresh_receipt(prepared: _Prepared, appended: Appended) -> Receipt:
        received = appended.events[0]
        assert isinstance(received, Lead.Received)
        return Receipt(
            lead_id=prepared.lead_id,
            request_id=received.request_id,
            is_duplicate=received.is_duplicate,
            duplicate_of=received.duplicate_of,
            status=received.status,
            position=appended.position,
            submission_id=prepared.submission_ids[0] if prepared.submission_ids else None,
            replayed=False,
        )

    async def receipt_of(self, lead_id: UUID, *, replayed: bool) -> Receipt:
        """The receipt the first submission got, for a retry of it."""
        history = await self.store.history(lead_id)
        received = history[0].event
        assert isinstance(received, Lead.Received)
        return Receipt(
            lead_id=lead_id,
            request_id=received.request_id,
            is_duplicate=received.is_duplicate,
            duplicate_of=received.duplicate_of,
            status=received.status,
            position=history[0].position,
            replayed=replayed,
        )


async def register_customer(
    store: EventStore, workspace_id: UUID, name: str, email: str | None, active: bool
) -> tuple[UUID, int]:
    customer = Customer(workspace_id=workspace_id, name=name, email=email, active=active)
    appended = await store.append(Append(workspace_id, events=customer.collect_events()))
    return customer.id, appended.position


async def activate_customer(store: EventStore, workspace_id: UUID, customer_id: UUID) -> int:
    customer = await store.load(Customer, customer_id)
    if customer is None or customer.workspace_id != workspace_id:
        raise UnknownCustomer(f"customer {customer_id} does not exist")
    if not customer.activate():
        return 0
    appended = await store.append(Append(workspace_id, events=customer.collect_events()))
    return appended.position


__all__ = [
    "Intake",
    "LeadIntake",
    "NoRoute",
    "Receipt",
    "Status",
    "UnknownCampaign",
    "UnknownCustomer",
]
