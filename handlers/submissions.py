"""Running a submission through its campaign's pipeline: load, decide the next steps, append.

`SubmissionPipeline.advance` takes a submission as far as it can go now, in the seed's
order: the first-submission action, disqualification, dynamic keys, required fields, field
qualification, then (for a ping-post campaign) the auction, the post to a buyer with its
caps taken atomically in the same append, the buyer's answer, and the fallback campaign.
Each step is decided on the submission as loaded from the log and appended with
optimistic concurrency, so two workers racing on one submission decide every step once.
A post is recorded (`post_started`) before it is sent and the buyer's answer after it: a
worker that dies in between leaves a post in flight, sent again with the same
`Idempotency-Key` once its lease is over.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from domain.base import DomainEvent
from domain.buyer_payloads import (
    BuyerRequest,
    PayloadError,
    endpoint_request,
    missing_required,
    ping_request,
)
from domain.campaigns import Campaign, CampaignConfig, Endpoint
from domain.caps import CapLimit, cap_limits
from domain.conditions import first_holding, reason_of
from domain.dynamic_keys import compute_keys
from domain.lead_context import lead_context, resolve
from domain.leads import Lead
from domain.qualification import CheckResult, check_builtin, external_request, read_external
from domain.response_rules import Verdict, read_answer, read_bid
from domain.submissions import (
    FALLS_BACK,
    Origin,
    Submission,
    SubmissionStatus,
)
from handlers.ports import Allocation, Append, ConcurrencyConflict, EventStore, Limit

MAX_CONFLICT_RETRIES = 20
# Attempts of one post when the buyer cannot be reached (transport errors only).
TRANSPORT_ATTEMPTS = 3
# A post in flight longer than its endpoint's timeout plus this is taken to be lost.
POST_LEASE_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class BuyerAnswer:
    """What a buyer's endpoint (or a validator, or an action's receiver) answered."""

    status_code: int | None
    body: str
    content_type: str | None
    latency_ms: float
    error: str | None = None


class Buyers(Protocol):
    """The outbound HTTP port: sends one request, never raises for the receiver's sake."""

    async def send(
        self, request: BuyerRequest, timeout: float, idempotency_key: str
    ) -> BuyerAnswer: ...


class SubmissionNotFound(LookupError):
    pass


@dataclass
class Progress:
    """What one `advance` call did, for the worker's counters and the tests."""

    submission_id: UUID
    status: SubmissionStatus | None = None
    posts: int = 0
    fallback_id: UUID | None = None
    steps: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def lead_snapshot(lead: Lead) -> dict[str, Any]:
    """The lead as a new submission (a repost, a bulk submit) carries it."""
    snapshot = lead.details.model_dump(mode="json", by_alias=True, exclude={"campaign_id"})
    snapshot["name"] = lead.name
    snapshot.pop("campaignId", None)
    return snapshot


_CONFIGS: dict[int, tuple[Mapping[str, Any], CampaignConfig]] = {}


def _config_of(snapshot: Mapping[str, Any]) -> CampaignConfig:
    """The snapshot as a `CampaignConfig`; the same snapshot object (one submission's
    steps) is validated once."""
    cached = _CONFIGS.get(id(snapshot))
    if cached is not None and cached[0] is snapshot:
        return cached[1]
    config = CampaignConfig.model_validate(snapshot, context={"stored": True})
    if len(_CONFIGS) > 1024:
        _CONFIGS.clear()
    _CONFIGS[id(snapshot)] = (snapshot, config)
    return config


