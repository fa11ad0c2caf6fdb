"""Outbound email attempts over SMTP (aiosmtplib), with a Message-ID stable across retries."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib

from handlers.deliveries import AttemptResult

NO_SERVER = "no SMTP server is configured (set LEADLOG_SMTP_HOST)"


def message_id(delivery_message_id: str, sender: str) -> str:
    """`<msg_<hex>@<sender's domain>>`: the same for every attempt, so a mail system that
    receives a retry it already has can tell."""
    domain = sender.rpartition("@")[2].strip(" >") or "leadlog"
    return f"<{delivery_message_id}@{domain}>"


def build_message(
    *, sender: str, to: str, subject: str, body: str, msg_id: str, now: datetime
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = msg_id
    message.set_content(body)
    return message


def _code_result(code: int, text: str, took: float) -> AttemptResult:
    # 4xx is the server saying "not now"; 5xx "never", so no retry.
    return AttemptResult(code, took, f"SMTP {code} {text}".strip()[:500], retryable=code < 500)


class SmtpSender:
    """Sends email attempts; one SMTP session per message (email volume is low)."""

    def __init__(
        self,
        *,
        host: str | None,
        port: int = 25,
        sender: str = "leadlog@localhost",
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls

    async def send(
        self, delivery_message_id: str, to: str, subject: str, body: str, timeout: float
    ) -> AttemptResult:
        """Send one attempt; every failure is an `AttemptResult`, never an exception."""
        if not self.host:
            return AttemptResult(None, 0.0, NO_SERVER, retryable=False)
        message = build_message(
            sender=self.sender,
            to=to,
            subject=subject,
            body=body,
            msg_id=message_id(delivery_message_id, self.sender),
            now=datetime.now(UTC),
        )
        started = time.perf_counter()

        def took() -> float:
            return (time.perf_counter() - started) * 1000

        try:
            errors, _ = await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                start_tls=self.starttls,
                timeout=timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            refused = error.recipients[0]
            return _code_result(refused.code, refused.message, took())
        except aiosmtplib.SMTPResponseException as error:
            return _code_result(error.code, error.message, took())
        except aiosmtplib.SMTPNotSupported as error:
            return AttemptResult(None, took(), f"SMTP: {error}", retryable=False)
        except aiosmtplib.SMTPTimeoutError:
            return AttemptResult(None, took(), f"SMTP timed out after {timeout:g} s")
        except (aiosmtplib.SMTPException, OSError) as error:
            return AttemptResult(None, took(), f"SMTP: {type(error).__name__}: {error}")
        if errors:  # some recipient refused; there is only one
            refused_response = next(iter(errors.values()))
            return _code_result(refused_response.code, refused_response.message, took())
        return AttemptResult(250, took())
