"""What every verb shares: the consoles, tables, errors, JSON output and a short-lived engine."""

from __future__ import annotations

import gc
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, TypeVar

import orjson
import typer
import uvloop
from pydantic import ValidationError
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gateways.bootstrap import Engine, start_engine
from gateways.embedded.stack import EmbeddedStackError, StackAlreadyRunning
from gateways.logs import configure_logging
from gateways.servers import ServerUrls, server_urls
from gateways.settings import Settings

T = TypeVar("T")


def new_app(help_text: str) -> typer.Typer:
    """A verb group whose help is plain text: paragraphs rewrapped as whole sentences and
    no `<bool>` type shown for a flag (typer's rich help keeps a docstring's hard line
    breaks and shows one)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


def summary(function: Callable[..., Any]) -> str:
    """The first paragraph of a verb's docstring on one line: its `short_help`, which click
    would otherwise cut to the terminal's width with "..."."""
    first = (function.__doc__ or "").strip().split("\n\n", 1)[0]
    return " ".join(first.split())


F = TypeVar("F", bound=Callable[..., Any])


def command(app: typer.Typer, function: Callable[..., Any], name: str | None = None) -> None:
    """Register `function` as a verb whose one-line summary is never cut short."""
    app.command(name, short_help=summary(function))(function)


def verb(app: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """`command` as a decorator."""

    def register(function: F) -> F:
        command(app, function, name)
        return function

    return register


def piped(stream: Any = None) -> bool:
    """True when the stream (stdout by default) is not a terminal: a pipe or a file."""
    isatty = getattr(sys.stdout if stream is None else stream, "isatty", None)
    return not (isatty is not None and isatty())


def out() -> Console:
    """stdout as it is now: a terminal gets output fitted to its width; a pipe or a file
    gets every line whole (rich would otherwise wrap at 80 columns)."""
    return Console(soft_wrap=piped())


def err() -> Console:
    """stderr, on the same terms as `out`."""
    return Console(stderr=True, soft_wrap=piped(sys.stderr))


def fail(message: str, code: int = 1) -> typer.Exit:
    err().print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def load_settings() -> Settings:
    """The configuration from the environment; a value that does not parse is a clear
    error naming its variable, not a traceback."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"LEADLOG_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors()
        )
        raise fail(f"bad configuration: {problems}") from None


def table(*headers: str, whole: Iterable[str] = (), title: str | None = None) -> Table:
    """A table whose `whole` columns (ids, times, counts) are never wrapped or cut, so an id
    can be copied as it is; the other columns fold to fit the terminal, never cut either."""
    kept = set(whole)
    shown = Table(title=title)
    for header in headers:
        shown.add_column(header, no_wrap=header in kept, overflow="fold")
    return shown


def plain(cell: RenderableType) -> str:
    """A cell's text without styles: rich markup in a `str`, a `Text` as it is."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return str(cell)


def _field(cell: RenderableType) -> str:
    lines = [" ".join(line.split("\t")) for line in plain(cell).replace("\r", " ").split("\n")]
    return "; ".join(line for line in lines if line.strip())


FOLDED_MIN = 8


def _width(cell: RenderableType) -> int:
    return max((cell_len(line) for line in plain(cell).split("\n")), default=0)


def _rows(shown: Table) -> list[tuple[RenderableType, ...]]:
    return list(zip(*(list(column.cells) for column in shown.columns), strict=True))


def _records(console: Console, shown: Table) -> None:
    """The rows one below the other, a `header  value` line per column: the layout for a
    terminal too narrow for the table with its ids whole. Narrower still, each header is
    on a line of its own above its value, and a whole value that is wider yet runs past
    the edge (the terminal wraps it softly, so it still copies as one) rather than fold."""
    if shown.title is not None:
        console.print(shown.title, style="italic")
    label = max(_width(column.header) for column in shown.columns)
    widest = max((c.min_width or 0 for c in shown.columns if c.no_wrap), default=0)
    if label + 2 + widest <= console.width:
        records = Table.grid(padding=(0, 2))
        records.add_column(style="bold", no_wrap=True)
        records.add_column(overflow="fold")
        for index, row in enumerate(_rows(shown)):
            if index:
                records.add_row("", "")
            for column, cell in zip(shown.columns, row, strict=True):
                records.add_row(column.header, cell)
        console.print(records)
        return
    for index, row in enumerate(_rows(shown)):
        if index:
            console.print()
        for column, cell in zip(shown.columns, row, strict=True):
            console.print(column.header, style="bold")
            if column.no_wrap:
                for line in plain(cell).split("\n"):
                    console.print(Text("  " + line), no_wrap=True, overflow="ignore", crop=False)
            else:
                console.print(Padding(cell, (0, 0, 0, 2)))


def show(shown: Table) -> None:
    """Print a table. Piped, it is tab-separated lines, one a row, every value whole. In a
    terminal its `whole` columns are as wide as their longest value and the others shrink
    to fit, down to a few characters each; a terminal narrower than that gets the rows as
    records (`header  value` lines) instead, so no value is cut or hidden."""
    if piped():
        lines = [] if shown.title is None else [plain(shown.title)]
        lines.append("\t".join(_field(column.header) for column in shown.columns))
        cells = [list(column.cells) for column in shown.columns]
        lines.extend("\t".join(_field(cell) for cell in row) for row in zip(*cells, strict=True))
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
        return
    console = out()
    least = 3 * len(shown.columns) + 1  # padding and rules
    for column in shown.columns:
        natural = max([_width(column.header), *(_width(cell) for cell in column.cells)])
        column.min_width = natural if column.no_wrap else min(natural, FOLDED_MIN)
        least += column.min_width
    if least <= console.width:
        console.print(shown)
    else:
        _records(console, shown)


MIN_RATE_SECONDS = 0.5


def rate(count: int, seconds: float | None, unit: str) -> str:
    """`count` per second, or "- {unit}/s" when `seconds` is too short to measure a rate
    (a handful of events over microseconds would read as millions a second)."""
    if seconds is None or seconds < MIN_RATE_SECONDS or count < 0:
        return f"- {unit}/s"
    return f"{count / seconds:,.0f} {unit}/s"


def settle_garbage_collector() -> None:
    """Move what start-up allocated (modules, the app, pools) out of the collector's sight
    and collect the young generations less often: a full collection over a long-lived heap
    stalls every request in the process at once, and the engine's objects mostly live
    either for a request or for the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
    settings = load_settings()
    configure_logging("warning")

    async def run(urls: ServerUrls) -> T:
        engine = await start_engine(settings, urls.database_url, urls.nats_url, None)
        settle_garbage_collector()
        try:
            return await work(engine)
        finally:
            await engine.close()

    try:
        with server_urls(settings) as urls:
            return uvloop.run(run(urls))
    except StackAlreadyRunning as error:
        raise fail(str(error)) from None
    except EmbeddedStackError as error:
        raise fail(f"the embedded servers did not start: {error}") from None


JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON for machines")]


def emit(data: object, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out().print(human)
