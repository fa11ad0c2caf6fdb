"""Test-only synchronous adapter: the eventsourcing library's recorder API over PostgresLog."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
)

from gateways.postgres.database import open_pool
from gateways.postgres.log_store import NewRecord, PostgresLog, Record, RecordAppend
from handlers.ports import Checkpoint, StoreError

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread, so synchronous test code can drive async code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _stored(record: Record) -> StoredEvent:
    return StoredEvent(
        originator_id=record.originator_id,
        originator_version=record.originator_version,
        topic=record.topic,
        state=record.state,
    )


class SyncRecorder(ProcessRecorder):
    """ApplicationRecorder + TrackingRecorder + ProcessRecorder over one PostgresLog."""

    def __init__(self, runner: LoopThread, database_url: str, schema: str) -> None:
        self.runner = runner
        self.pool: asyncpg.Pool = runner.run(open_pool(database_url, schema, max_size=12))
        self.log = PostgresLog(self.pool, schema, poll_interval=0.1)

    def close(self) -> None:
        self.runner.run(self.log.close())
        self.runner.run(self.pool.close())

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        request = RecordAppend(
            workspace_id=None,
            records=[
                NewRecord(
                    originator_id=UUID(str(e.originator_id)),
                    originator_version=e.originator_version,
                    topic=e.topic,
                    event_type=e.topic,
                    state=e.state,
                )
                for e in stored_events
            ],
            checkpoint=Checkpoint(tracking.application_name, tracking.notification_id)
            if tracking
            else None,
        )
        try:
            result = self.runner.run(self.log.append(request))
        except StoreError as error:
            raise IntegrityError(str(error)) from error
        return list(result.positions)

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        records = self.runner.run(
            self.log.read_stream(UUID(str(originator_id)), gt=gt, lte=lte, desc=desc, limit=limit)
        )
        return [_stored(r) for r in records]

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        after = 0 if start is None else (start - 1 if inclusive_of_start else start)
        records = self.runner.run(self.log.read(after, limit, stop=stop, topics=topics))
        return [
            Notification(
                id=r.position,
                originator_id=r.originator_id,
                originator_version=r.originator_version,
                topic=r.topic,
                state=r.state,
            )
            for r in records
        ]

    def max_notification_id(self) -> int | None:
        return self.runner.run(self.log.max_position()) or None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[SyncRecorder]:
        return PollingSubscription(self, gt, topics)

    def insert_tracking(self, tracking: Tracking) -> None:
        async def insert() -> None:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.log.record_checkpoint(
                    conn, Checkpoint(tracking.application_name, tracking.notification_id)
                )

        try:
            self.runner.run(insert())
        except StoreError as error:
            raise IntegrityError(str(error)) from error

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.runner.run(self.log.max_tracking_id(application_name))


class PollingSubscription(Subscription[SyncRecorder]):
    """Blocks until the next notification after the last one yielded."""

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            found = self._recorder.select_notifications(
                self._last_notification_id or 0, 1, topics=self._topics, inclusive_of_start=False
            )
            if found:
                self._last_notification_id = found[0].id
                return found[0]
            time.sleep(0.02)
        raise StopIteration