class SubmissionPipeline:
    """Advances submissions; one instance per worker process."""

    def __init__(
        self,
        store: EventStore,
        buyers: Buyers,
        *,
        callback_url: Callable[[UUID], str],
        clock: Callable[[], datetime] = _now,
        campaign_loader: Callable[[UUID], Awaitable[Campaign | None]] | None = None,
    ) -> None:
        self.store = store
        self.buyers = buyers
        self.callback_url = callback_url
        self.clock = clock
        self._load_campaign = campaign_loader or (lambda cid: store.load(Campaign, cid))

    # ---- the driver --------------------------------------------------------------------------

    async def advance(self, submission_id: UUID) -> Progress:
        """Take the submission as far as it can go now."""
        progress = Progress(submission_id)
        for _ in range(MAX_CONFLICT_RETRIES):
            submission = await self.store.load(Submission, submission_id)
            if submission is None:
                raise SubmissionNotFound(f"submission {submission_id} does not exist")
            try:
                await self._run(submission, progress)
                if submission.pending_events:
                    await self._commit(submission, progress)
            except ConcurrencyConflict:
                continue  # another worker moved it: look again from what it did
            progress.status = submission.status
            return progress
        raise RuntimeError(f"gave up advancing {submission_id} after conflicting changes")

    async def _run(self, submission: Submission, progress: Progress) -> None:
        while True:
            status = submission.status
            if status is SubmissionStatus.PENDING:
                await self._start(submission, progress)
            elif status is SubmissionStatus.PENDING_ACTION:
                if not await self._action_timed_out(submission, progress):
                    return
            elif status is SubmissionStatus.PROCESSING:
                await self._qualify(submission, progress)
            elif status in (SubmissionStatus.QUALIFIED, SubmissionStatus.DELIVERED):
                if not await self._deliver(submission, progress):
                    return
            else:
                return
            if submission.final:
                return

    def _stage(self, submission: Submission, progress: Progress) -> None:
        """A step decided: its events wait on the submission and go with the next append
        (before any request leaves, or when the submission can go no further now), so a
        submission that runs straight through is two appends: the post, and the answer."""

    async def _commit(
        self,
        submission: Submission,
        progress: Progress,
        *,
        limits: Sequence[Limit] = (),
    ) -> None:
        """Append the submission's new events, with its fallback when it ends in one."""
        fallback = fallback_for(submission)  # records `fell_back` on it: before collecting
        own = list(submission.collect_events())
        events: list[DomainEvent] = list(own)
        if fallback is not None:
            events.extend(fallback.collect_events())
            progress.fallback_id = fallback.id
        progress.steps.extend(getattr(e, "step", "received") for e in events)
        await self.store.append(
            Append(
                submission.workspace_id,
                events=events,
                limits=limits,
                expect={submission.id: submission.version - len(own)},
            )
        )

    # ---- steps -------------------------------------------------------------------------------

    async def _start(self, submission: Submission, progress: Progress) -> None:
        campaign = await self._load_campaign(submission.campaign_id)
        usable = (
            campaign is not None
            and not campaign.deleted
            and campaign.workspace_id == submission.workspace_id
        )
        snapshot = campaign.config.snapshot() if usable and campaign is not None else {}
        submission.start(snapshot)
        if not usable or campaign is None:
            submission.disqualify("the campaign no longer exists")
        elif not campaign.config.active:
            submission.disqualify("the campaign is paused")
        elif campaign.config.first_submission_action is not None:
            action = campaign.config.first_submission_action
            due = self.clock() + timedelta(seconds=action.timeout_seconds)
            if action.type == "review":
                submission.request_action("review", due)
            else:
                assert action.url is not None
                answer = await self._send_action_webhook(submission, campaign.config)
                submission.request_action(
                    "webhook",
                    due,
                    url=action.url,
                    status_code=answer.status_code,
                    error=answer.error,
                )
        self._stage(submission, progress)

    async def _send_action_webhook(
        self, submission: Submission, config: CampaignConfig
    ) -> BuyerAnswer:
        action = config.first_submission_action
        assert action is not None and action.url is not None
        body = {
            "submissionId": str(submission.id),
            "leadId": str(submission.lead_id),
            "campaignId": str(submission.campaign_id),
            "lead": submission.lead_snapshot,
            "callbackUrl": self.callback_url(submission.id),
            "decisions": ["approve", "reject"],
        }
        request = BuyerRequest(
            method="POST",
            url=action.url,
            headers={**action.headers, "Content-Type": "application/json"},
            body=_json_bytes(body),
            content_type="application/json",
            fields={},
        )
        return await self._send(request, 10.0, f"{submission.id}:action")

    async def _action_timed_out(self, submission: Submission, progress: Progress) -> bool:
        due = submission.action_due_at
        if due is None or due > self.clock():
            return False
        config = _config_of(submission.campaign or {})
        action = config.first_submission_action
        go_on = action is not None and action.on_timeout == "continue"
        submission.complete_action(
            "continue" if go_on else "timeout",
            "the first-submission action timed out",
            "system:timer",
            fail_as=SubmissionStatus.FAILED,
        )
        self._stage(submission, progress)
        return True

    def _context(self, submission: Submission, config: CampaignConfig) -> dict[str, Any]:
        zone = config.caps.timezone if config.caps else "UTC"
        return lead_context(
            submission.lead_snapshot,
            source=submission.source,
            keys=submission.keys,
            now=self.clock(),
            timezone=zone,
        )

    async def _qualify(self, submission: Submission, progress: Progress) -> None:
        config = _config_of(submission.campaign or {})
        context = self._context(submission, config)
        # The seed's order: disqualification, then dynamic keys. A condition on a key
        # (`key.age lt 18`) can only be judged once the keys are computed, so it waits.
        plain = [c for c in config.disqualify if not c.field.startswith("key.")]
        on_keys = [c for c in config.disqualify if c.field.startswith("key.")]
        failing = first_holding(plain, context)
        if failing is not None:
            submission.disqualify(reason_of(failing), failing.field)
            self._stage(submission, progress)
            return
        keys, errors = compute_keys(config.dynamic_keys, context)
        submission.compute_keys(keys, errors)
        context = self._context(submission, config)
        failing = first_holding(on_keys, context)
        if failing is not None:
            submission.disqualify(reason_of(failing), failing.field)
            self._stage(submission, progress)
            return
        missing = missing_required(config.required_fields, context)
        if missing:
            submission.miss_fields(missing)
            self._stage(submission, progress)
            return
        checks = await self._checks(submission, config, context)
        failed = [check for check in checks if not check.passed]
        if failed:
            first = failed[0]
            submission.disqualify(
                f"{first.field} failed {first.type}: {first.reason or 'not valid'}",
                first.field,
                [check.json() for check in checks],
            )
        else:
            submission.qualify([check.json() for check in checks])
        self._stage(submission, progress)

    async def _checks(
        self, submission: Submission, config: CampaignConfig, context: Mapping[str, Any]
    ) -> list[CheckResult]:
        results: list[CheckResult | None] = [None] * len(config.qualification)
        external: list[tuple[int, Awaitable[CheckResult]]] = []
        for index, rule in enumerate(config.qualification):
            value = resolve(context, rule.field)
            if rule.type == "external":
                external.append((index, self._external(submission, rule, value, context)))
            else:
                results[index] = check_builtin(rule, value)
        if external:
            answers = await asyncio.gather(*(call for _, call in external))
            for (index, _), answer in zip(external, answers, strict=True):
                results[index] = answer
        return [r for r in results if r is not None]

    async def _external(
        self, submission: Submission, rule: Any, value: Any, context: Mapping[str, Any]
    ) -> CheckResult:
        request = BuyerRequest(
            method="POST",
            url=rule.url,
            headers={**rule.headers, "Content-Type": "application/json"},
            body=_json_bytes(external_request(rule, value, context.get("lead", {}))),
            content_type="application/json",
            fields={},
        )
        answer = await self.buyers.send(
            request, rule.timeout_seconds, f"{submission.id}:validate:{rule.field}"
        )
        return read_external(rule, answer.status_code, answer.body, answer.error)

    # ---- delivery ----------------------------------------------------------------------------

    async def _deliver(self, submission: Submission, progress: Progress) -> bool:
        """One post (or the auction before it); False when there is nothing to do now."""
        config = _config_of(submission.campaign or {})
        post = submission.in_flight
        if post is not None:
            endpoint = config.endpoint(post.endpoint_id)
            lease = timedelta(seconds=endpoint.timeout_seconds * TRANSPORT_ATTEMPTS)
            if post.timestamp + lease + POST_LEASE_GRACE > self.clock():
                return False  # another worker is posting it, or only just died doing so
            # Lost with the worker that sent it: the same request again, same Idempotency-Key.
            context = self._context(submission, config)
            request = endpoint_request(endpoint, context, _headers_for(submission))
            await self._post(submission, config, endpoint, request, progress)
            return True
        if config.mode == "ping_post" and submission.bids is None:
            await self._auction(submission, config, progress)
            return True
        candidates = self._candidates(submission, config)
        if not candidates:
            if submission.accepted_count:
                submission.finish_accepted()
            else:
                submission.fail_post("no buyer endpoint is left to try")
            self._stage(submission, progress)
            return True
        endpoint, bid = candidates[0]
        context = self._context(submission, config)
        missing = missing_required(endpoint.required_fields, context)
        if missing:
            submission.miss_fields(missing, endpoint.id, final=len(candidates) == 1)
            self._stage(submission, progress)
            return True
        try:
            request = endpoint_request(endpoint, context, _headers_for(submission))
        except PayloadError as error:
            submission.skip_endpoint(endpoint.id, f"the payload cannot be built: {error}")
            if len(candidates) == 1:
                submission.fail_post("no buyer endpoint is left to try")
            self._stage(submission, progress)
            return True
        price = bid if bid is not None else config.price
        await self._reserve_and_post(submission, config, endpoint, request, price, progress)
        return True

    def _candidates(
        self, submission: Submission, config: CampaignConfig
    ) -> list[tuple[Endpoint, Decimal | None]]:
        tried = set(submission.tried) | set(submission.skipped)
        if config.mode == "direct":
            return [(e, None) for e in config.endpoints if e.id not in tried]
        wanted = config.max_buyers if config.shared else 1
        if submission.accepted_count >= wanted:
            return []
        bids = [b for b in submission.bids or [] if b.get("bid") is not None]
        bids.sort(key=lambda b: Decimal(str(b["bid"])), reverse=True)
        return [
            (config.endpoint(b["endpointId"]), Decimal(str(b["bid"])))
            for b in bids
            if b["endpointId"] not in tried
        ]

    async def _reserve_and_post(
        self,
        submission: Submission,
        config: CampaignConfig,
        endpoint: Endpoint,
        request: BuyerRequest,
        price: Decimal | None,
        progress: Progress,
    ) -> None:
        now = self.clock()
        campaign_scope = f"campaign:{submission.campaign_id}"
        campaign_limits = cap_limits(config.caps, campaign_scope, now, price)
        endpoint_limits = cap_limits(
            endpoint.caps, f"{campaign_scope}:endpoint:{endpoint.id}", now, price
        )
        limits = [*campaign_limits, *endpoint_limits]
        if not limits:
            submission.start_post(endpoint.id, request.url, request.summary(), price, {})
            self._stage(submission, progress)
            progress.posts += 1
            await self._post(submission, config, endpoint, request, progress)
            return
        posted = copy.deepcopy(submission)
        posted.start_post(
            endpoint.id, request.url, request.summary(), price, {c.name: c.amount for c in limits}
        )
        posted_events = list(posted.collect_events())
        campaign_names = {c.name for c in campaign_limits}
        last = len(self._candidates(submission, config)) == 1
        outcome: dict[str, Submission] = {}

        def build(allocation: Allocation) -> Sequence[DomainEvent]:
            # Called inside the append's transaction, possibly more than once (a batch
            # retried apart): each call decides afresh from the caps' current counts.
            if not allocation.refused:
                outcome["result"] = posted
                return list(posted_events)
            refused = list(allocation.refused)
            whole = bool(campaign_names.intersection(refused)) or last
            capped = copy.deepcopy(submission)
            capped.cap(_labels(limits, refused), None if whole else endpoint.id, final=whole)
            fallback = fallback_for(capped) if whole else None
            events = list(capped.collect_events())
            if fallback is not None:
                events.extend(fallback.collect_events())
                progress.fallback_id = fallback.id
            outcome["result"] = capped
            return events

        appended = await self.store.append(
            Append(
                submission.workspace_id,
                build=build,
                limits=[Limit(c.name, c.amount, c.ceiling) for c in limits],
                expect={submission.id: submission.version - len(submission.pending_events)},
            )
        )
        _adopt(submission, outcome["result"])
        if appended.allocation.refused:
            progress.steps.append("caps")
            return
        progress.steps.append("post")
        progress.posts += 1
        await self._post(submission, config, endpoint, request, progress)

    async def _post(
        self,
        submission: Submission,
        config: CampaignConfig,
        endpoint: Endpoint,
        request: BuyerRequest,
        progress: Progress,
    ) -> None:
        post = submission.in_flight
        assert post is not None
        answer = await self._send(
            request, endpoint.timeout_seconds, f"{submission.id}:{endpoint.id}"
        )
        verdict: Verdict = read_answer(
            endpoint.response_rules,
            answer.status_code,
            answer.body,
            answer.content_type,
            answer.error,
        )
        for _ in range(MAX_CONFLICT_RETRIES):
            remaining = self._candidates(submission, config)
            wanted = config.max_buyers if (config.mode == "ping_post" and config.shared) else 1
            accepted_after = submission.accepted_count + (verdict.outcome == "accepted")
            price = verdict.price if verdict.price is not None else post.price
            submission.record_answer(
                verdict.outcome,
                status_code=answer.status_code,
                latency_ms=round(answer.latency_ms, 3),
                reason=verdict.reason,
                price=price if verdict.outcome == "accepted" else None,
                response=answer.body[:500] if answer.body else answer.error,
                final=not remaining or accepted_after >= wanted,
            )
            released = [Limit(n, amount) for n, amount in submission.last_released.items()]
            try:
                await self._commit(submission, progress, limits=released)
                return
            except ConcurrencyConflict:
                # The answer was had: it is recorded on the submission as it is now, unless
                # that post is no longer in flight (another worker recorded its answer).
                reloaded = await self.store.load(Submission, submission.id)
                if reloaded is None or reloaded.in_flight is None:
                    raise
                if reloaded.in_flight.originator_version != post.originator_version:
                    raise
                _adopt(submission, reloaded)
        raise ConcurrencyConflict(f"gave up recording the answer for {submission.id}")

    async def _auction(
        self, submission: Submission, config: CampaignConfig, progress: Progress
    ) -> None:
        context = self._context(submission, config)
        bidders = [e for e in config.endpoints if e.ping is not None]

        async def ping(endpoint: Endpoint) -> dict[str, Any]:
            assert endpoint.ping is not None
            entry: dict[str, Any] = {"endpointId": endpoint.id, "bid": None}
            try:
                request = ping_request(
                    endpoint.ping, context, extra_headers=_headers_for(submission)
                )
            except PayloadError as error:
                return {**entry, "outcome": "error", "reason": str(error)}
            started = time.perf_counter()
            try:
                answer = await asyncio.wait_for(
                    self.buyers.send(
                        request, config.ping_timeout_seconds, f"{submission.id}:ping:{endpoint.id}"
                    ),
                    config.ping_timeout_seconds + 0.5,
                )
            except TimeoutError:
                took = round((time.perf_counter() - started) * 1000, 3)
                return {
                    **entry,
                    "outcome": "timeout",
                    "reason": "no answer in time",
                    "latencyMs": took,
                }
            bid, reason = read_bid(
                endpoint.ping.response_rules,
                answer.status_code,
                answer.body,
                answer.content_type,
                answer.error,
            )
            timed_out = answer.error is not None and "timed out" in answer.error
            outcome = "bid" if bid is not None else ("timeout" if timed_out else "no_bid")
            return {
                **entry,
                "bid": str(bid) if bid is not None else None,
                "outcome": outcome,
                "reason": reason,
                "statusCode": answer.status_code,
                "latencyMs": round(answer.latency_ms, 3),
            }

        bids = list(await asyncio.gather(*(ping(e) for e in bidders)))
        submission.record_bids(bids)
        if not any(b["bid"] is not None for b in bids):
            submission.fail_post("no buyer bid on the lead")
        self._stage(submission, progress)

    async def _send(self, request: BuyerRequest, timeout: float, key: str) -> BuyerAnswer:
        answer = await self.buyers.send(request, timeout, key)
        attempts = 1
        while answer.status_code is None and attempts < TRANSPORT_ATTEMPTS:
            if answer.error and ("refused" in answer.error and "blocked" in answer.error):
                break
            await asyncio.sleep(0.2 * attempts)
            answer = await self.buyers.send(request, timeout, key)
            attempts += 1
        return answer


