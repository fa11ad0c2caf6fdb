"""The HTTP app: ingest endpoints and the read/command API."""
