"""The images every figure is measured on: generated, deterministic, written as PNG files.

Aerial-looking 640 x 480 scenes (fields, a river, a road, bright roofs: the texture of
:func:`skyeye.samples.write_geotiff`) drawn with numpy, so the bench needs no shipped data
beyond the model and never imports the lab. The raw model and the pipeline read the same
files, the pipeline through S3 and Kafka, the raw model straight from disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skyeye.imagery import to_png

__all__ = ["HEIGHT", "WIDTH", "draw_scene", "write_images"]

# the size of the measurement: one whole-image tile each
WIDTH, HEIGHT = 640, 480


def draw_scene(seed: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """One H x W x 3 uint8 scene, the same for the same seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cell = max(min(width, height) // 6, 1)
    colors = rng.integers(60, 170, size=(height // cell + 1, width // cell + 1, 3))
    image = colors[yy // cell, xx // cell].astype(np.int16)
    # a meandering river and a straight road, placed by the seed
    phase = rng.uniform(0, 2 * np.pi)
    river_y = height / 2 + height / 6 * np.sin(xx / width * 2 * np.pi + phase)
    image[np.abs(yy - river_y) < height / 40] = (30, 60, 120)
    road_x = rng.uniform(0.2, 0.8) * width
    image[np.abs(xx - road_x) < max(width / 160, 1)] = (200, 200, 200)
    side = max(min(width, height) // 24, 1)
    for _ in range(8):
        bx, by = rng.integers(0, width - side), rng.integers(0, height - side)
        image[by : by + side, bx : bx + side] = (210, 90, 70)
    noise = rng.integers(-8, 9, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int, *, seed: int = 0, prefix: str = "scene") -> list[Path]:
    """``count`` scenes as ``folder/<prefix>-NNN.png`` (seeds ``seed``, ``seed + 1``, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{prefix}-{n:03d}.png"
        path.write_bytes(to_png(draw_scene(seed + n)))
        paths.append(path)
    return paths
