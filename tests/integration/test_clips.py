"""UAV clips through the real pipeline: sampled frames, per-frame results with their times, the
multi-frame clip caption, sidecar footprints, and bad clips as error rows."""

import json
import time
from pathlib import Path

import pytest

from skyeye import catalog, samples
from skyeye.adapters.s3 import ObjectStore
from skyeye.cli.ingest import ingest, wait_for
from skyeye.model import answers
from skyeye.model.tasks import default_tasks

from .conftest import Pipeline, preview

WAIT_S = 300
CORNERS = [[16.0, 48.01], [16.02, 48.01], [16.02, 48.0], [16.0, 48.0]]


def test_a_clip_gives_per_frame_results_with_times_and_a_clip_caption(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    clip = samples.write_clip(tmp_path / "flight.mp4", cut_at=2.0)
    started = time.monotonic()
    [done] = ingest(
        pipeline.settings,
        [clip],
        prefix="it/clips",
        metadata={"start-datetime": "2024-05-01T10:00:00Z"},
    )
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    elapsed = time.monotonic() - started
    assert states[done.asset_id] == "done", states
    n_frames = pipeline.settings.clips.frames
    with pipeline.engine.connect() as conn:
        [asset] = catalog.assets(conn, done.asset_id)
        frames = catalog.clip_frames(conn, done.asset_id)
        results = catalog.results(conn, done.asset_id)
        assert catalog.errors(conn, done.asset_id) == []
    print(f"clip of {n_frames} frames through the pipeline in {elapsed:.1f} s")
    assert (asset["media_format"], asset["width"], asset["height"]) == ("mp4", 160, 96)
    assert asset["duration_s"] == pytest.approx(4.0) and asset["fps"] == 10
    assert asset["video_codec"] == "h264" and asset["frame_count"] == 40
    assert asset["start_time"].isoformat() == "2024-05-01T10:00:00+00:00"
    assert (asset["end_time"] - asset["start_time"]).total_seconds() == pytest.approx(4.0)
    assert asset["tiles_planned"] == n_frames
    # uniform samples at the centres of eight half-second spans, stored as PNGs in S3
    assert [f["time_s"] for f in frames] == pytest.approx(
        [0.25 + 0.5 * i for i in range(8)], abs=0.06
    )
    assert {f["sampled_by"] for f in frames} == {"uniform"}
    store = ObjectStore(pipeline.settings)
    png = store.read(frames[0]["bucket"], frames[0]["object_key"], max_bytes=10**6)
    assert png.startswith(b"\x89PNG") and frames[0]["bucket"] == pipeline.settings.derived_bucket
    # every frame got every per-tile task, each result tied to its frame's time
    per_frame = [r for r in results if r["task_kind"] != "video"]
    assert len(per_frame) == n_frames * len(default_tasks(pipeline.settings))
    times = {f["frame_index"]: f["time_s"] for f in frames}
    for r in per_frame:
        assert r["frame_time_s"] == times[r["frame_index"]]
        for d in r["detections"]:
            assert 0 <= d["x1"] <= d["x2"] <= 160 and 0 <= d["y1"] <= d["y2"] <= 96
            assert d["footprint"] is None  # no sidecar: pixels only
    [caption] = [r for r in results if r["task_kind"] == "video"]
    assert caption["frame_index"] is None and caption["item_kind"] == "clip"
    assert caption["prompt"] == "[caption] briefly describe the video frame image"
    # the tiny model's clip captions are often template junk ("1} 2}}"), kept raw, unparsed
    assert caption["raw_text"]
    junk = answers.has_template_remnants(caption["raw_text"])
    assert caption["parsed"] is not junk
    assert junk or caption["answer"]["text"]
    # the clip's preview is its first sampled frame, never enlarged
    assert preview(pipeline, done.asset_id).size == (160, 96)


def test_a_sidecar_places_frames_and_detections_on_the_ground(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    clip = samples.write_clip(tmp_path / "placed.mp4", seconds=2.0)
    sidecar = tmp_path / "placed.mp4.geo.json"
    sidecar.write_text(json.dumps({"frames": [{"t": 0, "corners": CORNERS}]}))
    # the sidecar named too travels with its clip and is not an asset of its own
    [done] = ingest(pipeline.settings, [clip, sidecar], prefix="it/clips")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states[done.asset_id] == "done", states
    with pipeline.engine.connect() as conn:
        [asset] = catalog.assets(conn, done.asset_id)
        frames = catalog.clip_frames(conn, done.asset_id)
        results = catalog.results(conn, done.asset_id)
    assert asset["lon_lat_bbox"] == "(16.02,48.01),(16,48)"
    for frame in frames:
        ring = frame["footprint"]["coordinates"][0]
        assert {tuple(p) for p in ring} >= {tuple(c) for c in CORNERS}
    located = [d for r in results for d in r["detections"]]
    for d in located:
        lons, lats = zip(*d["footprint"]["coordinates"][0], strict=True)
        assert 16.0 - 1e-9 <= min(lons) <= max(lons) <= 16.02 + 1e-9
        assert 48.0 - 1e-9 <= min(lats) <= max(lats) <= 48.01 + 1e-9


def test_bad_clips_become_error_rows_and_the_pipeline_goes_on(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    good = samples.write_clip(tmp_path / "good.mp4", seconds=1.0)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    placed_badly = samples.write_clip(tmp_path / "badsidecar.mp4", seconds=1.0)
    (tmp_path / "badsidecar.mp4.geo.json").write_text('{"frames": [{"t": 0}]}')
    done = ingest(pipeline.settings, [corrupt, placed_badly, good], prefix="it/badclips")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    by_name = {d.path.name: states[d.asset_id] for d in done}
    assert by_name == {"corrupt.mp4": "error", "badsidecar.mp4": "error", "good.mp4": "done"}
    with pipeline.engine.connect() as conn:
        [corrupt_error] = catalog.errors(conn, done[0].asset_id)
        [sidecar_error] = catalog.errors(conn, done[1].asset_id)
    assert (corrupt_error["stage"], corrupt_error["kind"]) == ("planner", "unreadable_clip")
    assert "not a video FFmpeg can read" in corrupt_error["message"]
    assert sidecar_error["kind"] == "invalid_sidecar" and "exactly one" in sidecar_error["message"]
