"""Configuration from the environment (LEADLOG_*), as docs/architecture.md names them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the engine reads from the environment; defaults give the embedded stack."""

    model_config = SettingsConfigDict(env_prefix="LEADLOG_", extra="ignore")

    database_url: str | None = None
    nats_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # `leadlog up`: processes serving HTTP on that port (the first also runs the workers);
    # unset: one per CPU core.
    processes: int | None = Field(default=None, ge=1)
    data_dir: Path = Path(".leadlog")
    admin_token: str | None = None
    # Postgres schema holding every table; tests give each test its own.
    database_schema: str = "leadlog"
    # Prefix of every NATS subject and stream name; tests give each test its own.
    nats_prefix: str = "leadlog"
    # Copies of each JetStream stream the engine creates (its events, its intake): 3 on a
    # cluster of three or more, so that losing one server loses neither; 1 on a single server.
    nats_replicas: int = Field(default=1, ge=1, le=5)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    log_level: str = "info"
    # How often the durable timers (lead abandonment) look for what has come due, in seconds.
    timer_interval: float = Field(default=5.0, gt=0)
    # Outbound deliveries (gateways/deliveries.py). Webhooks to loopback, private,
    # link-local or reserved addresses are refused unless this is set (tests, private nets).
    allow_private_webhook_targets: bool = False
    # Retry backoff: base·2^(attempt-1) seconds with full jitter, capped; or Retry-After.
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_cap_seconds: float = Field(default=3600.0, gt=0)
    # Attempts (webhooks and emails) in flight at once per process.
    delivery_concurrency: int = Field(default=128, ge=1, le=4096)
    # Submissions run through campaigns at once per worker process, and how often the
    # worker looks for ones left unfinished (a restart, a lost wake-up, a due time limit).
    submission_concurrency: int = Field(default=64, ge=1, le=4096)
    submission_poll_interval: float = Field(default=2.0, gt=0)
    # Email actions: with no host, an email delivery fails with that reason.
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "leadlog@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    # The web app. Cookies are marked Secure when the public URL is https.
    public_url: str | None = None
    # Signs session cookies and CSRF tokens; unset: generated once into the data folder.
    # Every API process serving the same users needs the same key.
    secret_key: SecretStr | None = None
    session_hours: float = Field(default=12.0, gt=0, le=24 * 90)
    # Failed sign-ins allowed per email and per client address within the window; beyond
    # them sign-in answers 429 with Retry-After until the oldest failure leaves the window.
    sign_in_failures_per_email: int = Field(default=5, ge=1)
    sign_in_failures_per_address: int = Field(default=20, ge=1)
    sign_in_window_seconds: float = Field(default=900.0, gt=0)
