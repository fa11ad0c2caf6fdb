"""What the browser tests share: Chromium's path and flags, users, sign-in, polling."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.engine_process import LEADLOG, EngineProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / ".artifacts"
PASSWORD = "correct horse battery"

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Chromium is not installed (make setup installs it)"
)


def operator(engine: EngineProcess, workspace_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {engine.admin_token}"}
    if workspace_id:
        headers["X-Workspace-Id"] = workspace_id
    return headers


def create_user(
    engine: EngineProcess, workspace_id: str, email: str, role: str = "manager"
) -> subprocess.CompletedProcess[str]:
    """`leadlog users create … --password-stdin`, as an operator would run it."""
    return subprocess.run(
        [LEADLOG, "users", "create", "--workspace", workspace_id, "--email", email,
         "--name", "Mia Manager", "--role", role, "--password-stdin", "--json"],
        input=PASSWORD + "\n",
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def sign_in(page: Any, email: str, password: str = PASSWORD) -> None:
    page.goto("/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def until(check: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll `check` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)
