"""One bench run: its plan (quick or full), the settings its stack runs with, the phases.

Phases, in the order they run (``--only`` picks some):

- ``tiling``: planner tiling throughput and peak RSS on a large generated scene;
- ``model``: the bare model in process (raw tiles/s), the encoder and decoder rates;
- ``pipeline``: the embedded pipeline's tiles/s and the encoder's calls per tile;
- ``latency``: landing-to-last-result latency at three offered loads;
- ``workers``: throughput with 1, 2 (full: 3) worker processes;
- ``autoscaling``: Serve's replicas through a burst, on a stack of its own whose model stages
  autoscale between 1 and 2 small replicas.

The phases without the stack run first, so nothing else of the bench competes with them; the
pipeline, latency and workers phases share one stack, with the model stages as configured.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyeye.alerts import AskCondition
from skyeye.model import tasks
from skyeye.settings import DeploymentSettings, Settings

from . import PHASES, autoscaling, images, latency, machine, pipeline, raw, stages, tiling
from .scratch import RAY_ENV, ScratchStack

__all__ = ["FULL", "LOADS", "QUICK", "Plan", "bench_settings", "run"]

# on the stack with the model stages as configured; the burst has a stack of its own
_CONFIGURED_PHASES = {"pipeline", "latency", "workers"}
_STACK_PHASES = _CONFIGURED_PHASES | {"autoscaling"}
# offered loads, as fractions of the pipeline's measured throughput
LOADS = (0.25, 0.5, 0.9)
# Small CPU replicas that may double under load; the delays let a burst of a minute show the
# way up and back down (Serve's defaults: 30 s up, 600 s down). On 2 cores a stage's ongoing
# requests, averaged over the window, stay near 1 under a burst (the stages share the cores,
# and each drains its batch quickly), so a target of 1 kept both stages at one replica through
# a 15 s burst; at 0.25 both double within it.
_SCALING = {
    "num_cpus": 0.25,
    "target_ongoing_requests": 0.25,
    "min_replicas": 1,
    "max_replicas": 2,
    "upscale_delay_s": 2.0,
    "downscale_delay_s": 10.0,
    "look_back_period_s": 5.0,
}


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    name: str
    images: int  # raw model and pipeline, the same files
    raw_repeats: int  # the raw model's best run of these counts
    stage_tiles: int  # encoder and decoder rates
    latency_window_s: float  # each load offers about this many seconds of arrivals...
    latency_assets: tuple[int, int]  # ...within these bounds
    burst: int
    settle_s: float  # the longest wait for the stages to be back at their minimum
    worker_counts: tuple[int, ...]
    worker_images: int
    scene_size: int

    @property
    def pool(self) -> int:
        """Distinct images written for the run."""
        return max(self.images, self.burst, self.worker_images, self.latency_assets[1])


QUICK = Plan("quick", 8, 2, 4, 4.0, (3, 8), 24, 15.0, (1, 2), 6, 2048)
FULL = Plan("full", 40, 3, 8, 40.0, (10, 40), 60, 120.0, (1, 2, 3), 24, 5000)


def bench_settings(
    base: Settings, home: Path, plan: Plan, *, autoscaling: bool = False
) -> Settings:
    """``base`` on a scratch embedded stack in ``home``; ``autoscaling``: small model replicas.

    Every endpoint is left to the embedded stack, whatever the environment names, so the bench
    never runs against a user's services; the work topic has a partition per worker process.
    The model stages are the user's, except on the burst's stack (``autoscaling``): there they
    scale between 1 and 2 small replicas with short delays.
    """
    scaled = {
        name: DeploymentSettings.model_validate({**getattr(base, name).model_dump(), **_SCALING})
        for name in ("encoder", "decoder")
        if autoscaling
    }
    return base.model_copy(
        update={
            "home": home,
            "s3_endpoint": None,
            "kafka_bootstrap": None,
            "database_url": None,
            "ray_address": None,
            "fault_file": None,
            "api": base.api.model_copy(update={"port": 0}),
            "observability": base.observability.model_copy(update={"port": None}),
            "topic_partitions": max(base.topic_partitions, *plan.worker_counts),
            **scaled,
        }
    )


def _settings_summary(settings: Settings) -> dict[str, Any]:
    return {
        "model_dir": str(settings.resolved_model_dir),
        "device": settings.device,
        "encoder": settings.encoder.model_dump(),
        "decoder": settings.decoder.model_dump(),
        "embedder": settings.embedder.model_dump(),
        "decoding": settings.decoding.model_dump(),
        "ray_num_cpus": settings.ray_num_cpus,
        "ray_env": RAY_ENV,
        "topic_partitions": settings.topic_partitions,
        "tasks": [t.model_dump(mode="json") for t in tasks.default_tasks(settings)],
    }


def _measured(progress: Callable[[str], None], what: str, work: Callable[[], Any]) -> Any:
    """``work()`` with the machine's load before and after, and its duration, recorded."""
    progress(f"measuring {what}")
    load, started = machine.load_1m(), time.monotonic()
    figure = work()
    extra = {"load_1m": [load, machine.load_1m()], "phase_s": round(time.monotonic() - started, 1)}
    if isinstance(figure, dict):
        figure.update(extra)
        return figure
    return {"runs": figure, **extra}


