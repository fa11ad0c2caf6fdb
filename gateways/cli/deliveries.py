"""`leadlog deliveries …`: the operator's view of outbound webhooks and emails, and redelivery."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer
from rich.markup import escape
from rich.text import Text

from domain.deliveries import DeliveryKind, DeliveryState, InvalidRedelivery
from gateways.bootstrap import Engine
from gateways.cli.common import emit, fail, new_app, out, show, table, verb, with_engine
from gateways.http.deliveries import delivery_row_json, list_rows
from handlers.deliveries import DeliveryNotFound, request_redelivery

deliveries_app = new_app("Outbound webhooks and emails.")

CLI_ACTOR = "operator:cli"


@deliveries_app.callback()
def deliveries() -> None:
    """Outbound webhooks and emails."""


@verb(deliveries_app, "list")
def list_command(
    lead: Annotated[UUID | None, typer.Option(help="only this lead's")] = None,
    state: Annotated[DeliveryState | None, typer.Option(help="only in this state")] = None,
    kind: Annotated[DeliveryKind | None, typer.Option(help="webhook or email")] = None,
    workspace: Annotated[UUID | None, typer.Option(help="only this workspace's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for machines")] = False,
) -> None:
    """Deliveries, newest first, as the `deliveries` view has them."""

    async def work(engine: Engine) -> tuple[list[dict[str, object]], int]:
        rows, total = await list_rows(
            engine,
            workspace,
            lead_id=lead,
            state=str(state) if state else None,
            kind=str(kind) if kind else None,
            limit=limit,
        )
        return [delivery_row_json(r) for r in rows], total

    items, total = with_engine(work)
    if as_json:
        emit({"items": items, "total": total}, True, "")
        return
    if not items:
        out().print("no deliveries")
        return
    shown = table(
        "id",
        "lead",
        "kind",
        "event",
        "target",
        "state",
        "attempts",
        "last",
        whole=("id", "lead", "kind", "state", "attempts"),
    )
    for item in items:
        last = item["lastError"] or (str(item["lastStatus"]) if item["lastStatus"] else "")
        shown.add_row(
            str(item["id"]),
            str(item["leadId"]),
            str(item["kind"]),
            str(item["eventCode"]),
            Text(str(item["target"])),  # not markup: the target is the user's
            str(item["state"]),
            str(item["attempts"]),
            Text(str(last)),
        )
    show(shown)
    if total > len(items):
        out().print(f"[dim]{total - len(items)} more not shown (--limit)[/]")


@verb(deliveries_app, "redeliver")
def redeliver_command(
    delivery_id: UUID,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for machines")] = False,
) -> None:
    """Send a delivery again with the same webhook-id (a new round of attempts)."""
    try:
        delivery, position = with_engine(
            lambda e: request_redelivery(e.store, None, delivery_id, CLI_ACTOR)
        )
    except DeliveryNotFound as error:
        raise fail(str(error)) from None
    except InvalidRedelivery as error:
        raise fail(f"delivery {delivery_id}: {error}") from None
    emit(
        {"id": str(delivery.id), "state": str(delivery.state), "position": position},
        as_json,
        escape(
            f"redelivery of {delivery.id} requested ({delivery.kind} to {delivery.target}); "
            "a running worker sends it"
        ),
    )


def register(app: typer.Typer) -> None:
    app.add_typer(deliveries_app, name="deliveries")
