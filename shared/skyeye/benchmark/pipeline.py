"""The embedded pipeline's throughput, warm, and the encoder's calls per tile meanwhile.

Throughput runs from the first upload to the moment the last asset is done in the catalog
(upload and event, planner, worker, Serve, PostgreSQL, the finisher). Tiles are counted as the
catalog counts them (``tiles_planned``), which for these images is one per image, as the raw
model counts them. The encoder's calls are Ray Serve's own request counter of the
VisionEncoder deployment, read from the Ray head's metrics port before and after the run. And
where the machine's CPU went meanwhile, by process role (:mod:`skyeye.benchmark.cpu`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skyeye.stack import StackError

from . import cpu
from .scratch import ScratchStack
from .stats import rate

__all__ = ["ENCODER", "STANDING_QUESTION", "run", "throughput", "warm_up"]

ENCODER = "VisionEncoder"
# The standing question (and the answer that fires it) the pipeline run carries on every tile.
STANDING_QUESTION = ("Are there any boats in the image?", "yes")


def warm_up(scratch: ScratchStack, paths: Sequence[Path], timeout_s: float) -> None:
    """Run each file through the pipeline alone, so every process has served a request.

    Two, one after the other: the first loads what loads lazily, and Serve's request counter
    of each deployment has been exported once before the measured run reads it.
    """
    for n, path in enumerate(paths):
        landed = scratch.upload(path, f"warm-up/{n}-{path.name}")
        scratch.wait_done([landed.asset_id], timeout_s)


def throughput(
    scratch: ScratchStack, paths: Sequence[Path], prefix: str, timeout_s: float
) -> dict[str, Any]:
    """Upload every file at once, wait until all are done; tiles/s over that span."""
    started = time.time()
    landed = scratch.upload_all(paths, prefix)
    done_at = scratch.wait_done([item.asset_id for item in landed], timeout_s)
    tiles = scratch.tiles([item.asset_id for item in landed])
    seconds = done_at - started
    return {
        "assets": len(landed),
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(rate(tiles, seconds), 3),
    }


def run(
    scratch: ScratchStack,
    paths: Sequence[Path],
    warm: Sequence[Path],
    timeout_s: float,
) -> dict[str, Any]:
    """Warm up, then one measured run with the standing question on, counting encoder calls."""
    question, fires_on = STANDING_QUESTION
    with scratch.standing_question(question, fires_on):
        warm_up(scratch, warm, timeout_s)
        before = scratch.serve_requests(ENCODER)
        cpu_before = cpu.snapshot()
        figure = throughput(scratch, paths, "pipeline", timeout_s)
        cpu_after = cpu.snapshot()
        after = scratch.serve_requests(ENCODER)
    calls = after - before
    if figure["tiles"] < 1:
        raise StackError("the pipeline run planned no tiles")
    figure["standing_question"] = question
    figure["encoder_calls"] = calls
    figure["encoder_calls_per_tile"] = round(calls / figure["tiles"], 2)
    figure["cpu"] = cpu.usage(cpu_before, cpu_after, figure["tiles"])
    return figure
