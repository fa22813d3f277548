"""The services' way into Ray on Kubernetes: Ray Client (``ray://head:10001``), not a Ray node.

The chart and the compose file point ``SKYEYE_RAY_ADDRESS`` at the head's Ray Client port; here
the embedded head serves one on loopback, and child processes join through it exactly as a pod
would (they are not drivers on the node: Ray Client runs the driver on the head).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import Pipeline

_VENV_BIN = Path(sys.executable).parent

# What a worker does with the model service, in a process of its own.
_INFER = """
import json, sys
import numpy as np
from skyeye.adapters import serve
from skyeye.settings import Settings
from skyeye.stack import resolve

settings = resolve(Settings())
assert settings.ray_address.startswith("ray://"), settings.ray_address
pixels = np.random.default_rng(7).integers(0, 256, (448, 448, 3), dtype=np.uint8)
answers = serve.handle(settings).infer.remote([pixels], sys.argv[1:]).result(timeout_s=120)
print(json.dumps({"texts": answers.texts}))
"""


def _through_ray_client(pipeline: Pipeline, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` run with the stack's settings but Ray reached through the head's Ray Client."""
    ray = pipeline.stack.state().component("ray")
    assert ray is not None and ray.client is not None, pipeline.stack.state()
    assert ray.client.startswith("ray://127.0.0.1:"), ray.client
    env = {**os.environ, "SKYEYE_HOME": str(pipeline.home), "SKYEYE_RAY_ADDRESS": ray.client}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_ray_client_process_gets_answers_from_the_serve_app(pipeline: Pipeline) -> None:
    instructions = ["[caption] Describe this image.", "[vqa] Is there any water in the image?"]
    done = _through_ray_client(pipeline, sys.executable, "-c", _INFER, *instructions)
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers["texts"]) == len(instructions)
    assert answers["texts"][0].strip(), answers


def test_status_reads_serve_through_ray_client(pipeline: Pipeline) -> None:
    done = _through_ray_client(pipeline, str(_VENV_BIN / "skyeye"), "status", "--json")
    report = json.loads(done.stdout)
    assert report["serve"]["status"] == "RUNNING", report["serve"]
    names = {d["name"] for d in report["serve"]["deployments"]}
    assert {"VisionEncoder", "LlmDecoder", "Ingress"} <= names
    ray = next(c for c in report["components"] if c["name"] == "ray")
    assert ray["client"].startswith("ray://")
