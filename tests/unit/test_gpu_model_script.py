"""bench/gpu_model.py at tiny size on the CPU: it runs the serving code and reports every figure.

The figures themselves mean something only on a GPU at full size; this checks the script works.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "bench" / "gpu_model.py"


def test_the_gpu_model_bench_reports_every_figure_at_tiny_size() -> None:
    args = ["--tiny", "--device", "cpu", "--dtype", "float32", "--batches", "1", "3"]
    args += ["--new-tokens", "4", "--repeats", "1", "--bandwidth-tbs", "0.01"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--steps", "static", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report["steps"] == ["eager", "static"] and report["bandwidth_tbs"] == 0.01
    assert set(report["warm_up_s"]) == {"eager", "static"}
    assert report["llm_weight_bytes"] > 0 and report["encoder_flop_per_image"] > 0
    assert [row["batch"] for row in report["rows"]] == [1, 3]
    weights_read_s = report["llm_weight_bytes"] / 0.01e12
    for row in report["rows"]:
        # the bound: every step reads the weights once, at the given bandwidth
        bound = row["decoder_bound_tokens_per_s"]
        assert abs(bound * weights_read_s / row["batch"] - 1) < 0.01
        for key in ("decoder_tokens_per_s", "decoder_tokens_per_s_static"):
            share = row[key.replace("tokens_per_s", "share_of_bound")]
            assert row[key] > 0 and abs(share - row[key] / bound) < 0.01
        assert row["decoder_tokens_per_s_no_reuse"] > 0 and row["decoder_first_call_s_static"] >= 0
        assert 0 < row["decoder_tokens_per_call"] <= 4 * row["batch"]
        encoder_flops = row["encoder_images_per_s"] * report["encoder_flop_per_image"]
        assert row["encoder_share_of_peak"] == round(encoder_flops / 790e12, 3)
        assert row["first_token_ms"] > 0
