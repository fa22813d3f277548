"""Sample inputs for the demo and the tests: the shipped images, generated rasters and clips.

The shipped files sit beside this module: two real aerial photos (see README.md here) and
``world-lake.png``, a held-out scene of the lab's procedural world (the kind of image
skyeye-tiny knows), rendered once by ``skyeye.lab.world`` so that the runtime never imports the
lab (``tests/unit/test_world.py`` checks the file still matches its render).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import av
import numpy as np
import rasterio
from affine import Affine

AERIAL_PHOTOS = ("aero1.jpg", "aero3.jpg")
WORLD_SCENE = "world-lake.png"


def _shipped(name: str) -> Path:
    return Path(str(resources.files("skyeye.samples") / name))


def aerial_photos() -> list[Path]:
    """The two shipped aerial photographs (640x480 JPEG)."""
    return [_shipped(name) for name in AERIAL_PHOTOS]


def world_scene() -> Path:
    """A held-out scene of the procedural world (448x448 PNG), never trained on.

    It shows a lake with buildings, ships and a storage tank.
    """
    return _shipped(WORLD_SCENE)


def write_geotiff(
    path: Path,
    *,
    size: int = 512,
    seed: int = 0,
    origin: tuple[float, float] = (500_000.0, 5_300_000.0),
) -> Path:
    """A 3-band 8-bit GeoTIFF in UTM 33N (10 m pixels) with fields, a river, a road and roofs.

    Deterministic for a seed, so tests can rely on what is where. ``origin`` is the upper-left
    corner's easting and northing (the default lies in Austria, near 15 E 47.8 N).
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
        "transform": Affine(10.0, 0.0, origin[0], 0.0, -10.0, origin[1]),  # 10 m, north-up
        "photometric": "RGB",
        "compress": "deflate",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def clip_frame(
    time_s: float, *, width: int = 160, height: int = 96, cut_at: float | None = None
) -> np.ndarray:
    """The frame :func:`write_clip` shows at ``time_s``.

    A bright square crosses a patchwork left to right: green fields before ``cut_at``, grey town
    blocks from it.
    """
    yy, xx = np.mgrid[0:height, 0:width]
    cell = max(height // 6, 1)
    checker = ((yy // cell + xx // cell) % 2).astype(np.int16) * 30
    after_cut = cut_at is not None and time_s >= cut_at
    base = np.array([150, 150, 160] if after_cut else [40, 110, 40], dtype=np.int16)
    image = (base + checker[..., None]).astype(np.uint8)
    x, y, side = square_at(time_s, width=width, height=height)
    image[y : y + side, x : x + side] = (250, 60, 40)
    return image


def square_at(time_s: float, *, width: int = 160, height: int = 96) -> tuple[int, int, int]:
    """Left, top and side in pixels of :func:`clip_frame`'s square: 20 px per second."""
    side = height // 4
    return int(20 * time_s) % (width - side), height // 2 - side // 2, side


def write_clip(
    path: Path,
    *,
    seconds: float = 4.0,
    fps: int = 10,
    width: int = 160,
    height: int = 96,
    cut_at: float | None = None,
) -> Path:
    """A short H.264 MP4 of :func:`clip_frame`, one keyframe a second; deterministic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # one thread: x264's output then depends on nothing but the frames
        stream.options = {"g": str(fps), "threads": "1", "preset": "veryfast", "crf": "18"}
        for i in range(round(seconds * fps)):
            image = clip_frame(i / fps, width=width, height=height, cut_at=cut_at)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path
