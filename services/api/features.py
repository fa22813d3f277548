"""OGC API Features (collections ``assets`` and ``detections``) and STAC API Item Search.

An asset's Item is :func:`skyeye.catalog.stac.item`, the code ``skyeye stac`` prints, with the
API's links added and its label and preview hrefs pointed at the API. Detections are GeoJSON
features (:func:`skyeye.catalog.stac.detections_collection`), not STAC Items: ``/search``
searches the ``assets`` collection only.

``intersects`` is matched in two steps: the geometry's bounding box against the GiST index,
then the exact geometry against each candidate's footprint (shapely), so a page may hold fewer
Items than ``limit`` while its ``next`` link still leads on.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import shapely.geometry
from fastapi import APIRouter, Depends, Query, Request
from geojson_pydantic import Feature, FeatureCollection
from pydantic import ConfigDict, Field, ValidationError, model_validator
from stac_pydantic.api.collection import Collection
from stac_pydantic.api.collections import Collections
from stac_pydantic.api.item_collection import ItemCollection
from stac_pydantic.api.search import Search

from skyeye.adapters.postgres import Connection
from skyeye.catalog import search, stac
from skyeye.catalog.search import AssetKind, AssetStatus

from . import params
from .auth import Principal, require
from .errors import problem, responses
from .links import GEOJSON, JSON, GeoJSONResponse, href, link, next_link
from .state import ApiState, api_state

router = APIRouter(responses=responses(401, 403, 429, 503))

ASSETS = "assets"
DETECTIONS = "detections"
_COLLECTIONS = {
    ASSETS: (
        "Assets",
        "Images, georeferenced scenes and UAV clips the pipeline has seen, as STAC Items with "
        "their detections as label assets.",
    ),
    DETECTIONS: (
        "Detections",
        "Objects the model located (grounding and referring tasks), as GeoJSON features with "
        "their lon/lat footprint where the asset is georeferenced.",
    ),
}

Reader = Annotated[Principal, Depends(require("read"))]
State = Annotated[ApiState, Depends(api_state)]
Limit = Annotated[int | None, Query(description="page size (settings.api.max_limit at most)")]
Bbox = Annotated[str | None, Query(description="lon/lat W,S,E,N; W > E crosses 180 degrees")]
Datetime = Annotated[
    str | None, Query(description="RFC 3339 instant or interval start/end, '..' for open ends")
]
Cursor = Annotated[str | None, Query(description="the next page's cursor, from a next link")]


def _collection(request: Request, collection_id: str) -> dict[str, Any]:
    title, description = _COLLECTIONS[collection_id]
    base = f"/collections/{collection_id}"
    return {
        "type": "Collection",
        "stac_version": stac.STAC_VERSION,
        "id": collection_id,
        "title": title,
        "description": description,
        "license": "other",
        # the whole world and all time: computing the catalog's true extent would scan it
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[None, None]]},
        },
        "itemType": "feature",
        "links": [
            link("self", href(request, base)),
            link("root", href(request, "/")),
            link("parent", href(request, "/")),
            link("items", href(request, f"{base}/items"), GEOJSON),
        ],
    }


@router.get(
    "/collections",
    response_model=Collections,
    response_model_exclude_none=True,
    tags=["OGC API Features"],
    summary="The collections: assets and detections",
)
def collections(request: Request, _: Reader) -> dict[str, Any]:
    """Both collections, with links to their items."""
    return {
        "collections": [_collection(request, c) for c in _COLLECTIONS],
        "links": [
            link("self", href(request, "/collections")),
            link("root", href(request, "/")),
        ],
        "numberMatched": len(_COLLECTIONS),
        "numberReturned": len(_COLLECTIONS),
    }


@router.get(
    "/collections/{collection_id}",
    response_model=Collection,
    response_model_exclude_none=True,
    tags=["OGC API Features"],
    summary="One collection",
    responses=responses(404),
)
def collection(request: Request, collection_id: str, _: Reader) -> dict[str, Any]:
    """The collection ``assets`` or ``detections``."""
    _known(collection_id)
    return _collection(request, collection_id)


def _known(collection_id: str) -> None:
    if collection_id not in _COLLECTIONS:
        raise problem(
            404,
            "not_found",
            f"no collection {collection_id!r}: the collections are {', '.join(_COLLECTIONS)}",
        )


@router.get(
    "/collections/{collection_id}/items",
    tags=["OGC API Features"],
    summary="Items of a collection, filtered, in keyset pages",
    response_class=GeoJSONResponse,
    responses={
        200: {"model": FeatureCollection, "description": "STAC Items or detection features"},
        **responses(404),
    },
)
def items(
    request: Request,
    collection_id: str,
    _: Reader,
    state: State,
    bbox: Bbox = None,
    datetime_: Annotated[Datetime, Query(alias="datetime")] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    q: Annotated[str | None, Query(description="full text (assets) or words of the label")] = None,
    label: Annotated[str | None, Query(description="detection phrase or class")] = None,
    asset_kind: AssetKind | None = None,
    status: AssetStatus | None = None,
) -> GeoJSONResponse:
    """Assets as STAC Items, or detections as GeoJSON features, newest first."""
    _known(collection_id)
    f = params.filters(
        bbox=params.bbox(bbox),
        **params.interval(datetime_),
        limit=params.page_limit(limit, state.settings.api),
        cursor=cursor,
        q=q,
        label=label,
        asset_kind=asset_kind,
        status=status,
    )
    with state.engine.connect() as conn:
        if collection_id == ASSETS:
            page = _run(search.search_assets, conn, f)
            features = asset_items(request, state, conn, page.rows)
        else:
            page = _run(search.search_detections, conn, f)
            features = [detection_feature(request, row) for row in page.rows]
    self_url = str(request.url)
    return _feature_collection(
        features,
        [
            link("self", self_url, GEOJSON),
            link("root", href(request, "/")),
            link("collection", href(request, f"/collections/{collection_id}")),
            *next_link(request, page.next_cursor),
        ],
    )


def _run(query: Any, conn: Connection, f: search.Filters) -> search.Page:
    try:
        page: search.Page = query(conn, f)
    except search.InvalidCursor as exc:
        raise params.bad_parameter("cursor", str(exc)) from None
    return page


@router.get(
    "/collections/{collection_id}/items/{item_id}",
    tags=["OGC API Features"],
    summary="One item: an asset's STAC Item or one detection",
    response_class=GeoJSONResponse,
    responses={
        200: {"model": Feature, "description": "a STAC Item or a detection feature"},
        **responses(404),
    },
)
def item(
    request: Request, collection_id: str, item_id: str, _: Reader, state: State
) -> GeoJSONResponse:
    """The asset's STAC Item (``assets``) or the detection's feature (``detections``)."""
    _known(collection_id)
    with state.engine.connect() as conn:
        if collection_id == ASSETS:
            found = _asset_item(request, state, conn, item_id)
        else:
            found = _detection(request, conn, item_id)
    return GeoJSONResponse(found)


def _asset_item(request: Request, state: ApiState, conn: Connection, item_id: str) -> dict:
    try:
        asset_id = uuid.UUID(item_id)
    except ValueError:
        raise problem(404, "not_found", f"no asset {item_id!r}: asset ids are UUIDs") from None
    page = search.search_assets(conn, search.Filters(ids=(asset_id,), limit=1))
    if not page.rows:
        raise problem(404, "not_found", f"no asset {item_id} in the catalog")
    return asset_items(request, state, conn, page.rows)[0]


def _detection(request: Request, conn: Connection, item_id: str) -> dict:
    if not item_id.isdigit():
        raise problem(404, "not_found", f"no detection {item_id!r}: detection ids are integers")
    row = search.detection(conn, int(item_id))
    if row is None:
        raise problem(404, "not_found", f"no detection {item_id} in the catalog")
    return detection_feature(request, row)


def asset_items(
    request: Request, state: ApiState, conn: Connection, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The STAC Items of a page of asset rows, as ``skyeye stac`` renders each, linked."""
    detections = search.detections_of(conn, [row["asset_id"] for row in rows])
    out = []
    for row in rows:
        asset_id = row["asset_id"]
        body = stac.item(
            row,
            detections[asset_id],
            labels=href(request, f"/assets/{asset_id}/detections"),
            preview_bucket=state.settings.derived_bucket,
        )
        if "preview" in body["assets"]:
            body["assets"]["preview"]["href"] = href(request, f"/assets/{asset_id}/preview")
        body["collection"] = ASSETS
        body["links"] = [
            link("self", href(request, f"/collections/{ASSETS}/items/{asset_id}"), GEOJSON),
            link("parent", href(request, f"/collections/{ASSETS}")),
            link("collection", href(request, f"/collections/{ASSETS}")),
            link("root", href(request, "/")),
            link("describedby", href(request, f"/assets/{asset_id}"), JSON, "asset detail"),
        ]
        out.append(body)
    return out


