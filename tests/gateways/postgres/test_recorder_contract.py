"""The eventsourcing library's own recorder test cases, run against our asyncpg store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.tests.persistence import (
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)

from tests.conftest import Servers, drop_schema
from tests.gateways.postgres.sync_recorder import LoopThread, SyncRecorder


class _UsesOurStore:
    """Each create_recorder() gets a fresh schema, as the library's cases expect."""

    servers: Servers
    runner: LoopThread
    recorders: list[SyncRecorder]

    @pytest.fixture(autouse=True)
    def _our_store(self, servers: Servers) -> Iterator[None]:
        self.servers = servers
        self.runner = LoopThread()
        self.recorders = []
        yield
        for recorder in self.recorders:
            recorder.close()
            self.runner.run(drop_schema(servers.database_url, recorder.log.schema))
        self.runner.stop()

    def create_recorder(self) -> SyncRecorder:
        recorder = SyncRecorder(
            self.runner, self.servers.database_url, f"t_{uuid.uuid4().hex[:16]}"
        )
        self.recorders.append(recorder)
        return recorder


class TestApplicationRecorder(_UsesOurStore, ApplicationRecorderTestCase[SyncRecorder]):
    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(_UsesOurStore, TrackingRecorderTestCase):
    pass


class TestProcessRecorder(_UsesOurStore, ProcessRecorderTestCase):
    pass


class TestNonInterleavingNotificationIDs(_UsesOurStore, NonInterleavingNotificationIDsBaseCase):
    pass
