"""Nothing stops a consumer and nothing is lost, on the real embedded pipeline: a bug in a
handler becomes one dead letter, killed services and infrastructure restart, and every asset
still ends with exactly its results and its preview."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from skyeye import catalog
from skyeye.adapters.s3 import ObjectStore
from skyeye.cli.ingest import Ingested, ingest, wait_for
from skyeye.contracts import DeadLetterHeader
from skyeye.model.tasks import default_tasks

from .conftest import Pipeline, kill_tree

WAIT_S = 300


def _images(folder: Path, prefix: str, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = np.random.default_rng(seed + i).integers(0, 255, (40, 56, 3), dtype=np.uint8)
        path = folder / f"{prefix}-{i:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _statuses(pipeline: Pipeline, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The assets' states; none while the database is down (a test may have stopped it)."""
    try:
        with pipeline.engine.connect() as conn:
            return catalog.asset_states(conn, ids)
    except sa.exc.OperationalError:
        return {}


def _wait_status(pipeline: Pipeline, ids: list[uuid.UUID], status: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        states = _statuses(pipeline, ids)
        if all(states.get(i) == status for i in ids):
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.5)


def _assert_complete(pipeline: Pipeline, ids: list[uuid.UUID]) -> None:
    """Every asset done, with one result per task of its one tile (no more: nothing doubled),
    its preview recorded and present in the derived bucket."""
    n_tasks = len(default_tasks(pipeline.settings))
    store = ObjectStore(pipeline.settings)
    with pipeline.engine.connect() as conn:
        for asset_id in ids:
            [asset] = catalog.assets(conn, asset_id)
            assert asset["status"] == "done", (asset, catalog.errors(conn, asset_id))
            assert len(catalog.results(conn, asset_id)) == n_tasks, asset
            assert asset["preview_key"] == f"previews/{asset_id}.jpg", asset
            assert store.size(pipeline.settings.derived_bucket, asset["preview_key"]) > 0


def _service_restarts(pipeline: Pipeline) -> dict[str, int]:
    return {c.name: c.restarts for c in pipeline.stack.state().components if c.kind == "service"}


def _pid(pipeline: Pipeline, name: str) -> int:
    component = pipeline.stack.state().component(name)
    assert component is not None and component.pid is not None
    return component.pid


