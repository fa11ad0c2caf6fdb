"""Everything that follows the log: the projection runtime, rebuilds, audits and workers.

`projector` runs every projection exactly once per event through one `projection_runner`
each (rows and checkpoint in one transaction; shared types in `consumer_state`);
`rebuild` fills a new version of a view and swaps it in blue/green; `audit` replays the
log into scratch views and diffs them with the live ones; `read_models` are the typed
queries over the live views; `reactor` runs the reactions, `action_shards` decides
lead-type actions per lead in log order, `timers` fires durable timers, `upgrade`
rebuilds a view whose code is newer than its tables, and `leases` divides them all between
the worker processes of a schema. May import
`gateways.postgres`, `domain`, `handlers` and `projections`.
"""
