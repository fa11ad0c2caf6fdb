"""PostgresEventStore: aggregates in and out of the log, past states, concurrency, following."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import cast
from uuid import UUID, uuid4

from eventsourcing.domain import event

from domain.base import Aggregate, DomainEvent, LoggedEvent
from gateways.postgres.event_store import PostgresEventStore
from handlers.ports import Allocation, Append, Appended, Claim, ConcurrencyConflict

WS = UUID("00000000-0000-4000-8000-0000000000e1")


class TallySheet(Aggregate):
    """A small aggregate of the test's own: a named tally."""

    @event("Opened")
    def __init__(self, name: str, number: int = 0) -> None:
        self.name = name
        self.number = number
        self.total = 0
        self.notes: list[str] = []

    @event("Counted")
    def count(self, by: int) -> None:
        self.total += by

    @event("Noted")
    def note(self, text: str) -> None:
        self.notes.append(text)


async def save(store: PostgresEventStore, sheet: TallySheet) -> Appended:
    return await store.append(Append(workspace_id=WS, events=sheet.collect_events()))


async def load(
    store: PostgresEventStore,
    sheet_id: UUID,
    *,
    version: int | None = None,
    at: datetime | None = None,
    position: int | None = None,
) -> TallySheet:
    loaded = await store.load(TallySheet, sheet_id, version=version, at=at, position=position)
    assert loaded is not None
    return loaded


async def test_append_and_load_back(store: PostgresEventStore) -> None:
    sheet = TallySheet(name="visits")
    sheet.count(by=2)
    sheet.note(text="first")
    appended = await save(store, sheet)
    assert len(appended.positions) == 3
    assert appended.position == appended.positions[-1] == await store.max_position()
    assert [e.originator_version for e in appended.events] == [1, 2, 3]

    loaded = await load(store, sheet.id)
    assert (loaded.id, loaded.version, loaded.name, loaded.total, loaded.notes) == (
        sheet.id,
        3,
        "visits",
        2,
        ["first"],
    )
    assert loaded.created_on == sheet.created_on
    assert loaded.modified_on == sheet.modified_on

    # a loaded aggregate carries on where it left off
    loaded.count(by=5)
    await save(store, loaded)
    assert (await load(store, sheet.id)).total == 7

    assert await store.load(TallySheet, uuid4()) is None


async def test_load_past_states(store: PostgresEventStore) -> None:
    sheet = TallySheet(name="past")
    first = await save(store, sheet)
    sheet.count(by=1)
    second = await save(store, sheet)
    sheet.count(by=10)
    sheet.note(text="late")
    await save(store, sheet)
    # another aggregate's events in between do not disturb a position cut
    await save(store, TallySheet(name="other"))

    assert (await load(store, sheet.id, version=1)).total == 0
    assert (await load(store, sheet.id, version=2)).total == 1
    three = await load(store, sheet.id, version=3)
    assert (three.total, three.notes) == (11, [])
    assert (await load(store, sheet.id)).notes == ["late"]

    at_second = await load(store, sheet.id, position=second.position)
    assert (at_second.version, at_second.total) == (2, 1)
    assert await store.load(TallySheet, sheet.id, position=first.position - 1) is None

    history = await store.history(sheet.id)
    recorded = {logged.event.originator_version: logged.recorded_at for logged in history}
    at_time = await load(store, sheet.id, at=recorded[2])
    assert (at_time.version, at_time.total) == (2, 1)
    assert await store.load(TallySheet, sheet.id, at=recorded[1].replace(year=2000)) is None


