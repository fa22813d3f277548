"""The ``skyeye`` command on the real pipeline: what it prints for each input, for mistakes and
for readers that stop early."""

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyeye import catalog, samples
from skyeye.adapters.s3 import ObjectMissing, ObjectStore
from skyeye.cli.ingest import wait_for
from skyeye.contracts import Task, TaskKind, Tile, WorkItem, asset_id_for, work_item_id_for

from .conftest import Pipeline, plan_forged

WAIT_S = 300


def _skyeye(pipeline: Pipeline, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_ingest_json_wait_gives_each_input_its_outcome(pipeline: Pipeline, tmp_path: Path) -> None:
    good = _image(tmp_path / "good.png", 1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(samples.aerial_photos()[0].read_bytes()[:20_000])
    ran = _skyeye(
        pipeline, "ingest", str(good), str(broken), "--prefix", "it/cli-json", "--wait", "--json",
        timeout=WAIT_S,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stderr  # an asset ended in error
    assert "Traceback" not in ran.stderr
    rows = json.loads(ran.stdout)
    assert [(r["path"], r["key"], r["status"]) for r in rows] == [
        (str(good), "it/cli-json/good.png", "done"),
        (str(broken), "it/cli-json/broken.jpg", "error"),
    ]
    assert rows[0]["error"] is None and rows[0]["errors"] == []
    [error] = rows[1]["errors"]
    assert error["kind"] == "unreadable_image"
    assert rows[1]["error"] == f"unreadable_image: {error['message']}"
    assert all(uuid.UUID(r["asset_id"]) for r in rows)


def test_ingest_json_on_timeout_still_has_every_input(pipeline: Pipeline, tmp_path: Path) -> None:
    images = [str(_image(tmp_path / f"late{i}.png", 10 + i)) for i in range(2)]
    ran = _skyeye(
        pipeline, "ingest", *images, "--prefix", "it/cli-late", "--wait", "--timeout", "0",
        "--json",
    )  # fmt: skip
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert "asset(s) not finished after 0 s" in ran.stderr
    rows = json.loads(ran.stdout)
    assert [r["path"] for r in rows] == images
    assert {r["status"] for r in rows} == {"timeout"}
    assert all(r["error"].startswith("not finished within --timeout 0 s (state: ") for r in rows)
    # they finish all the same
    ids = [uuid.UUID(r["asset_id"]) for r in rows]
    assert set(wait_for(pipeline.engine, ids, timeout_s=WAIT_S).values()) == {"done"}


def test_a_refused_ingest_uploads_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    good = _image(tmp_path / "good.png", 2)
    ran = _skyeye(pipeline, "ingest", str(good), str(tmp_path / "gone.png"), "--prefix", "it/no")
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.splitlines() == [
        f"[skyeye] error: {tmp_path / 'gone.png'}: no such file",
        "[skyeye] nothing was uploaded",
    ]
    with pytest.raises(ObjectMissing, match=r"NoSuchKey|does not exist"):
        ObjectStore(pipeline.settings).size(pipeline.settings.bucket, "it/no/good.png")


def test_an_unknown_asset_is_an_error(pipeline: Pipeline) -> None:
    unknown = str(uuid.uuid4())
    for args in (
        ["results", "--asset", unknown],
        ["results", "--asset", unknown, "--json"],
        ["stac", unknown],
        ["detections", unknown, "--geojson"],
    ):
        ran = _skyeye(pipeline, *args)
        assert ran.returncode == 2, args
        assert ran.stdout == ""
        assert ran.stderr == f"[skyeye] error: no asset {unknown} in the catalog" + (
            " (`skyeye results` lists them all)\n"
        )


def _forge_many_results(pipeline: Pipeline, tiles: int) -> uuid.UUID:
    """An asset of ``tiles`` tiles with one stored result each, written to the catalog as the
    worker would (no object, nothing published): enough output to outgrow a pipe."""
    s = pipeline.settings
    key = "it/forged/many-results.png"
    asset_id = asset_id_for(s.bucket, key, "v1")
    task = Task(kind=TaskKind.VQA, text="Is there any water in the image?")
    items = [
        WorkItem(
            work_item_id=work_item_id_for(asset_id, i),
            asset_id=asset_id,
            bucket=s.bucket,
            key=key,
            image_width=64 * tiles,
            image_height=64,
            tile=Tile(index=i, x=64 * i, y=0, width=64, height=64),
            tasks=[task],
        )
        for i in range(tiles)
    ]
    outcome = catalog.TaskOutcome(
        task,
        "[vqa] water?",
        "no, this tile shows fields, roads and a few buildings but no water",
        True,
        None,
    )
    with pipeline.engine.begin() as conn:
        plan_forged(conn, items, "png")
        for item in items:
            catalog.store_results(conn, item, [outcome], "test")
    return asset_id


def test_results_piped_into_head_end_quietly(pipeline: Pipeline) -> None:
    _forge_many_results(pipeline, tiles=1500)
    skyeye = [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home)]
    for args in (["results", "--json"], ["results"]):
        full = _skyeye(pipeline, *args)
        assert full.returncode == 0
        # more than a pipe holds (64 KiB on Linux): the writer meets the pipe that head closed
        assert len(full.stdout.encode()) > 128 * 1024, (args, len(full.stdout))
        ran = subprocess.run(
            ["bash", "-c", 'set -o pipefail; "$@" | head -1', "bash", *skyeye, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.stderr == "", ran.stderr
        assert ran.stdout == full.stdout.splitlines(keepends=True)[0]
        assert ran.returncode == 128 + signal.SIGPIPE


def test_status_shows_the_serve_app_and_restarts(pipeline: Pipeline) -> None:
    ran = _skyeye(pipeline, "status", "--json")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report["serve"]["status"] == "RUNNING", report["serve"]
    deployments = report["serve"]["deployments"]
    assert deployments and all(d["replicas"].get("RUNNING", 0) >= 1 for d in deployments)
    assert report["problems"] == []
    assert all({"restarts", "last_exit", "last_exit_at"} <= c.keys() for c in report["components"])
    text = _skyeye(pipeline, "status").stdout
    assert f"serve app {pipeline.settings.serve_app}: RUNNING" in text
    assert "restarts  last exit" in text
