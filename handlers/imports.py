"""Streamed CSV import: rows parsed one at a time, leads appended in chunks, bounded in flight."""

from __future__ import annotations

import asyncio
import codecs
import csv
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from domain.csv_mapping import ColumnPlan, MappingError, RowError, Target, plan_columns, row_data
from domain.leads import LeadDetails, MissingName, Source, resolve_name
from handlers.intake import Intake, LeadIntake, Receipt

DEFAULT_CONCURRENCY = 1024
# Rows received together (one `receive_many`, so one group commit writes them all).
CHUNK_ROWS = 256
MAX_REASONS = 1000
# A physical line longer than this is refused (its row rejected) instead of buffered forever.
MAX_LINE_CHARS = 1024 * 1024
_IMPORT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LINE_END = re.compile(r"\r\n|\r|\n")


class ImportRefused(ValueError):
    """The file cannot be imported at all (no header, a bad mapping); nothing was written."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ImportInterrupted(Exception):
    """The import stopped part way; `report` says exactly which rows were written."""

    def __init__(self, report: ImportReport, cause: BaseException) -> None:
        super().__init__(f"the import stopped after row {report.rows_total}: {cause!r}")
        self.report = report
        self.cause = cause


def check_import_id(import_id: str) -> str:
    if not _IMPORT_ID.fullmatch(import_id):
        raise ImportRefused("bad_import_id", "importId must be 1 to 64 letters, digits, - or _")
    return import_id


@dataclass(frozen=True)
class Rejection:
    row: int
    line: int
    reason: str


@dataclass
class ImportReport:
    """What became of every row read: accepted (written now or by an earlier try) or rejected."""

    import_id: str
    columns: dict[str, str] = field(default_factory=dict)
    rows_total: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    replayed: int = 0
    position: int = 0
    bytes_read: int = 0
    complete: bool = False
    seconds: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejections_omitted(self) -> int:
        return self.rejected - len(self.rejections)

    def reject(self, row: int, line: int, reason: str) -> None:
        self.rejected += 1
        self.rejections.append(Rejection(row, line, reason))
        if len(self.rejections) > 2 * MAX_REASONS:
            self._trim()

    def _trim(self) -> None:
        # Rows finish out of order; keep the lowest-numbered ones.
        self.rejections.sort(key=lambda r: r.row)
        del self.rejections[MAX_REASONS:]

    def finish(self) -> None:
        self._trim()

    def as_json(self) -> dict[str, Any]:
        return {
            "importId": self.import_id,
            "complete": self.complete,
            "rowsTotal": self.rows_total,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "position": self.position,
            "bytesRead": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "columns": self.columns,
            "rejections": [
                {"row": r.row, "line": r.line, "reason": r.reason} for r in self.rejections
            ],
            "rejectionsOmitted": self.rejections_omitted,
        }


@dataclass(frozen=True)
class Record:
    """One CSV record, or why it could not be read; `line` is where it starts (1-based)."""

    line: int
    cells: list[str] | None
    error: str | None = None


class _NeedMore(Exception):
    """The buffered lines end inside a record: wait for more bytes, then parse it again."""


class _Overlong(Exception):
    """The record reached a line that was too long to keep."""


class RecordSplitter:
    """Incremental CSV: feed decoded text, get whole records, with the csv module's own rules.

    csv.reader wants an iterator of lines and cannot be paused inside a record, so when the
    buffered lines run out mid-record the lines it took are put back and that record is
    parsed again once more text has arrived. Only the record straddling a chunk boundary is
    ever parsed twice.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")
        # None stands for a line dropped for its length.
        self._lines: deque[str | None] = deque()
        self._partial = ""
        self._skipping = False
        self._next_line = 1
        self._eof = False

    def feed(self, chunk: bytes) -> Iterator[Record]:
        self._split(self._decoder.decode(chunk))
        return self._records()

    def finish(self) -> Iterator[Record]:
        self._split(self._decoder.decode(b"", final=True))
        if self._partial:
            self._lines.append(self._partial)
            self._partial = ""
        self._eof = True
        return self._records()

    def _split(self, text: str) -> None:
        text = self._partial + text
        start = 0
        for match in _LINE_END.finditer(text):
            # A lone \r at the end may be the first half of \r\n: wait for the next chunk.
            if match.group() == "\r" and match.end() == len(text):
                break
            if self._skipping:
                self._skipping = False
            else:
                self._lines.append(text[start : match.end()])
            start = match.end()
        self._partial = text[start:]
        if len(self._partial) > MAX_LINE_CHARS:
            # No line end in sight: not a sane row. Drop the line, keep its place.
            if not self._skipping:
                self._lines.append(None)
            self._skipping = True
            self._partial = ""

    def _records(self) -> Iterator[Record]:
        taken: list[str | None] = []

        def source() -> Iterator[str]:
            while True:
                if self._lines:
                    line = self._lines.popleft()
                    taken.append(line)
                    if line is None:
                        raise _Overlong
                    yield line
                elif self._eof:
                    return
                else:
                    raise _NeedMore

        while True:
            reader = csv.reader(source(), strict=True)
            while True:
                taken.clear()
                line = self._next_line
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except _NeedMore:
                    self._lines.extendleft(reversed(taken))
                    return
                except _Overlong:
                    self._next_line += len(taken)
                    yield Record(line, None, f"line {line + len(taken) - 1} is longer than 1 MiB")
                    break  # the reader's line source is spent: start a fresh one
                except csv.Error as error:
                    self._next_line += len(taken)
                    yield Record(line, None, f"malformed CSV: {error}")
                    continue
                self._next_line += len(taken)
                yield Record(line, cells)


