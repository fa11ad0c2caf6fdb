"""Requests to buyers' endpoints (posts, pings), validators and action webhooks.

They go over the webhook sender's SSRF-guarded connection pool: the same address checks,
the same lean HTTP/1.1 keep-alive connections, answers read up to 64 KiB. Every request
carries `Idempotency-Key`, the same for every attempt of one step of one submission, so a
buyer can tell a post sent again (after a lost answer, or a worker that died mid-post)
from a new lead.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from domain.buyer_payloads import BuyerRequest
from gateways.outbound.webhook_sender import (
    USER_AGENT,
    BlockedTarget,
    WebhookSender,
    parse_target,
    serialise,
)
from handlers.submissions import BuyerAnswer

MAX_BODY_CHARS = 64 * 1024


class BuyerClient:
    """`handlers.submissions.Buyers` over a `WebhookSender`'s pool."""

    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender

    async def send(
        self, request: BuyerRequest, timeout: float, idempotency_key: str
    ) -> BuyerAnswer:
        started = time.perf_counter()

        def took() -> float:
            return (time.perf_counter() - started) * 1000

        headers = {
            "user-agent": USER_AGENT,
            "accept": "application/json, application/xml;q=0.9, */*;q=0.5",
            **request.headers,
            "Idempotency-Key": idempotency_key,
        }
        try:
            target = parse_target(request.url)
            data = serialise(request.method, target, headers, request.body)
        except ValueError as error:
            return BuyerAnswer(None, "", None, took(), f"invalid request: {error}")
        try:
            async with asyncio.timeout(timeout):
                answer = await self.sender.pool.exchange(target.origin, data)
        except BlockedTarget as error:
            return BuyerAnswer(None, "", None, took(), f"blocked: {error}")
        except (TimeoutError, httpx.TimeoutException):
            return BuyerAnswer(None, "", None, took(), f"timed out after {timeout:g} s")
        except (httpx.HTTPError, OSError) as error:
            return BuyerAnswer(None, "", None, took(), f"{type(error).__name__}: {error}")
        body = answer.body.decode("utf-8", errors="replace")[:MAX_BODY_CHARS]
        return BuyerAnswer(answer.status, body, answer.header(b"content-type"), took())
