"""The `leadlog` command line: the typer app, with every verb group registered on it."""

from __future__ import annotations

import typer

from gateways.cli import deliveries, imports, intake, ops, serve, workspaces

app = typer.Typer(help="leadlog: an event-sourced lead processing engine.", no_args_is_help=True)
serve.register(app)
workspaces.register(app)
ops.register(app)
imports.register(app)
intake.register(app)
deliveries.register(app)


def main() -> None:
    app()
