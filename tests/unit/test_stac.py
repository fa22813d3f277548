"""STAC Items and label GeoJSON built from synthetic catalog rows, validated by stac-validator."""

import copy
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from skyeye.catalog import stac
from tests.stac_validation import (
    validate_feature_collection,
    validate_item,
    validate_item_online,
)

REGISTERED = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
SCENE_BOUNDS = [14.9, 44.9, 15.1, 45.1]


def _asset(**fields: Any) -> dict[str, Any]:
    """An asset row as :func:`skyeye.catalog.stac_asset` returns it."""
    return {
        "asset_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
        "bucket": "skyeye",
        "object_key": "uploads/photo.png",
        "version": "etag-1",
        "size_bytes": 1234,
        "content_type": "image/png",
        "user_metadata": {},
        "event_name": "s3:ObjectCreated:Put",
        "event_time": REGISTERED - timedelta(seconds=2),
        "media_format": "png",
        "width": 640,
        "height": 480,
        "status": "done",
        "tiles_planned": 1,
        "crs": None,
        "lon_lat_bbox": None,
        "lon_lat_bounds": None,
        "created_at": REGISTERED,
        "updated_at": REGISTERED + timedelta(seconds=30),
        **fields,
    }


def _scene() -> dict[str, Any]:
    return _asset(
        object_key="it/scene/utm scene.tif",
        content_type="image/tiff",
        media_format="geotiff",
        width=1000,
        height=800,
        tiles_planned=9,
        crs="EPSG:32633",
        lon_lat_bbox="(15.1,45.1),(14.9,44.9)",
        lon_lat_bounds=SCENE_BOUNDS,
        transform=[10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0],
        bands=[
            {"name": "B4", "common_name": "red", "data_type": "uint16", "nodata": 0, "shown": True},
            {"name": None, "common_name": None, "data_type": "uint16", "nodata": 0, "shown": False},
        ],
    )


def _detection(detection_id: int, label: str, located: bool, **fields: Any) -> dict[str, Any]:
    """A detection row as :func:`skyeye.catalog.asset_detections` returns it."""
    west, south = 14.95 + detection_id / 1000, 44.95
    east, north = west + 0.001, south + 0.001
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "detection_id": detection_id,
        "label": label,
        "x1": 10.0 * detection_id,
        "y1": 20.0,
        "x2": 10.0 * detection_id + 8,
        "y2": 31.5,
        "footprint": {"type": "Polygon", "coordinates": [ring]} if located else None,
        "lon_lat_bounds": [west, south, east, north] if located else None,
        "duplicate": False,
        "centrality": 0.75,
        "task_kind": "grounding",
        "model": "skyeye-tiny-seed0",
        "tile_index": 0,
        **fields,
    }


def _check_extension_fields(item: dict[str, Any], collection: dict[str, Any]) -> None:
    """What the label and projection extensions ask of the fields we write.

    Their JSON schemas cannot be had offline (see tests/stac_validation.py), so these are plain
    checks of the rules in the extensions' field tables, not schema validation.
    """
    props = item["properties"]
    assert stac.LABEL_EXTENSION in item["stac_extensions"]
    assert props["label:type"] in {"vector", "raster"}
    assert isinstance(props["label:description"], str) and props["label:description"]
    tasks = {"regression", "classification", "detection", "segmentation"}
    assert set(props["label:tasks"]) <= tasks
    assert set(props["label:methods"]) <= {"automated", "manual"}
    keys = props["label:properties"]
    for feature in collection["features"]:
        assert set(keys) <= set(feature["properties"])
    for group in props["label:classes"]:
        assert group["name"] in keys and all(isinstance(c, str) for c in group["classes"])
    for overview in props["label:overviews"]:
        assert overview["property_key"] in keys
        assert all(c["count"] >= 0 for c in overview["counts"])
    labels = [a for a in item["assets"].values() if "labels" in a["roles"]]
    assert [a["type"] for a in labels] == [stac.GEOJSON_MEDIA_TYPE]
    projected = [a for a in item["assets"].values() if any(k.startswith("proj:") for k in a)]
    assert (stac.PROJECTION_EXTENSION in item["stac_extensions"]) == bool(projected)
    for asset in projected:
        assert re.fullmatch(r"[A-Z]+:[0-9A-Za-z_.]+", asset["proj:code"])
        assert len(asset["proj:shape"]) == 2 and all(n > 0 for n in asset["proj:shape"])
        assert len(asset.get("proj:transform", [0] * 6)) in (6, 9)
    named = [
        b for a in item["assets"].values() for b in a.get("bands", []) if "eo:common_name" in b
    ]
    assert (stac.EO_EXTENSION in item["stac_extensions"]) == bool(named)


