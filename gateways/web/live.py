"""The board's moves and live updates: the move route, the card refresh, the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import structlog
from eventsourcing.utils import get_topic
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from domain.leads import InvalidTransition, Lead
from domain.workspaces import Permission
from gateways.bootstrap import Engine
from gateways.consumers.read_models import ViewBehind
from gateways.postgres.log_store import Record
from gateways.web.board import (
    BoardQuery,
    cards_by_id,
    choose_pipeline,
    column_counts,
    user_names,
)
from gateways.web.pages import environment
from gateways.web.routes import Signed, csrf_guard
from gateways.web.session import form_fields, web_of
from handlers import lead_commands as commands
from handlers.ports import ConcurrencyConflict

log = structlog.get_logger(__name__)

LEAD_TOPICS = tuple(
    get_topic(c) for c in vars(Lead).values() if isinstance(c, type) and issubclass(c, Lead.Event)
)
BATCH = 500
VIEW_WAIT = 5.0
HEARTBEAT = 15.0
IDLE_CHECK = 1.0
QUEUE_LIMIT = 1000
MAX_LEADS = 100
MAX_POSITION = 2**63 - 1

live = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])


# ---- the move --------------------------------------------------------------------------------


def refusal(status: int, code: str, message: str, **details: Any) -> Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@live.post("/board/moves/{lead_id}")
async def move_card(lead_id: str, request: Request, signed: Signed) -> Response:
    """Move a card to another column: `PATCH /v1/leads/{id}/stage` for the signed-in person.
    Answers the move's `position` and every column's count under the board's filters (the
    query string repeats them)."""
    if not signed.principal.can(Permission.LEADS_MANAGE):
        return refusal(403, "forbidden", "Your role can look at leads but not move them.")
    fields = await form_fields(request)
    if not fields and request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = orjson.loads(await request.body())
            fields = {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
        except orjson.JSONDecodeError:
            fields = {}
    try:
        lead = UUID(lead_id)
    except ValueError:
        return refusal(404, "not_found", f"lead {lead_id[:64]} does not exist")
    try:
        stage_id = UUID(fields.get("stageId", ""))
    except ValueError:
        return refusal(422, "invalid_stage", "stageId must be the id of a stage of this board")
    engine = web_of(request).engine
    query = BoardQuery.of(request.query_params)
    try:
        pipeline, _ = await choose_pipeline(engine, signed.workspace_id, query.pipeline)
    except LookupError as error:
        return refusal(422, "unknown_pipeline", str(error))
    if pipeline.stage(stage_id) is None:
        return refusal(
            422,
            "invalid_stage",
            f"stage {stage_id} is not a column of the board's pipeline {pipeline.name!r}",
        )
    try:
        done = await commands.move_stage(
            engine.store, signed.workspace_id, lead, stage_id, signed.actor
        )
    except commands.LeadNotFound as error:
        return refusal(404, "not_found", f"{error} (it may have been deleted)")
    except InvalidTransition as error:
        return refusal(422, "invalid_transition", str(error))
    except ConcurrencyConflict:
        return refusal(409, "conflict", "The lead changed at the same moment; try again.")
    await engine.lead_views.wait_for(done.position, VIEW_WAIT)
    try:
        counts = await column_counts(engine, signed.workspace_id, pipeline, query)
    except ViewBehind:
        counts = {}
    answer = {
        "leadId": str(lead),
        "stageId": str(stage_id),
        "position": done.position,
        "changed": done.changed,
        "counts": counts,
    }
    return Response(orjson.dumps(answer), media_type="application/json")


# ---- cards as they are now -------------------------------------------------------------------


@live.get("/board/live")
async def live_cards(request: Request, signed: Signed) -> Response:
    """The current cards of `lead` (repeated) on the board the query string describes, and
    every column's count: `{"cards": [{"leadId", "stageId", "html"}], "counts"}`; a lead not
    on that board (another pipeline, filtered out, deleted) has `stageId` and `html` null.
    `after` waits (bounded) until the view has that log position."""
    engine = web_of(request).engine
    query = BoardQuery.of(request.query_params)
    ids: list[UUID] = []
    for raw in request.query_params.getlist("lead")[:MAX_LEADS]:
        with contextlib.suppress(ValueError):
            ids.append(UUID(raw))
    with contextlib.suppress(ValueError):
        after = int(request.query_params.get("after", "0"))
        if 0 < after <= MAX_POSITION:
            await engine.lead_views.wait_for(after, VIEW_WAIT)
    try:
        pipeline, _ = await choose_pipeline(engine, signed.workspace_id, query.pipeline)
        found = await cards_by_id(engine, signed.workspace_id, pipeline, query, ids)
        counts = await column_counts(engine, signed.workspace_id, pipeline, query)
    except (LookupError, ViewBehind) as error:
        return refusal(503, "view_behind", str(error))
    users = await user_names(engine, signed.workspace_id) if found else {}
    template = environment.get_template("_card.html")
    cards = []
    for lead_id in ids:
        card = found.get(lead_id)
        cards.append(
            {
                "leadId": str(lead_id),
                "stageId": card["stageId"] if card else None,
                "html": template.render(card=card, users=users, signed=signed) if card else None,
            }
        )
    answer = {"pipelineId": str(pipeline.id), "cards": cards, "counts": counts}
    return Response(orjson.dumps(answer), media_type="application/json")


# ---- the event stream ------------------------------------------------------------------------


@dataclass(eq=False)
class Subscription:
    workspace_id: UUID
    queue: asyncio.Queue[Record] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False


class LiveFeed:
    """One follower of the log per process, fanning lead events out to the open streams of
    their workspace. It starts with the first stream, stops soon after the last one ends,
    and waits for commits with the projector's wake-up (LISTEN/NOTIFY), not by polling."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.position: int | None = None
        self.stopping = asyncio.Event()
        self._subscribers: dict[UUID, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        _feeds.add(self)

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def subscribe(self, workspace_id: UUID) -> Subscription:
        subscription = Subscription(workspace_id)
        self._subscribers.setdefault(workspace_id, set()).add(subscription)
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self.position = None
            self._task = asyncio.create_task(self._follow(), name="leadlog-live-feed")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.workspace_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.workspace_id]

    async def ready(self) -> None:
        """Wait until the follower knows where it starts (everything after is fanned out)."""
        await self._ready.wait()

    def stop(self) -> None:
        """End every stream now (the server is stopping: they must not hold it up)."""
        self.stopping.set()
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        engine = self.engine
        after: int | None = None
        while self._subscribers and not self.stopping.is_set():
            generation = engine.projector.wakeup.generation
            try:
                if after is None:
                    after = await engine.log.max_position()
                    self.position = after
                    self._ready.set()
                records = await engine.log.read(after, BATCH, topics=LEAD_TOPICS)
            except Exception as error:  # the database away: try again shortly
                log.warning("live feed read failed", error=repr(error))
                await asyncio.sleep(IDLE_CHECK)
                continue
            if records:
                # Pages re-read cards from the view: let it have them first.
                await engine.lead_views.wait_for(records[-1].position, VIEW_WAIT)
                after = records[-1].position
                self.position = after
                for record in records:
                    if record.workspace_id is not None:
                        self._fan_out(record)
                continue
            await engine.projector.wait_for_commit(generation, IDLE_CHECK)

    def _fan_out(self, record: Record) -> None:
        assert record.workspace_id is not None
        for subscription in list(self._subscribers.get(record.workspace_id, ())):
            try:
                subscription.queue.put_nowait(record)
            except asyncio.QueueFull:
                # A stream that cannot keep up ends; its browser reconnects and resumes.
                subscription.overflowed = True


