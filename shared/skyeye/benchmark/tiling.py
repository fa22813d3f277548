"""The planner's side of a large scene: tiling throughput and peak memory.

A deflate-compressed, 512 px block-tiled 3-band uint8 GeoTIFF of N x N pixels with overviews
(the layout of a COG) is planned into tiles and every tile read through
:mod:`skyeye.imagery.geo`, as the planner plans and the worker reads a scene. The scene is
written by one child process and tiled by another (each a new interpreter running this
module), so neither the writer's buffers nor the caller's own imports (torch, a loaded model)
count in the peak resident memory reported.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from skyeye.imagery import geo

__all__ = ["BLOCK", "measure", "tile_all", "write_scene"]

BLOCK = 512


def write_scene(path: Path, size: int) -> None:
    """Deterministic fields-and-noise texture, written one block row at a time."""
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_300_000.0),
        "photometric": "RGB",
        "compress": "deflate",
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "BIGTIFF": "IF_SAFER",
    }
    rng = np.random.default_rng(0)
    colors = rng.integers(40, 200, size=(size // 256 + 1, size // 256 + 1, 3), dtype=np.uint8)
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for row_off in range(0, size, BLOCK):
            rows = np.arange(row_off, min(row_off + BLOCK, size))
            # 256 px fields of one colour each, plus a little noise so deflate has work to do
            strip = colors[rows[:, None] // 256, cols[None, :] // 256]
            strip = strip + rng.integers(0, 8, size=strip.shape, dtype=np.uint8)
            dst.write(np.moveaxis(strip, -1, 0), window=Window(0, row_off, size, len(rows)))
        factors = [f for f in (2, 4, 8, 16, 32) if size // f >= BLOCK // 2]
        dst.build_overviews(factors, Resampling.average)


def _peak_rss_mib() -> float:
    """This process's peak resident memory, MiB, since it started its program.

    Linux's ``VmHWM``: ``ru_maxrss`` would carry over the peak of the process that forked this
    one (the kernel keeps it across exec), and the bench's own process holds torch and a model.
    """
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    # elsewhere: ru_maxrss (KiB on Linux and the BSDs), which the caller's peak may inflate
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def tile_all(
    path: Path, tile_size: int, overlap: int, target_gsd: float | None, cache_mb: int | None
) -> dict[str, Any]:
    """Plan the scene and read every tile with data; returns timings, peak memory, a checksum."""
    started = time.perf_counter()
    # GDAL's block cache defaults to 5 % of RAM and would hold every decoded block of the scene;
    # capping it is what keeps memory per tile rather than per scene (rasterio takes bytes here)
    env = rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20) if cache_mb else rasterio.Env()
    with env, rasterio.open(path) as ds:
        meta = geo.SceneMeta.of(ds)
        bands = geo.select_bands(meta)
        stretch = geo.default_stretch(ds, bands)
        planned = geo.tile_count(meta, tile_size=tile_size, overlap=overlap, target_gsd=target_gsd)
        read = skipped = 0
        checksum = 0
        baseline = _peak_rss_mib()
        reading = time.perf_counter()
        for tile in geo.plan_tiles(
            meta, tile_size=tile_size, overlap=overlap, target_gsd=target_gsd
        ):
            if not geo.has_data(ds, tile):
                skipped += 1
                continue
            # touch the pixels so a lazy read could not flatter the figure
            checksum += int(geo.read_tile(ds, tile, bands, stretch)[::64, ::64].sum())
            read += 1
        finished = time.perf_counter()
    return {
        "size": meta.width,
        "tile_size": tile_size,
        "overlap": overlap,
        "gdal_cache_mb": cache_mb or "default",
        "tiles": planned,
        "read": read,
        "skipped": skipped,
        "open_and_stretch_s": round(reading - started, 3),
        "read_s": round(finished - reading, 3),
        "tiles_per_s": round(read / (finished - reading), 1),
        # the peak before reading is imports, open and stretch
        "peak_rss_before_read_mib": baseline,
        "peak_rss_mib": _peak_rss_mib(),
        "checksum": checksum,
    }


def _in_fresh_process(*argv: str) -> str:
    """This module run as ``python -m`` with ``argv`` in a new interpreter; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", __name__, *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} of the scene failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def measure(
    size: int,
    *,
    tile_size: int = geo.DEFAULT_TILE_SIZE,
    overlap: int = 32,
    target_gsd: float | None = None,
    cache_mb: int | None = 64,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Write the scene (unless ``keep`` names one already there), tile it, return the figures.

    ``keep``: where to write the scene and reuse it on a later call; else a temporary file.
    ``cache_mb``: GDAL's block cache (None: GDAL's default, 5 % of RAM).
    """
    with tempfile.TemporaryDirectory(prefix="skyeye-bench-scene-") as folder:
        path = keep or Path(folder) / "scene.tif"
        written = 0.0
        if not path.exists():
            started = time.perf_counter()
            _in_fresh_process("write", str(path), str(size))
            written = time.perf_counter() - started
        options = [str(tile_size), str(overlap), str(target_gsd or ""), str(cache_mb or "")]
        result: dict[str, Any] = json.loads(_in_fresh_process("tile", str(path), *options))
        result["write_s"] = round(written, 1)
        result["file_mib"] = round(path.stat().st_size / 2**20, 1)
    return result


def _main(argv: list[str]) -> None:
    """``write PATH SIZE`` or ``tile PATH TILE_SIZE OVERLAP TARGET_GSD CACHE_MB`` (blank: unset)."""
    step, path = argv[0], Path(argv[1])
    if step == "write":
        write_scene(path, int(argv[2]))
        return
    tile_size, overlap, gsd, cache = argv[2:6]
    figures = tile_all(
        path,
        int(tile_size),
        int(overlap),
        float(gsd) if gsd else None,
        int(cache) if cache else None,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    _main(sys.argv[1:])
