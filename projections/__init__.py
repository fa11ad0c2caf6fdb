"""The read models: one module per view, each the event-to-row logic and its tables.

A projection declares its tables, the event types it reads and how each event changes
its rows, written against the small `ProjectionDb` protocol in `projections/base.py`.
The runtime that feeds it, checkpoints it and rebuilds it blue/green lives in
`gateways/consumers`. Imports `domain` only; never `handlers` or `gateways`.
"""
