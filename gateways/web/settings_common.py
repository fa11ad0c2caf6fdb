"""What the settings pages share: repeated form fields, the manager check, refusals."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request, Response

from domain.workspaces import Permission
from gateways.web.pages import page
from gateways.web.session import SignedIn

MAX_FIELDS = 2000


async def form_lists(request: Request) -> dict[str, list[str]]:
    """An urlencoded form's fields with every value of a repeated name (key/value rows);
    anything else reads as no fields."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        text = (await request.body()).decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return {}
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def one(fields: dict[str, list[str]], name: str, limit: int = 20_000) -> str:
    """The first value of a field, trimmed ("" when absent)."""
    values = fields.get(name) or [""]
    return values[0].strip()[:limit]


def can_manage(signed: SignedIn) -> bool:
    return signed.principal.can(Permission.LEADS_MANAGE)


def refused(request: Request, signed: SignedIn) -> Response:
    """A change asked for by someone whose role may only look: 403, nothing done."""
    return page(
        request,
        "error.html",
        {
            "signed": signed,
            "title": "Not allowed",
            "message": f"Your role ({signed.user.role}) can look at the settings but not "
            "change them, so nothing was changed.",
        },
        status_code=403,
    )


def settings_page(
    request: Request,
    signed: SignedIn,
    template: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> Response:
    return page(
        request,
        template,
        {"signed": signed, "manage": can_manage(signed), "errors": {}, **context},
        status_code=status_code,
    )


def confirm_page(
    request: Request,
    signed: SignedIn,
    *,
    heading: str,
    question: str,
    action: str,
    button: str,
    cancel: str,
) -> Response:
    """The step that asks before something that cannot be undone (a delete, a new key)."""
    return settings_page(
        request,
        signed,
        "settings_confirm.html",
        {
            "question": question,
            "action": action,
            "button": button,
            "cancel": cancel,
            "heading": heading,
        },
    )
