"""The web app's state, session cookies, and who a request is signed in as."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl
from uuid import UUID

from fastapi import Request, Response

from domain.users import User
from domain.workspaces import ROLE_PERMISSIONS
from gateways.bootstrap import Engine
from gateways.servers import secret_key
from gateways.web.directory import SignInDirectory
from gateways.web.passwords import Argon2Hasher
from gateways.web.rate_limit import SignInLimiter
from gateways.web.signing import Signer
from handlers import users as commands
from handlers.workspaces import Principal

SESSION_COOKIE = "leadlog_session"
LOGIN_COOKIE = "leadlog_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


class SignInRequired(Exception):
    """The page needs a signed-in user; answered with a redirect to /login."""


class CsrfRefused(Exception):
    """A state-changing request without the CSRF token of its session: 403, nothing done."""


class WebState:
    """What the web app keeps per process: the hasher, the sign-in directory, the limiter,
    and the signing key (read, or generated into the data folder, on first use)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.hasher = Argon2Hasher()
        self.directory = SignInDirectory(engine.store)
        self.limiter = SignInLimiter(engine.pool, engine.settings.sign_in_window_seconds)
        public = (engine.settings.public_url or "").lower()
        self.secure_cookies = public.startswith("https://")
        self._signer: Signer | None = None

    @property
    def signer(self) -> Signer:
        if self._signer is None:
            self._signer = Signer(secret_key(self.settings))
        return self._signer

    @property
    def session_seconds(self) -> float:
        return self.settings.session_hours * 3600

    def set_cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies,
        )

    def clear_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(
            name, path="/", httponly=True, samesite="lax", secure=self.secure_cookies
        )

    # ---- sign-in form: CSRF before there is a session ----------------------------------

    def login_nonce(self, request: Request) -> tuple[str, bool]:
        """The browser's sign-in nonce (from its cookie), or a new one (True: set it)."""
        current = request.cookies.get(LOGIN_COOKIE, "")
        if 20 <= len(current) <= 100 and current.isascii():
            return current, False
        return secrets.token_urlsafe(24), True

    def login_token(self, nonce: str) -> str:
        return self.signer.mac("login-csrf", nonce)

    def check_login_token(self, request: Request, presented: str) -> bool:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        return bool(nonce) and self.signer.matches("login-csrf", nonce, presented)

    # ---- sessions ----------------------------------------------------------------------

    def session_cookie(self, session_id: UUID) -> str:
        return self.signer.sign("session", str(session_id), self.session_seconds)

    def csrf_token(self, session_id: UUID) -> str:
        return self.signer.mac("csrf", str(session_id))


def web_of(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


@dataclass(frozen=True)
class SignedIn:
    """A request's signed-in user: their session, and the principal they act as."""

    session_id: UUID
    user: User
    principal: Principal
    csrf_token: str

    @property
    def workspace_id(self) -> UUID:
        return self.user.workspace_id

    @property
    def actor(self) -> str:
        """How the log names what this person does (`user:<id>`, resolved to their name)."""
        return f"user:{self.user.id}"


def principal_of(user: User) -> Principal:
    return Principal(
        workspace_id=user.workspace_id,
        role=user.role,
        permissions=ROLE_PERMISSIONS[user.role],
        user_id=user.id,
    )


async def signed_in_user(request: Request) -> SignedIn | None:
    """The user the session cookie stands for; None for no, a forged, an expired or an
    ended session, or a deactivated user (checked against the log on every request)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    web = web_of(request)
    value = web.signer.unsign("session", cookie)
    if value is None:
        return None
    try:
        session_id = UUID(value)
    except ValueError:
        return None
    found = await commands.session_user(web.engine.store, session_id, datetime.now(UTC))
    if found is None:
        return None
    _, user = found
    return SignedIn(session_id, user, principal_of(user), web.csrf_token(session_id))


async def require_user(request: Request) -> SignedIn:
    signed = await signed_in_user(request)
    if signed is None:
        raise SignInRequired()
    return signed


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each): the pages post only such
    forms. Anything else, or a body that is not UTF-8, reads as no fields."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        text = (await request.body()).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=100, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return {}
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


async def check_csrf(request: Request, signed: SignedIn) -> None:
    """The session's CSRF token, from the X-CSRF-Token header (htmx) or the form's
    `csrf_token` field; `CsrfRefused` otherwise."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        presented = (await form_fields(request)).get(CSRF_FIELD)
    if not presented or not secrets.compare_digest(presented.encode(), signed.csrf_token.encode()):
        raise CsrfRefused()
