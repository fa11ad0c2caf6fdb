"""Configuration from the environment (LEADLOG_*), per DESIGN.md §4."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the engine reads from the environment; defaults give the embedded stack."""

    model_config = SettingsConfigDict(env_prefix="LEADLOG_", extra="ignore")

    database_url: str | None = None
    nats_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    data_dir: Path = Path(".leadlog")
    admin_token: str | None = None
    # Postgres schema holding every table; tests give each test its own.
    database_schema: str = "leadlog"
    # Prefix of every NATS subject and stream name; tests give each test its own.
    nats_prefix: str = "leadlog"
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    log_level: str = "info"
    # How often the durable timers (lead abandonment) look for what has come due, in seconds.
    timer_interval: float = Field(default=5.0, gt=0)