def _model_phase(
    report: dict[str, Any],
    settings: Settings,
    plan: Plan,
    paths: list[Path],
    instructions: list[str],
    progress: Callable[[str], None],
) -> None:
    """Raw tiles/s both ways, then the encoder and decoder rates, on the bare model."""
    model = raw.BareModel.load(settings)
    used = paths[: plan.images]
    # untimed: every code path of the model run once before the figures
    raw.throughput(model, settings, used[:2], instructions)
    raw.throughput(model, settings, used[:2], instructions, batched=True)
    repeats = plan.raw_repeats
    report["raw"] = _measured(
        progress,
        f"raw model (best of {repeats})",
        lambda: raw.best_throughput(model, settings, used, instructions, repeats=repeats),
    )
    report["raw_batched"] = _measured(
        progress,
        f"raw model, tiles decoded together (best of {repeats})",
        lambda: raw.best_throughput(
            model, settings, used, instructions, repeats=repeats, batched=True
        ),
    )
    tiles = [t for p in paths[: plan.stage_tiles] for t in raw.read_tiles(p.read_bytes(), settings)]
    batch = settings.encoder.max_batch_size
    report["encoder"] = _measured(
        progress, "encoder rates", lambda: stages.encoder_rates(model, tiles * 2, batch)
    )
    embeds = model.encode(tiles, batch)
    report["decoder"] = _measured(
        progress, "decoder rates", lambda: stages.decoder_rates(model, embeds, instructions)
    )


def _stack_phases(
    report: dict[str, Any],
    settings: Settings,
    plan: Plan,
    phases: Collection[str],
    paths: list[Path],
    warm: list[Path],
    progress: Callable[[str], None],
) -> None:
    """The phases on the bench's own stacks: the model stages as configured, then the burst's.

    Throughput and latency are measured on the stages as the user configured them (one replica
    each by default): a replica that the autoscaler starts during a run loads the model on the
    cores the run is measured on. The burst gets a stack of its own, whose stages autoscale.
    """
    timeout_s = 60 + 30 * plan.pool
    if _CONFIGURED_PHASES & set(phases):
        with ScratchStack.running(settings, progress) as scratch:
            _configured_phases(report, scratch, plan, phases, paths, warm, timeout_s, progress)
    if "autoscaling" in phases:
        burst_settings = bench_settings(
            settings, settings.home.with_name("home-burst"), plan, autoscaling=True
        )
        with ScratchStack.running(burst_settings, progress) as scratch:
            report["autoscaling"] = _measured(
                progress,
                f"autoscaling through a burst of {plan.burst} images",
                lambda: autoscaling.burst(
                    scratch, paths[: plan.burst], plan.settle_s, timeout_s, progress
                ),
            )


def _configured_phases(
    report: dict[str, Any],
    scratch: ScratchStack,
    plan: Plan,
    phases: Collection[str],
    paths: list[Path],
    warm: list[Path],
    timeout_s: float,
    progress: Callable[[str], None],
) -> None:
    """Pipeline, latency and worker phases on one stack."""
    if "pipeline" in phases or "latency" in phases:
        report["pipeline"] = _measured(
            progress,
            "the pipeline",
            lambda: pipeline.run(scratch, paths[: plan.images], warm, timeout_s),
        )
        report["encoder_calls_per_tile"] = report["pipeline"]["encoder_calls_per_tile"]
        if "raw" in report:
            ratio = report["pipeline"]["tiles_per_s"] / report["raw"]["tiles_per_s"]
            report["pipeline_raw_ratio"] = round(ratio, 3)
    if "latency" in phases:
        measured = report["pipeline"]["tiles_per_s"]
        low, high = plan.latency_assets
        report["latency"] = []
        for load in LOADS:
            offered = load * measured
            count = min(high, max(low, round(offered * plan.latency_window_s)))
            chosen = [paths[n % len(paths)] for n in range(count)]
            work = functools.partial(
                latency.at_load, scratch, chosen, f"latency-{load:.2f}", offered, timeout_s
            )
            what = f"latency at {load:.0%} of the pipeline's throughput"
            report["latency"].append({"load": load, **_measured(progress, what, work)})
    if "workers" in phases:
        report["workers"] = _measured(
            progress,
            "throughput per worker process count",
            lambda: autoscaling.workers(
                scratch, paths[: plan.worker_images], plan.worker_counts, timeout_s, progress
            ),
        )


def run(
    base: Settings,
    plan: Plan,
    phases: Collection[str],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every figure of ``phases`` as one JSON-ready report.

    The scratch folder (generated images, the stack's state and logs) is removed after a run
    that succeeded and kept, with a message saying where, after one that failed.
    """
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="skyeye-bench-"))
    settings = bench_settings(base, folder / "home", plan)
    report: dict[str, Any] = {
        "mode": plan.name,
        "phases": [p for p in PHASES if p in phases],
        "model": settings.resolved_model_dir.name,
        "machine": machine.describe(settings.device),
        "settings": _settings_summary(settings),
    }
    try:
        paths = images.write_images(folder / "images", plan.pool)
        warm = images.write_images(folder / "images", 2, seed=10_000, prefix="warm")
        # the raw model is asked what the pipeline's tiles are: the default tasks and the
        # standing question the pipeline run carries
        question, fires_on = pipeline.STANDING_QUESTION
        standing = AskCondition(question=question, fires_on=fires_on).task
        instructions = [tasks.instruction(t) for t in [*tasks.default_tasks(settings), standing]]
        report["settings"]["standing_question"] = question
        if "tiling" in phases:
            report["tiling"] = _measured(
                progress,
                f"tiling a {plan.scene_size} px scene",
                lambda: tiling.measure(plan.scene_size),
            )
        if "model" in phases:
            _model_phase(report, settings, plan, paths, instructions, progress)
        if _STACK_PHASES & set(phases):
            _stack_phases(report, settings, plan, phases, paths, warm, progress)
    except BaseException:
        progress(f"the bench failed; its images, state and logs are kept in {folder}")
        raise
    shutil.rmtree(folder, ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report