def _wait_restarted(pipeline: Pipeline, name: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        state = pipeline.stack.state().component(name)
        if state is not None and state.restarts >= 1 and state.endpoint is not None:
            component = state
            if psutil.pid_exists(component.pid or -1):
                return
        pipeline.check_supervisor()
        assert time.monotonic() < deadline, f"{name} was not restarted"
        time.sleep(0.2)


def _dead_letter_records(pipeline: Pipeline) -> list:
    s = pipeline.settings
    assert s.kafka_bootstrap is not None
    consumer = KafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000
    )
    try:
        partitions = consumer.partitions_for_topic(s.topic_dead_letter) or set()
        tps = [TopicPartition(s.topic_dead_letter, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return list(consumer)
    finally:
        consumer.close()


def _skyeye(pipeline: Pipeline, *args: str) -> str:
    """The CLI's standard output; it must succeed."""
    ran = subprocess.run(
        [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def _faults(pipeline: Pipeline, **markers: list[str]) -> None:
    pipeline.fault_file.write_text(json.dumps(markers))


@pytest.mark.parametrize("stage", ["planner", "worker"])
def test_an_unexpected_exception_is_one_dead_letter_and_a_replay_finishes_it(
    pipeline: Pipeline, tmp_path: Path, stage: str
) -> None:
    marker = f"fault-{stage}-{uuid.uuid4().hex[:6]}"
    restarts = _service_restarts(pipeline)
    _faults(pipeline, **{stage: [marker]})
    try:
        poison, good = _images(tmp_path, marker, 1) + _images(tmp_path, "after", 1, seed=7)
        done = ingest(pipeline.settings, [poison, good], prefix=f"it/dlq-{stage}")
        states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    finally:
        _faults(pipeline)  # the "bug" is fixed
    bad, fine = done
    assert states == {bad.asset_id: "error", fine.asset_id: "done"}
    _assert_complete(pipeline, [fine.asset_id])

    with pipeline.engine.connect() as conn:
        [error] = catalog.errors(conn, bad.asset_id)
        [letter] = [d for d in catalog.dead_letters(conn) if d["asset_id"] == bad.asset_id]
    assert (error["stage"], error["kind"]) == (stage, "internal_error")
    assert "InjectedFault" in error["message"] and "not of the input" in error["message"]
    short = str(letter["dead_letter_id"])[:8]
    assert f"skyeye dlq replay {short}" in error["message"]
    topic = pipeline.settings.topic_events if stage == "planner" else pipeline.settings.topic_work
    assert (letter["stage"], letter["topic"]) == (stage, topic)

    # exactly one copy on the dead-letter topic, the original message with the error beside it
    copies = [
        r
        for r in _dead_letter_records(pipeline)
        if (DeadLetterHeader.ID.value, str(letter["dead_letter_id"]).encode()) in r.headers
    ]
    assert len(copies) == 1
    headers = dict(copies[0].headers)
    assert headers[DeadLetterHeader.TOPIC.value] == topic.encode()
    assert headers[DeadLetterHeader.KIND.value] == b"internal_error"
    assert "traceparent" in headers  # the original headers are kept
    # no consumer died for it
    assert _service_restarts(pipeline) == restarts

    # the CLI lists it and replays it by its short id
    listed = json.loads(_skyeye(pipeline, "dlq", "list", "--json"))
    assert str(letter["dead_letter_id"]) in {d["dead_letter_id"] for d in listed}
    assert short in _skyeye(pipeline, "dlq", "list")
    replayed = _skyeye(pipeline, "dlq", "replay", short)
    assert f"{letter['dead_letter_id']}\treplayed to {topic}" in replayed
    _wait_status(pipeline, [bad.asset_id], "done")
    _assert_complete(pipeline, [bad.asset_id])
    with pipeline.engine.connect() as conn:
        [letter] = [d for d in catalog.dead_letters(conn) if d["asset_id"] == bad.asset_id]
    assert letter["replays"] == 1


def _ingest_and_wait_for_progress(
    pipeline: Pipeline, paths: list[Path], prefix: str
) -> list[Ingested]:
    """Ingest and return once some of the assets' work is stored and some is not."""
    done = ingest(pipeline.settings, paths, prefix=prefix)
    ids = [d.asset_id for d in done]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with pipeline.engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT count(DISTINCT asset_id) FROM results WHERE asset_id = ANY(:ids)"),
                {"ids": ids},
            ).scalar_one()
        if stored:
            return done
        time.sleep(0.1)
    raise AssertionError("no result was stored")


def test_killed_worker_and_planner_lose_and_double_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    first = _ingest_and_wait_for_progress(
        pipeline, _images(tmp_path / "a", "kill", 16, seed=100), "it/kill-a"
    )
    worker = _pid(pipeline, "worker")
    os.kill(worker, signal.SIGKILL)
    # the planner is killed while it plans a burst
    second = ingest(
        pipeline.settings, _images(tmp_path / "b", "kill", 16, seed=200), prefix="it/kill-b"
    )
    os.kill(_pid(pipeline, "planner"), signal.SIGKILL)
    ids = [d.asset_id for d in first + second]
    _wait_status(pipeline, ids, "done")
    _assert_complete(pipeline, ids)
    assert _pid(pipeline, "worker") != worker
    pipeline.check_supervisor()


def test_postgres_down_for_10_s_under_load_loses_and_doubles_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    done = _ingest_and_wait_for_progress(
        pipeline, _images(tmp_path, "pg", 16, seed=300), "it/pg-down"
    )
    with pipeline.unsupervised():
        kill_tree(_pid(pipeline, "postgres"))
        time.sleep(10)
    ids = [d.asset_id for d in done]
    _wait_status(pipeline, ids, "done")
    _assert_complete(pipeline, ids)
    postgres = pipeline.stack.state().component("postgres")
    assert postgres is not None and postgres.restarts >= 1 and postgres.last_exit
    pipeline.check_supervisor()


def test_a_broker_restart_loses_and_doubles_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    done = _ingest_and_wait_for_progress(
        pipeline, _images(tmp_path, "broker", 16, seed=400), "it/broker"
    )
    kill_tree(_pid(pipeline, "kafka"))
    _wait_restarted(pipeline, "kafka")
    more = ingest(
        pipeline.settings, _images(tmp_path, "after-broker", 4, seed=500), prefix="it/broker"
    )
    ids = [d.asset_id for d in done + more]
    _wait_status(pipeline, ids, "done")
    _assert_complete(pipeline, ids)
    kafka_state = pipeline.stack.state().component("kafka")
    assert kafka_state is not None and kafka_state.restarts >= 1
    pipeline.check_supervisor()
