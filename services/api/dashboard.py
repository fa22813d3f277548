"""The operator dashboard: a web page over this API at ``/ui/``, and ``GET /`` for browsers.

The page is a static shell (``web/`` in the repository, built into :data:`STATIC` by
``make dashboard``, which ``make setup`` runs) whose scripts call the documented endpoints with
the token the operator signs in with; nothing here reads the catalog. The token stays in the
browser's session storage and travels in the ``Authorization`` header, never in a URL, so the
page and its files are public: they say nothing about what the catalog holds.

``GET /`` stays the STAC landing page (JSON) for every client except one that prefers HTML to
JSON (a browser following a link), which is sent to ``/ui/``: :class:`_BrowserRoute` matches only
such requests, and the router is included before the landing page's, so JSON clients never see
it. The page's own query string (view, search filters) is read by its scripts, so its routes
are plain Starlette routes, outside the OpenAPI document and the API's parameter check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import Match
from starlette.types import Scope
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from .state import api_state

__all__ = ["STATIC", "prefers_html", "router"]

#: Where ``make dashboard`` puts the built page (git-ignored; ``web/build.mjs`` writes it).
STATIC = Path(__file__).with_name("dashboard_static")

_JSON_TYPES = ("application/json", "application/geo+json")
_MISSING = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>SkyEye Stream: dashboard not built</title></head><body>
<h1>The dashboard is not built</h1>
<p>Run <code>make dashboard</code> (or <code>make setup</code>) in the repository: it installs
the page's packages with <code>npm ci</code> in <code>web/</code> and copies the built files to
<code>services/api/dashboard_static/</code>. The API itself works without it.</p>
</body></html>
"""


def prefers_html(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks HTML strictly above JSON (a browser's, not curl's)."""
    if not accept:
        return False
    ranges = parse_accept_header(accept, MIMEAccept)
    html = ranges.quality("text/html")
    return html > 0 and html > max(ranges.quality(t) for t in _JSON_TYPES)


class _BrowserRoute(APIRoute):
    """A route that matches only requests preferring HTML; others go on to the next route."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """No match unless the request's ``Accept`` header prefers HTML to JSON."""
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        accept = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), None
        )
        if not prefers_html(accept):
            return Match.NONE, {}
        return match, child


router = APIRouter(route_class=_BrowserRoute, include_in_schema=False)


@router.get("/", include_in_schema=False)
def to_dashboard() -> RedirectResponse:
    """A browser opening the API's root is sent to the dashboard."""
    # relative, so the redirect holds behind a proxy serving the API under a prefix
    return RedirectResponse("ui/", status_code=303, headers={"Vary": "Accept"})


def _security_headers(request: Request) -> dict[str, str]:
    """A content policy admitting only this origin (and the tile server, where one is set)."""
    tiles = api_state(request).settings.api.dashboard_tile_url
    images = "'self' blob: data:"
    if tiles:
        parts = urlsplit(tiles)
        if parts.scheme in ("http", "https") and parts.netloc:
            images += f" {parts.scheme}://{parts.netloc}"
    policy = (
        f"default-src 'self'; img-src {images}; connect-src 'self'; style-src 'self'; "
        "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


async def _to_page(request: Request) -> Response:
    return RedirectResponse("ui/", status_code=308)


async def _page(request: Request) -> Response:
    """The page's shell; its query string (view, filters) is read by its scripts."""
    index = STATIC / "index.html"
    if not index.is_file():
        return HTMLResponse(_MISSING, status_code=503, headers={"Retry-After": "3600"})
    return FileResponse(index, media_type="text/html", headers=_security_headers(request))


async def _config(request: Request) -> Response:
    """What the page needs to know of the settings: the base map's tile URL, if any."""
    settings = api_state(request).settings.api
    body: dict[str, Any] = {"tile_url": settings.dashboard_tile_url}
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})


class _Static(StaticFiles):
    """The built files, revalidated on each load (a rebuild changes them under the same name)."""

    async def check_config(self) -> None:
        """Nothing to check: before ``make dashboard`` every file is a 404, not a 500."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """Starlette's response, with ``Cache-Control: no-cache`` and ``nosniff``."""
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


router.add_route("/ui", _to_page, methods=["GET"], include_in_schema=False)
router.add_route("/ui/", _page, methods=["GET"], include_in_schema=False)
router.add_route("/ui/config.json", _config, methods=["GET"], include_in_schema=False)
router.mount("/ui/static", _Static(directory=STATIC, check_dir=False), name="dashboard")