_feeds: weakref.WeakSet[LiveFeed] = weakref.WeakSet()


def stop_streams() -> None:
    """End every open event stream of this process; safe to call from a signal handler
    (uvicorn's graceful stop waits for open responses, and these never end by themselves)."""
    for feed in list(_feeds):
        with contextlib.suppress(RuntimeError):  # its loop closed already
            feed.loop.call_soon_threadsafe(feed.stop)


def feed_of(request: Request) -> LiveFeed:
    state = request.app.state
    feed: LiveFeed | None = getattr(state, "live_feed", None)
    if feed is None:
        feed = LiveFeed(web_of(request).engine)
        state.live_feed = feed
    return feed


def lead_event(record: Record) -> bytes:
    data = {
        "leadId": str(record.originator_id),
        "position": record.position,
        "type": record.event_type,
    }
    return b"id: %d\nevent: lead\ndata: %s\n\n" % (record.position, orjson.dumps(data))


def start_position(request: Request) -> int | None:
    """Where the stream resumes: `Last-Event-ID` (a reconnect) wins over `?after=` (the
    position the page was rendered at); neither: from now on."""
    for raw in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if raw is None or raw == "":
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            continue
        if 0 <= value <= MAX_POSITION:
            return value
    return None


async def stream(request: Request, feed: LiveFeed, workspace_id: UUID) -> AsyncIterator[bytes]:
    engine = feed.engine
    subscription = feed.subscribe(workspace_id)
    try:
        yield b"retry: 1000\n\n"
        await feed.ready()
        sent = start_position(request)
        if sent is None:
            sent = feed.position or 0
        # Catch up from the log, then take the feed's events past what was sent: the last
        # read below starts after the feed's starting point, so nothing falls in between.
        while True:
            records = await engine.log.read(
                sent, BATCH, topics=LEAD_TOPICS, workspace_id=workspace_id
            )
            if not records:
                break
            await engine.lead_views.wait_for(records[-1].position, VIEW_WAIT)
            yield b"".join(lead_event(r) for r in records)
            sent = records[-1].position
        while not feed.stopping.is_set() and not subscription.overflowed:
            try:
                record = await asyncio.wait_for(subscription.queue.get(), HEARTBEAT)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            chunk = []
            for each in [record, *_drain(subscription.queue)]:
                if each.position > sent:
                    chunk.append(lead_event(each))
                    sent = each.position
            if chunk:
                yield b"".join(chunk)
    finally:
        feed.unsubscribe(subscription)


def _drain(queue: asyncio.Queue[Record]) -> list[Record]:
    drained = []
    while not queue.empty():
        drained.append(queue.get_nowait())
    return drained


async def _until_stopped(feed: LiveFeed, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`source`, ended as soon as the feed stops (the server is shutting down)."""
    stopping = asyncio.ensure_future(feed.stopping.wait())
    try:
        while True:
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stopping.cancel()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


@live.get("/board/events")
async def board_events(request: Request, signed: Signed) -> Response:
    """Server-sent events: every change to a lead of the signed-in user's workspace, as
    `event: lead` with `id: <log position>` and `{"leadId", "position", "type"}`; resumes
    after `Last-Event-ID` (or `?after=`), without gaps or repeats."""
    feed = feed_of(request)
    if feed.stopping.is_set():
        return Response("the server is stopping", status_code=503, headers={"Retry-After": "2"})
    return StreamingResponse(
        _until_stopped(feed, stream(request, feed, signed.workspace_id)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