def detection_feature(request: Request, row: dict[str, Any]) -> dict[str, Any]:
    """One detection as a GeoJSON feature, linked to its asset."""
    [feature] = stac.detections_collection([row])["features"]
    feature["id"] = str(row["detection_id"])
    feature["properties"]["asset_id"] = str(row["asset_id"])
    feature["links"] = [
        link(
            "self",
            href(request, f"/collections/{DETECTIONS}/items/{row['detection_id']}"),
            GEOJSON,
        ),
        link("collection", href(request, f"/collections/{DETECTIONS}")),
        link("related", href(request, f"/collections/{ASSETS}/items/{row['asset_id']}"), GEOJSON),
    ]
    return feature


def _feature_collection(features: list[dict], links: list[dict]) -> GeoJSONResponse:
    body = {
        "type": "FeatureCollection",
        "features": features,
        "links": links,
        "numberReturned": len(features),
        "timeStamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return GeoJSONResponse(body)


class SearchBody(Search):
    """A STAC Item Search (POST) body, plus the page cursor of a ``next`` link and free text."""

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(None, max_length=512, description="from the next link's body")
    q: str | None = Field(None, max_length=512, description="full text over results")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value: Any) -> Any:
        # stac-pydantic's own validators call value.get(): anything but an object would be a 500
        if not isinstance(value, dict):
            raise ValueError(f"the body must be a JSON object, got {type(value).__name__}")
        return value


