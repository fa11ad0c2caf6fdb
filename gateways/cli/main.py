"""The `leadlog` command line: the typer app, with every verb group registered on it."""

from __future__ import annotations

from gateways.cli import deliveries, imports, intake, ops, serve, users, workspaces
from gateways.cli.common import new_app

app = new_app("leadlog: an event-sourced lead processing engine.")
serve.register(app)
workspaces.register(app)
ops.register(app)
imports.register(app)
intake.register(app)
deliveries.register(app)
users.register(app)


def main() -> None:
    app()
