"""Mounts the web app on the API's FastAPI app: pages, static files, offline API docs."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from gateways.bootstrap import Engine
from gateways.web.dashboard import router as dashboard_router
from gateways.web.drawer import router as drawer_router
from gateways.web.live import live as live_router
from gateways.web.pages import STATIC, page
from gateways.web.routes import pages, public
from gateways.web.session import CsrfRefused, SignInRequired, WebState
from gateways.web.settings import router as settings_router

VENDOR = "/static/vendor"
# The docs pages run FastAPI's inline bootstrap script; everything else comes from here,
# so nothing is fetched from elsewhere (Redoc's bundle links a logo on its CDN: blocked).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def mount_web(app: FastAPI, engine: Engine) -> None:
    """The sign-in page, the board, `/static`, and `/docs` + `/redoc` from vendored assets
    (create the app with `docs_url=None, redoc_url=None`)."""
    app.state.web = WebState(engine)
    app.include_router(public)
    app.include_router(pages)
    app.include_router(dashboard_router)
    app.include_router(drawer_router)
    app.include_router(live_router)
    app.include_router(settings_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(SignInRequired)
    async def sign_in_first(request: Request, _: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = "/login" if target == "/" else f"/login?next={quote(target, safe='/')}"
        if request.headers.get("hx-request"):
            # htmx follows this header with a full page load.
            return Response(status_code=401, headers={"HX-Redirect": login})
        return RedirectResponse(login, status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, _: CsrfRefused) -> Response:
        return page(
            request,
            "error.html",
            {
                "signed": None,
                "title": "Refused",
                "message": "This request did not carry the page's security token, so "
                "nothing was changed. Reload the page and try again.",
            },
            status_code=403,
        )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _offline(
            get_swagger_ui_html(
                openapi_url=app.openapi_url or "/openapi.json",
                title=f"{app.title} — API",
                swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
                swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
                swagger_favicon_url="/static/favicon.svg",
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _offline(
            get_redoc_html(
                openapi_url=app.openapi_url or "/openapi.json",
                title=f"{app.title} — API",
                redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
                redoc_favicon_url="/static/favicon.svg",
                with_google_fonts=False,
            )
        )


def _offline(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response
