"""Every edge with I/O, one sub-package per edge, and the composition root that wires them.

`postgres` is the durable log and event store; `consumers` follows the log (projection
runtime, rebuild, audit, reactions, action shards, timers); `nats` is intake from and the
event relay to NATS JetStream; `http` is the FastAPI app; `web` is the web app people sign
in to; `outbound` sends webhooks and email; `cli` is the `leadlog` command; `embedded`
runs the embedded PostgreSQL and NATS. The modules at this level are the composition
root: `bootstrap` (the Engine), `settings`, `logs`, `metrics`, `servers` (which
PostgreSQL and NATS to use), `workers` (what a worker process runs) and `status`.
Anything here may import `domain`, `handlers` and `projections`; a sub-package may import
another's public modules, never its private (`_name`) ones (enforced by import-linter in
`make lint`).
"""
