"""Soak: 1,000 small assets through the real pipeline while the worker is killed every 100
finished assets and the broker is restarted once; nothing may be lost, doubled or left without
its preview.

Marked ``soak`` and skipped unless ``SKYEYE_SOAK=1`` (it takes several minutes on a 2-core
machine): run it with ``SKYEYE_SOAK=1 .venv/bin/pytest -s -m soak``. It prints its figures.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from PIL import Image

from skyeye.adapters.s3 import ObjectStore
from skyeye.cli.ingest import ingest
from skyeye.model.tasks import default_tasks

from .conftest import Pipeline, kill_tree

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(os.environ.get("SKYEYE_SOAK") != "1", reason="set SKYEYE_SOAK=1"),
]

ASSETS = 1000
KILL_EVERY = 100
BROKER_RESTART_AT = 500
WAIT_S = 1800
PREFIX = "soak"


def test_soak(pipeline: Pipeline, tmp_path: Path) -> None:
    s = pipeline.settings
    paths = []
    for i in range(ASSETS):
        pixels = np.random.default_rng(10_000 + i).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        path = tmp_path / f"soak-{i:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)

    began = time.monotonic()
    done = ingest(s, paths, prefix=PREFIX)
    ingested_s = time.monotonic() - began
    ids = [d.asset_id for d in done]
    kills, broker_restarted, finished = 0, False, 0
    deadline = time.monotonic() + WAIT_S
    while finished < ASSETS:
        assert time.monotonic() < deadline, f"{finished} of {ASSETS} finished"
        pipeline.check_supervisor()
        try:
            with pipeline.engine.connect() as conn:
                finished = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM assets WHERE asset_id = ANY(:ids)"
                        " AND status IN ('done', 'error')"
                    ),
                    {"ids": ids},
                ).scalar_one()
        except sa.exc.OperationalError:
            continue
        if finished >= (kills + 1) * KILL_EVERY and finished < ASSETS:
            worker = pipeline.stack.state().component("worker")
            if worker is not None and worker.pid is not None and psutil.pid_exists(worker.pid):
                os.kill(worker.pid, signal.SIGKILL)
                kills += 1
        if not broker_restarted and finished >= BROKER_RESTART_AT:
            kafka = pipeline.stack.state().component("kafka")
            assert kafka is not None and kafka.pid is not None
            kill_tree(kafka.pid)
            broker_restarted = True
        time.sleep(0.2)
    elapsed = time.monotonic() - began

    n_tasks = len(default_tasks(s))
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.asset_id, a.status, a.preview_key,"
                " (SELECT count(*) FROM results r WHERE r.asset_id = a.asset_id) AS results"
                " FROM assets a WHERE a.asset_id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()
        assets_for_keys = conn.execute(
            sa.text("SELECT count(*) FROM assets WHERE object_key LIKE :p"), {"p": f"{PREFIX}/%"}
        ).scalar_one()
    previews = {
        o.key for o in ObjectStore(s).list_objects(s.derived_bucket, "previews/")
    }  # fmt: skip
    lost = ASSETS - sum(r.status == "done" for r in rows)
    doubled = sum(r.results > n_tasks for r in rows) + (assets_for_keys - ASSETS)
    short = sum(r.results < n_tasks for r in rows)
    missing = sum(
        r.preview_key is None or r.preview_key not in previews for r in rows
    )  # fmt: skip
    print(
        f"\nsoak: {ASSETS} assets ({n_tasks} tasks each) in {elapsed:.0f} s "
        f"({ASSETS / elapsed:.2f} assets/s; ingest took {ingested_s:.0f} s), worker killed "
        f"{kills} times, broker restarted once: lost {lost}, doubled {doubled}, results "
        f"missing {short}, previews missing {missing}"
    )
    assert kills >= ASSETS // KILL_EVERY - 1 and broker_restarted
    assert (lost, doubled, short, missing) == (0, 0, 0, 0)
