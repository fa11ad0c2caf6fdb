"""`leadlog up` stops promptly while a board's event stream is open (issue 13, item 4);
a module of its own: the browser tests' Playwright loop would be running around it."""

from __future__ import annotations

import re
import signal
import time
import uuid

import httpx

from tests.conftest import Servers
from tests.engine_process import engine_process
from tests.gateways.web.browsing import PASSWORD, create_user, operator


def test_an_open_event_stream_does_not_hold_up_a_graceful_stop(servers: Servers) -> None:
    with engine_process(servers) as own:
        http = httpx.Client(base_url=own.base_url, timeout=15)
        ws = http.post("/v1/workspaces", json={"name": "Stop"}, headers=operator(own))
        email = f"sam-{uuid.uuid4().hex[:6]}@stop.example"
        assert create_user(own, ws.json()["id"], email).returncode == 0
        form = http.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        signed = http.post(
            "/login", data={"csrf_token": token[1], "email": email, "password": PASSWORD}
        )
        assert signed.status_code == 303, signed.text
        with http.stream("GET", "/board/events") as answer:
            assert answer.status_code == 200
            lines = answer.iter_lines()
            assert next(lines).startswith("retry:")
            stopping = time.monotonic()
            own.process.send_signal(signal.SIGTERM)
            for _ in lines:  # the server ends the stream
                pass
        own.process.wait(timeout=20)
        assert time.monotonic() - stopping < 10, "the stream held up the stop"
