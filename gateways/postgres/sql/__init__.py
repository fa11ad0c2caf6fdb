"""Versioned SQL migrations, applied in order by `gateways.postgres.schema`."""