def test_a_georeferenced_scene_item_validates_with_its_labels() -> None:
    detections = [
        _detection(1, "building", located=True),
        _detection(2, "building", located=True, duplicate=True, tile_index=1),
        _detection(3, "river", located=True, task_kind="refer"),
    ]
    item = stac.item(_scene(), detections)
    collection = stac.detections_collection(detections)

    schemas = validate_item(item)
    validate_feature_collection(collection)
    _check_extension_fields(item, collection)

    assert schemas[0].endswith("schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json")
    assert item["stac_version"] == "1.1.0" and item["id"] == str(_scene()["asset_id"])
    assert item["bbox"] == SCENE_BOUNDS
    [ring] = item["geometry"]["coordinates"]
    assert ring == [[14.9, 44.9], [15.1, 44.9], [15.1, 45.1], [14.9, 45.1], [14.9, 44.9]]
    assert item["properties"]["datetime"] == "2025-06-01T09:59:58.000Z"
    data = item["assets"]["data"]
    assert data["href"] == "s3://skyeye/it/scene/utm%20scene.tif"
    assert data["type"] == "image/tiff; application=geotiff" and data["roles"] == ["data"]
    assert data["proj:code"] == "EPSG:32633" and data["proj:shape"] == [800, 1000]
    assert data["proj:transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]
    assert "proj:code" not in item["properties"]
    assert data["bands"] == [
        {"name": "B4", "eo:common_name": "red", "data_type": "uint16", "nodata": 0},
        {"name": "b2", "data_type": "uint16", "nodata": 0},
    ]
    assert stac.EO_EXTENSION in item["stac_extensions"]
    assert item["assets"]["labels"]["href"] == f"./{item['id']}-detections.geojson"
    assert "preview" not in item["assets"]
    # duplicates stay in the GeoJSON (flagged) but not in the class counts
    props = item["properties"]
    assert props["label:classes"] == [{"name": "label", "classes": ["building", "river"]}]
    assert props["label:overviews"][0]["counts"] == [
        {"name": "building", "count": 1},
        {"name": "river", "count": 1},
    ]
    first, copy_, river = collection["features"]
    assert first["geometry"] == detections[0]["footprint"]
    assert first["bbox"] == detections[0]["lon_lat_bounds"]
    assert first["properties"] == {
        "label": "building",
        "task": "grounding",
        "pixel_box": [10.0, 20.0, 18.0, 31.5],
        "duplicate": False,
        "centrality": 0.75,
        "model": "skyeye-tiny-seed0",
        "tile": 0,
    }
    assert copy_["properties"]["duplicate"] and copy_["properties"]["tile"] == 1
    assert river["properties"]["task"] == "refer"


def test_a_plain_image_has_null_geometry_and_no_projection() -> None:
    detections = [_detection(1, "car", located=False)]
    item = stac.item(_asset(), detections, labels="https://example.test/labels.geojson")
    collection = stac.detections_collection(detections)

    validate_item(item)
    validate_feature_collection(collection)
    _check_extension_fields(item, collection)

    assert item["geometry"] is None and "bbox" not in item
    assert item["stac_extensions"] == [stac.LABEL_EXTENSION]
    assert not any(k.startswith("proj:") for k in item["assets"]["data"])
    assert item["assets"]["data"]["type"] == "image/png"
    assert item["assets"]["labels"]["href"] == "https://example.test/labels.geojson"
    [feature] = collection["features"]
    assert feature["geometry"] is None and "bbox" not in feature
    assert feature["properties"]["pixel_box"] == [10.0, 20.0, 18.0, 31.5]


def test_a_clip_with_a_time_range_and_a_preview() -> None:
    start = datetime(2025, 5, 4, 12, 0, 0, tzinfo=UTC)
    clip = _asset(
        object_key="uav/flight-7.mp4",
        content_type="video/mp4",
        media_format="mp4",
        start_time=start,
        end_time=start + timedelta(seconds=12.5),
        preview_key="previews/flight-7.png",
    )
    item = stac.item(clip, [], preview_bucket="skyeye-derived")
    collection = stac.detections_collection([])

    validate_item(item)
    validate_feature_collection(collection)
    _check_extension_fields(item, collection)

    props = item["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2025-05-04T12:00:00.000Z"
    assert props["end_datetime"] == "2025-05-04T12:00:12.500Z"
    assert item["assets"]["data"]["type"] == "video/mp4"
    assert item["assets"]["preview"] == {
        "href": "s3://skyeye-derived/previews/flight-7.png",
        "type": "image/png",
        "title": "Preview with the detections drawn",
        "roles": ["overview"],
    }
    assert props["label:classes"] == [{"name": "label", "classes": []}]
    assert collection == {"type": "FeatureCollection", "features": []}


def test_a_start_without_an_end_dates_the_item() -> None:
    start = datetime(2025, 5, 4, 14, 0, tzinfo=UTC)
    item = stac.item(_asset(start_time=start, end_time=None), [])
    validate_item(item)
    assert item["properties"]["datetime"] == "2025-05-04T14:00:00.000Z"
    assert "start_datetime" not in item["properties"]


def test_a_crs_without_an_authority_code_gets_no_proj_code() -> None:
    wkt = 'LOCAL_CS["arbitrary",UNIT["metre",1]]'
    item = stac.item(_scene() | {"crs": wkt}, [])
    validate_item(item)
    assert "proj:code" not in item["assets"]["data"]
    assert item["assets"]["data"]["proj:shape"] == [800, 1000]


def test_a_scene_across_the_antimeridian_has_a_split_geometry_and_west_above_east() -> None:
    bounds = [179.5, 10.0, -179.5, 11.0]
    # a detection footprint split at the antimeridian, as skyeye.geo gives it
    east_half = [[179.9, 10.5], [180.0, 10.5], [180.0, 10.6], [179.9, 10.6], [179.9, 10.5]]
    west_half = [[-180.0, 10.5], [-179.9, 10.5], [-179.9, 10.6], [-180.0, 10.6], [-180.0, 10.5]]
    detection = _detection(
        1,
        "ship",
        located=True,
        footprint={"type": "MultiPolygon", "coordinates": [[east_half], [west_half]]},
        lon_lat_bounds=[179.9, 10.5, -179.9, 10.6],
    )
    item = stac.item(_scene() | {"crs": "EPSG:4326", "lon_lat_bounds": bounds}, [detection])
    collection = stac.detections_collection([detection])

    validate_item(item)
    validate_feature_collection(collection)
    assert item["bbox"] == bounds
    assert item["geometry"] == {
        "type": "MultiPolygon",
        "coordinates": [
            [[[179.5, 10.0], [180.0, 10.0], [180.0, 11.0], [179.5, 11.0], [179.5, 10.0]]],
            [[[-180.0, 10.0], [-179.5, 10.0], [-179.5, 11.0], [-180.0, 11.0], [-180.0, 10.0]]],
        ],
    }
    [feature] = collection["features"]
    assert feature["geometry"] == detection["footprint"]
    assert feature["bbox"] == [179.9, 10.5, -179.9, 10.6]


def test_the_validator_rejects_what_the_schemas_forbid() -> None:
    # the offline check is not vacuous: core, datetime and GeoJSON rules all bite
    good = stac.item(_scene(), [_detection(1, "building", located=True)])
    broken_geometry = copy.deepcopy(good)
    broken_geometry["geometry"]["coordinates"] = "nowhere"
    no_timezone = copy.deepcopy(good)
    no_timezone["properties"]["datetime"] = "2025-06-01T10:00:00"
    bbox_without_geometry = copy.deepcopy(good) | {"geometry": None}
    no_assets = {k: v for k, v in good.items() if k != "assets"}
    for bad in (broken_geometry, no_timezone, bbox_without_geometry, no_assets):
        with pytest.raises(AssertionError, match="JSONSchemaValidationError"):
            validate_item(bad)
    collection = stac.detections_collection([_detection(1, "building", located=True)])
    collection["features"][0]["geometry"] = {"type": "Polygon", "coordinates": 5}
    with pytest.raises(jsonschema.ValidationError):
        validate_feature_collection(collection)


@pytest.mark.skipif(
    os.environ.get("SKYEYE_STAC_ONLINE") != "1",
    reason="extension schemas are fetched from their URLs: set SKYEYE_STAC_ONLINE=1 online",
)
def test_items_validate_against_the_published_extension_schemas() -> None:
    detections = [_detection(1, "building", located=True)]
    for item in (stac.item(_scene(), detections), stac.item(_asset(), [])):
        schemas = validate_item_online(item)
        assert stac.LABEL_EXTENSION in schemas