def _has_invalid_utf8(cells: list[str]) -> int | None:
    """The 1-based column holding bytes that were not UTF-8 (decoded as lone surrogates)."""
    for index, cell in enumerate(cells):
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError:
            return index + 1
    return None


@dataclass(frozen=True)
class Progress:
    bytes_read: int
    rows: int
    accepted: int
    rejected: int


@dataclass
class _Row:
    row: int
    line: int
    intake: Intake


class CsvImport:
    """One import run: reads the chunks it is given, writes each good row through the intake."""

    def __init__(
        self,
        intake: LeadIntake,
        workspace_id: UUID,
        *,
        actor: str,
        import_id: str | None = None,
        mapping: Mapping[str, Target] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        start_row: int = 1,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.intake = intake
        self.workspace_id = workspace_id
        self.actor = actor
        self.import_id = check_import_id(import_id) if import_id else uuid.uuid4().hex
        self.mapping = mapping
        self.concurrency = concurrency
        self.start_row = start_row
        self.progress = progress
        self.report = ImportReport(self.import_id)
        self._plan: ColumnPlan | None = None
        self._failure: BaseException | None = None

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk: at most `CHUNK_ROWS`, and small enough that two chunks fit in
        `concurrency`, so that one chunk is prepared while another commits."""
        return max(1, min(CHUNK_ROWS, self.concurrency // 2))

    async def run(self, chunks: AsyncIterator[bytes]) -> ImportReport:
        """Import everything; ImportRefused before any write, ImportInterrupted after some."""
        started = time.perf_counter()
        await self.intake.region_of(self.workspace_id)  # an unknown workspace fails here
        workers_count = max(1, self.concurrency // self.chunk_rows)
        queue: asyncio.Queue[list[_Row] | None] = asyncio.Queue(maxsize=workers_count * 2)
        pending: list[_Row] = []
        splitter = RecordSplitter()
        workers: list[asyncio.Task[None]] = []
        interruption: BaseException | None = None
        try:
            async for chunk in chunks:
                self.report.bytes_read += len(chunk)
                for record in splitter.feed(chunk):
                    await self._take(record, pending, queue, workers, workers_count)
                    if self._failure is not None:
                        break
                if self._failure is not None:
                    break
                self._tell()
            else:
                for record in splitter.finish():
                    await self._take(record, pending, queue, workers, workers_count)
                    if self._failure is not None:
                        break
            if self._plan is None:
                raise ImportRefused("empty_file", "the file is empty; it needs a header row")
        except ImportRefused:
            await self._stop(queue, workers, cancel=True)
            raise
        except Exception as error:
            interruption = error
        except BaseException:
            await self._stop(queue, workers, cancel=True)
            raise
        if pending:
            await queue.put(pending)
        await self._stop(queue, workers, cancel=False)
        self.report.seconds = time.perf_counter() - started
        self.report.finish()
        self._tell()
        interruption = interruption or self._failure
        if interruption is not None:
            raise ImportInterrupted(self.report, interruption)
        self.report.complete = True
        return self.report

    async def _take(
        self,
        record: Record,
        pending: list[_Row],
        queue: asyncio.Queue[list[_Row] | None],
        workers: list[asyncio.Task[None]],
        workers_count: int,
    ) -> None:
        blank = record.cells is not None and not any(c.strip() for c in record.cells)
        if self._plan is None:
            if blank:
                return  # blank lines before the header are not the header
            self._plan = self._header(record)
            self.report.columns = self._plan.describe()
            workers.extend(
                asyncio.create_task(self._work(queue), name=f"csv-import-{i}")
                for i in range(workers_count)
            )
            return
        if blank:
            return  # blank lines are not rows
        self.report.rows_total += 1
        row = self.start_row + self.report.rows_total - 1
        intake, reason = self._intake(record, row)
        if intake is None:
            self.report.reject(row, record.line, reason)
            return
        pending.append(_Row(row, record.line, intake))
        if len(pending) >= self.chunk_rows:
            rows = pending.copy()
            pending.clear()
            await queue.put(rows)

    def _header(self, record: Record) -> ColumnPlan:
        if record.cells is None:
            raise ImportRefused("malformed_csv", f"the header row cannot be read: {record.error}")
        if _has_invalid_utf8(record.cells) is not None:
            raise ImportRefused("invalid_utf8", "the header row is not valid UTF-8")
        try:
            return plan_columns(record.cells, self.mapping)
        except MappingError as error:
            raise ImportRefused("bad_header", str(error)) from None

    def _intake(self, record: Record, row: int) -> tuple[Intake | None, str]:
        assert self._plan is not None
        if record.cells is None:
            return None, record.error or "unreadable row"
        column = _has_invalid_utf8(record.cells)
        if column is not None:
            return None, f"column {column} is not valid UTF-8"
        try:
            details = LeadDetails.model_validate(row_data(self._plan, record.cells))
            resolve_name(details)
        except RowError as error:
            return None, str(error)
        except MissingName:
            return None, "no name, email or phone"
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
                for e in error.errors(include_url=False, include_input=False)
            )
            return None, f"invalid: {problems}"
        return (
            Intake(
                workspace_id=self.workspace_id,
                details=details,
                source=Source.IMPORT,
                actor=self.actor,
                channel=f"import:{self.import_id}",
                idempotency_key=f"import:{self.import_id}:{row}",
            ),
            "",
        )

    async def _work(self, queue: asyncio.Queue[list[_Row] | None]) -> None:
        while True:
            rows = await queue.get()
            if rows is None:
                return
            if self._failure is not None:
                for item in rows:
                    self.report.reject(item.row, item.line, "not imported: the import stopped")
                continue
            results: list[Receipt | Exception]
            try:
                results = await self.intake.receive_many([item.intake for item in rows])
            except Exception as error:
                results = [error] * len(rows)
            for item, result in zip(rows, results, strict=True):
                if isinstance(result, Receipt):
                    self._count(result)
                    continue
                # The store is failing (the rows are checked already): stop reading, say so.
                self._failure = self._failure or result
                # Possibly committed with the answer lost: a retry with the same import id
                # replays such a row instead of writing it twice.
                self.report.reject(item.row, item.line, f"not confirmed written: {result!r}")

    def _count(self, receipt: Receipt) -> None:
        report = self.report
        report.accepted += 1
        report.duplicates += receipt.is_duplicate
        report.replayed += receipt.replayed
        report.position = max(report.position, receipt.position)

    async def _stop(
        self,
        queue: asyncio.Queue[list[_Row] | None],
        workers: list[asyncio.Task[None]],
        *,
        cancel: bool,
    ) -> None:
        if cancel:
            for worker in workers:
                worker.cancel()
        else:
            for _ in workers:
                await queue.put(None)
        await asyncio.gather(*workers, return_exceptions=True)

    def _tell(self) -> None:
        if self.progress is not None:
            report = self.report
            self.progress(
                Progress(report.bytes_read, report.rows_total, report.accepted, report.rejected)
            )
