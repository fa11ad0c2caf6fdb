"""Sending one message through its provider: Twilio SMS, the WhatsApp Cloud API, SMTP email."""

from __future__ import annotations

import asyncio
import base64
import html
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from http import HTTPStatus
from typing import Any
from urllib.parse import quote
from uuid import UUID

import aiosmtplib
import httpx

from domain.channels import PUBLIC_CREDENTIALS, REDACTED, ChannelConfig
from gateways.outbound.smtp_sender import NO_SERVER, SmtpSender
from gateways.outbound.webhook_sender import BlockedTarget, parse_retry_after

TWILIO_API_VERSION = "2010-04-01"
WHATSAPP_API_VERSION = "v19.0"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
MAX_ERROR = 500
_MESSAGING_SERVICE = re.compile(r"^MG[0-9a-fA-F]{32}$")
# Graph API codes that mean "not now": rate limits and Meta's temporary failures.
WHATSAPP_RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056})
# SMTP lines may be 998 characters; the 78 of the default policy would RFC 2047-encode a
# long `List-Unsubscribe` URL, which mail systems then do not read.
SMTP_POLICY = policy.SMTP.clone(max_line_length=998)


@dataclass(frozen=True)
class SendResult:
    """What one send attempt came to; `retryable` says whether trying again may help."""

    provider_id: str | None
    status_code: int | None
    error_code: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.provider_id is not None


def secrets_of(channel: ChannelConfig) -> list[str]:
    """The channel's secret credential values (and Twilio's basic-auth encoding of them)."""
    found = [
        str(value)
        for key, value in channel.credentials.items()
        if key not in PUBLIC_CREDENTIALS and value is not None and len(str(value)) >= 4
    ]
    sid, token = channel.credential("accountSid"), channel.credential("authToken")
    if sid and token:
        found.append(base64.b64encode(f"{sid}:{token}".encode()).decode())
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by `[redacted]`, bounded in length."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text[:MAX_ERROR]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class _HttpProvider:
    """A provider spoken to over the given client (the engine's SSRF-guarded one)."""

    name = "provider"

    def __init__(self, client: httpx.AsyncClient, *, timeout: float = 30.0) -> None:
        self.client = client
        self.timeout = timeout

    async def _post(
        self, channel: ChannelConfig, url: str, **kwargs: Any
    ) -> httpx.Response | SendResult:
        """The provider's answer, or the failure to get one as a `SendResult`."""
        secrets = secrets_of(channel)
        try:
            async with asyncio.timeout(self.timeout):
                return await self.client.post(url, timeout=self.timeout, **kwargs)
        except BlockedTarget as error:
            return SendResult(None, None, error=scrub(str(error), secrets))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            message = f"invalid {self.name} URL: {error}"
            return SendResult(None, None, error=scrub(message, secrets))
        except (TimeoutError, httpx.TimeoutException):
            message = f"{self.name} did not answer within {self.timeout:g} s"
            return SendResult(None, None, error=message, retryable=True)
        except (httpx.HTTPError, OSError) as error:
            message = f"{self.name}: {type(error).__name__}: {error}"
            return SendResult(None, None, error=scrub(message, secrets), retryable=True)


class TwilioSms(_HttpProvider):
    """SMS through Twilio's Messages API (form-encoded, HTTP basic auth)."""

    name = "Twilio"

    async def send(
        self,
        channel: ChannelConfig,
        to: str,
        body: str,
        status_callback: str,
        idempotency_key: str,
    ) -> SendResult:
        sid = channel.credential("accountSid")
        token = channel.credential("authToken")
        if not sid or not token or not channel.from_:
            return SendResult(
                None, None, error="the SMS channel lacks accountSid, authToken or from"
            )
        url = f"{channel.url}/{TWILIO_API_VERSION}/Accounts/{quote(sid, safe='')}/Messages.json"
        # A Messaging Service (`MG...`) picks the sending number itself.
        sender = "MessagingServiceSid" if _MESSAGING_SERVICE.match(channel.from_) else "From"
        form = {"To": to, sender: channel.from_, "Body": body, "StatusCallback": status_callback}
        answer = await self._post(
            channel,
            url,
            data=form,
            auth=httpx.BasicAuth(sid, token),
            headers={IDEMPOTENCY_HEADER: idempotency_key, "accept": "application/json"},
        )
        if isinstance(answer, SendResult):
            return answer
        return self._result(answer, secrets_of(channel))

    @staticmethod
    def _result(response: httpx.Response, secrets: list[str]) -> SendResult:
        status = response.status_code
        data = _json(response)
        if 200 <= status < 300:
            sid = data.get("sid")
            if isinstance(sid, str) and sid:
                return SendResult(sid, status)
            # Sent or not, we cannot tell: trying again under the same idempotency token is
            # what lets Twilio tell.
            return SendResult(
                None, status, error=f"Twilio answered {status} without a sid", retryable=True
            )
        code = data.get("code")
        message = data.get("message")
        retryable = status == 429 or status >= 500
        return SendResult(
            None,
            status,
            error_code=None if code is None else str(code),
            error=scrub(str(message) if message else f"HTTP {status} {_phrase(status)}", secrets),
            retryable=retryable,
            retry_after=parse_retry_after(response.headers.get("retry-after"))
            if retryable
            else None,
        )