async def test_concurrent_modifications_from_one_version_conflict(
    store: PostgresEventStore,
) -> None:
    sheet = TallySheet(name="contested")
    await save(store, sheet)
    first, second = await load(store, sheet.id), await load(store, sheet.id)
    first.count(by=1)
    second.count(by=100)

    results = await asyncio.gather(save(store, first), save(store, second), return_exceptions=True)
    conflicts = [r for r in results if isinstance(r, ConcurrencyConflict)]
    successes = [r for r in results if isinstance(r, Appended)]
    assert len(conflicts) == 1
    assert len(successes) == 1
    winner = first if isinstance(results[0], Appended) else second
    loaded = await load(store, sheet.id)
    assert (loaded.version, loaded.total) == (2, winner.total)

    # the loser reloads and succeeds
    retry = await load(store, sheet.id)
    retry.count(by=1000)
    await save(store, retry)
    assert (await load(store, sheet.id)).total == winner.total + 1000


async def test_build_with_counters_and_claims(store: PostgresEventStore) -> None:
    """Events that depend on what the transaction allocated are built inside it."""
    sheets: list[TallySheet] = []

    def open_numbered(allocation: Allocation) -> Sequence[DomainEvent]:
        sheet = TallySheet(name="numbered", number=allocation.counter("ws:sheets"))
        sheets.append(sheet)
        return sheet.collect_events()

    results = await asyncio.gather(
        *(
            store.append(
                Append(
                    workspace_id=WS,
                    build=open_numbered,
                    counters=["ws:sheets"],
                    claims=[Claim("sheet:numbered", uuid4())],
                )
            )
            for _ in range(20)
        )
    )
    numbers = []
    for result in results:
        (opened,) = result.events
        loaded = await load(store, opened.originator_id)
        assert loaded.number == result.allocation.counter("ws:sheets")
        numbers.append(loaded.number)
    assert sorted(numbers) == list(range(1, 21))
    assert len({r.allocation.holder("sheet:numbered") for r in results}) == 1
    assert await store.holder("sheet:numbered") == results[0].allocation.holder("sheet:numbered")


async def test_follow_yields_logged_events(store: PostgresEventStore) -> None:
    sheet = TallySheet(name="followed")
    sheet.count(by=3)
    first = await save(store, sheet)

    follower = cast(AsyncGenerator[Sequence[LoggedEvent], None], store.follow(after=0))
    seen: list[LoggedEvent] = []
    try:
        seen.extend(await asyncio.wait_for(anext(follower), 5))
        # a later commit wakes the follower
        pending = asyncio.ensure_future(anext(follower))
        await asyncio.sleep(0.05)
        sheet.note(text="later")
        later = await save(store, sheet)
        seen.extend(await asyncio.wait_for(pending, 5))
    finally:
        await follower.aclose()

    assert [e.position for e in seen] == [*first.positions, *later.positions]
    assert [e.event_type for e in seen] == [
        "tally_sheet.opened",
        "tally_sheet.counted",
        "tally_sheet.noted",
    ]
    assert isinstance(seen[0].event, TallySheet.Opened)  # type: ignore[attr-defined]
    assert isinstance(seen[2].event, TallySheet.Noted)  # type: ignore[attr-defined]
    assert all(e.workspace_id == WS for e in seen)
    assert all(e.event.originator_id == sheet.id for e in seen)
    assert len({e.event_id for e in seen}) == 3

    read = await store.read(0, 10, event_types=["tally_sheet.counted"])
    assert [e.position for e in read] == [seen[1].position]


async def test_history(store: PostgresEventStore) -> None:
    sheet = TallySheet(name="audited")
    await save(store, sheet)
    await save(store, TallySheet(name="noise"))
    sheet.count(by=4)
    sheet.note(text="why")
    await save(store, sheet)

    history = await store.history(sheet.id)
    assert [h.event.originator_version for h in history] == [1, 2, 3]
    assert [h.event_type for h in history] == [
        "tally_sheet.opened",
        "tally_sheet.counted",
        "tally_sheet.noted",
    ]
    positions = [h.position for h in history]
    assert positions == sorted(positions)
    assert history[1].recorded_at == history[2].recorded_at  # one command, one transaction
    assert history[0].recorded_at < history[1].recorded_at
    assert await store.history(uuid4()) == []
