"""The pure parts of ``skyeye bench``: its arithmetic, metric reading, settings, report and CLI
options. The figures themselves are checked on a real run in tests/integration/test_bench.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skyeye.benchmark import PHASES, cpu, images, prometheus, report, stats
from skyeye.benchmark.runner import FULL, QUICK, bench_settings
from skyeye.cli.main import build_parser, main
from skyeye.settings import Settings


def test_percentiles_interpolate_between_ranks_as_numpy_does() -> None:
    values = [0.4, 2.5, 1.0, 9.0, 3.3, 0.7]
    for q in (0, 50, 95, 99, 100):
        assert stats.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert stats.percentile([5.0], 99) == 5.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentiles_refuse_what_has_none(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        stats.percentile(values, q)


def test_a_rate_needs_a_positive_duration() -> None:
    assert stats.rate(12, 4.0) == 3.0
    with pytest.raises(ValueError):
        stats.rate(1, 0.0)


def test_stage_scaling_finds_the_peak_and_the_way_back() -> None:
    timeline = [
        (-1.0, {"E": 1}),
        (3.0, {"E": 1}),
        (6.0, {"E": 2}),
        (9.0, {"E": 2}),
        (20.0, {"E": 1}),
    ]
    assert stats.stage_scaling(timeline, "E") == stats.StageScaling(1, 2, 1, 6.0, 20.0)


def test_stage_scaling_says_what_did_not_happen() -> None:
    flat = [(0.0, {"E": 1}), (5.0, {"E": 1})]
    assert stats.stage_scaling(flat, "E") == stats.StageScaling(1, 1, 1, None, None)
    stayed_up = [(0.0, {"E": 1}), (5.0, {"E": 2}), (9.0, {"E": 2})]
    assert stats.stage_scaling(stayed_up, "E") == stats.StageScaling(1, 2, 2, 5.0, None)
    with pytest.raises(ValueError, match="no sample"):
        stats.stage_scaling(flat, "D")


REQUESTS = "ray_serve_deployment_request_counter_total"
RAY_TEXT = "\n".join(
    [
        f"# HELP {REQUESTS} The number of queries processed.",
        f"# TYPE {REQUESTS} counter",
        f'{REQUESTS}{{application="skyeye",deployment="VisionEncoder",replica="a"}} 7.0',
        f'{REQUESTS}{{application="skyeye",deployment="VisionEncoder",replica="b"}} 5.0',
        f'{REQUESTS}{{application="skyeye",deployment="LlmDecoder",replica="c"}} 12.0',
        f'{REQUESTS}{{application="other",deployment="VisionEncoder",replica="d"}} 100.0',
        "# TYPE skyeye_consumer_lag gauge",
        'skyeye_consumer_lag{group="g",partition="0",topic="skyeye.work-items"} 0.0',
        'skyeye_consumer_lag{group="g",partition="2",topic="skyeye.work-items"} 3.0',
    ]
)


def test_a_counter_is_summed_over_the_series_its_labels_pick() -> None:
    total = prometheus.counter_total(
        RAY_TEXT, REQUESTS, application="skyeye", deployment="VisionEncoder"
    )
    assert total == 12.0
    assert prometheus.counter_total(RAY_TEXT, REQUESTS) == 124
    assert prometheus.counter_total(RAY_TEXT, "no_such_metric_total") is None
    assert prometheus.label_values(RAY_TEXT, "skyeye_consumer_lag", "partition") == {"0", "2"}


def test_the_bench_stack_is_embedded_whatever_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SKYEYE_S3_ENDPOINT", "minio.example:9000")
    monkeypatch.setenv("SKYEYE_DATABASE_URL", "postgresql://prod/db")
    monkeypatch.setenv("SKYEYE_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("SKYEYE_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("SKYEYE_API__PORT", "8080")
    monkeypatch.setenv("SKYEYE_VQA_QUESTIONS", '["How many ships?"]')
    base = Settings()
    settings = bench_settings(base, tmp_path / "home", FULL)
    assert settings.home == tmp_path / "home"
    endpoints = (settings.s3_endpoint, settings.database_url, settings.ray_address)
    assert endpoints == (None, None, None)
    assert settings.kafka_bootstrap is None and settings.api.port == 0
    # what the user asks of the model is kept
    assert settings.vqa_questions == ["How many ships?"]
    assert settings.decoding == base.decoding
    # a partition per worker process; the model stages as configured, except for the burst
    assert settings.topic_partitions >= max(FULL.worker_counts)
    assert (settings.encoder, settings.decoder) == (base.encoder, base.decoder)
    burst = bench_settings(base, tmp_path / "burst", FULL, autoscaling=True)
    for stage in (burst.encoder, burst.decoder):
        assert (stage.min_replicas, stage.max_replicas) == (1, 2)
    assert burst.encoder.max_batch_size == base.encoder.max_batch_size
    assert bench_settings(base, tmp_path, QUICK).topic_partitions >= max(QUICK.worker_counts)


def test_generated_images_are_the_same_for_a_seed(tmp_path: Path) -> None:
    first = images.draw_scene(3)
    assert first.shape == (images.HEIGHT, images.WIDTH, 3) and first.dtype == np.uint8
    assert np.array_equal(first, images.draw_scene(3))
    assert not np.array_equal(first, images.draw_scene(4))
    paths = images.write_images(tmp_path, 2, seed=3)
    assert [p.name for p in paths] == ["scene-000.png", "scene-001.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _figures() -> dict:
    load = {"load_1m": [0.5, 0.6], "phase_s": 1.0}
    return {
        "mode": "quick",
        "model": "skyeye-tiny",
        "settings": {"decoding": {"steps": "compiled"}},
        "machine": {
            "platform": "Linux-x",
            "cpu_count": 2,
            "memory_gib": 23.6,
            "torch": "2.13.0",
            "torch_threads": 2,
            "gpu": None,
            "load_1m_at_start": 0.5,
        },
        "tiling": {
            "tiles_per_s": 90.0,
            "peak_rss_mib": 110.0,
            "read": 25,
            "tile_size": 448,
            "size": 2048,
            **load,
        },
        "raw": {
            "tiles_per_s": 4.0,
            "tiles": 8,
            "tasks_per_tile": 7,
            "encoder_batch": 4,
            "tokens_per_s": 500.0,
            "runs_tiles_per_s": [3.0, 4.0],
            **load,
        },
        "encoder": {
            "images": 8,
            "batch": 4,
            "batch_1_images_per_s": 9.0,
            "batch_4_images_per_s": 10.0,
            "batch_speedup": 1.11,
            **load,
        },
        "decoder": {
            "tiles": 4,
            "tasks_per_tile": 7,
            "same_answers": True,
            **{
                w: {"tasks_per_s": 50.0, "tokens_per_s": 900.0}
                for w in ("no_reuse", "prefix_reuse", "tiles_batched")
            },
            **load,
        },
        "pipeline": {
            "tiles_per_s": 2.0,
            "tiles": 8,
            "encoder_calls": 8.0,
            "cpu": {
                "cores": 2,
                "cores_busy": 0.83,
                "total_ms_per_tile": 647.0,
                "ms_per_tile": {"VisionEncoder": 178.0, "TextEmbedder": 133.0, "other": 336.0},
            },
            **load,
        },
        "pipeline_raw_ratio": 0.5,
        "encoder_calls_per_tile": 1.0,
        "latency": [
            {
                "load": 0.25,
                "p50_s": 0.9,
                "p95_s": 1.0,
                "p99_s": 1.1,
                "assets": 3,
                "offered_tiles_per_s": 0.5,
                **load,
            }
        ],
        "autoscaling": {
            "assets": 16,
            "burst_done_s": 12.0,
            "settle_wait_s": 20.0,
            "stages": {
                "VisionEncoder": {
                    "start": 1,
                    "peak": 2,
                    "end": 1,
                    "to_peak_s": 6.5,
                    "back_to_start_s": 19.1,
                },
                "LlmDecoder": {
                    "start": 1,
                    "peak": 1,
                    "end": 1,
                    "to_peak_s": None,
                    "back_to_start_s": None,
                },
            },
            "timeline": [
                {"t_s": -0.8, "replicas": {"VisionEncoder": {"running": 1, "starting": 0}}},
                {"t_s": 6.5, "replicas": {"VisionEncoder": {"running": 1, "starting": 1}}},
            ],
            **load,
        },
        "workers": {
            "runs": [{"workers": 1, "tiles_per_s": 1.5, "tiles": 8, "items_per_worker": [8]}],
            **load,
        },
    }


def test_the_report_words_every_figure() -> None:
    rows = report.rows(_figures())
    names = [name for name, _, _ in rows]
    assert "pipeline_raw_ratio" in names and "encoder_calls_per_tile" in names
    assert any(name.startswith("planner tiling") for name in names)
    assert any(name.startswith("latency p50/p95/p99") for name in names)
    assert sum(name.endswith("replicas in a burst") for name in names) == 2
    values = dict((name, value) for name, value, _ in rows)
    assert values["VisionEncoder replicas in a burst"] == "1 -> 2 -> 1"
    assert values["encoder_calls_per_tile"] == "1.00"
    assert values["pipeline CPU ms/tile, cores busy"] == "647, 83 %"
    heading = report.heading(_figures())
    assert "no GPU" in heading and "skyeye-tiny (compiled decoding steps)" in heading


def test_the_report_leaves_out_what_was_not_measured() -> None:
    figures = {k: v for k, v in _figures().items() if k in ("mode", "model", "machine", "tiling")}
    assert [name for name, _, _ in report.rows(figures)] == ["planner tiling tiles/s, peak RSS"]


def test_the_replica_timeline_shows_starting_replicas() -> None:
    header, rows = report.timeline_rows(_figures())
    assert header == ["t_s", "VisionEncoder"]
    assert rows == [["-0.8", "1"], ["6.5", "1+1"]]


def test_bench_options() -> None:
    args = build_parser().parse_args(["bench", "--quick", "--json", "--only", "model,pipeline"])
    assert (args.quick, args.json, args.only) == (True, True, ["model", "pipeline"])
    assert build_parser().parse_args(["bench"]).only is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--only", "model,warp"])
    assert PHASES[0] == "tiling"


def test_the_cli_loads_no_torch_until_a_bench_runs() -> None:
    """Every other command starts without paying for torch."""
    code = "import sys, skyeye.cli.main; print('torch' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"


def test_a_folder_that_is_no_model_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--quick", "--model-dir", str(tmp_path)]) == 2
    assert "is not a SkyEye model folder" in capsys.readouterr().err


def test_cpu_usage_by_role_per_tile() -> None:
    before = cpu.CpuSnapshot(10.0, {(1, 1.0): ("VisionEncoder", 5.0), (2, 1.0): ("worker", 1.0)})
    after = cpu.CpuSnapshot(
        12.0,
        {
            (1, 1.0): ("VisionEncoder", 6.0),
            (2, 1.0): ("worker", 1.5),
            # started during the run: counted from zero
            (3, 11.0): ("VisionEncoder", 0.5),
            # too small a share to name
            (4, 1.0): ("kworker", 0.0),
        },
    )
    used = cpu.usage(before, after, tiles=4)
    assert used["ms_per_tile"] == {"VisionEncoder": 375.0, "worker": 125.0, "other": 0.0}
    assert used["total_ms_per_tile"] == 500.0
    assert used["cores_busy"] == pytest.approx(2.0 / (2.0 * used["cores"]), abs=1e-3)
    with pytest.raises(ValueError, match="at least one tile"):
        cpu.usage(before, after, tiles=0)


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("ray::ServeRepl", ["ray::ServeReplica:skyeye:VisionEncoder"], "VisionEncoder"),
        (
            "ray::ServeCont",
            ["ray::ServeController.listen_for_change"],
            "ray::ServeController.listen_for_change",
        ),
        ("python", ["/venv/bin/python", "-m", "skyeye.services.worker"], "worker"),
        ("postgres", ["postgres: checkpointer"], "postgres"),
        ("tansu", ["/usr/bin/tansu", "broker"], "tansu"),
        ("python", ["python", "-m"], "python"),
    ],
)
def test_process_roles(name: str, cmdline: list[str], expected: str) -> None:
    assert cpu.role(name, cmdline, pid=-1) == expected
