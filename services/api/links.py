"""Absolute links for responses: the public base URL, or the one the request came in on."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse

from .state import api_state

JSON = "application/json"
GEOJSON = "application/geo+json"
OPENAPI = "application/vnd.oai.openapi+json;version=3.1"


class GeoJSONResponse(JSONResponse):
    """A JSON response served as GeoJSON (the media type OGC API Features and STAC API use)."""

    media_type = GEOJSON


def base_url(request: Request) -> str:
    """The API's base URL without a trailing slash (``settings.api.public_url`` wins)."""
    public = api_state(request).settings.api.public_url
    return (public or str(request.base_url)).rstrip("/")


def href(request: Request, path: str, query: dict[str, Any] | None = None) -> str:
    """An absolute URL of ``path`` on this API, with ``query`` encoded (None values dropped)."""
    url = f"{base_url(request)}{path}"
    params = {k: v for k, v in (query or {}).items() if v is not None}
    return f"{url}?{urlencode(params, doseq=True)}" if params else url


def link(rel: str, url: str, media_type: str = JSON, title: str | None = None) -> dict[str, Any]:
    """One link object, as OGC API and STAC write them."""
    out: dict[str, Any] = {"rel": rel, "href": url, "type": media_type}
    if title:
        out["title"] = title
    return out


def next_link(request: Request, cursor: str | None, media_type: str = GEOJSON) -> list[dict]:
    """The ``next`` link of a keyset page: the same query with ``cursor`` replaced; or none."""
    if cursor is None:
        return []
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    params.append(("cursor", cursor))
    url = f"{base_url(request)}{request.url.path}?{urlencode(params)}"
    return [link("next", url, media_type, "next page")]
