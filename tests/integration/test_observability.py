"""Health probes, metrics and logs of the real stack's services, as a cluster would read them.

Every service answers ``/healthz`` and ``/readyz`` and is scraped at ``/metrics`` (the URL the
stack records per component); after an asset goes through, the planner and the worker count it
and time each stage, the worker reports its consumer lag, and the Ray head exports Serve's
per-deployment latency and batch sizes. Service logs are JSON lines, with the asset's trace id
where a line is written inside its trace.
"""

import json
import re
import time
from collections.abc import Callable

import httpx
import pytest

from skyeye import samples
from skyeye.cli.ingest import Ingested, ingest, wait_for

from .conftest import Pipeline

WAIT_S = 300
SERVICES = ("planner", "worker", "reconciler", "relay", "webhooks", "api")


def _metrics_url(pipeline: Pipeline, name: str) -> str:
    component = pipeline.stack.state().component(name)
    assert component is not None and component.metrics, name
    return component.metrics


def _scrape(url: str) -> str:
    answer = httpx.get(url, timeout=30)
    assert answer.status_code == 200, (url, answer.text)
    return answer.text


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


def _eventually(what: str, done: Callable[[], bool], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def finished(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    folder = tmp_path_factory.mktemp("observability")
    scene = samples.write_geotiff(folder / "observed.tif", size=256, seed=11)
    [done] = ingest(pipeline.settings, [scene], prefix="it/observability")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states == {done.asset_id: "done"}, states
    return done


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_is_live_and_ready(pipeline: Pipeline, name: str) -> None:
    base = _metrics_url(pipeline, name).removesuffix("/metrics")
    for probe in ("healthz", "readyz"):
        answer = httpx.get(f"{base}/{probe}", timeout=30)
        assert answer.status_code == 200, (name, probe, answer.text)
        assert answer.json()["status"] == "ok"


def test_the_planner_and_the_worker_count_and_time_what_they_did(
    pipeline: Pipeline, finished: Ingested
) -> None:
    planner = _scrape(_metrics_url(pipeline, "planner"))
    assert _sample(planner, "skyeye_assets_total", stage="planner", outcome="planned") >= 1
    assert _sample(planner, "skyeye_stage_duration_seconds_count", stage="plan") >= 1
    worker = _scrape(_metrics_url(pipeline, "worker"))
    assert _sample(worker, "skyeye_work_items_total", kind="tile", outcome="done") >= 1
    for stage in ("read", "infer", "store"):
        assert _sample(worker, "skyeye_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert _sample(worker, "skyeye_assets_total", stage="finisher", outcome="done") >= 1
    # the lag of each partition the worker holds (all consumed by now: zero)
    _eventually(
        "the worker's consumer lag",
        lambda: "skyeye_consumer_lag{" in _scrape(_metrics_url(pipeline, "worker")),
    )
    worker = _scrape(_metrics_url(pipeline, "worker"))
    assert _sample(worker, "skyeye_consumer_lag", group=pipeline.settings.worker_group) >= 0


def test_the_ray_head_exports_serves_latency_and_batch_sizes(
    pipeline: Pipeline, finished: Ingested
) -> None:
    url = _metrics_url(pipeline, "ray")
    wanted = [
        (name, deployment)
        for name in (
            "ray_serve_actual_batch_size_count",
            "ray_serve_deployment_processing_latency_ms_count",
        )
        for deployment in ("VisionEncoder", "LlmDecoder")
    ]

    def exported() -> bool:
        text = _scrape(url)
        return all(_sample(text, name, deployment=d) >= 1 for name, d in wanted)

    # each replica's figures reach the head's exporter on the metrics agent's own period
    _eventually("Serve's metrics of both model stages on the Ray head", exported, timeout_s=120)


def test_service_logs_are_json_lines_with_the_trace_id(
    pipeline: Pipeline, finished: Ingested
) -> None:
    lines = (pipeline.home / "logs" / "worker.log").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and all(r["service"] == "skyeye-worker" for r in records)
    stored = [
        r
        for r in records
        if "result(s) stored" in r["message"] and str(finished.asset_id) in r["message"]
    ]
    assert stored and all(re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]) for r in stored)
