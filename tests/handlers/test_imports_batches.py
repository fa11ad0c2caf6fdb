"""CSV import in chunks: every row accounted for when the store fails, and a retry completes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from gateways.postgres.event_store import PostgresEventStore
from handlers.imports import CsvImport, ImportInterrupted
from handlers.intake import Intake, LeadIntake, Receipt, request_counter
from handlers.workspaces import create_workspace
from tests.handlers.test_intake_batches import received

pytestmark = pytest.mark.timeout(240)

ROWS = 1000


class FailsOnce(LeadIntake):
    """The store away for one chunk: its `receive_many` fails as a whole."""

    def __init__(self, store: PostgresEventStore, failing_call: int) -> None:
        super().__init__(store)
        self.failing_call = failing_call
        self.calls = 0

    async def receive_many(self, intakes: Sequence[Intake]) -> list[Receipt | Exception]:
        self.calls += 1
        if self.calls == self.failing_call:
            raise ConnectionError("the database went away (simulated)")
        return await super().receive_many(intakes)


def csv_file() -> bytes:
    rows = "".join(f"P{i},p{i % 300}@example.com\n" for i in range(ROWS))
    return ("name,email\n" + rows).encode()


async def in_chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_failed_chunk_stops_the_import_and_the_report_names_every_row(
    store: PostgresEventStore,
) -> None:
    workspace_id = (await create_workspace(store, "Imports", "US")).id
    failing = FailsOnce(store, failing_call=4)
    job = CsvImport(failing, workspace_id, actor="test", import_id="imp-1", concurrency=64)
    assert job.chunk_rows == 32  # two chunks of 32 in flight
    with pytest.raises(ImportInterrupted) as stopped:
        await job.run(in_chunks(csv_file()))
    report = stopped.value.report
    assert not report.complete
    leads = await received(store, workspace_id)
    assert report.accepted == len(leads) > 0
    assert report.accepted + report.rejected == report.rows_total
    reasons = [r.reason for r in report.rejections]
    unconfirmed = [r for r in reasons if r.startswith("not confirmed written")]
    assert len(unconfirmed) == 32  # the failed chunk, row by row
    assert all(
        r.startswith("not confirmed written") or r == "not imported: the import stopped"
        for r in reasons
    )
    written = {e.idempotency_key for e in leads}
    rejected = {f"import:imp-1:{r.row}" for r in report.rejections}
    assert not written & rejected  # a row reported as not written was not written

    # the same import again: the written rows are replayed, the others written, once each
    again = await CsvImport(LeadIntake(store), workspace_id, actor="test", import_id="imp-1").run(
        in_chunks(csv_file())
    )
    assert again.complete and again.accepted == ROWS and again.rejected == 0
    assert again.replayed == report.accepted
    leads = await received(store, workspace_id)
    assert len(leads) == ROWS
    assert len({e.idempotency_key for e in leads}) == ROWS
    assert sorted(e.request_id for e in leads) == list(range(1, ROWS + 1))
    assert await store.log.counter(request_counter(workspace_id)) == ROWS
    assert sum(not e.is_duplicate for e in leads) == 300  # one original per address


async def test_chunks_share_commits(store: PostgresEventStore) -> None:
    workspace_id = (await create_workspace(store, "Chunks", "US")).id
    batches, commands = store.log.batches, store.log.commands
    report = await CsvImport(LeadIntake(store), workspace_id, actor="test").run(
        in_chunks(csv_file())
    )
    assert report.complete and report.accepted == ROWS and report.duplicates == ROWS - 300
    assert store.log.commands - commands == ROWS
    assert store.log.batches - batches <= ROWS // 100  # hundreds of rows to a commit
