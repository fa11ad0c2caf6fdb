"""Read models derived from the event log: one module per view."""
