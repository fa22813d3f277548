"""Asset detail: what the asset is, its tiles or frames, every result, detections, errors, preview.

The preview JPEG is proxied by the API (``/assets/{id}/preview``): the object store is not
reachable from clients in the embedded stack, and a proxied image needs no presigned URL that
would leak the store's address.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from geojson_pydantic import FeatureCollection

from skyeye import catalog
from skyeye.adapters.postgres import Connection
from skyeye.adapters.s3 import ObjectMissing
from skyeye.catalog import search, stac
from skyeye.contracts import PREVIEW_MEDIA_TYPE, preview_media_type

from .errors import problem, responses
from .features import Reader, State, asset_items
from .links import GEOJSON, JSON, GeoJSONResponse, href, link
from .state import ApiState

router = APIRouter(tags=["Assets"], responses=responses(401, 403, 404, 429, 503))

# a preview is at most preview_max_side square, 4 bytes a pixel, compressed: far below this
_MAX_PREVIEW_BYTES = 64 * 1024**2


def _preview_type(key: str) -> str:
    """The media type a stored preview is served with (JPEG, or an older asset's PNG)."""
    return preview_media_type(key) or "application/octet-stream"


def _asset_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise problem(404, "not_found", f"no asset {text!r}: asset ids are UUIDs") from None


def _asset(conn: Connection, asset_id: uuid.UUID) -> dict[str, Any]:
    row = catalog.stac_asset(conn, asset_id)
    if row is None:
        raise problem(404, "not_found", f"no asset {asset_id} in the catalog")
    return row


@router.get("/assets/{asset_id}", summary="Everything about one asset", response_class=JSONResponse)
def asset(request: Request, asset_id: str, _: Reader, state: State) -> JSONResponse:
    """The asset, its STAC Item, tiles or frames, results, detections, errors and preview link."""
    found = _asset_id(asset_id)
    with state.engine.connect() as conn:
        row = _asset(conn, found)
        page = search.search_assets(conn, search.Filters(ids=(found,), limit=1))
        item = asset_items(request, state, conn, page.rows)[0]
        body = _detail(request, state, conn, row)
    body["item"] = item
    return JSONResponse(catalog.jsonable(body))


def _detail(
    request: Request, state: ApiState, conn: Connection, row: dict[str, Any]
) -> dict[str, Any]:
    asset_id = row["asset_id"]
    work_items = catalog.work_items_of(conn, asset_id)
    results = catalog.results(conn, asset_id)
    detections = catalog.asset_detections(conn, asset_id)
    fields = [
        *("asset_id", "bucket", "object_key", "version", "kind", "media_format", "width"),
        *("height", "status", "tiles_planned", "crs", "duration_s", "fps", "frame_count"),
        *("video_codec", "start_time", "end_time", "created_at", "updated_at"),
    ]
    preview_key = row.get("preview_key")
    preview = href(request, f"/assets/{asset_id}/preview") if preview_key else None
    return {
        **{key: row.get(key) for key in fields},
        "bbox": None if row["lon_lat_bounds"] is None else list(row["lon_lat_bounds"]),
        "preview": preview,
        "work_items": work_items,
        "frames": catalog.clip_frames(conn, asset_id),
        "results": results,
        "detections": stac.detections_collection(detections),
        "errors": catalog.errors(conn, asset_id),
        "links": [
            link("self", href(request, f"/assets/{asset_id}")),
            link("item", href(request, f"/collections/assets/items/{asset_id}"), GEOJSON),
            link("labels", href(request, f"/assets/{asset_id}/detections"), GEOJSON),
            *(
                [link("preview", preview, _preview_type(preview_key))]
                if preview and preview_key
                else []
            ),
            link("ask", href(request, f"/assets/{asset_id}/ask"), JSON, "POST a new question"),
        ],
    }


@router.get(
    "/assets/{asset_id}/detections",
    summary="The asset's detections as GeoJSON (the STAC Item's labels)",
    response_class=GeoJSONResponse,
    responses={200: {"model": FeatureCollection, "description": "a GeoJSON FeatureCollection"}},
)
def detections(asset_id: str, _: Reader, state: State) -> GeoJSONResponse:
    """Every detection of the asset, duplicates flagged, as ``skyeye detections --geojson``."""
    found = _asset_id(asset_id)
    with state.engine.connect() as conn:
        _asset(conn, found)
        rows = catalog.asset_detections(conn, found)
    return GeoJSONResponse(stac.detections_collection(rows))


@router.get(
    "/assets/{asset_id}/preview",
    summary="The asset's preview image, boxes drawn",
    response_class=Response,
    responses={
        200: {
            "content": {PREVIEW_MEDIA_TYPE: {}, "image/png": {}},
            "description": "the preview: a JPEG (a PNG for assets finished by older versions)",
        }
    },
)
def preview(asset_id: str, _: Reader, state: State) -> Response:
    """The preview's bytes, proxied from the object store; 404 until the asset is finished."""
    found = _asset_id(asset_id)
    with state.engine.connect() as conn:
        row = _asset(conn, found)
    key = row.get("preview_key")
    if not key:
        raise problem(
            404, "not_found", f"asset {found} has no preview yet (its status is {row['status']})"
        )
    try:
        data = state.store.read(state.settings.derived_bucket, key, max_bytes=_MAX_PREVIEW_BYTES)
    except ObjectMissing:
        raise problem(
            404, "not_found", f"the preview of asset {found} is gone from the store"
        ) from None
    return Response(
        data,
        media_type=_preview_type(key),
        headers={"Cache-Control": "private, max-age=60"},
    )
