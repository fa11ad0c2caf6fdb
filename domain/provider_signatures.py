"""Provider callback signatures: Twilio's `X-Twilio-Signature` and Meta's `X-Hub-Signature-256`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

HUB_PREFIX = "sha256="
DEFAULT_PORTS = {"https": 443, "http": 80}

Params = Mapping[str, str] | Iterable[tuple[str, str]]


def _pairs(params: Params) -> list[tuple[str, str]]:
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(name), str(value)) for name, value in items]


def twilio_signature(auth_token: str, url: str, params: Params) -> str:
    """Base64 HMAC-SHA1, keyed by the auth token, of the full URL followed by each POST
    parameter's name and value in order of name (a repeated name: its values sorted), as
    Twilio signs its webhooks."""
    by_name: dict[str, set[str]] = {}
    for name, value in _pairs(params):
        by_name.setdefault(name, set()).add(value)
    signed = url + "".join(
        name + value for name in sorted(by_name) for value in sorted(by_name[name])
    )
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, without its port, and with the scheme's default port: proxies add
    or drop the port, and Twilio's own validators accept either (as they do)."""
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return variants
    host = parts.hostname
    if not host:
        return variants
    shown = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if port is not None:
        variants.append(urlunsplit(parts._replace(netloc=prefix + shown)))
    elif parts.scheme in DEFAULT_PORTS:
        netloc = f"{prefix}{shown}:{DEFAULT_PORTS[parts.scheme]}"
        variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def twilio_valid(auth_token: str, url: str, params: Params, signature: str | None) -> bool:
    """Whether `signature` (the `X-Twilio-Signature` header) signs this request, compared in
    constant time."""
    if not signature or not auth_token:
        return False
    given = signature.strip().encode()
    pairs = _pairs(params)
    return any(
        hmac.compare_digest(twilio_signature(auth_token, variant, pairs).encode(), given)
        for variant in _port_variants(url)
    )


def hub_signature(app_secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, keyed by the Meta app secret."""
    return HUB_PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def hub_valid(app_secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` (`X-Hub-Signature-256`) signs `body`, compared in constant time."""
    if not header or not app_secret:
        return False
    given = header.strip()
    if given[: len(HUB_PREFIX)].lower() != HUB_PREFIX:
        return False
    expected = hub_signature(app_secret, body)[len(HUB_PREFIX) :]
    return hmac.compare_digest(expected.encode(), given[len(HUB_PREFIX) :].lower().encode())
