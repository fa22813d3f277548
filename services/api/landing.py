"""The landing page and the conformance declaration (OGC API Features, STAC API).

Both are public: they say what the API is, never what the catalog holds.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from stac_pydantic.api.conformance import Conformance
from stac_pydantic.api.landing import LandingPage

from skyeye.catalog.stac import STAC_VERSION

from .links import GEOJSON, OPENAPI, href, link

router = APIRouter(tags=["Capabilities"])

CATALOG_ID = "skyeye"

#: Every conformance class the API implements, listed at /conformance and on the landing page.
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
]


@router.get(
    "/",
    response_model=LandingPage,
    response_model_exclude_none=True,
    summary="Landing page: what this API is and where everything is",
)
def landing(request: Request) -> dict[str, Any]:
    """The landing page, a STAC Catalog with links to the API's parts."""
    page = {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": CATALOG_ID,
        "title": "SkyEye Stream",
        "description": "Results of a remote-sensing vision-language model over imagery streams: "
        "assets, captions, answers and detections, searchable by text, place, time, class and "
        "meaning.",
        "conformsTo": CONFORMANCE,
        "links": [
            link("self", href(request, "/"), title="this document"),
            link("root", href(request, "/"), title="this document"),
            link("service-desc", href(request, "/api"), OPENAPI, "the OpenAPI 3.1 document"),
            link("conformance", href(request, "/conformance"), title="conformance classes"),
            link("data", href(request, "/collections"), title="collections: assets, detections"),
            link("search", href(request, "/search"), GEOJSON, "STAC Item Search (GET)")
            | {"method": "GET"},
            link("search", href(request, "/search"), GEOJSON, "STAC Item Search (POST)")
            | {"method": "POST"},
            link("child", href(request, "/collections/assets"), title="assets"),
            link("child", href(request, "/collections/detections"), title="detections"),
        ],
    }
    return page


@router.get("/conformance", response_model=Conformance, summary="Conformance classes")
def conformance() -> dict[str, Any]:
    """The OGC API and STAC API conformance classes this API implements."""
    return {"conformsTo": CONFORMANCE}
