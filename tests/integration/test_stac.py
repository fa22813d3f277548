"""`skyeye stac` and `skyeye detections` against the real stack, their output validated."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import rasterio
from rasterio.warp import transform_bounds

from skyeye import catalog, samples
from skyeye.catalog import stac
from skyeye.cli.ingest import ingest, wait_for
from skyeye.contracts import Task, TaskKind, WorkItem, work_item_id_for
from skyeye.imagery import geo, scenes
from tests.stac_validation import validate_feature_collection, validate_item

from .conftest import Pipeline, preview

WAIT_S = 300


@pytest.fixture(scope="module")
def scene_and_photo(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    # 600 px: four overlapping 448 px tiles, so copies across tiles can be flagged
    scene = samples.write_geotiff(tmp_path_factory.mktemp("stac") / "stac scene.tif", size=600)
    photo = samples.aerial_photos()[0]
    done = ingest(pipeline.settings, [scene, photo], prefix="it/stac")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    preview(pipeline, done[0].asset_id)  # written just after the asset is done
    _add_a_ship_seen_by_two_tiles(pipeline, scene, done[0].asset_id)
    return scene, *done


def _add_a_ship_seen_by_two_tiles(pipeline: Pipeline, scene: Path, asset_id: uuid.UUID) -> None:
    """What the worker stores when the model finds one ship where tiles 0 and 1 overlap: the tiny
    test model seldom draws a box, and the label GeoJSON needs some to check."""
    s = pipeline.settings
    with rasterio.open(scene) as ds:
        meta, crs = geo.SceneMeta.of(ds), ds.crs.to_string()
    task = Task(kind=TaskKind.GROUNDING, text="ship")
    with pipeline.engine.begin() as conn:
        # the same ship (scene pixels ~318-358 x 99-139) on each tile's 0-100 scale
        for index, box in ((0, (71, 22, 80, 31)), (1, (37, 22, 46, 31))):
            tile = geo.tile_at(
                meta, index, tile_size=s.tile_size, target_gsd=s.target_gsd, overlap=s.tile_overlap
            )
            item = WorkItem(
                work_item_id=work_item_id_for(asset_id, index),
                asset_id=asset_id,
                bucket=s.bucket,
                key="it/stac/stac scene.tif",
                image_width=meta.width,
                image_height=meta.height,
                tile=tile.as_tile(),
                tasks=[task],
            )
            x1, y1, x2, y2 = geo.scene_detection("ship", box, tile).box
            found = catalog.Detection("ship", x1, y1, x2, y2, box_0_100=box)
            outcome = catalog.TaskOutcome(task, "[grounding] ship", "raw", True, {}, [found])
            catalog.store_results(conn, item, [scenes.locate(outcome, tile, crs)], "test-ships")
        assert scenes.merge_duplicates(conn, asset_id) >= 1


def _skyeye(pipeline: Pipeline, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_a_scene_item_and_its_label_geojson_validate(
    pipeline: Pipeline, scene_and_photo: tuple
) -> None:
    scene_path, scene, _ = scene_and_photo
    asset_id = str(scene.asset_id)
    item = json.loads(_skyeye(pipeline, "stac", asset_id))
    collection = json.loads(_skyeye(pipeline, "detections", asset_id, "--geojson"))
    validate_item(item)
    validate_feature_collection(collection)

    with rasterio.open(scene_path) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    assert item["id"] == asset_id
    assert item["bbox"] == pytest.approx([west, south, east, north])
    assert stac.PROJECTION_EXTENSION in item["stac_extensions"]
    data = item["assets"]["data"]
    assert data["href"] == f"s3://{pipeline.settings.bucket}/it/stac/stac%20scene.tif"
    assert data["proj:code"] == "EPSG:32633" and data["proj:shape"] == [600, 600]
    with rasterio.open(scene_path) as ds:
        assert data["proj:transform"] == pytest.approx(list(ds.transform)[:6])
    assert [(b["name"], b["eo:common_name"]) for b in data["bands"]] == [
        ("b1", "red"),
        ("b2", "green"),
        ("b3", "blue"),
    ]
    assert {b["data_type"] for b in data["bands"]} == {"uint8"}
    assert item["assets"]["labels"]["href"] == f"./{asset_id}-detections.geojson"
    derived = pipeline.settings.derived_bucket
    assert item["assets"]["preview"]["href"] == f"s3://{derived}/previews/{asset_id}.jpg"

    with pipeline.engine.connect() as conn:
        stored = catalog.asset_detections(conn, scene.asset_id)
    assert [f["id"] for f in collection["features"]] == [d["detection_id"] for d in stored]
    kept: dict[str, int] = {}
    for feature in collection["features"]:
        # every box the (random) model drew lies inside the scene, in lon/lat
        for lon, lat in feature["geometry"]["coordinates"][0]:
            assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
        x1, y1, x2, y2 = feature["properties"]["pixel_box"]
        assert 0 <= x1 <= x2 <= 600 and 0 <= y1 <= y2 <= 600
        assert feature["properties"]["model"] in {"skyeye-tiny", "test-ships"}
        if not feature["properties"]["duplicate"]:
            label = feature["properties"]["label"]
            kept[label] = kept.get(label, 0) + 1
    # the two ships stored above; the model may report ships of its own
    ships = [
        f["properties"] for f in collection["features"] if f["properties"]["model"] == "test-ships"
    ]
    assert sorted((p["tile"], p["duplicate"]) for p in ships) == [(0, True), (1, False)]
    [overview] = item["properties"]["label:overviews"]
    assert {c["name"]: c["count"] for c in overview["counts"]} == kept
    assert item["properties"]["label:classes"] == [{"name": "label", "classes": sorted(kept)}]


def test_a_plain_photo_item_has_null_geometry(pipeline: Pipeline, scene_and_photo: tuple) -> None:
    _, _, photo = scene_and_photo
    asset_id = str(photo.asset_id)
    item = json.loads(_skyeye(pipeline, "stac", asset_id, "--labels-href", "labels.geojson"))
    collection = json.loads(_skyeye(pipeline, "detections", asset_id, "--geojson"))
    validate_item(item)
    validate_feature_collection(collection)
    assert item["geometry"] is None and "bbox" not in item
    assert item["stac_extensions"] == [stac.LABEL_EXTENSION]
    assert item["assets"]["data"]["type"] == "image/jpeg"
    assert item["assets"]["labels"]["href"] == "labels.geojson"
    assert all(f["geometry"] is None for f in collection["features"])


def test_detections_table_and_unknown_asset(pipeline: Pipeline, scene_and_photo: tuple) -> None:
    _, scene, _ = scene_and_photo
    table = _skyeye(pipeline, "detections", str(scene.asset_id))
    assert table.startswith("it/stac/stac scene.tif")
    with pipeline.engine.connect() as conn:
        count = len(catalog.asset_detections(conn, scene.asset_id))
    if count:
        assert "lon, lat (centre)" in table and len(table.splitlines()) == count + 3
    else:
        assert "no detections" in table
    with pytest.raises(subprocess.CalledProcessError) as failed:
        _skyeye(pipeline, "stac", "00000000-0000-4000-8000-000000000000")
    assert failed.value.returncode == 2 and "no asset" in failed.value.stderr
