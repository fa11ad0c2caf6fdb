"""The `leadlog` command: one module per verb group, shared helpers in `common`.

`main` builds the typer app and registers the groups (`up`/`serve`, workspaces and
tokens, ops: status/rebuild/replay/audit, import, intake, deliveries). A verb module
imports `common`, never `main`, so nothing imports back up. May import every other
part of `gateways`.
"""
