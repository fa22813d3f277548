"""The scene plan's overview and the reads the worker makes of it, on tiny generated scenes."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from skyeye.catalog import Detection, TaskOutcome
from skyeye.contracts import Task, TaskKind, Tile, WorkItem, WorkItemKind, asset_id_for
from skyeye.imagery import geo, scenes
from skyeye.imagery.images import UnreadableImage
from skyeye.samples import write_geotiff
from skyeye.settings import Settings

SETTINGS = Settings(tile_size=64, tile_overlap=8)


def _overview_item(plan: scenes.Plan, tile: Tile) -> WorkItem:
    asset_id = asset_id_for("incoming", "scene.tif", "v1")
    return WorkItem(
        work_item_id=asset_id,
        kind=WorkItemKind.OVERVIEW,
        asset_id=asset_id,
        bucket="incoming",
        key="scene.tif",
        image_width=plan.width,
        image_height=plan.height,
        tile=tile,
        scene=plan.scene,
        tasks=[Task(kind=TaskKind.CAPTION, text="briefly describe the image")],
    )


def test_a_scene_of_several_tiles_gets_an_overview_read_at_the_tile_size(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=200)
    with rasterio.open(path) as ds:
        plan = scenes.plan(ds, SETTINGS)
        assert plan is not None and len(plan.tiles) == 16 and plan.overview is not None
        tile = plan.overview.as_tile()
        assert tile == Tile(index=0, x=0, y=0, width=200, height=200)
        image, georef = scenes.read(ds, _overview_item(plan, tile))
        assert image.shape == (64, 64, 3) and georef == plan.overview
        preview = scenes.read_preview(ds, plan.scene, 100)
        full = np.moveaxis(ds.read(), 0, -1)
    assert preview.shape == (100, 100, 3)
    # the preview shows what the tiles show: the scene's own colours, averaged 2 x 2
    expected = full.reshape(100, 2, 100, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(preview - expected).max() <= 1


def test_a_scene_that_is_one_tile_needs_no_overview(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "small.tif", size=60)
    with rasterio.open(path) as ds:
        plan = scenes.plan(ds, SETTINGS)
    assert plan is not None and len(plan.tiles) == 1 and plan.overview is None


def test_an_overview_that_no_longer_matches_the_scene_is_refused(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=200)
    with rasterio.open(path) as ds:
        plan = scenes.plan(ds, SETTINGS)
        assert plan is not None
        stale = _overview_item(plan, Tile(index=0, x=0, y=0, width=300, height=200))
        with pytest.raises(UnreadableImage, match="no longer matches its plan at overview"):
            scenes.read(ds, stale)


def test_the_overview_is_read_with_the_planned_bands_and_stretch(tmp_path: Path) -> None:
    # 16-bit, 2-98 % stretch: the overview must look like the tiles, not like raw numbers
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, size=(3, 150, 150), dtype=np.uint16)
    path = tmp_path / "u16.tif"
    profile = {"driver": "GTiff", "width": 150, "height": 150, "count": 3, "dtype": "uint16"}
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 5_300_000), **profile
    ) as dst:
        dst.write(data)
    with rasterio.open(path) as ds:
        plan = scenes.plan(ds, SETTINGS)
        assert plan is not None and plan.overview is not None
        image, _ = scenes.read(ds, _overview_item(plan, plan.overview.as_tile()))
    assert image.dtype == np.uint8 and 64 < image.mean() < 192


LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'


def _write(path: Path, crs: str, transform: Affine, size: int = 40) -> Path:
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
        dst.write(np.full((3, size, size), 120, dtype=np.uint8))
    return path


@pytest.mark.parametrize(
    ("crs", "transform", "message"),
    [
        (LOCAL_CS, Affine(1, 0, 0, 0, -1, 40), "cannot be transformed to longitude/latitude"),
        ("EPSG:32633", Affine(10, 0, 1e8, 0, -10, 5e6), "outside the valid area"),
        ("EPSG:4326", Affine(0.01, 0, 1000, 0, -0.01, 10), "longitude 1000.4, beyond"),
        ("EPSG:4326", Affine(0.01, 0, 10, 0, -0.01, 95), "latitude 95, beyond"),
    ],
    ids=["local-cs", "utm-out-of-domain", "lon-1000", "lat-95"],
)
def test_a_scene_that_is_no_place_on_the_globe_is_not_planned(
    tmp_path: Path, crs: str, transform: Affine, message: str
) -> None:
    path = _write(tmp_path / "bad.tif", crs, transform)
    with rasterio.open(path) as ds, pytest.raises(geo.InvalidGeoreference, match=message):
        scenes.plan(ds, Settings(tile_size=64, target_gsd=10.0))


def test_a_scene_across_the_antimeridian_plans_a_bbox_with_west_east_of_east(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "dateline.tif", "EPSG:4326", Affine(0.025, 0, 179.5, 0, -0.025, 11))
    with rasterio.open(path) as ds:
        plan = scenes.plan(ds, SETTINGS)
    assert plan is not None and plan.lon_lat_bbox == (179.5, 10.0, -179.5, 11.0)


def test_a_detection_that_is_no_place_on_the_globe_keeps_no_footprint(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=60)
    with rasterio.open(path) as ds:
        tile = geo.overview_tile(geo.SceneMeta.of(ds), 60)
    outcome = TaskOutcome(
        Task(kind=TaskKind.GROUNDING, text="ship"),
        "[detection] ship",
        "<p>ship</p> {<0><0><50><50>}",
        True,
        {"boxes": []},
        [Detection("ship", 0, 0, 30, 30, box_0_100=(0, 0, 50, 50))],
    )
    [good] = scenes.locate(outcome, tile, "EPSG:32633").detections
    assert good.footprint is not None and good.lon_lat_bbox is not None
    # the same box in a CRS PROJ cannot transform: no footprint, and no exception
    [bad] = scenes.locate(outcome, tile, LOCAL_CS).detections
    assert bad.footprint is None and bad.lon_lat_bbox is None
    assert bad.centrality == good.centrality == 0.5
