"""The FastAPI application: routes, error bodies, limits, and the clients it holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from skyeye.settings import Settings

from . import ask, assets, dashboard, events, features, health, landing, results, rules
from .errors import BodyLimit, finish_document, install_error_handlers, responses
from .params import known_parameters
from .state import ApiState

DESCRIPTION = """\
Results of the SkyEye pipeline: assets (images, georeferenced scenes, UAV clips), the model's
captions, answers and detections. Search them by text, meaning, place, time and class; read
them as OGC API Features and STAC API; ask a new question about a stored asset.

Send an API token as `Authorization: Bearer <token>` (`skyeye token create --scope read`).
"""


def create_app(settings: Settings, state: ApiState | None = None) -> FastAPI:
    """The API over the catalog of ``settings`` (endpoints resolved), or over ``state``.

    The OpenAPI 3.1 document is served at ``/api``, its browsable form at ``/api.html``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = state or ApiState.open(settings)
        app.state.api = opened
        try:
            yield
        finally:
            if state is None:
                opened.close()

    app = FastAPI(
        title="SkyEye Stream results API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_url="/api",
        # FastAPI's own page loads Swagger UI from a CDN; ours serves it from a wheel
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # any operation may meet a malformed request or fail; the routers add their own
        responses=responses(400, 500),
        dependencies=[Depends(known_parameters)],
    )
    if state is not None:
        app.state.api = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    # the dashboard's GET / (browsers only) must come before the landing page's
    for module in (dashboard, landing, features, results, assets, ask, rules, events, health):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_document(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _browsable_document(app)
    return app


def _browsable_document(app: FastAPI) -> None:
    """``/api.html``: Swagger UI over ``/api``, its scripts from the swagger-ui-bundle wheel.

    Nothing is fetched from the internet, so the page works where the API has no way out.
    URLs are relative, so the page works behind a proxy that serves the API under a prefix.
    """
    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/api.html", include_in_schema=False)
    def api_html() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="api",
            title=f"{app.title}: OpenAPI",
            swagger_js_url="static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="static/swagger-ui/favicon-32x32.png",
        )
