"""The PostgreSQL edge: the durable log, the event store on top of it, and reading views.

`log_store` is the ordered log on asyncpg (group commit, claims, counters, checkpoints,
the append lock that keeps positions visible in order); `event_store` puts domain events
and aggregates on it through `codec`; `schema` applies the versioned SQL in `sql/`;
`database` opens the pool; `read_models` are the typed queries over the views. May import
`domain`, `handlers` (for the ports it implements) and `projections`; nothing else of
`gateways` but `settings`.
"""
