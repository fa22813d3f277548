"""The scene plan's overview and the reads the worker makes of it, on tiny generated scenes."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from skyeye import scenes
from skyeye.contracts import Task, TaskKind, Tile, WorkItem, WorkItemKind, asset_id_for
from skyeye.imagery import UnreadableImage
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
