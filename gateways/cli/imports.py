"""`leadlog import FILE`: a CSV file streamed into leads, with a progress bar and a report."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO
from uuid import UUID

import orjson
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from domain.csv_mapping import MappingError, parse_mapping
from gateways.cli.common import command, err, fail, new_app, out, rate, show, table, with_engine
from handlers import imports as importing
from handlers.imports import CsvImport, ImportInterrupted, ImportRefused, ImportReport
from handlers.workspaces import WorkspaceNotFound

if TYPE_CHECKING:
    from gateways.bootstrap import Engine

CHUNK_BYTES = 256 * 1024
SHOWN_REJECTIONS = 20

app = new_app("Import leads from a CSV file.")


async def _read(stream: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
        yield chunk


def _summary(report: ImportReport) -> None:
    state = "complete" if report.complete else "[bold red]incomplete[/]"
    out().print(
        f"import [bold]{escape(report.import_id)}[/] {state}: {report.rows_total} rows, "
        f"[green]{report.accepted} accepted[/] ({report.duplicates} duplicates, "
        f"{report.replayed} already imported), [red]{report.rejected} rejected[/] "
        f"in {report.seconds:.1f}s ({rate(report.rows_total, report.seconds, 'rows')})"
    )
    if report.rejections:
        shown = table("row", "line", "reason", whole=("row", "line"), title="rejected rows")
        for rejection in report.rejections[:SHOWN_REJECTIONS]:
            shown.add_row(str(rejection.row), str(rejection.line), Text(rejection.reason))
        show(shown)
        more = report.rejected - min(len(report.rejections), SHOWN_REJECTIONS)
        if more:
            out().print(f"… and {more} more rejected rows (--json lists the first 1000)")


def import_command(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="a UTF-8 CSV file"),
    ],
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
    mapping: Annotated[
        str | None,
        typer.Option(help="explicit column mapping: 'CSV Column=field,Other Column=email'"),
    ] = None,
    import_id: Annotated[
        str | None,
        typer.Option(
            "--import-id",
            help="retrying with the same id writes no row twice (the report shows the id)",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, max=1024, help="leads written at once")
    ] = importing.DEFAULT_CONCURRENCY,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Import leads from a CSV file with a header row; imported leads get status `new`."""

    try:
        parsed = parse_mapping(mapping) if mapping else None
        if import_id:
            importing.check_import_id(import_id)
    except (MappingError, ImportRefused) as error:
        raise fail(str(error)) from None
    size = file.stat().st_size

    async def work(engine: Engine) -> ImportReport:
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        stderr = err()
        with Progress(*columns, console=stderr, disable=not stderr.is_terminal) as progress:
            task = progress.add_task("importing", total=size)

            def tell(state: importing.Progress) -> None:
                progress.update(
                    task,
                    completed=state.bytes_read,
                    description=f"{state.rows:,} rows ({state.rejected:,} rejected)",
                )

            job = CsvImport(
                engine.intake,
                workspace,
                actor="operator:cli",
                import_id=import_id,
                mapping=parsed,
                concurrency=concurrency,
                progress=tell,
            )
            with file.open("rb") as stream:
                return await job.run(_read(stream))

    try:
        report = with_engine(work)
    except ImportRefused as error:
        raise fail(f"{error.message} (nothing was imported)") from None
    except WorkspaceNotFound as error:
        raise fail(str(error)) from None
    except ImportInterrupted as stopped:
        emit(stopped.report, as_json)
        raise fail(
            f"the import stopped part way ({stopped.cause!r}); rerun it with "
            f"--import-id {stopped.report.import_id} to finish it"
        ) from None
    emit(report, as_json)


def emit(report: ImportReport, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _summary(report)


def register(cli: typer.Typer) -> None:
    command(cli, import_command, "import")


register(app)

if __name__ == "__main__":
    app()
