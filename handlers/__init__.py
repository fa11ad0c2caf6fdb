"""The application layer: command handlers and the handlers subscribed to the log.

A command handler loads aggregates through the store protocol in `handlers/ports.py`,
lets the domain decide, and appends the events (with their claims, counters and
checkpoints) in one call. The subscribed handlers (lead-type actions, reactions such as
releasing pending leads, abandonment) decide what an event leads to. Imports `domain`
and the standard library only; never `gateways` or `projections`: the gateways implement
the ports and call in.
"""
