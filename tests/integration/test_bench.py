"""``skyeye bench --quick --json``, run once as a user runs it (the venv's ``skyeye``, its own
stack in a scratch folder): every figure is there and well-formed. Nothing here judges how fast
anything is; bench/README.md says how to read the figures."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skyeye.settings import Settings

SKYEYE = Path(sys.executable).parent / "skyeye"
# a guard against a hang, not a figure: the quick run takes a few minutes at most
HANG_S = 1200


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    ran = subprocess.run(
        [str(SKYEYE), "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert ran.returncode == 0, ran.stderr[-5000:]
    assert "[bench]" in ran.stderr  # progress goes to stderr, the JSON alone to stdout
    return json.loads(ran.stdout)


def _positive(*values: Any) -> bool:
    return all(isinstance(v, int | float) and v > 0 for v in values)


def test_it_says_what_it_ran_on(figures: dict[str, Any]) -> None:
    machine = figures["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] >= 1
    assert machine["platform"] and "gpu" in machine
    assert figures["mode"] == "quick" and figures["model"] == "skyeye-tiny"
    settings = figures["settings"]
    assert settings["tasks"] and settings["standing_question"]
    # the throughput stack keeps the stages as configured; the burst's autoscale
    assert settings["encoder"] == Settings().encoder.model_dump()
    burst = figures["autoscaling"]["stages"]["VisionEncoder"]["autoscaling_config"]
    assert burst["max_replicas"] > burst["min_replicas"]


def test_raw_and_pipeline_on_the_same_tiles(figures: dict[str, Any]) -> None:
    raw, pipeline = figures["raw"], figures["pipeline"]
    assert raw["tiles"] == pipeline["tiles"] > 0
    assert _positive(raw["tiles_per_s"], figures["raw_batched"]["tiles_per_s"])
    assert _positive(pipeline["tiles_per_s"], figures["pipeline_raw_ratio"])
    assert figures["pipeline_raw_ratio"] == pytest.approx(
        pipeline["tiles_per_s"] / raw["tiles_per_s"], rel=0.01
    )
    used = pipeline["cpu"]
    assert used["cores_busy"] > 0 and used["total_ms_per_tile"] > 0
    # every model stage and the worker did work in the run, named by role
    assert {"VisionEncoder", "LlmDecoder", "worker"} <= set(used["ms_per_tile"])


def test_the_encoder_runs_once_per_tile_with_a_standing_question(figures: dict[str, Any]) -> None:
    assert figures["encoder_calls_per_tile"] == 1.0
    assert figures["pipeline"]["encoder_calls"] == figures["pipeline"]["tiles"]
    # the standing question was one more task on every tile
    assert figures["raw"]["tasks_per_tile"] == len(figures["settings"]["tasks"]) + 1


def test_encoder_and_decoder_rates(figures: dict[str, Any]) -> None:
    encoder, decoder = figures["encoder"], figures["decoder"]
    batch = encoder["batch"]
    assert _positive(encoder["batch_1_images_per_s"], encoder[f"batch_{batch}_images_per_s"])
    for way in ("no_reuse", "prefix_reuse", "tiles_batched"):
        assert _positive(decoder[way]["tasks_per_s"], decoder[way]["tokens_per_s"])
    assert decoder["same_answers"] is True


def test_latency_at_three_loads(figures: dict[str, Any]) -> None:
    loads = figures["latency"]
    assert [run["load"] for run in loads] == [0.25, 0.5, 0.9]
    for run in loads:
        assert _positive(run["offered_tiles_per_s"], run["p50_s"])
        assert run["p50_s"] <= run["p95_s"] <= run["p99_s"] <= run["max_s"]
    offered = [run["offered_tiles_per_s"] for run in loads]
    assert offered == sorted(offered)


def test_autoscaling_timeline_and_workers(figures: dict[str, Any]) -> None:
    scaling = figures["autoscaling"]
    assert scaling["timeline"]
    assert isinstance(scaling["at_minimum_before"], bool)
    for stage in ("VisionEncoder", "LlmDecoder"):
        landmarks = scaling["stages"][stage]
        assert 1 <= landmarks["start"] <= landmarks["peak"]
        assert all(stage in sample["replicas"] for sample in scaling["timeline"])
    runs = figures["workers"]["runs"]
    assert [run["workers"] for run in runs] == [1, 2]
    for run in runs:
        assert _positive(run["tiles_per_s"])
        assert len(run["items_per_worker"]) == run["workers"]
        assert sum(run["items_per_worker"]) == run["tiles"]


def test_planner_tiling(figures: dict[str, Any]) -> None:
    tiling = figures["tiling"]
    assert tiling["read"] == tiling["tiles"] > 0
    assert _positive(tiling["tiles_per_s"], tiling["peak_rss_mib"])
