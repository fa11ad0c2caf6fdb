"""Everything that follows the log: the projection runtime, rebuilds, audits and workers.

`projector` runs every projection exactly once per event (rows and checkpoint in one
transaction), `rebuild` fills a new version of a view and swaps it in blue/green,
`audit` replays the log into scratch views and diffs them with the live ones; `reactor`
runs the reactions, `action_shards` decides lead-type actions per lead in log order, and
`timers` fires durable timers. May import `gateways.postgres`, `domain`, `handlers` and
`projections`.
"""
