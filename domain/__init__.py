"""Pure domain model: aggregates, events, value objects and rules; no I/O."""
