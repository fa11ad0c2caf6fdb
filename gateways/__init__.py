"""Every edge with I/O: Postgres, NATS, HTTP, CLI, embedded servers, and the wiring."""
