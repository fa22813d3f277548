"""Tiling throughput and memory on a large generated scene.

Writes a deflate-compressed, 512 px block-tiled 3-band uint8 GeoTIFF of N x N pixels with
overviews (the layout of a COG), then plans the scene into 448 px tiles and reads every one
through skyeye.imagery.geo, reporting tiles/s and the peak resident memory of the planning and
reading process. The scene is written by a child process, so its buffers do not count in that peak.

    .venv/bin/python bench/tile_scene.py --size 5000
    .venv/bin/python bench/tile_scene.py --size 20000 --keep /tmp/scene20k.tif --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from skyeye.imagery import geo

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


def tile_all(
    path: Path, tile_size: int, overlap: int, target_gsd: float | None, cache_mb: int | None
) -> dict:
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
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
        "gdal_cache_mb": cache_mb or "default",
        "tiles": planned,
        "read": read,
        "skipped": skipped,
        "open_and_stretch_s": round(reading - started, 3),
        "read_s": round(finished - reading, 3),
        "tiles_per_s": round(read / (finished - reading), 1),
        # Linux reports ru_maxrss in KiB; the peak before reading is imports, open and stretch
        "peak_rss_before_read_mib": round(baseline / 1024, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "checksum": checksum,
    }


def main(argv: list[str] | None = None) -> None:
    """Write the scene (in a child process) unless --keep has it, tile it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=5000, help="scene side in px (default 5000)")
    parser.add_argument("--tile-size", type=int, default=geo.DEFAULT_TILE_SIZE)
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in px (default 32)")
    parser.add_argument(
        "--target-gsd", type=float, default=None, help="metres/pixel (scene: 10; default native)"
    )
    parser.add_argument(
        "--cache-mb", type=int, default=64, help="GDAL block cache, MB (default 64; 0: GDAL's)"
    )
    parser.add_argument("--keep", type=Path, help="write the scene here and reuse it if present")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "scene.tif"
        written = 0.0
        if not path.exists():
            started = time.perf_counter()
            # spawn: a fresh child, so the writer's memory never enters this process's peak RSS
            child = multiprocessing.get_context("spawn").Process(
                target=write_scene, args=(path, args.size)
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"writing the scene failed (exit {child.exitcode})")
            written = time.perf_counter() - started
        result = tile_all(path, args.tile_size, args.overlap, args.target_gsd, args.cache_mb)
        result["write_s"] = round(written, 1)
        result["file_mib"] = round(path.stat().st_size / 2**20, 1)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
