"""Sample inputs for the demo and the tests: the shipped aerial photos and generated rasters."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image

from skyeye.world import held_out_scene_seeds, render_scene

AERIAL_PHOTOS = ("aero1.jpg", "aero3.jpg")


def aerial_photos() -> list[Path]:
    folder = resources.files("skyeye") / "samples"
    return [Path(str(folder / name)) for name in AERIAL_PHOTOS]


def write_world_scene(path: Path, *, seed: int = 3) -> Path:
    """A held-out scene of the procedural world as a PNG: the kind of image skyeye-tiny knows.

    Its held-out seeds are never trained on; seed 3's first scene is a lake with buildings, ships
    and a storage tank, at an easy difficulty.
    """
    scene = render_scene(held_out_scene_seeds(1, seed)[0], difficulty=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(path)
    return path


def write_geotiff(path: Path, *, size: int = 512, seed: int = 0) -> Path:
    """A 3-band 8-bit GeoTIFF in UTM 33N (10 m pixels) with fields, a river, a road and roofs.

    Deterministic for a seed, so tests can rely on what is where.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.empty((3, size, size), dtype=np.uint8)
    # patchwork of fields
    cell = max(size // 8, 1)
    field_colors = rng.integers(60, 170, size=(8 + 1, 8 + 1, 3))
    image[:] = np.moveaxis(field_colors[yy // cell, xx // cell], -1, 0)
    # a meandering river and a straight road
    river = np.abs(yy - (size / 2 + size / 8 * np.sin(xx / size * 2 * np.pi))) < size / 40
    image[:, river] = np.array([30, 60, 120], dtype=np.uint8)[:, None]
    road = np.abs(xx - size * 0.7) < max(size / 128, 1)
    image[:, road] = 200
    # a few buildings (bright roofs)
    for _ in range(6):
        bx, by = rng.integers(0, size - size // 16, size=2)
        side = size // 24
        image[:, by : by + side, bx : bx + side] = np.array([210, 90, 70], dtype=np.uint8)[
            :, None, None
        ]
    noise = rng.integers(-8, 9, size=image.shape)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_300_000.0),  # 10 m, north-up
        "photometric": "RGB",
        "compress": "deflate",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path
