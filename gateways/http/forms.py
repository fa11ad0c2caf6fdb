"""Hosted lead forms: `/v1/lead-forms` to manage them, public `/forms/{formKey}` HTML pages."""

from __future__ import annotations

from html import escape
from typing import Annotated, Any
from urllib.parse import urlsplit
from uuid import UUID

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import Field, ValidationError

from domain.attribution import ATTRIBUTION_KEYS
from domain.forms import (
    HONEYPOT,
    MAX_FIELDS,
    SUBMISSION_TOKEN,
    FormField,
    FormSettings,
    InputType,
    LeadForm,
    honeypot_filled,
    read_submission,
)
from domain.leads import WireModel
from domain.workspaces import Permission
from gateways.http.auth import engine_of, requires, workspace_of
from gateways.http.errors import ApiError, JsonResponse
from gateways.http.payloads import parse_form, validation_error
from gateways.http.query import StrictQuery
from handlers import forms as commands
from handlers.forms import FormNotFound, form_by_key, new_submission_token, submit_form
from handlers.payloads import is_form
from handlers.workspaces import Principal

log = structlog.get_logger("leadlog.forms")

router = APIRouter(tags=["lead forms"])

Viewer = Annotated[Principal, Depends(requires(Permission.LEADS_VIEW))]
Manager = Annotated[Principal, Depends(requires(Permission.LEADS_MANAGE))]


# ---- managing forms (JSON, Bearer token) -----------------------------------------------


class FormPatch(WireModel):
    """Any of a form's settings; what is left out stays as it was."""

    name: str | None = None
    fields: list[FormField] | None = Field(default=None, max_length=MAX_FIELDS)
    thank_you_message: str | None = None
    redirect_url: str | None = None
    campaign_id: UUID | None = None
    submit_label: str | None = None
    active: bool | None = None


def public_path(form: LeadForm) -> str:
    return f"/forms/{form.form_key}"


def embed_snippet(form: LeadForm, base_url: str) -> str:
    src = base_url.rstrip("/") + public_path(form)
    return (
        f'<iframe src="{escape(src)}" title="{escape(form.settings.name)}" '
        'style="width:100%;min-height:640px;border:0" loading="lazy"></iframe>'
    )


def form_json(form: LeadForm, request: Request, position: int | None = None) -> dict[str, Any]:
    settings = form.settings.model_dump(mode="json", by_alias=True, exclude_none=False)
    settings["fields"] = [
        f.model_dump(mode="json", by_alias=True, exclude_none=True) for f in form.settings.fields
    ]
    data: dict[str, Any] = {
        "id": str(form.id),
        "formKey": form.form_key,
        "url": public_path(form),
        "embed": embed_snippet(form, str(request.base_url)),
        **settings,
        "createdAt": form.created_on.isoformat(),
        "updatedAt": form.modified_on.isoformat(),
    }
    if position is not None:
        data["position"] = position
    return data


async def _found(request: Request, caller: Principal, form_id: UUID) -> LeadForm:
    try:
        return await commands.get_form(
            engine_of(request).store, workspace_of(caller, request), form_id
        )
    except FormNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None


@router.post("/v1/lead-forms", status_code=201)
async def create_form(body: FormSettings, request: Request, caller: Manager) -> JsonResponse:
    """Create a hosted form; the answer carries its public `url` and an `embed` iframe snippet."""
    workspace_id = workspace_of(caller, request)
    engine = engine_of(request)
    await engine.intake.region_of(workspace_id)  # 404 for an unknown workspace
    form, position = await commands.create_form(engine.store, workspace_id, body)
    return JsonResponse(form_json(form, request, position), status_code=201)


@router.get("/v1/lead-forms", dependencies=[StrictQuery])
async def list_forms(request: Request, caller: Viewer) -> JsonResponse:
    forms = await commands.list_forms(engine_of(request).store, workspace_of(caller, request))
    return JsonResponse({"items": [form_json(f, request) for f in forms], "total": len(forms)})


@router.get("/v1/lead-forms/{form_id}", dependencies=[StrictQuery])
async def get_form(form_id: UUID, request: Request, caller: Viewer) -> JsonResponse:
    return JsonResponse(form_json(await _found(request, caller, form_id), request))


@router.patch("/v1/lead-forms/{form_id}")
async def update_form(
    form_id: UUID, body: FormPatch, request: Request, caller: Manager
) -> JsonResponse:
    """Change any settings; `redirectUrl: null` goes back to the thank-you page."""
    await _found(request, caller, form_id)
    changes = body.model_dump(exclude_unset=True)
    try:
        form, position = await commands.update_form(
            engine_of(request).store, workspace_of(caller, request), form_id, changes
        )
    except ValidationError as error:
        raise validation_error(error, "form") from None
    return JsonResponse(form_json(form, request, position))


