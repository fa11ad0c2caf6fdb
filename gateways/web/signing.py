"""HMAC-signed values for cookies and CSRF tokens, with the key from `servers.secret_key`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """`value.expires.mac`: a value that cannot be forged or extended without the key.
    Each use has its own purpose string, so a token of one kind is never valid as another."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mac(self, purpose: str, value: str) -> str:
        message = f"{purpose}\x00{value}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def sign(self, purpose: str, value: str, lifetime_seconds: float) -> str:
        expires = str(int(time.time() + lifetime_seconds))
        return f"{value}.{expires}.{self.mac(purpose, value + '.' + expires)}"

    def unsign(self, purpose: str, signed: str) -> str | None:
        """The value, when the signature is good and it has not expired; else None."""
        value, _, rest = signed.rpartition(".")
        value, _, expires = value.rpartition(".")
        if not value or not expires.isdigit():
            return None
        if not hmac.compare_digest(rest, self.mac(purpose, value + "." + expires)):
            return None
        if int(expires) < time.time():
            return None
        return value

    def matches(self, purpose: str, value: str, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.mac(purpose, value).encode())
