"""Tiling throughput and memory on a large generated scene.

Writes a deflate-compressed, 512 px block-tiled 3-band uint8 GeoTIFF of N x N pixels with
overviews (the layout of a COG), then plans the scene into 448 px tiles and reads every one
through skyeye.imagery.geo, reporting tiles/s and the peak resident memory of the planning and
reading process. The work is :func:`skyeye.benchmark.tiling.measure` (``skyeye bench`` reports
the same figure): the scene is written by one child process and tiled by another, so neither
the writer's buffers nor this script's own imports count in that peak.

    .venv/bin/python bench/tile_scene.py --size 5000
    .venv/bin/python bench/tile_scene.py --size 20000 --keep /tmp/scene20k.tif --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skyeye.benchmark import tiling
from skyeye.imagery import geo


def main(argv: list[str] | None = None) -> None:
    """Write the scene unless --keep has it, tile it, print the figures."""
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

    result = tiling.measure(
        args.size,
        tile_size=args.tile_size,
        overlap=args.overlap,
        target_gsd=args.target_gsd,
        cache_mb=args.cache_mb or None,
        keep=args.keep,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