def whatsapp_payload(to: str, template: Mapping[str, Any], callback_data: str) -> dict[str, Any]:
    """The Cloud API's body for a template message; `to` in E.164, sent as digits."""
    parameters = [str(p) for p in template.get("parameters") or []]
    content: dict[str, Any] = {
        "name": template["name"],
        "language": {"code": template["language"]},
    }
    if parameters:
        content["components"] = [
            {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
        ]
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "".join(ch for ch in to if ch.isdigit()),
        "type": "template",
        "template": content,
        # Meta hands this back in every status webhook of the message.
        "biz_opaque_callback_data": callback_data[:512],
    }


class WhatsAppCloud(_HttpProvider):
    """Template messages through the WhatsApp Cloud API (Graph API, bearer token)."""

    name = "WhatsApp"

    async def send(
        self,
        channel: ChannelConfig,
        to: str,
        template: Mapping[str, Any],
        idempotency_key: str,
    ) -> SendResult:
        number = channel.credential("phoneNumberId")
        token = channel.credential("accessToken")
        if not number or not token:
            return SendResult(
                None, None, error="the WhatsApp channel lacks phoneNumberId or accessToken"
            )
        if not template.get("name") or not template.get("language"):
            return SendResult(None, None, error="a WhatsApp template needs name and language")
        version = channel.credential("apiVersion") or WHATSAPP_API_VERSION
        if not version.startswith("v"):
            version = f"v{version}"
        url = f"{channel.url}/{quote(version, safe='.')}/{quote(number, safe='')}/messages"
        answer = await self._post(
            channel,
            url,
            json=whatsapp_payload(to, template, idempotency_key),
            headers={"authorization": f"Bearer {token}", "accept": "application/json"},
        )
        if isinstance(answer, SendResult):
            return answer
        return self._result(answer, secrets_of(channel))

    @staticmethod
    def _result(response: httpx.Response, secrets: list[str]) -> SendResult:
        status = response.status_code
        data = _json(response)
        if 200 <= status < 300:
            messages = data.get("messages")
            first = messages[0] if isinstance(messages, list) and messages else None
            wamid = first.get("id") if isinstance(first, dict) else None
            if isinstance(wamid, str) and wamid:
                return SendResult(wamid, status)
            return SendResult(
                None, status, error=f"WhatsApp answered {status} without a message id"
            )
        error = data.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        message = str(error.get("message") or f"HTTP {status} {_phrase(status)}")
        extra = error.get("error_data")
        details = extra.get("details") if isinstance(extra, dict) else None
        if details and str(details) not in message:
            message = f"{message}: {details}"
        retryable = (
            status in (408, 429)
            or status >= 500
            or (str(code).isdigit() and int(str(code)) in WHATSAPP_RETRYABLE_CODES)
        )
        return SendResult(
            None,
            status,
            error_code=None if code is None else str(code),
            error=scrub(message, secrets),
            retryable=retryable,
            retry_after=parse_retry_after(response.headers.get("retry-after"))
            if retryable
            else None,
        )


# ---- email ------------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""


def message_id_header(message_id: UUID) -> str:
    return f"<{message_id.hex}@leadlog>"


def text_to_html(body: str, click_url: Callable[[str], str]) -> str:
    """A plain-text body as HTML: escaped, line breaks kept, each URL a tracked link."""
    out: list[str] = []
    last = 0
    for match in _URL.finditer(body):
        url = match[0].rstrip(_TRAILING)
        out.append(html.escape(body[last : match.start()]))
        out.append(f'<a href="{html.escape(click_url(url))}">{html.escape(url)}</a>')
        last = match.start() + len(url)
    out.append(html.escape(body[last:]))
    text = "".join(out).replace("\r\n", "\n").replace("\n", "<br>\n")
    return (
        '<!DOCTYPE html>\n<html><body><div style="font-family:sans-serif">'
        f"{text}</div></body></html>"
    )


def track_links(document: str, click_url: Callable[[str], str]) -> str:
    """An HTML document with every http(s) `href` sent through `click_url`."""

    def swap(match: re.Match[str]) -> str:
        original = html.unescape(match[3])
        return f"{match[1]}{match[2]}{html.escape(click_url(original))}{match[2]}"

    return _HREF.sub(swap, document)


