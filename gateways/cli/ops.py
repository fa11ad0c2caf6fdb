"""Operator verbs over the log: `leadlog rebuild` (blue/green) and `leadlog replay`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from gateways.bootstrap import PROJECTIONS, Engine
from gateways.cli.common import (
    JsonFlag,
    command,
    emit,
    err,
    fail,
    new_app,
    out,
    piped,
    rate,
    show,
    table,
    with_engine,
)
from gateways.consumers.audit import WAIT, AuditReport, ProjectionAudit, verify
from gateways.consumers.consumer_state import ProjectionFailed
from gateways.consumers.rebuild import SHOWN_KEYS, RebuildError, RebuildResult, find, rebuild
from gateways.http.history import Cut, HistoryError, lead_history, parse_time, resolve_lead
from gateways.status import engine_status
from projections.base import Projection


class _EventsPerSecond(ProgressColumn):
    """Log positions a second between the first and the latest report of progress; rich's
    own speed divides by the gap between two samples, which can be microseconds."""

    def render(self, task: Task) -> Text:
        first, last = task.fields.get("first"), task.fields.get("last")
        if first is None or last is None:
            return Text("- events/s", style="cyan")
        return Text(rate(last[1] - first[1], last[0] - first[0], "events"), style="cyan")


def _tracker(
    bar: Progress, name: str, clock: Callable[[], float] = time.monotonic
) -> Callable[[int, int], None]:
    """A progress task and the callback that moves it to `position` of `target`."""
    task = bar.add_task(name, total=None)
    first: list[tuple[float, int]] = []

    def advance(position: int, target: int) -> None:
        now = (clock(), position)
        first[:] = first or [now]
        bar.update(task, completed=position, total=max(target, 1), first=first[0], last=now)

    return advance


def _progress(enabled: bool) -> Progress:
    """A progress bar on stderr when it is a terminal (to a file it would be a last frame
    cut to 80 columns)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _EventsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err(),
        disable=not enabled or piped(sys.stderr),
        transient=False,
    )


def _verify_table(result: RebuildResult) -> Table | str:
    if result.verify_note:
        return result.verify_note
    shown = table(
        "table",
        "live rows",
        "rebuilt rows",
        "differing",
        "first differing keys",
        whole=("live rows", "rebuilt rows", "differing", "first differing keys"),
    )
    for diff in result.verified or []:
        shown.add_row(
            f"{diff.logical} ({diff.live_table} vs {diff.rebuilt_table})",
            str(diff.live_rows),
            str(diff.rebuilt_rows),
            Text(str(diff.differing), style="red" if diff.differing else "green"),
            Text("\n".join(diff.first_keys)),
        )
    return shown


