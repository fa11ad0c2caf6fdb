"""Local Twilio and WhatsApp Cloud API servers, and their callbacks, in the real wire formats."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx

from domain.provider_signatures import hub_signature, twilio_signature
from tests.gateways.outbound.fake_buyers import Answer, FakeBuyer, Seen

TWILIO_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
WHATSAPP_PATH = re.compile(r"^/(v\d+\.\d+)/([^/]+)/messages$")
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
WA_NUMBER = re.compile(r"^\+?[1-9]\d{6,14}$")

Hook = Callable[[Seen], Answer | None]


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _wamid() -> str:
    return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()


def _json_answer(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Answer:
    return Answer(status=status, body=json.dumps(body), headers=dict(headers or {}))


def basic_auth(seen: Seen) -> tuple[str | None, str | None]:
    """(user, password) of a request's HTTP basic auth, (None, None) without one."""
    scheme, _, encoded = seen.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None, None
    return user, password


class _RateLimit:
    """At most `per_second` requests in any one-second window."""

    def __init__(self, per_second: int | None) -> None:
        self.per_second = per_second
        self.times: deque[float] = deque()

    def retry_after(self) -> int | None:
        """None: the request may pass (and is counted); else whole seconds to wait."""
        if self.per_second is None:
            return None
        now = time.monotonic()
        while self.times and now - self.times[0] >= 1.0:
            self.times.popleft()
        if len(self.times) >= self.per_second:
            return max(1, math.ceil(1.0 - (now - self.times[0])))
        self.times.append(now)
        return None


class _FakeProvider:
    """A FakeBuyer server whose answers come from a hook, a script, then the provider."""

    def __init__(self, rate_limit: int | None) -> None:
        self.server = FakeBuyer(self._handle)
        self.limit = _RateLimit(rate_limit)
        self.hook: Hook | None = None
        self.script: deque[Answer] = deque()
        self.rate_limited = 0

    async def __aenter__(self) -> Any:
        await self.server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.__aexit__(*exc)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def rate_limit(self) -> int | None:
        return self.limit.per_second

    @rate_limit.setter
    def rate_limit(self, per_second: int | None) -> None:
        self.limit = _RateLimit(per_second)

    def answer(self, hook: Hook | None) -> None:
        """Let `hook` answer each request first (None from it: answer as the provider)."""
        self.hook = hook

    def _handle(self, seen: Seen) -> Answer:
        if self.hook is not None:
            answer = self.hook(seen)
            if answer is not None:
                self._record(seen, answer, None)
                return answer
        wait = self.limit.retry_after()
        if wait is not None:
            self.rate_limited += 1
            answer = self._rate_limited(wait)
        elif self.script:
            answer = self.script.popleft()
        else:
            answer, provider_id = self._serve(seen)
            self._record(seen, answer, provider_id)
            return answer
        self._record(seen, answer, None)
        return answer

    def _rate_limited(self, wait: int) -> Answer:
        raise NotImplementedError

    def _serve(self, seen: Seen) -> tuple[Answer, str | None]:
        raise NotImplementedError

    def _record(self, seen: Seen, answer: Answer, provider_id: str | None) -> None:
        raise NotImplementedError


# ---- Twilio -----------------------------------------------------------------------------------


def twilio_error(
    status: int, code: int, message: str, headers: Mapping[str, str] | None = None
) -> Answer:
    """Twilio's error body: `{code, message, more_info, status}`."""
    return _json_answer(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        headers,
    )


@dataclass(frozen=True)
class TwilioRequest:
    """One request Twilio received, parsed."""

    seen: Seen
    account_sid: str | None
    form: dict[str, str]
    auth_user: str | None
    auth_password: str | None
    idempotency_token: str | None
    status: int
    sid: str | None

    @property
    def headers(self) -> dict[str, str]:
        return self.seen.headers


