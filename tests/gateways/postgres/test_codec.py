"""EventCodec: pydantic + orjson round trips, upcasting stored old versions, decode errors."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid4

import eventsourcing.utils
import orjson
import pytest
from eventsourcing.utils import register_topic

from domain.base import DomainEvent
from gateways.postgres.codec import EventCodec, EventDecodeError
from gateways.postgres.log_store import NewRecord, PostgresLog, Record, RecordAppend


class NoteAdded(DomainEvent):
    """Version 1, as first shipped."""

    text: str


class NoteAddedV2(DomainEvent):
    """The same event after it gained an author."""

    class_version: ClassVar[int] = 2

    text: str
    author: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["author"] = "unknown"


class NoteAddedV3(DomainEvent):
    """And later a pinned flag."""

    class_version: ClassVar[int] = 3

    text: str
    author: str
    pinned: bool

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["author"] = "unknown"

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        state["pinned"] = state["author"] == "admin"


class NoteAddedV2WithoutUpcaster(DomainEvent):
    class_version: ClassVar[int] = 2

    text: str


NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def decode(codec: EventCodec, record: NewRecord | Record) -> DomainEvent:
    return codec.decode(record.topic, record.originator_id, record.originator_version, record.state)


def retired_topic() -> str:
    """A topic whose module no longer exists: only `register_topic` can resolve it."""
    return f"leadlog_retired_{uuid4().hex}.notes:NoteAdded"


def test_round_trip_keeps_identity_out_of_the_state() -> None:
    codec = EventCodec()
    original = NoteAddedV2(
        originator_id=uuid4(), originator_version=4, timestamp=NOW, text="hi", author="ann"
    )
    record = codec.encode(original)
    assert record.topic == "tests.gateways.postgres.test_codec:NoteAddedV2"
    assert record.event_type == "note_added_v2"
    assert (record.originator_id, record.originator_version) == (
        original.originator_id,
        4,
    )
    state = orjson.loads(record.state)
    assert state == {
        "timestamp": "2026-01-02T03:04:05.678000+00:00",
        "text": "hi",
        "author": "ann",
        "class_version": 2,
    }
    assert decode(codec, record) == original


async def test_stored_v1_event_decodes_as_v2_under_the_same_topic(
    log: PostgresLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = EventCodec()
    v1 = NoteAdded(originator_id=uuid4(), originator_version=1, timestamp=NOW, text="hello")
    record = codec.encode(v1)
    assert "class_version" not in orjson.loads(record.state)
    await log.append(RecordAppend(None, records=[record]))
    (stored,) = await log.read(0)
    assert decode(codec, stored) == v1

    # The code evolves: the event's topic now names the version-2 class. (Within one
    # process the topic cache already maps it to the v1 class, so point it at v2 for
    # this test only; a restarted process would import v2 under the topic directly.)
    monkeypatch.setitem(eventsourcing.utils._topic_cache, stored.topic, NoteAddedV2)

    upcast = decode(codec, stored)
    assert isinstance(upcast, NoteAddedV2)
    assert upcast == NoteAddedV2(
        originator_id=v1.originator_id,
        originator_version=1,
        timestamp=NOW,
        text="hello",
        author="unknown",
    )


async def test_registered_old_topic_upcasts_through_every_version(log: PostgresLog) -> None:
    codec = EventCodec()
    old_topic = retired_topic()
    v1 = NoteAdded(originator_id=uuid4(), originator_version=1, timestamp=NOW, text="one")
    v2 = NoteAddedV2(
        originator_id=v1.originator_id,
        originator_version=2,
        timestamp=NOW,
        text="two",
        author="admin",
    )
    records = [dataclasses.replace(codec.encode(e), topic=old_topic) for e in (v1, v2)]
    await log.append(RecordAppend(None, records=records))
    stored = await log.read(0)

    with pytest.raises(EventDecodeError, match="cannot decode"):
        decode(codec, stored[0])

    register_topic(old_topic, NoteAddedV3)
    first, second = (decode(codec, r) for r in stored)
    assert first == NoteAddedV3(
        originator_id=v1.originator_id,
        originator_version=1,
        timestamp=NOW,
        text="one",
        author="unknown",
        pinned=False,
    )
    # stored at version 2: only the v2 → v3 step runs
    assert second == NoteAddedV3(
        originator_id=v1.originator_id,
        originator_version=2,
        timestamp=NOW,
        text="two",
        author="admin",
        pinned=True,
    )
    # and a v3 event written now decodes as itself, without upcasting
    assert decode(codec, codec.encode(second)) == second


def test_corrupt_or_unresolvable_state_raises_event_decode_error() -> None:
    codec = EventCodec()
    good = codec.encode(
        NoteAdded(originator_id=uuid4(), originator_version=7, timestamp=NOW, text="x")
    )
    broken = {
        "not json": dataclasses.replace(good, state=b'{"text": "x", '),
        "not an object": dataclasses.replace(good, state=b"[1, 2]"),
        "missing field": dataclasses.replace(good, state=orjson.dumps({"timestamp": "2026"})),
        "wrong type": dataclasses.replace(
            good, state=orjson.dumps({"timestamp": NOW, "text": {"no": "text"}})
        ),
        "unknown topic": dataclasses.replace(
            good, topic="tests.gateways.postgres.test_codec:NoSuchEvent"
        ),
        "unknown module": dataclasses.replace(good, topic=retired_topic()),
        "bad class_version": dataclasses.replace(
            good, state=orjson.dumps({"timestamp": NOW, "text": "x", "class_version": "two"})
        ),
    }
    for why, record in broken.items():
        with pytest.raises(EventDecodeError) as raised:
            decode(codec, record)
        assert record.topic in str(raised.value), why
        assert f"v7 of {good.originator_id}" in str(raised.value), why
        assert raised.value.__cause__ is not None, why


def test_missing_upcaster_raises_event_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = EventCodec()
    record = codec.encode(
        NoteAdded(originator_id=UUID(int=1), originator_version=1, timestamp=NOW, text="x")
    )
    monkeypatch.setitem(eventsourcing.utils._topic_cache, record.topic, NoteAddedV2WithoutUpcaster)
    with pytest.raises(EventDecodeError, match="upcast_v1_v2"):
        decode(codec, record)


def test_an_event_newer_than_the_code_is_refused() -> None:
    codec = EventCodec()
    record = codec.encode(
        NoteAdded(
            originator_id=uuid4(), originator_version=1, timestamp=datetime.now(UTC), text="x"
        )
    )
    state = orjson.loads(record.state)
    state["class_version"] = 9
    with pytest.raises(EventDecodeError, match="upgrade"):
        codec.decode(record.topic, record.originator_id, 1, orjson.dumps(state))