def rebuild_command(
    projection: Annotated[
        str | None, typer.Argument(help="the projection to rebuild, e.g. leads")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="rebuild every projection")] = False,
    verify: Annotated[
        bool,
        typer.Option(help="compare the rebuilt view with the live one and report differences"),
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="drop an interrupted rebuild's tables and start from 0")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild a view from position 0 beside the live one, then swap it in atomically.

    Reads keep answering from the live view meanwhile. An interrupted rebuild resumes
    where it stopped when run again (or use --restart). The previous version's tables are
    kept until the next rebuild.
    """
    if all_ == (projection is not None):
        raise fail("name one projection or use --all")
    try:
        chosen: list[Projection] = (
            list(PROJECTIONS) if all_ else [find(PROJECTIONS, projection or "")]
        )
    except RebuildError as error:
        raise fail(str(error)) from None

    async def work(engine: Engine) -> list[RebuildResult]:
        results = []
        with _progress(not as_json) as bar:
            for each in chosen:
                results.append(
                    await rebuild(
                        engine.projector,
                        each,
                        verify=verify,
                        restart=restart,
                        on_progress=_tracker(bar, each.name),
                    )
                )
        return results

    try:
        results = with_engine(work)
    except RebuildError as error:
        raise fail(str(error)) from None
    except ProjectionFailed as error:
        raise fail(
            f"{error}; the live view is unchanged. Fix the cause and run the same command "
            "again to resume from there"
        ) from None
    except KeyboardInterrupt:
        err().print(
            "interrupted: the live view is unchanged; run the same command again to resume "
            "(or add --restart to start over)"
        )
        raise typer.Exit(130) from None
    if as_json:
        emit([r.json() for r in results], True, "")
    else:
        for result in results:
            resumed = f", resumed from {result.resumed_from}" if result.resumed_from else ""
            out().print(
                f"rebuilt [bold]{result.name}[/]: "
                f"{', '.join(result.old_tables.values())} → "
                f"{', '.join(result.new_tables.values())} at position {result.position} "
                f"({result.events} events in {result.seconds:.1f}s, "
                f"{rate(result.events, result.seconds, 'events')}"
                f"{resumed}); kept {', '.join(result.kept) or 'nothing'}"
                + (f", dropped {', '.join(result.dropped)}" if result.dropped else "")
            )
            if verify:
                checked = _verify_table(result)
                if isinstance(checked, Table):
                    show(checked)
                else:
                    out().print(checked)
    if verify and any(r.differences for r in results):
        err().print(
            "[yellow]the live view differed from the log; the rebuilt one now serves[/]",
        )


def _change_text(changes: list[dict[str, Any]]) -> str:
    def show(value: Any) -> str:
        return "∅" if value is None else json.dumps(value, ensure_ascii=False, default=str)

    return "\n".join(f"{c['field']}: {show(c.get('old'))} → {show(c.get('new'))}" for c in changes)


_STATE_FIELDS = (
    "name",
    "email",
    "phone",
    "company",
    "status",
    "pipelineId",
    "stageId",
    "assignedTo",
    "tags",
    "deleted",
    "updatedAt",
)


def replay_command(
    lead: Annotated[str, typer.Argument(help="the lead's id or request id")],
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="show the lead as it was at this time (ISO 8601; UTC if no offset)"
        ),
    ] = None,
    position: Annotated[
        int | None, typer.Option("--position", help="show the lead as it was at this log position")
    ] = None,
    workspace: Annotated[
        UUID | None, typer.Option(help="the workspace, when a request id is used in several")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A lead's complete history from the log: time, actor or channel, what changed.

    With --at or --position, also the lead's state as it was at that time or position.
    """
    try:
        cut = Cut(at=parse_time(at) if at is not None else None, position=position)
    except HistoryError as error:
        raise fail(str(error)) from None

    async def work(engine: Engine) -> dict[str, Any]:
        lead_id = await resolve_lead(engine, lead, workspace)
        return await lead_history(engine, lead_id, cut, workspace_id=workspace)

    try:
        report = with_engine(work)
    except HistoryError as error:
        raise fail(str(error)) from None
    if as_json:
        emit(report, True, "")
        return
    out().print(
        f"lead [bold]{report['leadId']}[/] (request {report['requestId']}, "
        f"workspace {report['workspaceId']})"
    )
    history = table(
        "position", "time", "actor / channel", "event", "what changed", whole=("position", "time")
    )
    for item in report["items"]:
        # Text, not str: summaries and values are the user's, and rich would read `[...]`.
        event = Text(str(item["summary"]))
        event.append(f"\n{item['eventType']}", style="dim")
        history.add_row(
            str(item["position"]),
            str(item["recordedAt"]),
            Text(str(item["actor"])),
            event,
            Text(_change_text(item["changes"])),
        )
    show(history)
    if report["later"]:
        out().print(f"[dim]{report['later']} later event(s) not shown[/]")
    if cut.at is not None or cut.position is not None:
        state = report["state"]
        as_of = table("field", f"value {cut.describe()}", whole=("field",))
        for name in _STATE_FIELDS:
            value = state.get(name)
            as_of.add_row(name, Text("" if value is None else str(value)))
        show(as_of)


def _show(value: Any) -> str:
    return "∅" if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _audit_summary(report: AuditReport) -> Table:
    shown = table(
        "projection",
        "position",
        "events replayed",
        "rows compared",
        "differences",
        "note",
        whole=("projection", "position", "events replayed", "rows compared", "differences"),
    )
    for audit in report.projections:
        if not audit.compared:
            verdict = Text("not compared", style="yellow")
        else:
            verdict = Text(str(audit.differences), style="red" if audit.differences else "green")
        shown.add_row(
            audit.name,
            str(audit.position) if audit.compared else "-",
            str(audit.events),
            str(audit.rows) if audit.compared else "-",
            verdict,
            Text(audit.note or ""),
        )
    return shown


def _audit_details(audit: ProjectionAudit) -> list[Table]:
    """Per table: rows on each side and how many differ, then the first differing rows."""
    counts = ("live rows", "replayed rows", "missing", "extra", "changed")
    tables = table(
        "table", *counts, whole=counts, title=f"{audit.name} at position {audit.position}"
    )
    rows = table(
        "table", "key", "difference", whole=("key",), title=f"{audit.name}: first differing rows"
    )
    for diff in audit.tables:
        tables.add_row(
            f"{diff.logical} ({diff.live_table} vs {diff.rebuilt_table})",
            str(diff.live_rows),
            str(diff.rebuilt_rows),
            *(
                Text(str(n), style="red" if n else "green")
                for n in (diff.missing, diff.extra, diff.changed)
            ),
        )
        for example in diff.examples:
            if example.kind == "changed":
                live, replayed = example.live or {}, example.rebuilt or {}
                what = "\n".join(
                    f"{c}: {_show(live.get(c))} (live) → {_show(replayed.get(c))} (log)"
                    for c in example.columns
                )
            elif example.kind == "missing":
                what = "missing from the live view"
            else:
                what = "only in the live view (the log does not yield it)"
            rows.add_row(diff.logical, Text(example.key), Text(what))
    return [tables, rows] if rows.rows else [tables]