class FakeTwilio(_FakeProvider):
    """Twilio's Messages API: `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.

    Checks basic auth against its account, validates `To`/`From`/`Body` as Twilio does
    (21211 invalid To, 21602 no body, ...), answers 201 with a message resource (`SM...`
    sid), repeats the first answer for a repeated `I-Twilio-Idempotency-Token`, and past
    `rate_limit` requests per second answers 429 (20429) with `Retry-After`.
    """

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        *,
        rate_limit: int | None = None,
    ) -> None:
        super().__init__(rate_limit)
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.requests: list[TwilioRequest] = []
        self.messages: dict[str, TwilioRequest] = {}
        self._by_token: dict[str, Answer] = {}

    async def __aenter__(self) -> FakeTwilio:
        await super().__aenter__()
        return self

    @property
    def credentials(self) -> dict[str, str]:
        return {"accountSid": self.account_sid, "authToken": self.auth_token}

    def fail_next(
        self,
        code: int = 21211,
        message: str | None = None,
        *,
        status: int = 400,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `times` requests with Twilio's error `code` (21211 invalid To by
        default; 30003 unreachable, 20429 too many requests, 20500 internal error...)."""
        text = message or {
            21211: "Invalid 'To' Phone Number",
            20429: "Too Many Requests",
            20500: "An internal server error has occurred",
        }.get(code, f"Error {code}")
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        for _ in range(times):
            self.script.append(twilio_error(status, code, text, headers))

    def _rate_limited(self, wait: int) -> Answer:
        return twilio_error(429, 20429, "Too Many Requests", headers={"Retry-After": str(wait)})

    def _serve(self, seen: Seen) -> tuple[Answer, str | None]:
        match = TWILIO_PATH.match(seen.path.split("?", 1)[0])
        if seen.method != "POST" or match is None:
            return twilio_error(
                404, 20404, f"The requested resource {seen.path} was not found"
            ), None
        user, password = basic_auth(seen)
        if (user, password) != (self.account_sid, self.auth_token) or match[1] != user:
            return twilio_error(401, 20003, "Authenticate"), None
        token = seen.headers.get("i-twilio-idempotency-token")
        if token and token in self._by_token:
            again = self._by_token[token]
            return again, json.loads(again.body)["sid"]
        if not seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return twilio_error(400, 20001, "Request must be form-encoded"), None
        form = seen.form()
        to, body = form.get("To", ""), form.get("Body", "")
        service = form.get("MessagingServiceSid")
        sender = form.get("From", "") or service or ""
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required."), None
        if not E164.match(to):
            return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}"), None
        if not sender:
            return twilio_error(400, 21603, "A 'From' phone number is required."), None
        if not body:
            return twilio_error(400, 21602, "Message body is required."), None
        if len(body) > 1600:
            return twilio_error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            ), None
        sid = _sid("SM")
        now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From") or None,
            "messaging_service_sid": service,
            "num_media": "0",
            "num_segments": str(max(1, math.ceil(len(body) / 153))),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        answer = _json_answer(201, resource)
        if token:
            self._by_token[token] = answer
        return answer, sid

    def _record(self, seen: Seen, answer: Answer, provider_id: str | None) -> None:
        match = TWILIO_PATH.match(seen.path.split("?", 1)[0])
        user, password = basic_auth(seen)
        form = seen.form() if seen.body else {}
        request = TwilioRequest(
            seen=seen,
            account_sid=match[1] if match else None,
            form=form,
            auth_user=user,
            auth_password=password,
            idempotency_token=seen.headers.get("i-twilio-idempotency-token"),
            status=answer.status,
            sid=provider_id,
        )
        self.requests.append(request)
        if provider_id and provider_id not in self.messages:
            self.messages[provider_id] = request

    @property
    def sent(self) -> list[TwilioRequest]:
        """The messages accepted, once each, in order."""
        return list(self.messages.values())

    async def report(
        self, client: httpx.AsyncClient, sid: str, status: str, error_code: int | None = None
    ) -> httpx.Response:
        """Post a status callback for message `sid` to its `StatusCallback`, as Twilio does."""
        request = self.messages[sid]
        return await twilio_status(
            client,
            request.form["StatusCallback"],
            self.auth_token,
            sid,
            status,
            error_code,
            account_sid=self.account_sid,
            from_=request.form["From"],
            to=request.form["To"],
        )


async def _post_twilio(
    client: httpx.AsyncClient,
    url: str,
    auth_token: str,
    params: dict[str, str],
    signed_url: str | None,
) -> httpx.Response:
    signature = twilio_signature(auth_token, signed_url or url, params)
    return await client.post(
        url,
        content=urlencode(params),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
            "i-twilio-idempotency-token": secrets.token_hex(16),
            "user-agent": "TwilioProxy/1.1",
        },
    )


async def twilio_status(
    client: httpx.AsyncClient,
    url: str,
    auth_token: str,
    sid: str,
    status: str,
    error_code: int | str | None = None,
    *,
    account_sid: str = "AC" + "0" * 32,
    from_: str = "+15005550006",
    to: str = "+15005550010",
    signed_url: str | None = None,
) -> httpx.Response:
    """A message status callback as Twilio posts it: form-encoded, signed over `url` (or
    `signed_url`, the URL Twilio was given, when the request goes elsewhere)."""
    params = {
        "SmsSid": sid,
        "SmsStatus": status,
        "MessageStatus": status,
        "To": to,
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    return await _post_twilio(client, url, auth_token, params, signed_url)


async def twilio_inbound(
    client: httpx.AsyncClient,
    url: str,
    auth_token: str,
    from_: str,
    body: str,
    *,
    to: str = "+15005550006",
    account_sid: str = "AC" + "0" * 32,
    sid: str | None = None,
    signed_url: str | None = None,
) -> httpx.Response:
    """An incoming SMS as Twilio posts it to a number's messaging webhook."""
    sid = sid or _sid("SM")
    params = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "US",
        "To": to,
        "ToZip": "",
        "NumSegments": "1",
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": "2010-04-01",
    }
    return await _post_twilio(client, url, auth_token, params, signed_url)