def fallback_for(submission: Submission) -> Submission | None:
    """The next campaign's submission when this one ended without a buyer (recorded on
    it as `fell_back`); None when it did not, or no fallback campaign is left. A fallback
    submission tries the rest of its root's list, in order, skipping its own campaign."""
    if submission.status not in FALLS_BACK or submission.fallen_back:
        return None
    if submission.origin == Origin.FALLBACK:
        chain = list(submission.chain)
    else:
        config = submission.campaign or {}
        chain = [UUID(str(c)) for c in config.get("fallbackCampaignIds", [])]
    chain = [c for c in chain if c != submission.campaign_id]
    if not chain:
        return None
    following = Submission(
        workspace_id=submission.workspace_id,
        lead_id=submission.lead_id,
        campaign_id=chain[0],
        source=submission.source,
        snapshot=submission.lead_snapshot,
        origin=Origin.FALLBACK,
        actor="system:fallback",
        parent_id=submission.id,
        chain=tuple(chain[1:]),
    )
    submission.fall_back(following.id, chain[0])
    return following


def _adopt(target: Submission, source: Submission) -> None:
    target.__dict__.clear()
    target.__dict__.update(source.__dict__)


def _labels(limits: Sequence[CapLimit], refused: Sequence[str]) -> list[str]:
    by_name = {c.name: c for c in limits}
    return [
        f"{by_name[name].label} ({by_name[name].ceiling})" if name in by_name else name
        for name in refused
    ]


def _headers_for(submission: Submission) -> dict[str, str]:
    return {"Idempotency-Key": f"sub_{submission.id.hex}"}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


__all__ = [
    "BuyerAnswer",
    "Buyers",
    "Progress",
    "SubmissionNotFound",
    "SubmissionPipeline",
    "lead_snapshot",
]
