"""Messages: a broadcast sent to a local fake Twilio, then Twilio's delivery callbacks applied."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import structlog
import uvicorn
import uvloop

from bench.receiver import receiver
from bench.report import Report
from bench.submissions import _delete_streams
from domain.automations import Template
from domain.base import DomainEvent
from domain.channels import ChannelConfig, ChannelType
from domain.leads import LeadDetails, Source
from domain.messages import Message, Origin
from domain.provider_signatures import twilio_signature
from gateways.bootstrap import Engine, start_engine
from gateways.http.app import create_app
from gateways.settings import Settings
from gateways.workers import Worker, build_workers
from handlers.channels import create_channel
from handlers.intake import Intake
from handlers.messages import provider_claim
from handlers.ports import Append, Claim
from handlers.workspaces import create_workspace

MESSAGES = 5_000
SEND_TARGET = 1_000
CALLBACK_TARGET = 2_000
INTAKE_CONCURRENCY = 256
APPEND_BATCH = 500
# Connections the load generator keeps open to the API (wrk's, or the httpx fallback's).
CONNECTIONS = 64
# Past this a phase is reported as stuck rather than left to hang `make bench`.
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.05

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-twilio-auth-token"
SMS_FROM = "+15005550006"
# Every send is answered with this one sid: the engine records it as each message's provider
# id (the claim is shared, so the first message holds it), which is all the send figure needs.
FIXED_SID = "SM" + "f" * 32


def _twilio_created() -> bytes:
    """Twilio's `201 Created` for `POST /2010-04-01/Accounts/{sid}/Messages.json`."""
    body = json.dumps(
        {
            "sid": FIXED_SID,
            "account_sid": ACCOUNT_SID,
            "messaging_service_sid": None,
            "from": SMS_FROM,
            "to": "+14152010000",
            "body": "Hello from the bench",
            "status": "queued",
            "direction": "outbound-api",
            "num_segments": "1",
            "num_media": "0",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "api_version": "2010-04-01",
            "date_created": "Mon, 06 Jan 2025 10:00:00 +0000",
            "date_updated": "Mon, 06 Jan 2025 10:00:00 +0000",
            "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{FIXED_SID}.json",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{FIXED_SID}/Media.json"
            },
        }
    ).encode()
    head = (
        "HTTP/1.1 201 Created\r\ncontent-type: application/json; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def phone(n: int) -> str:
    """The `n`th lead's number: distinct and valid (San Francisco)."""
    return f"+1415{201 + n // 10_000:03d}{n % 10_000:04d}"


def sms_channel(base_url: str) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {
            "type": "sms",
            "name": "Bench Twilio",
            "baseUrl": base_url,
            "from": SMS_FROM,
            "credentials": {"accountSid": ACCOUNT_SID, "authToken": AUTH_TOKEN},
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _count(engine: Engine, status: str) -> int:
    found: int = await engine.pool.fetchval(
        "SELECT count(*) FROM messages WHERE status = $1", status
    )
    return found


async def _statuses(engine: Engine) -> dict[str, int]:
    rows = await engine.pool.fetch("SELECT status, count(*) AS n FROM messages GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def _until(engine: Engine, status: str, count: int, started: float, what: str) -> float:
    """Seconds from `started` until `count` messages are `status` in the messages view."""
    while True:
        if await _count(engine, status) >= count:
            return time.perf_counter() - started
        if time.perf_counter() - started > DEADLINE_SECONDS:
            raise RuntimeError(f"{what}: not done in time: {await _statuses(engine)}")
        failed = await _count(engine, "failed")
        if failed:
            error = await engine.pool.fetchval(
                "SELECT error FROM messages WHERE status = 'failed' LIMIT 1"
            )
            raise RuntimeError(f"{what}: {failed} messages failed, e.g. {error}")
        await asyncio.sleep(POLL_SECONDS)


async def _until_quiet(limit: float = 20.0) -> None:
    """Until this process is idle (under 10% of a CPU over a quarter second): the workers
    have digested what was appended, so the next phase measures only itself."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(0.25)
        if time.process_time() - cpu < 0.1 * (time.perf_counter() - wall):
            return


async def _leads(engine: Engine, workspace: uuid.UUID, count: int) -> list[uuid.UUID]:
    """`count` leads with distinct valid phone numbers, through the API's intake."""
    gate = asyncio.Semaphore(INTAKE_CONCURRENCY)

    async def one(n: int) -> uuid.UUID:
        async with gate:
            receipt = await engine.intake.receive(
                Intake(
                    workspace_id=workspace,
                    details=LeadDetails(
                        name=f"Bench Lead {n}", email=f"sms{n}@bench.example.com", phone=phone(n)
                    ),
                    source=Source.API,
                    actor="bench",
                    channel="api:bench",
                )
            )
            if receipt.is_duplicate:
                raise RuntimeError(f"lead {n} was taken as a duplicate")
            return receipt.lead_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _broadcast(
    engine: Engine, workspace: uuid.UUID, channel: uuid.UUID, leads: list[uuid.UUID]
) -> tuple[float, float]:
    """One broadcast to every lead, as a user sends many messages: seconds to build the
    audience, and from the broadcast's creation to the last message `sent` in the view."""
    started = time.perf_counter()
    audience, _ = await engine.messaging.create_audience(
        workspace, "Bench audience", leads, None, "bench"
    )
    if len(audience.lead_ids) != len(leads):
        raise RuntimeError(f"the audience kept {len(audience.lead_ids)} of {len(leads)} leads")
    audience_took = time.perf_counter() - started
    started = time.perf_counter()
    await engine.messaging.create_broadcast(
        workspace,
        "Bench broadcast",
        audience.id,
        ChannelType.SMS,
        channel,
        Template(body="Hi {{lead.name}}, your quote is ready. Reply STOP to opt out."),
        "bench",
    )
    return audience_took, await _until(engine, "sent", len(leads), started, "broadcast")


async def _sent_messages(
    engine: Engine, workspace: uuid.UUID, channel: uuid.UUID, leads: list[uuid.UUID]
) -> list[str]:
    """A sent message per lead, each with a provider id of its own, appended as the message
    worker records a send (the message and its provider claim); their sids."""
    sids: list[str] = []
    for start in range(0, len(leads), APPEND_BATCH):
        events: list[DomainEvent] = []
        claims: list[Claim] = []
        for n in range(start, min(start + APPEND_BATCH, len(leads))):
            message = Message(  # type: ignore[call-arg]  # `id` from the library's metaclass
                id=uuid.uuid4(),
                workspace_id=workspace,
                lead_id=leads[n],
                channel_id=channel,
                channel=str(ChannelType.SMS),
                to=phone(n),
                content={"body": f"Hi Bench Lead {n}, your quote is ready."},
                origin=str(Origin.QUICK_SEND),
                origin_id=None,
            )
            sid = f"SM{n:032x}"
            message.sent(sid)
            events.extend(message.collect_events())
            claims.append(Claim(provider_claim(channel, sid), message.id))
            sids.append(sid)
        await engine.store.append(Append(workspace, events=events, claims=claims))
    return sids


def _callbacks(url: str, sids: Sequence[str]) -> list[tuple[str, str]]:
    """Twilio's `delivered` status callback for each sid: the form body and its
    `X-Twilio-Signature` over `url` (the status URL the engine handed Twilio)."""
    signed: list[tuple[str, str]] = []
    for n, sid in enumerate(sids):
        fields = [
            ("SmsSid", sid),
            ("SmsStatus", "delivered"),
            ("MessageStatus", "delivered"),
            ("To", phone(n)),
            ("MessageSid", sid),
            ("AccountSid", ACCOUNT_SID),
            ("From", SMS_FROM),
            ("ApiVersion", "2010-04-01"),
        ]
        signed.append((urlencode(fields), twilio_signature(AUTH_TOKEN, url, fields)))
    return signed


_WRK_SCRIPT = """
-- Each thread posts its share of the pre-signed callbacks once, then stops.
local threads, data, path = {threads}, "{data}", "{path}"
local created = 0
function setup(thread)
  thread:set("share", created)
  created = created + 1
end
local requests, sent, answered = {{}}, 0, 0
function init(args)
  local n = 0
  for line in io.lines(data) do
    if n % threads == share then
      local signature, body = line:match("^([^\\t]*)\\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", path, {{
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["X-Twilio-Signature"] = signature,
        ["I-Twilio-Idempotency-Token"] = tostring(n),
      }}, body)
    end
    n = n + 1
  end
end
function request()
  -- Past its share (connections still open), a repeat: answered 200 and ignored.
  sent = sent % #requests + 1
  return requests[sent]
end
function response(status, headers, body)
  answered = answered + 1
  if answered >= #requests then
    wrk.thread:stop()
  end
end
"""


class _Wrk:
    """wrk posting the callbacks from a script that cycles through them, until stopped."""

    def __init__(self, process: asyncio.subprocess.Process, folder: str) -> None:
        self.process = process
        self.folder = folder

    @classmethod
    async def start(cls, url: str, signed: list[tuple[str, str]]) -> _Wrk:
        folder = tempfile.mkdtemp(prefix="leadlog-bench-wrk-")
        data = Path(folder) / "callbacks.tsv"
        data.write_text("".join(f"{signature}\t{body}\n" for body, signature in signed))
        script = Path(folder) / "callbacks.lua"
        script.write_text(_WRK_SCRIPT.format(threads=1, data=data, path=urlsplit(url).path))
        process = await asyncio.create_subprocess_exec(
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{int(DEADLINE_SECONDS)}s",
            "--latency",
            "-s",
            str(script),
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process, folder)

    async def stop(self) -> str:
        """wrk's summary (it prints it on SIGINT)."""
        try:
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGINT)
            try:
                out, _ = await asyncio.wait_for(self.process.communicate(), 10)
            except TimeoutError:
                self.process.kill()
                out, _ = await self.process.communicate()
            return out.decode(errors="replace")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


async def _httpx_load(url: str, signed: list[tuple[str, str]]) -> dict[int, int]:
    """The fallback: `CONNECTIONS` httpx clients posting each callback once; the answers
    by status code."""
    answers: dict[int, int] = {}
    pending = iter(signed)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def poster() -> None:
            for body, signature in pending:
                response = await client.post(
                    url,
                    content=body,
                    headers={
                        "content-type": "application/x-www-form-urlencoded",
                        "x-twilio-signature": signature,
                    },
                )
                answers[response.status_code] = answers.get(response.status_code, 0) + 1

        await asyncio.gather(*(poster() for _ in range(CONNECTIONS)))
    return answers


async def _apply_callbacks(engine: Engine, url: str, sids: list[str]) -> tuple[float, str]:
    """Seconds from the first callback posted to the last message `delivered` in the view,
    and how the callbacks were posted."""
    signed = _callbacks(url, sids)
    before = await _count(engine, "delivered")
    if shutil.which("wrk"):
        wrk = await _Wrk.start(url, signed)
        started = time.perf_counter()
        waiting = asyncio.create_task(
            _until(engine, "delivered", before + len(sids), started, "callbacks")
        )
        exited = asyncio.create_task(wrk.process.wait())
        try:
            await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            early = not waiting.done()
            waiting.cancel()
            exited.cancel()
            summary = await wrk.stop()
        if early:
            raise RuntimeError(f"wrk ended before every callback was applied:\n{summary}")
        took = waiting.result()
        refused = next((line for line in summary.splitlines() if "Non-2xx" in line), None)
        if refused:
            raise RuntimeError(f"callbacks refused: {refused.strip()}\n{summary}")
        latency = re.search(r"^\s*99%\s+(\S+)", summary, re.MULTILINE)
        posted = re.search(r"^\s*(\d+) requests in", summary, re.MULTILINE)
        return took, (
            f"wrk, {CONNECTIONS} connections, p99 {latency.group(1) if latency else '?'},"
            f" {posted.group(1) if posted else '?'} posts answered"
        )
    started = time.perf_counter()
    answers = await _httpx_load(url, signed)
    took = await _until(engine, "delivered", before + len(sids), started, "callbacks")
    if set(answers) != {200}:
        raise RuntimeError(f"callbacks answered {answers}")
    return took, f"{CONNECTIONS} httpx clients (no wrk): bounded by the Python load generator"


async def bench_messages(
    report: Report, database_url: str, nats_url: str, count: int = MESSAGES
) -> float:
    """Messages sent per second by one broadcast to a local fake Twilio, then delivery
    callbacks applied per second through the status route, with every worker `leadlog up`
    runs and its HTTP app in the same process."""
    with receiver(_twilio_created()) as port, _warnings_only():
        return await _run(report, database_url, nats_url, count, port)


@contextlib.contextmanager
def _warnings_only() -> Iterator[None]:
    """Warnings and errors logged, not every request: as `bench.ingest` runs its API."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**saved)


async def _run(report: Report, database_url: str, nats_url: str, count: int, port: int) -> float:
    api_port = _free_port()
    settings = Settings(
        database_schema=f"bench_{uuid.uuid4().hex[:8]}",
        nats_prefix=f"bench{uuid.uuid4().hex[:8]}",
        allow_private_webhook_targets=True,
        public_url=f"http://127.0.0.1:{api_port}",
        secret_key="bench-secret-key-" + uuid.uuid4().hex,
        http_port=api_port,
    )
    engine = await start_engine(settings, database_url, nats_url, None)
    workers: list[Worker] = []
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(engine),
            host="127.0.0.1",
            port=api_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http="httptools",
        )
    )
    serving: asyncio.Task[None] | None = None
    try:
        workspace = (await create_workspace(engine.store, "bench-messages")).id
        channel, _ = await create_channel(
            engine.store, workspace, sms_channel(f"http://127.0.0.1:{port}"), "bench"
        )
        for worker in build_workers(engine):
            await worker.start()
            workers.append(worker)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                raise RuntimeError("the API did not start")
            await asyncio.sleep(0.01)

        started = time.perf_counter()
        leads = await _leads(engine, workspace, count)
        intake_took = time.perf_counter() - started
        await _until_quiet()
        audience_took, sent_took = await _broadcast(engine, workspace, channel.id, leads)

        sids = await _sent_messages(engine, workspace, channel.id, leads)
        await _until(engine, "sent", 2 * count, time.perf_counter(), "recorded sends")
        await _until_quiet()
        url = f"{settings.public_url}/v1/channels/{channel.id}/status"
        applied_took, how = await _apply_callbacks(engine, url, sids)
    finally:
        if serving is not None:
            server.should_exit = True
            await serving
        for worker in reversed(workers):
            await worker.stop()
        await _delete_streams(engine, settings.nats_prefix)
        await engine.pool.execute(f"DROP SCHEMA {settings.database_schema} CASCADE")
        await engine.close()
    rate = count / sent_took
    report.add(
        f"Messages sent ({count:,} SMS, one broadcast, local fake Twilio)",
        rate,
        "messages/s",
        at_least=SEND_TARGET,
        note=f"{rate / SEND_TARGET:.2f}x budget; broadcast created -> all `sent` in the view;"
        f" one fixed sid answered; audience built in {audience_took:.1f} s, leads taken in"
        f" {intake_took:.1f} s",
    )
    applied = count / applied_took
    report.add(
        f"Delivery callbacks applied ({count:,}, Twilio-signed, HTTP route)",
        applied,
        "callbacks/s",
        at_least=CALLBACK_TARGET,
        note=f"{applied / CALLBACK_TARGET:.2f}x budget; first post -> all `delivered` in the"
        f" view; {how}",
    )
    return rate


if __name__ == "__main__":  # `python -m bench.messages` against LEADLOG_DATABASE_URL / _NATS_URL
    _report = Report()
    uvloop.run(
        bench_messages(
            _report,
            os.environ["LEADLOG_DATABASE_URL"],
            os.environ["LEADLOG_NATS_URL"],
            int(sys.argv[1]) if len(sys.argv) > 1 else MESSAGES,
        )
    )
    _report.print()