# ---- WhatsApp Cloud API ---------------------------------------------------------------------


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
    kind: str = "OAuthException",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """The Graph API's error body: `{"error": {message, type, code, error_subcode?,
    error_data?, fbtrace_id}}`."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = secrets.token_urlsafe(16)
    return _json_answer(status, {"error": error}, headers)


def whatsapp_error(code: int, title: str, details: str | None = None) -> dict[str, Any]:
    """One entry of a status webhook's `errors`."""
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details or title},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }


@dataclass(frozen=True)
class WhatsAppRequest:
    """One request the Cloud API received, parsed."""

    seen: Seen
    version: str | None
    phone_number_id: str | None
    body: dict[str, Any]
    bearer: str | None
    status: int
    wamid: str | None

    @property
    def headers(self) -> dict[str, str]:
        return self.seen.headers

    @property
    def to(self) -> str:
        return str(self.body.get("to", ""))

    @property
    def parameters(self) -> list[str]:
        """The template's body parameters, as text."""
        components = (self.body.get("template") or {}).get("components") or []
        return [
            str(p.get("text"))
            for c in components
            if c.get("type") == "body"
            for p in c.get("parameters") or []
        ]


@dataclass
class _Template:
    parameters: int
    languages: set[str] = field(default_factory=lambda: {"en", "en_US"})


