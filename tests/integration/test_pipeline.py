"""The event path end to end on real components: S3 -> Kafka -> planner -> Serve -> PostgreSQL."""

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
import sqlalchemy as sa
from PIL import Image
from rasterio.warp import transform_bounds

from skyeye import catalog, samples, telemetry
from skyeye.adapters import kafka
from skyeye.cli.ingest import ingest, wait_for
from skyeye.contracts import (
    Task,
    TaskKind,
    Tile,
    WorkItem,
    asset_id_for,
    minio_created_event,
    work_item_id_for,
)
from skyeye.imagery import scenes
from skyeye.model.tasks import default_tasks, overview_tasks

from .conftest import Pipeline, plan_forged, preview

WAIT_S = 300


def _count(pipeline: Pipeline, table: str) -> int:
    with pipeline.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _drain(pipeline: Pipeline) -> None:
    """Wait until both consumer groups have committed everything published so far."""
    s = pipeline.settings
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lags = [
            kafka.lag(s, s.topic_events, s.planner_group),
            kafka.lag(s, s.topic_work, s.worker_group),
        ]
        if all(lag == 0 for lag in lags):
            return
        time.sleep(0.5)
    raise AssertionError(f"consumers still lag: {lags}")


@pytest.fixture(scope="module")
def three_images(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> list:
    scene = samples.write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", size=256)
    done = ingest(pipeline.settings, [*samples.aerial_photos(), scene], prefix="it/three")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    return done


def test_three_images_give_three_assets_and_their_results(
    pipeline: Pipeline, three_images: list
) -> None:
    n_tasks = len(default_tasks(pipeline.settings))
    with pipeline.engine.connect() as conn:
        for item in three_images:
            [asset] = catalog.assets(conn, item.asset_id)
            assert asset["object_key"] == item.key
            assert asset["tiles_planned"] == 1
            rows = catalog.results(conn, item.asset_id)
            assert len(rows) == n_tasks
            assert {r["task_kind"] for r in rows} == {"caption", "grounding", "vqa"}
            assert all(r["model"] == "skyeye-tiny" for r in rows)
            for r in rows:
                # every box parsed from a grounding answer became one detection row, in pixels
                if r["task_kind"] == "grounding" and r["parsed"]:
                    assert len(r["detections"]) == len(r["answer"]["boxes"])
                    for d in r["detections"]:
                        assert 0 <= d["x1"] <= d["x2"] <= asset["width"]
                        assert 0 <= d["y1"] <= d["y2"] <= asset["height"]
                else:
                    assert r["detections"] == []
    # the generated scene has a CRS: it took the scene path (one tile, smaller than 448 px, so
    # that tile is already the whole scene and no overview is asked for)
    assert asset["media_format"] == "geotiff" and asset["width"] == 256
    assert asset["crs"] == "EPSG:32633" and asset["lon_lat_bbox"]
    assert {r["item_kind"] for r in rows} == {"tile"}
    # the photos are 640 x 480: previews bounded to 512 px; the small scene is not enlarged
    sizes = [preview(pipeline, item.asset_id).size for item in three_images]
    assert sizes == [(512, 384), (512, 384), (256, 256)]


def test_redelivered_event_and_work_item_write_nothing_twice(
    pipeline: Pipeline, three_images: list
) -> None:
    s = pipeline.settings
    before = {t: _count(pipeline, t) for t in ("assets", "work_items", "results", "detections")}
    # the same object-created event again (MinIO does duplicate), and the same work item again
    with pipeline.engine.connect() as conn:
        [asset] = catalog.assets(conn, three_images[0].asset_id)
    producer = kafka.producer(s)
    try:
        event = minio_created_event(
            bucket=asset["bucket"],
            key=asset["object_key"],
            size=1,
            etag=asset["version"],
            content_type="image/jpeg",
            metadata={},
        )
        kafka.publish_json(
            producer, s.topic_events, f"{asset['bucket']}/{asset['object_key']}", event
        )
        with pipeline.engine.connect() as conn:
            work_item_id = conn.execute(
                sa.text("SELECT work_item_id FROM work_items WHERE asset_id = :a"),
                {"a": asset["asset_id"]},
            ).scalar_one()
        item = WorkItem(
            work_item_id=work_item_id,
            asset_id=asset["asset_id"],
            bucket=asset["bucket"],
            key=asset["object_key"],
            etag=asset["version"],
            image_width=asset["width"],
            image_height=asset["height"],
            tile=Tile(index=0, x=0, y=0, width=asset["width"], height=asset["height"]),
            tasks=default_tasks(s),
        )
        kafka.publish_json(
            producer, s.topic_work, str(asset["asset_id"]), item.model_dump(mode="json")
        )
    finally:
        producer.close()
    _drain(pipeline)
    after = {t: _count(pipeline, t) for t in before}
    assert after == before


def test_bad_inputs_become_error_rows_and_the_pipeline_goes_on(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    s = pipeline.settings
    errors_before = _count(pipeline, "errors")
    producer = kafka.producer(s)
    try:
        producer.send(s.topic_events, key=b"incoming/garbage", value=b"{not json").get(timeout=30)
        producer.send(
            s.topic_events, key=b"x", value=json.dumps({"EventName": 1, "Records": "no"}).encode()
        ).get(timeout=30)
    finally:
        producer.close()

    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(samples.aerial_photos()[0].read_bytes()[:20_000])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not an image\n" * 50)

    done = ingest(s, [truncated, not_image, good], prefix="it/bad")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    by_name = {d.path.name: states[d.asset_id] for d in done}
    assert by_name == {"truncated.jpg": "error", "notes.jpg": "error", "good.png": "done"}

    _drain(pipeline)
    with pipeline.engine.connect() as conn:
        errors = catalog.errors(conn)
        assert len(errors) >= errors_before + 4
        kinds = {(e["stage"], e["kind"]) for e in errors}
        assert ("planner", "malformed_event") in kinds
        assert ("planner", "unreadable_image") in kinds  # not an image: refused at the header
        assert ("worker", "unreadable_image") in kinds  # truncated: caught when decoding
        by_asset = {e["asset_id"]: e for e in errors if e["asset_id"]}
        assert {done[0].asset_id, done[1].asset_id} <= set(by_asset)
        assert len(catalog.results(conn, done[2].asset_id)) == len(default_tasks(s))


def test_a_burst_of_files_is_all_processed(pipeline: Pipeline, tmp_path: Path) -> None:
    # ingest publishes while the planner publishes work items: concurrent producers
    paths = []
    for i in range(8):
        path = tmp_path / f"burst{i}.png"
        pixels = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    done = ingest(pipeline.settings, paths, prefix="it/burst")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}


def test_one_trace_follows_each_asset_through_every_hop(
    pipeline: Pipeline, three_images: list
) -> None:
    telemetry.flush()
    traces = pipeline.home / "logs" / "traces.jsonl"
    wanted = {str(d.asset_id) for d in three_images}
    deadline = time.monotonic() + 30  # services export spans in batches every few seconds
    while True:
        spans = [json.loads(line) for line in traces.read_text().splitlines()]
        hops: dict[str, dict[str, set[str]]] = {}
        for span in spans:
            asset = span["attributes"].get("skyeye.asset_id")
            if asset in wanted:
                hops.setdefault(asset, {}).setdefault(span["name"], set()).add(span["trace_id"])
        # the Serve stages' and the database write's spans carry no asset id: they are in the
        # work item's trace
        in_serve = {
            (s["name"], s["trace_id"]) for s in spans if s["name"] in ("encode", "decode", "store")
        }
        for h in hops.values():
            for stage in ("encode", "decode", "store"):
                traced = {t for t in h.get("work_item", set()) if (stage, t) in in_serve}
                if traced:
                    h[stage] = traced
        every_hop = {"ingest", "plan", "work_item", "encode", "decode", "store", "finish"}
        complete = {a for a, h in hops.items() if every_hop <= set(h)}
        if complete == wanted or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert complete == wanted, hops
    # the trace ingest started is the one the planner and the worker continued (a redelivery
    # in another test may add traces of its own, never take this one away)
    for h in hops.values():
        assert h["ingest"] & h["plan"] & h["work_item"] & h["encode"] & h["decode"], h


def test_cli_ingest_wait_json_then_results_and_status(pipeline: Pipeline, tmp_path: Path) -> None:
    image = tmp_path / "cli image.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(image)
    skyeye = [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home)]
    ran = subprocess.run(
        [*skyeye, "ingest", str(image), "--prefix", "it/cli", "--wait", "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    [row] = json.loads(ran.stdout)
    assert row["key"] == "it/cli/cli image.png" and row["status"] == "done"
    results = json.loads(
        subprocess.run(
            [*skyeye, "results", "--asset", row["asset_id"], "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert [a["object_key"] for a in results["assets"]] == ["it/cli/cli image.png"]
    assert len(results["results"]) == len(default_tasks(pipeline.settings))
    preview(pipeline, uuid.UUID(row["asset_id"]))
    text = subprocess.run(
        [*skyeye, "results", "--asset", row["asset_id"]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert (
        f"preview: s3://{pipeline.settings.derived_bucket}/previews/{row['asset_id']}.jpg" in text
    )
    status = json.loads(
        subprocess.run(
            [*skyeye, "status", "--json"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    assert status["running"] and status["counts"]["assets"] >= 1
    assert status["counts"]["previews"] >= 1
    assert {c["name"] for c in status["components"]} >= {"s3", "kafka", "postgres", "ray", "worker"}


def test_worker_records_oversize_questions_and_malformed_items(pipeline: Pipeline) -> None:
    s = pipeline.settings
    asset_id = asset_id_for(s.bucket, "it/forged/huge-question.png", "v1")
    item = WorkItem(
        work_item_id=work_item_id_for(asset_id, 0),
        asset_id=asset_id,
        bucket=s.bucket,
        key="it/forged/huge-question.png",
        image_width=8,
        image_height=8,
        tile=Tile(index=0, x=0, y=0, width=8, height=8),
        tasks=[Task(kind=TaskKind.VQA, text="why? " * 1000)],
    )
    with pipeline.engine.begin() as conn:
        plan_forged(conn, [item], "png")
    producer = kafka.producer(s)
    try:
        kafka.publish_json(producer, s.topic_work, str(asset_id), item.model_dump(mode="json"))
        producer.send(s.topic_work, key=b"x", value=b'{"work_item_id": 42}').get(timeout=30)
    finally:
        producer.close()
    states = wait_for(pipeline.engine, [asset_id], timeout_s=WAIT_S)
    assert states[asset_id] == "error"
    _drain(pipeline)
    with pipeline.engine.connect() as conn:
        [error] = catalog.errors(conn, asset_id)
        kinds = {(e["stage"], e["kind"]) for e in catalog.errors(conn)}
    assert error["kind"] == "oversize_question" and "max_question_chars" in error["message"]
    assert ("worker", "malformed_work_item") in kinds


def test_a_utm_scene_is_tiled_and_located(pipeline: Pipeline, tmp_path: Path) -> None:
    s = pipeline.settings
    scene = samples.write_geotiff(tmp_path / "utm-scene.tif", size=1000, seed=3)
    [done] = ingest(s, [scene], prefix="it/scene")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states[done.asset_id] == "done"
    with rasterio.open(scene) as ds:
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    with pipeline.engine.connect() as conn:
        [asset] = catalog.assets(conn, done.asset_id)
        windows = conn.execute(
            sa.text(
                "SELECT px_x, px_y, px_width, px_height FROM work_items"
                " WHERE asset_id = :a AND kind = 'tile'"
            ),
            {"a": done.asset_id},
        ).all()
        rows = catalog.results(conn, done.asset_id)
    # 448 px tiles overlapping by 32 px: three per axis, the last shifted inside the scene
    assert asset["tiles_planned"] == 9 == len(windows)
    covered = np.zeros((1000, 1000), dtype=bool)
    for x, y, w, h in windows:
        assert (w, h) == (448, 448) and x + w <= 1000 and y + h <= 1000
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert len(rows) == 9 * len(default_tasks(s)) + len(overview_tasks(s))
    # the scene-level caption and description come first, from the whole-scene overview
    overview = [r for r in rows if r["item_kind"] == "overview"]
    assert rows[: len(overview)] == overview
    assert {(r["tile_index"], r["task_kind"]) for r in overview} == {
        (0, "caption"),
        (0, "describe"),
    }
    assert all(r["detections"] == [] for r in overview)
    # the preview: the whole scene bounded to 512 px, built from a decimated read
    assert preview(pipeline, done.asset_id).size == (512, 512)
    # lon/lat of every detection the (random) model happened to draw lies inside the scene
    for d in (d for r in rows for d in r["detections"]):
        for lon, lat in d["footprint"]["coordinates"][0]:
            assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
    stored = [float(v) for v in asset["lon_lat_bbox"].replace("(", "").replace(")", "").split(",")]
    # PostgreSQL keeps a box as (upper-right), (lower-left)
    assert stored == pytest.approx([east, north, west, south])


def test_copies_of_one_object_from_overlapping_tiles_are_flagged(pipeline: Pipeline) -> None:
    s = pipeline.settings
    asset_id = asset_id_for(s.bucket, "it/nms/scene.tif", "v1")
    task = Task(kind=TaskKind.GROUNDING, text="ship")
    tiles = [
        Tile(index=0, x=0, y=0, width=448, height=448),
        Tile(index=1, x=416, y=0, width=448, height=448),
    ]
    items = [
        WorkItem(
            work_item_id=work_item_id_for(asset_id, t.index),
            asset_id=asset_id,
            bucket=s.bucket,
            key="it/nms/scene.tif",
            image_width=864,
            image_height=448,
            tile=t,
            tasks=[task],
        )
        for t in tiles
    ]

    def outcome(*dets: catalog.Detection) -> catalog.TaskOutcome:
        return catalog.TaskOutcome(task, "[detection] ship", "raw", True, {}, list(dets))

    # one ship seen by both tiles (the copy near tile 0's edge ranks lower), one only by tile 1
    near_edge = catalog.Detection("ship", 420, 100, 440, 120, centrality=0.1)
    central = catalog.Detection("ship", 421, 101, 441, 121, centrality=0.9)
    other = catalog.Detection("ship", 700, 300, 720, 320, centrality=0.5)
    with pipeline.engine.begin() as conn:
        plan_forged(conn, items, "geotiff")
        catalog.store_results(conn, items[0], [outcome(near_edge)], "test")
        catalog.store_results(conn, items[1], [outcome(central, other)], "test")
        assert scenes.merge_duplicates(conn, asset_id) == 1
        assert scenes.merge_duplicates(conn, asset_id) == 1  # idempotent
        # what the preview draws
        kept = {(d.label, d.x1) for d in catalog.kept_detections(conn, asset_id)}
        flags = {
            (d["x1"], d["duplicate"])
            for r in catalog.results(conn, asset_id)
            for d in r["detections"]
        }
    assert flags == {(420, True), (421, False), (700, False)}
    assert kept == {("ship", 421), ("ship", 700)}