def audit_verify_command(
    projection: Annotated[
        list[str] | None,
        typer.Option(
            "--projection",
            "-p",
            metavar="NAME",
            help="audit only this projection (repeatable); all by default",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            min=0, help="seconds to wait, in all, for the live views to reach the log head"
        ),
    ] = WAIT,
    examples: Annotated[
        int, typer.Option(min=0, help="differing rows to describe per table")
    ] = SHOWN_KEYS,
    as_json: JsonFlag = False,
) -> None:
    """Compare every view, row by row, with a replay of the whole log; list any difference.

    The replay goes into scratch copies (temporary tables): nothing live is changed, and it
    is safe while the engine runs. Each view is compared at its own live checkpoint, in one
    database snapshot. Exit code 0 when every view matches the log, 1 when any differs or
    could not be compared.
    """
    try:
        chosen: list[Projection] = (
            [find(PROJECTIONS, name) for name in dict.fromkeys(projection)]
            if projection
            else list(PROJECTIONS)
        )
    except RebuildError as error:
        raise fail(str(error)) from None

    async def work(engine: Engine) -> AuditReport:
        with _progress(not as_json) as bar:
            tasks: dict[str, Callable[[int, int], None]] = {}

            def advance(name: str, position: int, target: int) -> None:
                if name not in tasks:
                    tasks[name] = _tracker(bar, name)
                tasks[name](position, target)

            return await verify(
                engine.projector, chosen, wait=wait, shown=examples, on_progress=advance
            )

    try:
        report = with_engine(work)
    except KeyboardInterrupt:
        err().print("interrupted: nothing live was changed and the scratch copies are gone")
        raise typer.Exit(130) from None
    if as_json:
        emit(report.json(), True, "")
    else:
        out().print(f"log head at the start: position {report.head}")
        show(_audit_summary(report))
        for audit in report.projections:
            if audit.differences:
                for details in _audit_details(audit):
                    show(details)
        if report.clean:
            out().print("[green]every view matches the log[/]")
        elif report.differences:
            out().print(
                f"[red]{report.differences} differing row(s) between the views and the log[/]"
            )
        else:
            out().print("[yellow]not every view could be compared (see the notes)[/]")
    if not report.clean:
        raise typer.Exit(1)


def status_command(as_json: JsonFlag = False) -> None:
    """Each consumer's position, lag (events and seconds) and last error; the NATS backlog."""

    report = with_engine(engine_status)
    if as_json:
        emit(report, True, "")
        return
    out().print(f"log head: position {report['head']}")
    numbers = ("position", "lag (events)", "lag (s)")
    shown = table(
        "consumer", *numbers, "held by", "last error", whole=("consumer", *numbers, "held by")
    )
    consumers = report["consumers"]
    assert isinstance(consumers, list)
    for consumer in consumers:
        shown.add_row(
            consumer["name"],
            str(consumer["position"]),
            str(consumer["lagEvents"]),
            str(consumer["lagSeconds"]),
            consumer.get("heldBy") or "",
            Text(consumer["lastError"] or "", style="red"),
        )
    if consumers:
        show(shown)
    else:
        out().print("no consumers have recorded a position yet")
    leases = report.get("leases")
    if isinstance(leases, dict):
        for worker in leases.get("workers") or []:
            held = worker.get("partitions") or []
            out().print(f"worker {worker['member']}: {len(held)} consumers")
        free = leases.get("free") or []
        if free:
            out().print(f"not running anywhere: {', '.join(free)}", style="red")
    backlog = report["natsIntake"]
    if isinstance(backlog, dict):
        out().print(
            f"NATS intake: {backlog['pending']} waiting, {backlog['ackPending']} in progress, "
            f"{backlog['redelivered']} redelivered"
        )
    deliveries = report.get("deliveries")
    if isinstance(deliveries, dict):
        out().print(
            f"deliveries: {deliveries['pending']} pending (oldest due "
            f"{deliveries['oldestPendingSeconds']} s ago), {deliveries['failed']} failed, "
            f"{deliveries['disabled']} disabled, {deliveries['succeeded']} succeeded"
        )


def register(app: typer.Typer) -> None:
    command(app, status_command, "status")
    command(app, rebuild_command, "rebuild")
    command(app, replay_command, "replay")
    audit_app = new_app("Check the views against the log.")
    command(audit_app, audit_verify_command, "verify")
    app.add_typer(audit_app, name="audit")


if __name__ == "__main__":  # `python -m gateways.cli.ops …`, e.g. before the wiring exists
    standalone = new_app("leadlog operator verbs.")
    register(standalone)
    standalone()