class FakeWhatsApp(_FakeProvider):
    """The Cloud API's `POST /{version}/{phone-number-id}/messages`.

    Checks the bearer token and phone number id, validates the body (131008 missing
    parameter, 131009 bad number; with `templates` given, 132001 unknown template and 132000
    wrong parameter count), answers 200 with `contacts` and a `wamid...` id, and past
    `rate_limit` requests per second answers 429 with code 130429 and `Retry-After`.
    """

    def __init__(
        self,
        phone_number_id: str | None = None,
        access_token: str | None = None,
        app_secret: str | None = None,
        verify_token: str | None = None,
        *,
        rate_limit: int | None = None,
        templates: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(rate_limit)
        self.phone_number_id = phone_number_id or str(
            100_000_000_000_000 + secrets.randbelow(10**14)
        )
        self.access_token = access_token or "EAAG" + secrets.token_urlsafe(32)
        self.app_secret = app_secret or secrets.token_hex(16)
        self.verify_token = verify_token or secrets.token_urlsafe(12)
        self.business_account_id = str(200_000_000_000_000 + secrets.randbelow(10**14))
        self.display_phone_number = "15550783881"
        self.templates = (
            None if templates is None else {n: _Template(c) for n, c in templates.items()}
        )
        self.requests: list[WhatsAppRequest] = []
        self.messages: dict[str, WhatsAppRequest] = {}

    async def __aenter__(self) -> FakeWhatsApp:
        await super().__aenter__()
        return self

    @property
    def credentials(self) -> dict[str, str]:
        return {
            "phoneNumberId": self.phone_number_id,
            "accessToken": self.access_token,
            "appSecret": self.app_secret,
            "verifyToken": self.verify_token,
        }

    def fail_next(
        self,
        code: int = 131026,
        message: str | None = None,
        *,
        status: int = 400,
        details: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next `times` requests with Graph error `code` (131026 undeliverable by
        default; 130429 rate limit, 131056 pair rate limit, 131000 something went wrong...)."""
        text = message or {
            131026: "(#131026) Message undeliverable",
            130429: "(#130429) Rate limit hit",
            131056: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            131000: "(#131000) Something went wrong",
        }.get(code, f"(#{code}) Error")
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        for _ in range(times):
            self.script.append(graph_error(status, code, text, details=details, headers=headers))

    def _rate_limited(self, wait: int) -> Answer:
        return graph_error(
            429,
            130429,
            "(#130429) Rate limit hit",
            details="Cloud API message throughput has been reached.",
            headers={"Retry-After": str(wait)},
        )

    def _serve(self, seen: Seen) -> tuple[Answer, str | None]:
        match = WHATSAPP_PATH.match(seen.path.split("?", 1)[0])
        if seen.method != "POST" or match is None:
            return graph_error(400, 2500, "Unknown path components", kind="OAuthException"), None
        scheme, _, token = seen.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.access_token:
            return graph_error(
                401, 190, "Invalid OAuth access token - Cannot parse access token"
            ), None
        if match[2] != self.phone_number_id:
            return graph_error(
                400,
                100,
                f"Unsupported post request. Object with ID '{match[2]}' does not exist, cannot "
                "be loaded due to missing permissions, or does not support this operation.",
                subcode=33,
                kind="GraphMethodException",
            ), None
        try:
            body = seen.json()
        except ValueError:
            return graph_error(400, 100, "(#100) Invalid JSON"), None
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return graph_error(
                400, 100, "(#100) The parameter messaging_product is required."
            ), None
        to = str(body.get("to", ""))
        if not to:
            return graph_error(
                400, 131008, "(#131008) Required parameter is missing", details="to is required"
            ), None
        if not WA_NUMBER.match(to):
            return graph_error(
                400, 131009, "(#131009) Parameter value is not valid", details=f"invalid to: {to}"
            ), None
        problem = self._check_content(body)
        if problem is not None:
            return problem, None
        wamid = _wamid()
        answer = _json_answer(
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            },
        )
        return answer, wamid

    def _check_content(self, body: dict[str, Any]) -> Answer | None:
        kind = body.get("type", "text")
        if kind == "text":
            if not (body.get("text") or {}).get("body"):
                return graph_error(
                    400,
                    131008,
                    "(#131008) Required parameter is missing",
                    details="text.body is required",
                )
            return None
        if kind != "template":
            return graph_error(400, 131051, "(#131051) Unsupported message type")
        template = body.get("template") or {}
        name = template.get("name")
        language = (template.get("language") or {}).get("code")
        if not name or not language:
            return graph_error(
                400,
                131008,
                "(#131008) Required parameter is missing",
                details="template name and language.code are required",
            )
        parameters = [
            p
            for c in template.get("components") or []
            if c.get("type") == "body"
            for p in c.get("parameters") or []
        ]
        if any(p.get("type") == "text" and not str(p.get("text", "")).strip() for p in parameters):
            return graph_error(
                400,
                131008,
                "(#131008) Required parameter is missing",
                details="body parameter text is empty",
            )
        if self.templates is not None:
            known = self.templates.get(name)
            if known is None or language not in known.languages:
                return graph_error(
                    404,
                    132001,
                    "(#132001) Template name does not exist in the translation",
                    details=f"template name ({name}) does not exist in {language}",
                )
            if len(parameters) != known.parameters:
                return graph_error(
                    400,
                    132000,
                    "(#132000) Number of parameters does not match the expected number of params",
                    details=f"body: number of localizable_params ({len(parameters)}) does not "
                    f"match the expected number of params ({known.parameters})",
                )
        return None

    def _record(self, seen: Seen, answer: Answer, provider_id: str | None) -> None:
        match = WHATSAPP_PATH.match(seen.path.split("?", 1)[0])
        scheme, _, token = seen.headers.get("authorization", "").partition(" ")
        try:
            body = seen.json() if seen.body else {}
        except ValueError:
            body = {}
        request = WhatsAppRequest(
            seen=seen,
            version=match[1] if match else None,
            phone_number_id=match[2] if match else None,
            body=body if isinstance(body, dict) else {},
            bearer=token if scheme.lower() == "bearer" else None,
            status=answer.status,
            wamid=provider_id,
        )
        self.requests.append(request)
        if provider_id:
            self.messages[provider_id] = request

    @property
    def sent(self) -> list[WhatsAppRequest]:
        return list(self.messages.values())

    async def report(
        self,
        client: httpx.AsyncClient,
        url: str,
        wamid: str,
        status: str,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> httpx.Response:
        """Post a status webhook for message `wamid` to `url` (the app's webhook URL)."""
        request = self.messages[wamid]
        return await whatsapp_status(
            client,
            url,
            self.app_secret,
            wamid,
            status,
            errors,
            phone_number_id=self.phone_number_id,
            display_phone_number=self.display_phone_number,
            business_account_id=self.business_account_id,
            recipient_id=request.to.lstrip("+"),
            callback_data=request.body.get("biz_opaque_callback_data"),
        )


async def _post_meta(
    client: httpx.AsyncClient, url: str, app_secret: str, payload: Mapping[str, Any]
) -> httpx.Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    sha1 = hmac.new(app_secret.encode(), body, hashlib.sha1).hexdigest()
    return await client.post(
        url,
        content=body,
        headers={
            "content-type": "application/json",
            "x-hub-signature-256": hub_signature(app_secret, body),
            "x-hub-signature": f"sha1={sha1}",
            "user-agent": "facebookexternalua",
        },
    )


def _envelope(
    business_account_id: str,
    phone_number_id: str,
    display_phone_number: str,
    value: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": business_account_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


async def whatsapp_status(
    client: httpx.AsyncClient,
    url: str,
    app_secret: str,
    wamid: str,
    status: str,
    errors: Sequence[Mapping[str, Any]] | None = None,
    *,
    phone_number_id: str = "106540352242922",
    display_phone_number: str = "15550783881",
    business_account_id: str = "102290129340398",
    recipient_id: str = "447700900123",
    callback_data: str | None = None,
    timestamp: int | None = None,
) -> httpx.Response:
    """A status webhook as Meta posts it (`entry[].changes[].value.statuses[]`), signed
    with `X-Hub-Signature-256`."""
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "recipient_id": recipient_id.lstrip("+"),
    }
    if status in ("sent", "delivered"):
        entry["conversation"] = {
            "id": secrets.token_hex(16),
            "origin": {"type": "utility"},
        }
        entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "utility"}
    if callback_data:
        entry["biz_opaque_callback_data"] = callback_data
    if errors:
        entry["errors"] = [dict(e) for e in errors]
    payload = _envelope(
        business_account_id, phone_number_id, display_phone_number, {"statuses": [entry]}
    )
    return await _post_meta(client, url, app_secret, payload)


async def whatsapp_inbound(
    client: httpx.AsyncClient,
    url: str,
    app_secret: str,
    from_: str,
    text: str,
    *,
    phone_number_id: str = "106540352242922",
    display_phone_number: str = "15550783881",
    business_account_id: str = "102290129340398",
    name: str = "Ada Lovelace",
    wamid: str | None = None,
    timestamp: int | None = None,
) -> httpx.Response:
    """An incoming text message as Meta posts it (`value.contacts` and `value.messages`)."""
    number = from_.lstrip("+")
    value = {
        "contacts": [{"profile": {"name": name}, "wa_id": number}],
        "messages": [
            {
                "from": number,
                "id": wamid or _wamid(),
                "timestamp": str(timestamp if timestamp is not None else int(time.time())),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    payload = _envelope(business_account_id, phone_number_id, display_phone_number, value)
    return await _post_meta(client, url, app_secret, payload)


async def whatsapp_verify(
    client: httpx.AsyncClient, url: str, verify_token: str, challenge: str = "1158201444"
) -> httpx.Response:
    """Meta's subscription handshake: `GET ?hub.mode=subscribe&hub.verify_token&hub.challenge`
    (the endpoint answers the challenge, as text, when the token is its own)."""
    return await client.get(
        url,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        },
    )
