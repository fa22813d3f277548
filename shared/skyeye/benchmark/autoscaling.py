"""How the pipeline grows under load: Serve's replicas in a burst, and more worker processes.

A burst of images lands at once; each Serve stage's replicas (running, and starting) are sampled
(:class:`~skyeye.benchmark.replicas.ReplicaWatch`) from before the burst until the stages are
back at their minimum or the settling time has passed. A stage's count is the replicas Serve
keeps for it, starting or running: what its autoscaler decided (a new replica of the model
takes seconds to load before it runs). Serve scales by the
``autoscaling_config`` the settings give each stage; how soon it scales back is Serve's
downscale delay, which the figure reports rather than waits out.

Then the same images run through 1, 2 (3) worker processes in one consumer group: each extra
worker is started as the launcher starts the first (``python -m skyeye.services.worker`` with
the launcher's environment), and a run starts once every worker holds a share of the work
topic's partitions, so no rebalance falls inside the measured span.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from skyeye.stack import StackError

from . import pipeline
from .replicas import Replicas, ReplicaWatch
from .scratch import ScratchStack
from .stats import stage_scaling

__all__ = ["SCALED", "burst", "workers"]

# the model stages whose replicas the settings let scale, and the field that sizes each
SCALED = {"VisionEncoder": "encoder", "LlmDecoder": "decoder"}
_POLL_S = 0.5


def _changes(timeline: Sequence[tuple[float, dict[str, Replicas]]]) -> list[dict[str, Any]]:
    """The samples where any count changed, with the first and the last: the readable timeline."""
    kept: list[dict[str, Any]] = []
    for n, (t, replicas) in enumerate(timeline):
        if n in (0, len(timeline) - 1) or replicas != timeline[n - 1][1]:
            counts = {stage: dataclasses.asdict(r) for stage, r in replicas.items()}
            kept.append({"t_s": round(t, 1), "replicas": counts})
    return kept


def burst(
    scratch: ScratchStack,
    paths: Sequence[Path],
    settle_s: float,
    timeout_s: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Land ``paths`` at once; each scaled stage's replicas from min to peak and back.

    The burst waits (up to ``settle_s``) for the stages to be back at their minimum after the
    earlier phases, so its timeline starts there; ``at_minimum_before`` says whether they were.
    """
    settings = scratch.settings
    sizing = {stage: getattr(settings, field) for stage, field in SCALED.items()}
    watch = ReplicaWatch(settings)

    def settled() -> bool:
        """Wait up to ``settle_s`` for every scaled stage at its minimum; whether it came."""
        deadline = time.monotonic() + settle_s
        while any(
            stage not in watch.latest() or watch.latest()[stage].kept > size.min_replicas
            for stage, size in sizing.items()
        ):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        return True

    try:
        if not watch.wait_first(timeout_s=60):
            raise StackError("Serve's status could not be read from the bench's cluster in 60 s")
        progress(f"waiting up to {settle_s:g} s for the model stages at their minimum")
        at_minimum_before = settled()
        started = time.time()
        landed = scratch.upload_all(paths, "burst")
        done_at = scratch.wait_done([item.asset_id for item in landed], timeout_s)
        progress(
            f"burst done in {done_at - started:.1f} s; waiting up to {settle_s:g} s for the minimum"
        )
        settled()
    finally:
        samples = watch.stop()
    timeline = [(round(t - started, 1), replicas) for t, replicas in samples]
    # from the last sample before the burst: the wait for the minimum is not the burst's
    before = [n for n, (t, _) in enumerate(timeline) if t <= 0]
    timeline = timeline[before[-1] if before else 0 :]
    kept = [(t, {stage: r.kept for stage, r in replicas.items()}) for t, replicas in timeline]
    stages = {
        stage: {
            **dataclasses.asdict(stage_scaling(kept, stage)),
            "peak_running": max(r[stage].running for _, r in timeline if stage in r),
            "autoscaling_config": size.autoscaling_config(),
        }
        for stage, size in sizing.items()
    }
    return {
        "assets": len(landed),
        "burst_done_s": round(done_at - started, 1),
        "settle_wait_s": settle_s,
        "at_minimum_before": at_minimum_before,
        "samples": len(samples),
        "unanswered_samples": watch.unanswered,
        "stages": stages,
        "timeline": _changes(timeline),
    }


def _wait_rebalanced(scratch: ScratchStack, count: int, timeout_s: float) -> bool:
    """Whether, within ``timeout_s``, each of ``count`` workers held its own partitions."""
    partitions = scratch.settings.topic_partitions
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = scratch.worker_partitions()
        shares = [h for h in held if h]
        if (
            len(held) == count
            and len(shares) == count
            and len(set().union(*shares)) == sum(len(h) for h in shares) == partitions
        ):
            return True
        time.sleep(0.5)
    return False


def workers(
    scratch: ScratchStack,
    paths: Sequence[Path],
    counts: Sequence[int],
    timeout_s: float,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Throughput of the same images with each number of worker processes in ``counts``."""
    runs = []
    running = 1
    for count in counts:
        while running < count:
            scratch.add_worker()
            running += 1
        progress(f"{count} worker process(es): waiting for each to hold its partitions")
        rebalanced = _wait_rebalanced(scratch, count, timeout_s=60)
        before = scratch.items_done()
        figure = pipeline.throughput(scratch, paths, f"workers-{count}", timeout_s)
        after = scratch.items_done()
        runs.append(
            {
                "workers": count,
                **figure,
                "rebalanced_before_run": rebalanced,
                "items_per_worker": [int(a - b) for a, b in zip(after, before, strict=True)],
            }
        )
        progress(f"{count} worker process(es): {figure['tiles_per_s']:.2f} tiles/s")
    return runs