def _append_to_body(document: str, extra: str) -> str:
    at = document.lower().rfind("</body>")
    return document + extra if at < 0 else document[:at] + extra + document[at:]


def build_email(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    message_id: UUID,
    unsubscribe_url: str,
    open_pixel_url: str,
    click_url: Callable[[str], str],
    html_body: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """A text + HTML message with its id, RFC 8058 one-click unsubscribe headers, tracked
    links and an open pixel (HTML part only; the text part keeps the original links)."""
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id_header(message_id)
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(f"{body}\n\n--\nUnsubscribe: {unsubscribe_url}\n", cte="quoted-printable")
    document = track_links(html_body, click_url) if html_body else text_to_html(body, click_url)
    footer = (
        f'\n<p style="font-size:small;color:#666"><a href="{html.escape(unsubscribe_url)}">'
        "Unsubscribe</a></p>"
        f'\n<img src="{html.escape(open_pixel_url)}" width="1" height="1" alt="" '
        'style="border:0;width:1px;height:1px">\n'
    )
    message.add_alternative(
        _append_to_body(document, footer), subtype="html", cte="quoted-printable"
    )
    return message


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool
    use_tls: bool


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def smtp_server(channel: ChannelConfig, smtp: SmtpSender | None) -> SmtpServer | None:
    """The channel's own SMTP server when it names one, else the engine's (None: neither).
    A port that is not a number is a ValueError."""
    host = channel.credential("host")
    if host:
        starttls = _flag(channel.credentials.get("starttls", False))
        port = int(channel.credential("port") or (587 if starttls else 25))
        return SmtpServer(
            host=host,
            port=port,
            username=channel.credential("username") or None,
            password=channel.credential("password") or None,
            starttls=starttls and port != 465,
            use_tls=port == 465,
        )
    if smtp is not None and smtp.host:
        return SmtpServer(
            host=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            starttls=smtp.starttls and smtp.port != 465,
            use_tls=smtp.port == 465,
        )
    return None


def _smtp_result(code: int, text: str, secrets: list[str]) -> SendResult:
    # 4xx is the server saying "not now"; 5xx "never".
    return SendResult(
        None,
        code,
        error_code=str(code),
        error=scrub(f"SMTP {code} {text}".strip(), secrets),
        retryable=code < 500,
    )


class EmailSender:
    """Email over SMTP: the channel's own server, or the engine's (`LEADLOG_SMTP_*`)."""

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout

    async def send(
        self,
        channel: ChannelConfig,
        to: str,
        subject: str,
        body: str,
        *,
        message_id: UUID,
        unsubscribe_url: str,
        open_pixel_url: str,
        click_url: Callable[[str], str],
        default_from: str,
        smtp: SmtpSender | None = None,
        html_body: str | None = None,
    ) -> SendResult:
        """Send one attempt; every failure is a `SendResult`, never an exception. The
        provider id is the Message-ID, the same for every attempt of the message."""
        secrets = secrets_of(channel)
        try:
            server = smtp_server(channel, smtp)
        except ValueError:
            return SendResult(None, None, error="the channel's SMTP port is not a number")
        if server is None:
            return SendResult(None, None, error=NO_SERVER)
        if smtp is not None and smtp.password:
            secrets.append(smtp.password)
        sender = channel.from_ or default_from
        envelope_from = parseaddr(sender)[1] or sender
        message = build_email(
            sender=sender,
            to=to,
            subject=subject,
            body=body,
            message_id=message_id,
            unsubscribe_url=unsubscribe_url,
            open_pixel_url=open_pixel_url,
            click_url=click_url,
            html_body=html_body,
        )
        try:
            errors, _ = await aiosmtplib.send(
                message.as_bytes(policy=SMTP_POLICY),
                sender=envelope_from,
                recipients=[to],
                hostname=server.host,
                port=server.port,
                username=server.username,
                password=server.password,
                use_tls=server.use_tls,
                start_tls=server.starttls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            refused = error.recipients[0]
            return _smtp_result(refused.code, refused.message, secrets)
        except aiosmtplib.SMTPResponseException as error:
            return _smtp_result(error.code, error.message, secrets)
        except aiosmtplib.SMTPNotSupported as error:
            return SendResult(None, None, error=scrub(f"SMTP: {error}", secrets))
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            message_text = f"SMTP server did not answer within {self.timeout:g} s"
            return SendResult(None, None, error=message_text, retryable=True)
        except (aiosmtplib.SMTPException, OSError) as error:
            text = f"SMTP: {type(error).__name__}: {error}"
            return SendResult(None, None, error=scrub(text, secrets), retryable=True)
        if errors:  # the one recipient refused
            refused_response = next(iter(errors.values()))
            return _smtp_result(refused_response.code, refused_response.message, secrets)
        return SendResult(message_id_header(message_id), 250)
