"""Tests: unit, integration against real Postgres and NATS, end to end."""
