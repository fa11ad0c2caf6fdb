"""The web app's routes: sign-in and sign-out, and the board."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from urllib.parse import urlencode
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from domain.users import InvalidUser, user_email
from domain.users import User as Person
from domain.workspaces import Workspace
from gateways.consumers.read_models import ViewBehind
from gateways.web.board import STATUSES, UNASSIGNED, BoardQuery, load_board, more_cards
from gateways.web.pages import page
from gateways.web.rate_limit import Limit
from gateways.web.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SignedIn,
    check_csrf,
    form_fields,
    require_user,
    signed_in_user,
    web_of,
)
from handlers import users as commands

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHOICE_SECONDS = 300


async def csrf_guard(request: Request) -> None:
    """Every state-changing request of the signed-in pages carries its session's CSRF
    token; a page router gets this as a dependency, so a new route cannot forget it."""
    if request.method not in SAFE_METHODS:
        await check_csrf(request, await require_user(request))


public = APIRouter(include_in_schema=False)
pages = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])

Signed = Annotated[SignedIn, Depends(require_user)]


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a URL)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---- sign-in -------------------------------------------------------------------------------


def _login_page(
    request: Request,
    *,
    email: str = "",
    next_path: str = "/",
    error: str | None = None,
    status_code: int = 200,
    choices: list[tuple[str, str]] | None = None,
    choice: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    web = web_of(request)
    nonce, new = web.login_nonce(request)
    response = page(
        request,
        "login.html",
        {
            "email": email,
            "next": next_path,
            "error": error,
            "csrf_token": web.login_token(nonce),
            "csrf_field": CSRF_FIELD,
            "choices": choices or [],
            "choice": choice,
        },
        status_code=status_code,
        headers=headers,
    )
    if new:
        web.set_cookie(response, LOGIN_COOKIE, nonce, max_age=3600)
    return response


@public.get("/login")
async def login_form(request: Request) -> Response:
    next_path = local_path(request.query_params.get("next"))
    if await signed_in_user(request) is not None:
        return _see_other(next_path)
    return _login_page(request, next_path=next_path)


@public.post("/login")
async def login(request: Request) -> Response:
    """Sign in by email and password. An email may belong to users of several workspaces:
    the password is checked against each; one match signs in, several ask which
    workspace (the choice is carried by a signed, short-lived list of the matched users,
    never by the password)."""
    web = web_of(request)
    form = await form_fields(request)

    def field(name: str, limit: int = 2048) -> str:
        return form.get(name, "")[:limit]

    next_path = local_path(field("next"))
    typed_email = field("email", 320).strip()
    if not web.check_login_token(request, field(CSRF_FIELD)):
        return _login_page(
            request,
            email=typed_email,
            next_path=next_path,
            error="The sign-in form expired; please try again.",
            status_code=403,
        )
    try:
        email = user_email(typed_email)
    except InvalidUser:
        email = typed_email.lower()
    address = request.client.host if request.client else "unknown"
    email_key, address_key = f"email:{email}", f"address:{address}"
    settings = web.settings
    retry = await web.limiter.retry_after(
        [
            Limit(email_key, settings.sign_in_failures_per_email),
            Limit(address_key, settings.sign_in_failures_per_address),
        ]
    )
    if retry is not None:
        minutes = max(1, round(retry / 60))
        return _login_page(
            request,
            email=typed_email,
            next_path=next_path,
            error=f"Too many failed sign-ins. Try again in about {minutes} minute(s).",
            status_code=429,
            headers={"Retry-After": str(retry)},
        )
    store = web.engine.store
    choice, workspace = field("choice"), field("workspace", 36)
    if choice:
        # The second step: the password was checked by the first; which workspace?
        listed = web.signer.unsign("choice", choice) or ""
        matched = []
        for user_id in listed.split(","):
            try:
                user = await store.load(Person, UUID(user_id))
            except ValueError:
                continue
            if user is not None and user.active and str(user.workspace_id) == workspace:
                matched.append(user)
    else:
        candidates = await web.directory.candidates(email)
        matched = await commands.verify_password(
            store, web.hasher, candidates, email, field("password")
        )
    if not matched:
        await web.limiter.failed([email_key, address_key])
        return _login_page(
            request,
            email=typed_email,
            next_path=next_path,
            error="The email or the password is not right.",
            status_code=401,
        )
    if len(matched) > 1:
        names = []
        for user in matched:
            ws = await store.load(Workspace, user.workspace_id)
            names.append((str(user.workspace_id), ws.name if ws else str(user.workspace_id)))
        signed_choice = web.signer.sign(
            "choice", ",".join(str(u.id) for u in matched), CHOICE_SECONDS
        )
        return _login_page(
            request,
            email=typed_email,
            next_path=next_path,
            choices=sorted(names, key=lambda n: n[1].casefold()),
            choice=signed_choice,
        )
    user = matched[0]
    await web.limiter.succeeded(email_key)
    session, _ = await commands.start_session(
        store, user, datetime.now(UTC), timedelta(seconds=web.session_seconds)
    )
    response = _see_other(next_path)
    web.set_cookie(
        response, SESSION_COOKIE, web.session_cookie(session.id), int(web.session_seconds)
    )
    web.clear_cookie(response, LOGIN_COOKIE)
    return response


@pages.post("/logout")
async def logout(request: Request, signed: Signed) -> Response:
    """End the session (in the log, so the cookie stops working everywhere) and forget it."""
    web = web_of(request)
    await commands.end_session(web.engine.store, signed.session_id)
    response = _see_other("/login")
    web.clear_cookie(response, SESSION_COOKIE)
    return response


# ---- the board -----------------------------------------------------------------------------


@pages.get("/")
@pages.get("/board")
async def board(request: Request, signed: Signed) -> Response:
    web = web_of(request)
    query = BoardQuery.of(request.query_params)
    try:
        shown = await load_board(web.engine, signed.workspace_id, query)
    except ViewBehind as error:
        return page(
            request,
            "error.html",
            {"signed": signed, "title": "The board is not ready", "message": str(error)},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return page(
        request,
        "board.html",
        {
            "signed": signed,
            "board": shown,
            "query": query,
            "statuses": STATUSES,
            "unassigned": UNASSIGNED,
            "more_url": lambda column: (
                "/board/cards?"
                + urlencode(
                    query.params(
                        pipeline=str(shown.pipeline.id),
                        stage=str(column.stage_id),
                        cursor=column.next_cursor,
                    )
                )
            ),
        },
    )


@pages.get("/board/cards")
async def board_cards(request: Request, signed: Signed) -> Response:
    """The next cards of one column ("load more"): a fragment htmx puts in place of the
    button that asked for it, with the next button if there are more."""
    web = web_of(request)
    query = BoardQuery.of(request.query_params)
    try:
        stage_id = UUID(request.query_params.get("stage", ""))
    except ValueError:
        return Response("no such column", status_code=404)
    found = await more_cards(
        web.engine, signed.workspace_id, query, stage_id, request.query_params.get("cursor", "")
    )
    if found is None:
        return Response("no such column or cursor", status_code=404)
    column, users = found
    return page(
        request,
        "_cards.html",
        {
            "column": column,
            "users": users,
            "more_url": "/board/cards?"
            + urlencode(query.params(stage=str(column.stage_id), cursor=column.next_cursor or "")),
        },
    )