@router.post("/v1/lead-forms/{form_id}/regenerate-key")
async def regenerate_key(form_id: UUID, request: Request, caller: Manager) -> JsonResponse:
    """A new public key; the old URL answers 404 from now on."""
    await _found(request, caller, form_id)
    form, position = await commands.rotate_form_key(
        engine_of(request).store, workspace_of(caller, request), form_id
    )
    return JsonResponse(form_json(form, request, position))


@router.delete("/v1/lead-forms/{form_id}")
async def delete_form(form_id: UUID, request: Request, caller: Manager) -> JsonResponse:
    """The form stops answering; the leads it brought in stay."""
    await _found(request, caller, form_id)
    position = await commands.delete_form(
        engine_of(request).store, workspace_of(caller, request), form_id
    )
    return JsonResponse({"id": str(form_id), "deleted": True, "position": position})


# ---- the public page (HTML) ------------------------------------------------------------

_STYLE = """
*,*::before,*::after{box-sizing:border-box}
body{margin:0;font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1a1a1a;background:#fff}
main{max-width:36rem;margin:0 auto;padding:1.5rem 1rem}
h1{font-size:1.75rem;line-height:1.2;margin:0 0 1rem}
.field{margin:0 0 1.25rem}
label{display:block;font-weight:600;margin-bottom:.25rem}
.req{font-weight:400}
input,textarea{display:block;width:100%;font:inherit;padding:.5rem .625rem;
border:2px solid #555;border-radius:4px;background:#fff;color:inherit}
textarea{min-height:8rem;resize:vertical}
.invalid input,.invalid textarea{border-color:#b3261e;border-width:3px}
.error-message{color:#b3261e;font-weight:600;margin:0 0 .25rem}
.error-summary{border:4px solid #b3261e;padding:1rem;margin:0 0 1.5rem}
.error-summary h2{font-size:1.25rem;margin:0 0 .5rem}
.error-summary a{color:#b3261e;font-weight:600}
button{font:inherit;font-weight:600;padding:.625rem 1.25rem;border:0;border-radius:4px;
background:#1d4ed8;color:#fff;cursor:pointer}
button:hover{background:#1e40af}
a:focus-visible,input:focus-visible,textarea:focus-visible,button:focus-visible,
.error-summary:focus-visible{outline:3px solid #fd0;outline-offset:0;box-shadow:0 0 0 6px #0b0c0c}
.visually-hidden{position:absolute!important;width:1px;height:1px;margin:-1px;padding:0;
overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}
.hp{position:absolute;left:-10000px;top:auto;width:1px;height:1px;overflow:hidden}
@media (prefers-reduced-motion:no-preference){button{transition:background .15s}}
"""


def _page(title: str, body: str, status: int, form_action: str = "") -> HTMLResponse:
    html = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    # No scripts at all; the page may be framed anywhere (that is what embedding means).
    policy = (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        f"form-action 'self'{form_action}; frame-ancestors *"
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": policy,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
        },
    )


def message_page(status: int, heading: str, text: str) -> HTMLResponse:
    body = f"<h1>{escape(heading)}</h1>\n<p>{escape(text)}</p>"
    return _page(heading, body, status)


def not_found_page() -> HTMLResponse:
    return message_page(404, "Form not found", "This form does not exist or is no longer open.")


def _field_html(spec: FormField, value: str, error: str | None) -> str:
    key = escape(spec.key)
    ident = f"field-{key}"
    attrs = [f'id="{ident}"', f'name="{key}"']
    if spec.input_type is not InputType.TEXTAREA:
        attrs.append(f'type="{spec.input_type.value}"')
    if spec.autofill:
        attrs.append(f'autocomplete="{escape(spec.autofill)}"')
    if spec.input_type is InputType.EMAIL:
        attrs.append('spellcheck="false"')
    attrs.append(f'maxlength="{spec.max_length}"')
    if spec.required:
        attrs.append('required aria-required="true"')
    if error:
        attrs.append(f'aria-invalid="true" aria-describedby="{ident}-error"')
    required = ' <span class="req">(required)</span>' if spec.required else ""
    parts = [
        f'<div class="field{" invalid" if error else ""}">',
        f'<label for="{ident}">{escape(spec.shown_label)}{required}</label>',
    ]
    if error:
        parts.append(
            f'<p class="error-message" id="{ident}-error">'
            f'<span class="visually-hidden">Error: </span>{escape(error)}</p>'
        )
    if spec.input_type is InputType.TEXTAREA:
        parts.append(f'<textarea {" ".join(attrs)} rows="6">{escape(value)}</textarea>')
    else:
        parts.append(f'<input {" ".join(attrs)} value="{escape(value)}">')
    parts.append("</div>")
    return "\n".join(parts)