@router.get(
    "/search",
    tags=["STAC API"],
    summary="STAC Item Search (GET)",
    response_class=GeoJSONResponse,
    responses={200: {"model": ItemCollection, "description": "a STAC ItemCollection"}},
)
def search_get(
    request: Request,
    _: Reader,
    state: State,
    bbox: Bbox = None,
    intersects: Annotated[str | None, Query(description="a GeoJSON geometry (JSON)")] = None,
    datetime_: Annotated[Datetime, Query(alias="datetime")] = None,
    ids: Annotated[str | None, Query(description="comma-separated Item ids")] = None,
    collections: Annotated[str | None, Query(description="comma-separated ids")] = None,
    limit: Limit = None,
    cursor: Cursor = None,
    q: Annotated[str | None, Query(description="full text over results")] = None,
) -> GeoJSONResponse:
    """Items of ``assets`` matching every parameter given."""
    fields: dict[str, Any] = {"datetime": datetime_, "limit": limit, "cursor": cursor, "q": q}
    if bbox is not None:
        fields["bbox"] = params.bbox(bbox)
    if intersects is not None:
        try:
            fields["intersects"] = json.loads(intersects)
        except ValueError:
            raise params.bad_parameter("intersects", "not JSON") from None
    if ids is not None:
        fields["ids"] = [i.strip() for i in ids.split(",") if i.strip()]
    if collections is not None:
        fields["collections"] = [c.strip() for c in collections.split(",") if c.strip()]
    try:
        body = SearchBody(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise params.invalid(exc) from None
    return _search(request, state, body, post=False)


@router.post(
    "/search",
    tags=["STAC API"],
    summary="STAC Item Search (POST)",
    response_class=GeoJSONResponse,
    responses={
        200: {"model": ItemCollection, "description": "a STAC ItemCollection"},
        **responses(413),
    },
)
def search_post(request: Request, body: SearchBody, _: Reader, state: State) -> GeoJSONResponse:
    """Items of ``assets`` matching every field of the body."""
    return _search(request, state, body, post=True)


def _search(request: Request, state: ApiState, body: SearchBody, post: bool) -> GeoJSONResponse:
    f, shape = _search_filters(state, body)
    links = [link("root", href(request, "/"))]
    if body.collections is not None and ASSETS not in body.collections:
        return _feature_collection([], links)
    with state.engine.connect() as conn:
        page = _run(search.search_assets, conn, f)
        rows = [r for r in page.rows if shape is None or _intersects(r, shape)]
        features = asset_items(request, state, conn, rows)
    if page.next_cursor is not None:
        if post:
            next_body = body.model_dump(mode="json", exclude_none=True) | {
                "cursor": page.next_cursor
            }
            links.append(
                link("next", href(request, "/search"), GEOJSON, "next page")
                | {"method": "POST", "body": next_body}
            )
        else:
            links += next_link(request, page.next_cursor)
    return _feature_collection(features, links)


def _search_filters(
    state: ApiState, body: SearchBody
) -> tuple[search.Filters, shapely.geometry.base.BaseGeometry | None]:
    shape = None
    box = None
    if body.bbox is not None:
        box = params.bbox(",".join(str(v) for v in body.bbox))
    if body.intersects is not None:
        shape = shapely.geometry.shape(body.intersects.model_dump())
        if shape.is_empty:
            raise params.bad_parameter("intersects", "the geometry is empty")
        try:
            box = search.parse_bbox(shape.bounds)
        except ValueError as exc:
            raise params.bad_parameter("intersects", f"off the globe: {exc}") from None
    ids = None
    if body.ids is not None:
        # an id that is no UUID names no asset: it matches nothing (the nil UUID never does)
        ids = tuple(uuid.UUID(i) for i in body.ids if _is_uuid(i)) or (uuid.UUID(int=0),)
    f = params.filters(
        bbox=box,
        **params.interval(body.datetime),
        ids=ids,
        q=body.q,
        limit=params.page_limit(body.limit, state.settings.api),
        cursor=body.cursor,
    )
    return f, shape


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _intersects(row: dict[str, Any], shape: shapely.geometry.base.BaseGeometry) -> bool:
    bounds = row.get("lon_lat_bounds")
    if bounds is None:
        return False
    footprint = shapely.geometry.shape(stac.bbox_geometry(bounds))
    return bool(footprint.intersects(shape))
