"""What `leadlog` prints: whole ids and times at any width, piped or not; readable `--help`."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.progress import Progress
from rich.text import Text
from typer.testing import CliRunner

from domain.deliveries import Delivery, DeliveryKind
from domain.triggers import Trigger
from gateways.bootstrap import Engine
from gateways.cli import common, ops
from gateways.cli.main import app
from gateways.settings import Settings
from handlers.dead_letters import Letter, record_dead_letter
from handlers.ports import Append
from tests.conftest import Servers, make_workspace

pytestmark = pytest.mark.timeout(240)

LEADLOG = str(Path(sys.executable).parent / "leadlog")
NARROW = "40"
ID = "d32af4c1-5f0e-4b7a-9c3d-2e8f6a1b0c9d"
TIME = "2026-05-09T07:35:25.123456+00:00"


# ---- --help ---------------------------------------------------------------------------------


def _sub(command: Any) -> dict[str, Any]:
    """A group's verbs by name; none for a verb (typer has click's types, vendored)."""
    found: dict[str, Any] = getattr(command, "commands", {})
    return found


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in _sub(command).items():
        yield from _walk(sub, (*path, name))


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": NARROW})
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_help_shows_no_bool_and_whole_summaries() -> None:
    everything = list(_walk(typer.main.get_command(app)))
    assert len(everything) > 15
    for path, command in everything:
        shown = _help(*path)
        assert "<bool>" not in shown, path
        for name, sub in _sub(command).items():
            # Each verb's summary, wrapped over lines but whole: not cut with "...".
            summary = sub.short_help or (sub.help or "").split("\n\n")[0]
            assert summary and not summary.endswith("..."), (path, name)
            assert f"{name} {_flat(summary)}" in _flat(shown), (path, name, shown)
        for paragraph in (command.help or "").split("\n\n"):
            # Paragraphs are rewrapped as sentences, not broken where the docstring broke.
            assert _flat(paragraph) in _flat(shown), (path, paragraph)


def test_flags_show_no_type_and_docstring_breaks_do_not_show() -> None:
    shown = _help("rebuild")
    assert re.search(r"^\s+--all\s+rebuild every", shown, re.MULTILINE), shown
    lines = [line.strip() for line in shown.splitlines()]
    # The docstring breaks after "resumes"; the help must not end a line there.
    assert "resumes" not in {line.split()[-1] for line in lines if line}


# ---- tables ---------------------------------------------------------------------------------


def _sample() -> Any:
    shown = common.table("id", "time", "what changed", whole=("id", "time"))
    shown.add_row(ID, TIME, Text('name: ∅ → "Ann [VIP]"\nemail: ∅ → "ann@example.com"'))
    shown.add_row(str(uuid.UUID(int=1)), TIME, Text("status:\tnew → contacted"))
    return shown


def test_piped_tables_are_tab_separated_lines_with_whole_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    common.show(_sample())
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "id\ttime\twhat changed",
        f'{ID}\t{TIME}\tname: ∅ → "Ann [VIP]"; email: ∅ → "ann@example.com"',
        f"{uuid.UUID(int=1)}\t{TIME}\tstatus: new → contacted",
    ]


@pytest.mark.parametrize(
    ("columns", "layout"),
    [("120", "table"), ("90", "table"), ("60", "records"), (NARROW, "stacked records")],
)
def test_terminal_tables_fit_and_keep_ids_and_times_whole(
    columns: str,
    layout: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(common, "piped", lambda stream=None: False)
    monkeypatch.setenv("COLUMNS", columns)
    common.show(_sample())
    shown = capsys.readouterr().out
    lines = shown.splitlines()
    assert all(len(line) <= int(columns) for line in lines), shown
    # Each id and time whole on a line (other columns fold), nothing cut with "…".
    assert any(ID in line and (layout != "table" or TIME in line) for line in lines), shown
    assert any(TIME in line for line in lines), shown
    assert "…" not in shown
    assert '"Ann [VIP]"' in _flat(shown) or layout == "table"
    if layout == "table":
        assert lines[0].startswith("┏")
    elif layout == "records":
        assert any(re.fullmatch(rf"id\s+{ID}\s*", line) for line in lines), shown
    else:
        assert lines[0].strip() == "id" and lines[1].strip() == ID, shown


# ---- rates ----------------------------------------------------------------------------------


def test_rates_need_a_measurable_duration() -> None:
    assert common.rate(414, 0.000001, "events") == "- events/s"
    assert common.rate(414, None, "events") == "- events/s"
    assert common.rate(0, 0.0, "rows") == "- rows/s"
    assert common.rate(100_000, 2.0, "events") == "50,000 events/s"


def test_the_progress_rate_spans_first_to_last_report() -> None:
    clock = iter([100.0, 100.000001, 102.0])
    with Progress(disable=True) as bar:
        advance = ops._tracker(bar, "leads", clock=lambda: next(clock))
        column = ops._EventsPerSecond()
        (task,) = bar.tasks
        assert column.render(task).plain == "- events/s"
        advance(10, 1000)
        advance(414, 1000)  # 404 events in a microsecond: no rate yet, not 404 million
        assert column.render(task).plain == "- events/s"
        advance(5_010, 10_000)
        assert column.render(task).plain == "2,500 events/s"


# ---- every verb, piped, at 40 columns -------------------------------------------------------


def _env(servers: Servers, settings: Settings, columns: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEADLOG_") and k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")
    }
    env.update(
        LEADLOG_DATABASE_URL=servers.database_url,
        LEADLOG_NATS_URL=servers.nats_url,
        LEADLOG_DATABASE_SCHEMA=settings.database_schema,
        LEADLOG_NATS_PREFIX=settings.nats_prefix,
        COLUMNS=columns,
        TERM="xterm-256color",
    )
    return env


def piped_cli(servers: Servers, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`leadlog ARGS` with stdout and stderr piped and a 40-column terminal size set."""
    return subprocess.run(
        [LEADLOG, *args],
        env=_env(servers, settings, NARROW),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal_cli(servers: Servers, settings: Settings, columns: str, *args: str) -> tuple[int, str]:
    """`leadlog ARGS` with stdout and stderr on a terminal (a pty) `columns` wide: the exit
    code and what the terminal showed, escape codes removed."""
    controller, terminal = pty.openpty()
    shown: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO once the child and this process have closed the terminal
                return
            if not chunk:
                return
            shown.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run(
            [LEADLOG, *args],
            env=_env(servers, settings, columns),
            stdout=terminal,
            stderr=terminal,
            timeout=120,
            check=False,
        )
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    text = ANSI.sub("", b"".join(shown).decode(errors="replace")).replace("\r", "")
    return done.returncode, text


@dataclass
class Scene:
    """A workspace with a lead (received, then contacted), a delivery and a dead letter."""

    workspace: str
    lead: str
    delivery: Delivery
    times: list[str]
    run: Callable[..., Awaitable[list[str]]]


@pytest.fixture
async def scene(
    client: httpx.AsyncClient, engine: Engine, servers: Servers, settings: Settings
) -> AsyncIterator[Scene]:
    await engine.projector.start()
    ws = await make_workspace(client)
    workspace_id = uuid.UUID(ws["id"])
    received = await client.post(
        "/v1/leads", json={"name": "Ann [VIP]", "email": "ann@x.test"}, headers=ws["h"]
    )
    assert received.status_code == 201, received.text
    lead = received.json()
    status = await client.patch(
        f"/v1/leads/{lead['id']}/status", json={"status": "contacted"}, headers=ws["h"]
    )
    assert status.status_code == 200, status.text
    delivery = Delivery(
        workspace_id=workspace_id,
        lead_id=uuid.UUID(lead["id"]),
        lead_type_id=uuid.uuid4(),
        action_id=uuid.uuid4(),
        trigger=Trigger.RECEIVED,
        event_code="lead.received",
        kind=DeliveryKind.WEBHOOK,
        target="https://hooks.example.com/a/very/long/path/that/does/not/fit/in/forty/columns",
        format="json",
        payload={},
        headers={},
        max_attempts=3,
        timeout_seconds=5,
    )
    await engine.store.append(Append(workspace_id, events=delivery.collect_events()))
    letter = await record_dead_letter(
        engine.store,
        Letter(
            channel="nats",
            subject="leads.intake.some.rather.long.subject.name",
            reason="malformed_json",
            detail="the body is not valid JSON",
            body=b"{nope",
            received_at=datetime(2026, 5, 9, 7, 35, 25, tzinfo=UTC),
            workspace_id=workspace_id,
        ),
    )
    assert await engine.projector.wait_for("deliveries", letter.position, 10)
    history = (await client.get(f"/v1/leads/{lead['id']}/history", headers=ws["h"])).json()

    def piped(*args: str) -> str:
        done = piped_cli(servers, settings, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "…" not in done.stdout, (args, done.stdout)
        assert done.stderr == "", (args, done.stderr)
        return done.stdout

    def on_terminal(*args: str) -> str:
        code, shown = terminal_cli(servers, settings, "60", *args)
        assert code == 0, (args, shown)
        assert "…" not in shown, (args, shown)
        return shown

    async def run(*commands: tuple[str, ...], terminal: bool = False) -> list[str]:
        """The commands at once, each in its own process."""
        each = on_terminal if terminal else piped
        return list(await asyncio.gather(*(asyncio.to_thread(each, *c) for c in commands)))

    try:
        yield Scene(
            ws["id"], lead["id"], delivery, [i["recordedAt"] for i in history["items"]], run
        )
    finally:
        await engine.projector.stop()


def whole(output: str, *values: str) -> None:
    """Each value is on one line, whole: not folded over lines nor cut short with "…"."""
    lines = output.splitlines()
    for value in values:
        assert any(value in line for line in lines), (value, output)


async def test_list_verbs_print_whole_ids_and_times_piped_or_on_a_narrow_terminal(
    scene: Scene,
) -> None:
    (
        status_out,
        workspaces_out,
        deliveries_out,
        letters_out,
        replay_out,
        then_out,
    ) = await scene.run(
        ("status",),
        ("workspaces", "list"),
        ("deliveries", "list"),
        ("intake", "dead-letters"),
        ("replay", scene.lead),
        ("replay", scene.lead, "--at", scene.times[0]),
    )
    whole(status_out, "consumer\tposition\tlag (events)", "projection:deliveries\t")
    whole(workspaces_out, f"{scene.workspace}\tAcme\tUS")
    delivery = str(scene.delivery.id)
    whole(deliveries_out, f"{delivery}\t{scene.lead}\twebhook\t", scene.delivery.target)
    whole(letters_out, "2026-05-09 07:35:25\tleads.intake.some.rather.long.subject.name\t")
    whole(replay_out, scene.lead, scene.workspace, *scene.times, '"Ann [VIP]"')
    whole(then_out, scene.times[0], "status\tbacklog", "name\tAnn [VIP]")

    # In a terminal 60 columns wide: ids whole (other columns shrink), never "…".
    deliveries_shown, replay_shown = await scene.run(
        ("deliveries", "list"), ("replay", scene.lead), terminal=True
    )
    whole(deliveries_shown, delivery, scene.lead)
    whole(replay_shown, *scene.times)


async def test_import_rebuild_and_audit_print_whole_lines_and_sane_rates(
    scene: Scene, servers: Servers, settings: Settings, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("name,email,company\nBo,bo@x.test,\n,,Nameless Inc\n", encoding="utf-8")
    (imported,) = await scene.run(
        ("import", str(csv), "--workspace", scene.workspace, "--import-id", "piped-1")
    )
    assert "import piped-1 complete: 2 rows" in imported
    whole(imported, "row\tline\treason", "2\t3\t")

    (rebuilt,) = await scene.run(("rebuild", "leads", "--verify"))
    (summary,) = [line for line in rebuilt.splitlines() if line.startswith("rebuilt leads")]
    assert "kept" in summary  # one line, not wrapped at 40 columns
    whole(rebuilt, "table\tlive rows\trebuilt rows\tdiffering")

    audit = piped_cli(servers, settings, "audit", "verify", "--wait", "0")
    assert audit.returncode in (0, 1), audit.stdout + audit.stderr  # 1: a view was behind
    whole(audit.stdout, "projection\tposition\tevents replayed\trows compared\tdifferences")
    assert audit.stderr == ""  # no progress bar's last frame, cut to width, in a file

    # The audit's progress in a terminal: a tiny log replays in microseconds, so no rate
    # or a sane one, never millions of events a second.
    code, shown = terminal_cli(servers, settings, "200", "audit", "verify", "--wait", "0")
    assert code in (0, 1), shown
    assert "events/s" in shown
    rates = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) events/s", shown)]
    assert all(r < 1_000_000 for r in rates), shown
