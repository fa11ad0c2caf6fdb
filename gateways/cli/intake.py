"""`leadlog intake …`: the operator's view of intake channels (dead letters)."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.table import Table
from rich.text import Text

from gateways.cli.common import emit, new_app, out, show, table, verb, with_engine
from handlers.dead_letters import DeadLetterView, list_dead_letters

intake_app = new_app("Inspect lead intake channels.")


@intake_app.callback()
def intake() -> None:
    """Inspect lead intake channels."""


EXCERPT = 60


def dead_letter_json(view: DeadLetterView) -> dict[str, Any]:
    event = view.event
    return {
        "id": str(view.id),
        "position": view.position,
        "workspaceId": str(event.workspace_id) if event.workspace_id else None,
        "channel": event.channel,
        "subject": event.subject,
        "reason": event.reason,
        "detail": event.detail,
        "body": event.body,
        "bodyTruncated": event.body_truncated,
        "bodySize": event.body_size,
        "headers": event.headers,
        "msgId": event.msg_id,
        "stream": event.stream,
        "streamSeq": event.stream_seq,
        "deliveries": event.deliveries,
        "receivedAt": event.received_at.isoformat(),
        "recordedAt": view.recorded_at.isoformat(),
    }


def excerpt(body: str, size: int = EXCERPT) -> str:
    """One line of the body, control characters escaped, cut to `size` characters."""
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in body)
    return flat if len(flat) <= size else flat[: size - 1] + "…"


def dead_letters_table(views: list[DeadLetterView]) -> Table:
    shown = table("received (UTC)", "subject", "reason", "body", whole=("received (UTC)",))
    for view in views:
        event = view.event
        reason = Text(event.reason)
        reason.append("\n" + excerpt(event.detail, 80), style="dim")
        # Text, not str: a body is the publisher's, and rich would read `[...]` as markup.
        shown.add_row(
            Text(event.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
            Text(event.subject),
            reason,
            Text(excerpt(event.body) + (" (truncated)" if event.body_truncated else "")),
        )
    return shown


@verb(intake_app, "dead-letters")
def dead_letters(
    workspace: Annotated[UUID | None, typer.Option(help="only this workspace's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for machines")] = False,
) -> None:
    """Messages an intake channel refused, newest first."""

    views = with_engine(lambda e: list_dead_letters(e.store, workspace, limit))
    if as_json:
        emit([dead_letter_json(v) for v in views], True, "")
        return
    if views:
        show(dead_letters_table(views))
    else:
        out().print("no dead letters")


def register(app: typer.Typer) -> None:
    app.add_typer(intake_app, name="intake")
