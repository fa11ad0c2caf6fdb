"""The domain-level event store: aggregates and domain events over the Postgres log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TypeVar
from uuid import UUID

from domain.base import Aggregate, DomainEvent, LoggedEvent
from gateways.postgres.codec import EventCodec
from gateways.postgres.log_store import (
    NewRecord,
    PostgresLog,
    Record,
    RecordAppend,
    RecordAppended,
)
from handlers.ports import Allocation, Append, Appended

A = TypeVar("A", bound=Aggregate)


class PostgresEventStore:
    """Implements `handlers.ports.EventStore` on a `PostgresLog`."""

    def __init__(self, log: PostgresLog, codec: EventCodec | None = None) -> None:
        self.log = log
        self.codec = codec or EventCodec()

    async def append(self, append: Append) -> Appended:
        request, built = self._request(append)
        return self._appended(append, built, await self.log.append(request))

    async def append_many(self, appends: Sequence[Append]) -> list[Appended | Exception]:
        requests = [self._request(append) for append in appends]
        results = await self.log.append_many([request for request, _ in requests])
        return [
            result if isinstance(result, Exception) else self._appended(append, built, result)
            for append, (_, built), result in zip(appends, requests, results, strict=True)
        ]

    def _request(self, append: Append) -> tuple[RecordAppend, list[DomainEvent]]:
        """The record-level command, and the list its `build` fills with the domain events."""
        built: list[DomainEvent] = []
        build = append.build
        encode = self.codec.encode

        def build_records(allocation: Allocation) -> Sequence[NewRecord]:
            assert build is not None
            built.clear()
            built.extend(build(allocation))
            return [encode(e) for e in built]

        request = RecordAppend(
            workspace_id=append.workspace_id,
            records=[encode(e) for e in append.events],
            build=build_records if build is not None else None,
            expect=append.expect,
            claims=append.claims,
            releases=append.releases,
            counters=append.counters,
            limits=append.limits,
            checkpoint=append.checkpoint,
            idempotency=append.idempotency,
        )
        return request, built

    @staticmethod
    def _appended(append: Append, built: list[DomainEvent], result: RecordAppended) -> Appended:
        if result.replayed:
            return Appended([], [], result.allocation, replayed=True)
        return Appended([*append.events, *built], result.positions, result.allocation)

    async def load(
        self,
        cls: type[A],
        aggregate_id: UUID,
        *,
        version: int | None = None,
        at: datetime | None = None,
        position: int | None = None,
    ) -> A | None:
        """The aggregate as it is now, or as it was at a version, a time or a log position."""
        records = await self.log.read_stream(
            aggregate_id, lte=version, until_time=at, until_position=position
        )
        aggregate: Aggregate | None = None
        for record in records:
            event = self._decode(record)
            aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
        if aggregate is not None and not isinstance(aggregate, cls):
            return None
        return aggregate

    async def holder(self, key: str) -> UUID | None:
        return await self.log.holder(key)

    async def read(
        self,
        after: int,
        limit: int,
        event_types: Sequence[str] | None = None,
        *,
        workspace_id: UUID | None = None,
    ) -> Sequence[LoggedEvent]:
        records = await self.log.read(
            after, limit, event_types=event_types, workspace_id=workspace_id
        )
        return [self.logged(r) for r in records]

    async def history(self, aggregate_id: UUID) -> Sequence[LoggedEvent]:
        return [self.logged(r) for r in await self.log.read_stream(aggregate_id)]

    async def follow(
        self, after: int, batch_size: int = 500
    ) -> AsyncIterator[Sequence[LoggedEvent]]:
        async for records in self.log.follow(after, batch_size):
            yield [self.logged(r) for r in records]

    async def max_position(self) -> int:
        return await self.log.max_position()

    def logged(self, record: Record) -> LoggedEvent:
        return LoggedEvent(
            position=record.position,
            event_id=record.event_id,
            workspace_id=record.workspace_id,
            event_type=record.event_type,
            recorded_at=record.recorded_at,
            event=self._decode(record),
        )

    def _decode(self, record: Record) -> DomainEvent:
        return self.codec.decode(
            record.topic, record.originator_id, record.originator_version, record.state
        )
