"""`leadlog workspaces …` and `leadlog tokens …`: the operator's tenant and token verbs."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import typer
from rich.markup import escape
from rich.text import Text

from domain.workspaces import InvalidName, Role
from gateways.cli.common import JsonFlag, emit, fail, new_app, out, show, table, verb, with_engine
from handlers import workspaces as commands

workspaces_app = new_app("Create and list workspaces.")
tokens_app = new_app("Issue and revoke API tokens.")


@verb(workspaces_app, "create")
def workspaces_create(
    name: str,
    region: Annotated[str, typer.Option(help="default phone region (ISO 3166)")] = "US",
    as_json: JsonFlag = False,
) -> None:
    """Create a workspace."""
    if len(region) != 2 or not region.isalpha() or not region.isupper():
        raise fail("--region must be a two-letter upper-case ISO 3166 code such as US or GB")
    try:
        created = with_engine(lambda e: commands.create_workspace(e.store, name, region))
    except InvalidName as error:
        raise fail(str(error)) from None
    emit(
        {"id": str(created.id), "name": name.strip(), "position": created.position},
        as_json,
        f"created workspace [bold]{escape(name.strip())}[/] {created.id}",
    )


@verb(workspaces_app, "list")
def workspaces_list(as_json: JsonFlag = False) -> None:
    """List every workspace."""
    views = with_engine(lambda e: commands.list_workspaces(e.store))
    if as_json:
        emit(
            [{"id": str(v.id), "name": v.name, "defaultRegion": v.default_region} for v in views],
            True,
            "",
        )
        return
    if not views:
        out().print("no workspaces")
        return
    shown = table("id", "name", "region", whole=("id", "region"))
    for view in views:
        shown.add_row(str(view.id), Text(view.name), view.default_region)
    show(shown)


@verb(tokens_app, "create")
def tokens_create(
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
    role: Annotated[Role, typer.Option(help="the token's role")],
    name: Annotated[str, typer.Option(help="a label for the token")] = "api",
    as_json: JsonFlag = False,
) -> None:
    """Issue an API token; its secret is shown this once."""
    try:
        issued = with_engine(lambda e: commands.issue_token(e.store, workspace, role, name))
    except commands.WorkspaceNotFound as error:
        raise fail(str(error)) from None
    except InvalidName as error:
        raise fail(str(error)) from None
    emit(
        {"id": str(issued.id), "token": issued.token, "workspaceId": str(workspace), "role": role},
        as_json,
        f"token {issued.id} ({role}) for workspace {workspace}:\n{issued.token}",
    )


@verb(tokens_app, "revoke")
def tokens_revoke(
    token_id: UUID,
    workspace: Annotated[UUID, typer.Option(help="the workspace id")],
) -> None:
    """Revoke an API token at once."""
    try:
        with_engine(lambda e: commands.revoke_token(e.store, workspace, token_id))
    except commands.TokenNotFound as error:
        raise fail(str(error)) from None
    out().print(f"revoked token {token_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(workspaces_app, name="workspaces")
    app.add_typer(tokens_app, name="tokens")