def form_page(
    form: LeadForm,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    attribution: dict[str, str] | None = None,
    token: str | None = None,
) -> HTMLResponse:
    settings = form.settings
    values = values or {}
    errors = errors or {}
    parts = [f"<h1>{escape(settings.name)}</h1>"]
    if errors:
        items = "\n".join(
            f'<li><a href="#field-{escape(key)}">{escape(message)}</a></li>'
            for key, message in errors.items()
        )
        parts.append(
            '<div class="error-summary" role="alert" aria-labelledby="error-summary-title" '
            'tabindex="-1" autofocus>\n<h2 id="error-summary-title">There is a problem</h2>\n'
            f"<ul>\n{items}\n</ul>\n</div>"
        )
    parts.append(
        f'<form method="post" action="{escape(public_path(form))}" '
        'accept-charset="utf-8" novalidate>'
    )
    parts.extend(
        _field_html(spec, values.get(spec.key, ""), errors.get(spec.key))
        for spec in settings.fields
    )
    # A trap for bots: out of sight, out of the tab order, never autofilled.
    parts.append(
        '<div class="hp" aria-hidden="true">'
        f'<label for="field-{HONEYPOT}">Leave this field empty</label>'
        f'<input id="field-{HONEYPOT}" name="{HONEYPOT}" type="text" tabindex="-1" '
        'autocomplete="off" value=""></div>'
    )
    hidden = {SUBMISSION_TOKEN: token or new_submission_token(), **(attribution or {})}
    parts.extend(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in hidden.items()
    )
    parts.append(f'<button type="submit">{escape(settings.submit_label)}</button>\n</form>')
    title = f"Error: {settings.name}" if errors else settings.name
    status = 422 if errors else 200
    return _page(title, "\n".join(parts), status, _redirect_source(form))


def _redirect_source(form: LeadForm) -> str:
    # Browsers apply form-action to the redirect that follows a POST.
    url = form.settings.redirect_url
    if not url:
        return ""
    parts = urlsplit(url)
    return f" {parts.scheme}://{parts.netloc}"


def thanks_page(form: LeadForm) -> Response:
    if form.settings.redirect_url:
        return RedirectResponse(form.settings.redirect_url, status_code=303)
    message = escape(form.settings.thank_you_message).replace("\n", "<br>\n")
    body = f'<h1>{escape(form.settings.name)}</h1>\n<p role="status">{message}</p>'
    return _page(form.settings.name, body, 200)


def _attribution(source: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in ATTRIBUTION_KEYS:
        value = source.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            found[key] = value.strip()[:500]
    return found


@router.get("/forms/{form_key:path}", response_class=HTMLResponse)
async def show_form(form_key: str, request: Request) -> HTMLResponse:
    """The hosted form. Embed it with the `embed` snippet from `/v1/lead-forms`:
    `<iframe src="https://<host>/forms/<formKey>" title="<form name>"></iframe>`.
    UTM parameters and click ids in the page URL are kept with the lead."""
    form = await form_by_key(engine_of(request).store, form_key)
    if form is None:
        return not_found_page()
    return form_page(form, attribution=_attribution(request.query_params))


@router.post("/forms/{form_key:path}", response_class=HTMLResponse)
async def post_form(form_key: str, request: Request) -> Response:
    """A form-encoded submission: thank-you page or 303 to the form's redirect; 422 with the
    form again (values kept, errors listed) when a required field is missing."""
    engine = engine_of(request)
    form = await form_by_key(engine.store, form_key)
    if form is None:
        return not_found_page()
    if not is_form(request.headers.get("content-type")):
        return message_page(
            415, "Unsupported submission", "Send the form as application/x-www-form-urlencoded."
        )
    try:
        submitted = parse_form(await request.body())
    except ApiError as error:
        return message_page(error.status, "The form could not be read", error.message)
    if honeypot_filled(submitted):
        log.info(
            "form honeypot filled",
            form_id=str(form.id),
            workspace_id=str(form.workspace_id),
            client=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent", "")[:200],
        )
        return thanks_page(form)
    reading = read_submission(form.settings, submitted)
    token = submitted.get(SUBMISSION_TOKEN)
    token = token if isinstance(token, str) else None
    if not reading.valid:
        return form_page(
            form,
            values=reading.values,
            errors=reading.errors,
            attribution=_attribution(submitted),
            token=token,
        )
    try:
        receipt = await submit_form(engine.intake, form, reading, token)
    except ValidationError as error:
        problems = "; ".join(str(e["msg"]) for e in error.errors(include_url=False))
        return message_page(422, "The form could not be sent", problems)
    log.info(
        "form submitted",
        form_id=str(form.id),
        lead_id=str(receipt.lead_id),
        request_number=receipt.request_id,
        replayed=receipt.replayed,
    )
    return thanks_page(form)
