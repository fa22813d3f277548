"""Landing-to-last-result latency at a steady offered load.

Images arrive one every ``1 / rate`` seconds (a steady stream: a burst would measure the
queue, not the path). An image's latency runs from the moment its object was in the bucket
(the upload returned) to the moment its last work item's results were stored (the work item's
``completed_at`` in the catalog, PostgreSQL's clock on the same machine).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .scratch import Landed, ScratchStack
from .stats import percentile, rate

__all__ = ["at_load"]


def at_load(
    scratch: ScratchStack,
    paths: Sequence[Path],
    prefix: str,
    tiles_per_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """Offer ``paths`` (one tile each) at ``tiles_per_s``; the latency percentiles."""
    interval = 1 / tiles_per_s
    start = time.monotonic()
    landed: list[Landed] = []
    for n, path in enumerate(paths):
        time.sleep(max(0.0, start + n * interval - time.monotonic()))
        # numbered: a file offered twice is two objects, so two assets
        landed.append(scratch.upload(path, f"{prefix}/{n:03d}-{path.name}"))
    ids = [item.asset_id for item in landed]
    scratch.wait_done(ids, timeout_s)
    finished = scratch.last_results(ids)
    latencies = [finished[item.asset_id] - item.landed_at for item in landed]
    figure: dict[str, Any] = {
        "offered_tiles_per_s": round(tiles_per_s, 3),
        "assets": len(landed),
        "tiles": scratch.tiles(ids),
    }
    if len(landed) > 1:
        # uploads slower than the interval would offer less than asked: say what was offered
        span = landed[-1].landed_at - landed[0].landed_at
        figure["arrived_tiles_per_s"] = round(rate(len(landed) - 1, span), 3)
    for q in (50, 95, 99):
        figure[f"p{q}_s"] = round(percentile(latencies, q), 3)
    figure["max_s"] = round(max(latencies), 3)
    return figure
