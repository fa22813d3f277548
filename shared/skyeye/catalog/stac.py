"""Standard outputs: a STAC 1.1 Item per asset and its detections as label GeoJSON.

Pure functions from catalog rows (:func:`skyeye.catalog.stac_asset`,
:func:`skyeye.catalog.asset_detections`) to JSON-ready dicts; nothing here reads a database or
a file. Decisions, documented once here:

- **One Item per asset**, which is both the source imagery and its label Item (STAC label
  extension): the imagery is the ``data`` asset, the detections the ``labels`` asset, a GeoJSON
  FeatureCollection (:func:`detections_collection`) whose href defaults to a file beside the
  Item (:func:`labels_href`), since the pipeline stores no such object.
- **Geometry** is the polygon of the asset's stored lon/lat bounding box (the scene's envelope in
  EPSG:4326, which covers its footprint); an asset without one gets ``null`` geometry and no
  bbox, as STAC allows for non-georeferenced data. A bbox across the antimeridian has west >
  east (RFC 7946 section 5.2) and is written so; its geometry is a MultiPolygon of the halves
  either side of the 180th meridian (section 3.1.9). A detection's geometry is its stored
  footprint, a Polygon or such a MultiPolygon.
- **Time**: a clip's recorded time range becomes ``start_datetime``/``end_datetime`` with a null
  ``datetime``; anything else is dated by its start, else by the object-created event, else by
  when the catalog registered it: the pipeline knows no acquisition time for a still image.
- **Projection fields** sit on the ``data`` asset, not on the Item: the preview PNG and the
  label GeoJSON are not in the scene's CRS. Only what the catalog knows is written: the CRS
  code, the raster's shape and its affine (``proj:transform``), from the scene's header.
- **Bands**: a scene's ``data`` asset lists its bands (STAC 1.1 ``bands``: name, data type,
  nodata) with ``eo:common_name`` where the colour interpretation or a Sentinel-2 band name
  says which it is; no wavelengths or cloud cover, which the catalog does not know.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from skyeye.contracts import preview_media_type

__all__ = [
    "EO_EXTENSION",
    "GEOJSON_MEDIA_TYPE",
    "LABEL_EXTENSION",
    "PROJECTION_EXTENSION",
    "STAC_VERSION",
    "bbox_geometry",
    "detections_collection",
    "item",
    "labels_href",
]

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
EO_EXTENSION = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
GEOJSON_MEDIA_TYPE = "application/geo+json"

# The property of each label feature that holds its class (label:properties).
_CLASS_PROPERTY = "label"
# Media types by the format the planner detected; what the uploader declared comes second,
# since it says "image/tiff" for a GeoTIFF and may say nothing at all.
_MEDIA_TYPES = {
    "geotiff": "image/tiff; application=geotiff",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
# proj:code takes "AUTHORITY:CODE"; a CRS stored as WKT or a PROJ string has no such code.
_AUTHORITY_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9_.]+")

Row = Mapping[str, Any]


def labels_href(asset_id: uuid.UUID | str) -> str:
    """Where an Item says its label GeoJSON is: a file beside the Item, named by the asset."""
    return f"./{asset_id}-detections.geojson"


def item(
    asset: Row,
    detections: Sequence[Row],
    labels: str | None = None,
    preview_bucket: str | None = None,
) -> dict[str, Any]:
    """The asset's STAC Item, with the label extension's fields describing ``detections``.

    ``labels`` is the href of the detections GeoJSON (default :func:`labels_href`);
    ``preview_bucket`` the bucket of the preview PNG (the derived bucket), which the Item lists
    when both it and the asset's ``preview_key`` are known.
    """
    bounds = asset.get("lon_lat_bounds")
    projection = _projection(asset)
    bands = _bands(asset)
    assets = {"data": {**_data_asset(asset, projection), **({"bands": bands} if bands else {})}}
    if preview_bucket and asset.get("preview_key"):
        assets["preview"] = _preview_asset(preview_bucket, asset["preview_key"])
    assets["labels"] = {
        "href": labels or labels_href(asset["asset_id"]),
        "type": GEOJSON_MEDIA_TYPE,
        "title": "Detections (STAC label extension GeoJSON)",
        "roles": ["labels", "labels-vector"],
    }
    body: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [
            LABEL_EXTENSION,
            *([PROJECTION_EXTENSION] if projection else []),
            *([EO_EXTENSION] if any("eo:common_name" in b for b in bands) else []),
        ],
        "id": str(asset["asset_id"]),
        "geometry": None if bounds is None else bbox_geometry(bounds),
    }
    if bounds is not None:
        body["bbox"] = [float(v) for v in bounds]
    body["properties"] = {
        **_times(asset),
        "title": asset["object_key"],
        **_label_fields(detections),
    }
    body["links"] = []
    body["assets"] = assets
    return body


def detections_collection(detections: Sequence[Row]) -> dict[str, Any]:
    """The detections as a GeoJSON FeatureCollection of label features.

    Geometry is null where the asset has no georeference; the pixel box is always in the
    properties.
    """
    return {"type": "FeatureCollection", "features": [_feature(d) for d in detections]}


def _feature(d: Row) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "type": "Feature",
        "id": d["detection_id"],
        "geometry": d["footprint"],
        "properties": {
            _CLASS_PROPERTY: d["label"],
            "task": d["task_kind"],
            "pixel_box": [d["x1"], d["y1"], d["x2"], d["y2"]],
            "duplicate": d["duplicate"],
            "centrality": d["centrality"],
            "model": d["model"],
            "tile": d["tile_index"],
        },
    }
    if d["lon_lat_bounds"] is not None:
        feature["bbox"] = [float(v) for v in d["lon_lat_bounds"]]
    return feature


def _label_fields(detections: Sequence[Row]) -> dict[str, Any]:
    kept = Counter(d["label"] for d in detections if not d["duplicate"])
    models = sorted({d["model"] for d in detections})
    duplicates = sum(1 for d in detections if d["duplicate"])
    description = (
        f"Objects located by {', '.join(models)} for its grounding phrases: {sum(kept.values())}"
        f" kept, {duplicates} flagged as copies from overlapping tiles (duplicate=true)."
        if detections
        else "No objects were located in this asset."
    )
    return {
        "label:properties": [_CLASS_PROPERTY],
        "label:classes": [{"name": _CLASS_PROPERTY, "classes": sorted(kept)}],
        "label:description": description,
        "label:type": "vector",
        "label:tasks": ["detection"],
        "label:methods": ["automated"],
        "label:overviews": [
            {
                "property_key": _CLASS_PROPERTY,
                "counts": [{"name": name, "count": kept[name]} for name in sorted(kept)],
            }
        ],
    }


def _times(asset: Row) -> dict[str, Any]:
    start, end = asset.get("start_time"), asset.get("end_time")
    if start is not None and end is not None:
        span = {"datetime": None, "start_datetime": _utc(start), "end_datetime": _utc(end)}
    else:
        taken = start or asset.get("event_time") or asset["created_at"]
        span = {"datetime": _utc(taken)}
    return {**span, "created": _utc(asset["created_at"]), "updated": _utc(asset["updated_at"])}


def _utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a "Z", as STAC requires of every timestamp."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _projection(asset: Row) -> dict[str, Any]:
    crs = asset.get("crs")
    if not crs:
        return {}
    fields: dict[str, Any] = {}
    if _AUTHORITY_CODE.fullmatch(crs):
        fields["proj:code"] = crs.upper()
    if asset.get("width") and asset.get("height"):
        fields["proj:shape"] = [asset["height"], asset["width"]]
    if asset.get("transform"):
        fields["proj:transform"] = [float(v) for v in asset["transform"]]
    return fields


def _bands(asset: Row) -> list[dict[str, Any]]:
    bands = []
    for index, band in enumerate(asset.get("bands") or [], start=1):
        out: dict[str, Any] = {"name": band.get("name") or f"b{index}"}
        if band.get("common_name"):
            out["eo:common_name"] = band["common_name"]
        out["data_type"] = band["data_type"]
        if band.get("nodata") is not None:
            out["nodata"] = band["nodata"]
        bands.append(out)
    return bands


def _data_asset(asset: Row, projection: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"href": _s3_href(asset["bucket"], asset["object_key"])}
    media_type = _MEDIA_TYPES.get(asset.get("media_format") or "") or asset.get("content_type")
    if media_type:
        data["type"] = media_type
    data["title"] = PurePosixPath(asset["object_key"]).name
    data["roles"] = ["data"]
    return {**data, **projection}


def _preview_asset(bucket: str, key: str) -> dict[str, Any]:
    preview: dict[str, Any] = {"href": _s3_href(bucket, key)}
    media_type = preview_media_type(key)
    if media_type:
        preview["type"] = media_type
    preview["title"] = "Preview with the detections drawn"
    preview["roles"] = ["overview"]
    return preview


def _s3_href(bucket: str, key: str) -> str:
    # percent-encoded: an href is an IRI reference, and object keys may hold spaces
    return f"s3://{bucket}/{quote(key)}"


def bbox_geometry(bounds: Sequence[float]) -> dict[str, Any]:
    """The bounding box as a GeoJSON Polygon, exterior ring counter-clockwise (RFC 7946).

    One across the antimeridian (west > east) becomes a MultiPolygon of its two halves.
    """
    west, south, east, north = (float(v) for v in bounds)
    if west <= east:
        return {"type": "Polygon", "coordinates": [_ring(west, south, east, north)]}
    halves = [_ring(west, south, 180.0, north), _ring(-180.0, south, east, north)]
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in halves]}


def _ring(west: float, south: float, east: float, north: float) -> list[list[float]]:
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]
