"""Clips: probing and limits, uniform and scene-change sampling, sidecars, frame footprints."""

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from skyeye import samples
from skyeye.catalog import Detection, TaskOutcome
from skyeye.contracts import FrameGeoref, Task, TaskKind
from skyeye.imagery import clips, geo
from skyeye.settings import ClipSettings


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.write_clip(tmp_path_factory.mktemp("clip") / "moving.mp4")


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.write_clip(tmp_path_factory.mktemp("clip") / "cut.mp4", cut_at=2.7)


def _sample(path: Path, limits: ClipSettings) -> list[clips.SampledFrame]:
    with path.open("rb") as stream, clips.open_clip(stream) as container:
        info = clips.probe(container, limits, path.name)
        return list(clips.sample(container, info, limits))


def test_probe_reads_the_header(clip: Path) -> None:
    with clip.open("rb") as stream, clips.open_clip(stream) as container:
        info = clips.probe(container, ClipSettings(), "moving.mp4")
    assert (info.media_format, info.codec, info.width, info.height) == ("mp4", "h264", 160, 96)
    assert info.duration_s == pytest.approx(4.0)
    assert info.fps == 10 and info.frame_count == 40


def test_uniform_samples_are_span_centres_and_show_the_square_where_it_was(clip: Path) -> None:
    frames = _sample(clip, ClipSettings(frames=4))
    assert [f.time_s for f in frames] == pytest.approx([0.5, 1.5, 2.5, 3.5])
    assert {f.sampled_by for f in frames} == {"uniform"}
    for frame in frames:
        assert frame.image.shape == (96, 160, 3) and frame.image.dtype == np.uint8
        x, y, side = samples.square_at(frame.time_s)
        # the square (red) is where it was at that time, and not a second earlier
        assert frame.image[y + side // 2, x + side // 2, 0] > 200
        assert frame.image[y + side // 2, x + side // 2, 1] < 120
        assert abs(frame.image.astype(int) - samples.clip_frame(frame.time_s)).mean() < 6


def test_a_clip_shorter_than_the_sample_count_gives_each_frame_once(tmp_path: Path) -> None:
    short = samples.write_clip(tmp_path / "short.mp4", seconds=0.3)
    frames = _sample(short, ClipSettings(frames=8))
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.1, 0.2])


def test_the_scene_change_detector_finds_the_cut_and_nothing_else(
    clip: Path, cut_clip: Path
) -> None:
    limits = ClipSettings(scene_changes=True)
    for path, expected in ((clip, []), (cut_clip, [2.7])):
        with path.open("rb") as stream, clips.open_clip(stream) as container:
            cuts = clips.scene_cuts(container, limits)
        assert [t for t, _ in cuts] == pytest.approx(expected)
    assert all(score > 0.3 for _, score in cuts)


def test_scene_change_sampling_takes_the_cut_then_fills_the_gaps(cut_clip: Path) -> None:
    frames = _sample(cut_clip, ClipSettings(frames=4, scene_changes=True))
    assert [(round(f.time_s, 3), f.sampled_by) for f in frames] == [
        (0.5, "uniform"),
        (1.5, "uniform"),
        (2.7, "scene_change"),
        (3.5, "uniform"),
    ]
    # the cut's frame is the first of the new shot (grey town blocks, not green fields)
    cut = frames[2].image
    assert cut[5, 5, 2] > 120 and frames[1].image[5, 5, 2] < 100


def test_choose_times_spaces_cuts_and_ranks_them_by_strength() -> None:
    cuts = [(1.0, 0.5), (1.1, 0.9), (6.0, 0.4)]
    chosen = clips.choose_times(10.0, 3, cuts)
    # 1.0 is within duration / (2 n) of the stronger 1.1; the uniform time farthest from both
    # cuts (of 1.67, 5 and 8.33 s) fills the third place
    assert chosen == [
        (1.1, "scene_change", 0.9),
        (6.0, "scene_change", 0.4),
        (pytest.approx(25 / 3), "uniform", None),
    ]
    assert [t for t, _, _ in clips.choose_times(10.0, 2)] == [2.5, 7.5]
    # more cuts than samples: the strongest win, 2.5 s apart at least
    many = [(float(t), t / 10) for t in range(10)]
    assert [t for t, _, _ in clips.choose_times(10.0, 2, many)] == [6.0, 9.0]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (ClipSettings(max_duration_s=3), "max_duration_s=3"),
        (ClipSettings(max_pixels=160 * 96 - 1), "max_pixels"),
        (ClipSettings(max_frames_decoded=15, scene_changes=True), "max_frames_decoded=15"),
        (ClipSettings(max_frames_decoded=3), "max_frames_decoded=3"),
    ],
)
def test_limits_refuse_the_clip(clip: Path, limits: ClipSettings, message: str) -> None:
    with pytest.raises(clips.UnreadableClip, match=message):
        _sample(clip, limits)


@pytest.mark.parametrize(
    "mutilate",
    [
        lambda data: data[: len(data) // 2],  # truncated: the index (moov, at the end) is gone
        lambda data: b"\0" * 100,
        lambda data: b"",
        lambda data: data[:40] + bytes(len(data) - 40),  # a header, then nothing but zeros
    ],
)
def test_corrupt_clips_are_unreadable_not_crashes(clip: Path, mutilate) -> None:
    data = mutilate(clip.read_bytes())
    with (
        pytest.raises(clips.UnreadableClip) as caught,
        clips.open_clip(io.BytesIO(data)) as container,
    ):
        info = clips.probe(container, ClipSettings())
        list(clips.sample(container, info, ClipSettings()))
    # in the user's words: no errno, no FFmpeg name for the anonymous stream
    assert "<none>" not in str(caught.value) and "Errno" not in str(caught.value)


def test_an_image_is_not_a_clip() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    png.seek(0)
    # FFmpeg opens a PNG as a one-image stream: no duration, so no clip
    with (
        pytest.raises(clips.UnreadableClip, match="no duration"),
        clips.open_clip(png) as container,
    ):
        clips.probe(container, ClipSettings())


def test_start_time_from_user_metadata_else_the_container() -> None:
    with io.BytesIO() as buffer:
        with av.open(buffer, "w", format="mp4") as out:
            out.metadata["creation_time"] = "2024-05-01T10:00:00.000000Z"
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height = 32, 32
            for _ in range(3):
                frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        buffer.seek(0)
        with clips.open_clip(buffer) as container:
            info = clips.probe(container, ClipSettings())
    assert info.creation_time is not None and info.creation_time.isoformat().startswith(
        "2024-05-01T10:00:00"
    )
    meta = {"X-Amz-Meta-Start-Datetime": "2025-01-02T03:04:05Z", "X-Amz-Meta-Sensor": "uav"}
    start = clips.start_time(meta, info)
    assert start is not None and start.isoformat() == "2025-01-02T03:04:05+00:00"
    end = clips.end_time(start, info)
    assert end is not None and (end - start).total_seconds() == pytest.approx(info.duration_s)
    assert clips.start_time({"X-Amz-Meta-Start-Datetime": "yesterday"}, info) == (
        info.creation_time
    )


def test_keys_of_clips_and_sidecars() -> None:
    assert clips.is_clip_candidate("a/b.MP4", None)
    assert clips.is_clip_candidate("a/b", "video/quicktime")
    assert not clips.is_clip_candidate("a/b.png", "image/png")
    assert clips.sidecar_key("a/b.mp4") == "a/b.mp4.geo.json"
    assert clips.is_sidecar("a/b.mp4.geo.json") and not clips.is_sidecar("a/b.json")


CORNERS = [[16.0, 48.01], [16.02, 48.01], [16.02, 48.0], [16.0, 48.0]]


def test_sidecar_corners_map_frame_corners_and_centre() -> None:
    sidecar = clips.parse_sidecar(json.dumps({"frames": [{"t": 0, "corners": CORNERS}]}).encode())
    georef = clips.georef_at(sidecar, 1.0, 200, 100)
    assert georef.crs == "EPSG:4326"
    ground = clips.frame_ground(georef, 200, 100)
    ring = ground.polygon["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 17
    assert ground.bbox == pytest.approx((16.0, 48.0, 16.02, 48.01))
    # the frame centre is the footprint's centre for a nadir (rectangular) footprint
    centre = clips.frame_footprint((99, 49, 101, 51), georef).bbox
    assert (centre[0] + centre[2]) / 2 == pytest.approx(16.01)
    assert (centre[1] + centre[3]) / 2 == pytest.approx(48.005)


def test_an_oblique_footprint_is_projective_not_affine() -> None:
    # the far (top) edge of the frame is wider on the ground than the near one
    trapezoid = [[15.99, 48.02], [16.03, 48.02], [16.02, 48.0], [16.0, 48.0]]
    sidecar = clips.parse_sidecar(json.dumps({"frames": [{"corners": trapezoid}]}).encode())
    georef = clips.georef_at(sidecar, 0.0, 100, 100)
    for (col, row), lon_lat in zip(
        [(0, 0), (100, 0), (100, 100), (0, 100)], trapezoid, strict=True
    ):
        x, y, w = np.asarray(georef.matrix).reshape(3, 3) @ [col, row, 1]
        assert (x / w, y / w) == pytest.approx(tuple(lon_lat))
    # the frame's middle row maps nearer the far edge than halfway: perspective
    middle = clips.frame_footprint((49, 49, 51, 51), georef).bbox
    assert (middle[1] + middle[3]) / 2 < 48.01


def test_sidecar_transforms_in_a_crs_and_the_nearest_entry_in_time() -> None:
    raw = {
        "crs": "EPSG:32633",
        "frames": [
            {"t": 0, "transform": [0.1, 0, 500_000, 0, -0.1, 5_300_000]},
            {"t": 10, "transform": [0.1, 0, 500_100, 0, -0.1, 5_300_000]},
            {"t": 20, "corners": CORNERS},
        ],
    }
    sidecar = clips.parse_sidecar(json.dumps(raw).encode())
    early, late = clips.georef_at(sidecar, 4.9, 100, 100), clips.georef_at(sidecar, 5.1, 100, 100)
    assert early.crs == "EPSG:32633" and early.matrix[2] == 500_000 and late.matrix[2] == 500_100
    assert clips.georef_at(sidecar, 5.0, 100, 100) == early  # a tie goes to the earlier entry
    assert clips.georef_at(sidecar, 30, 100, 100).crs == "EPSG:4326"
    west, south, east, north = clips.frame_ground(early, 100, 100).bbox
    # UTM 33N easting 500,000 is the zone's central meridian, 15 E
    assert west == pytest.approx(15.0, abs=1e-6) and 47.8 < south < north < 47.9
    assert east - west == pytest.approx(10 / 74_600, rel=0.02)  # 10 m at 47.85 N


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "invalid sidecar"),
        (b'{"frames": []}', "frames"),
        (b'{"frames": [{"t": 0}]}', "exactly one"),
        (b'{"frames": [{"transform": [1, 0, 0, 0, -1, 0]}]}', "needs a 'crs'"),
        (b'{"frames": [{"transform": [1, 0, 0, 0, -1, 0], "crs": "EPSG:0"}]}', "unknown CRS"),
        (b'{"frames": [{"corners": [[200, 0], [1, 0], [1, 1], [0, 1]]}]}', "not a lon/lat"),
        (b'{"frames": [{"corners": [[0, 0], [1, 0], [1, 1], [0, 1]], "crs": "EPSG:4326"}]}', "crs"),
        (b'{"frames": [{"corners": [[0, 0]]}]}', "frames.0.corners"),
        (b'{"frame": []}', "frames"),
    ],
)
def test_invalid_sidecars_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(clips.InvalidSidecar, match=message):
        clips.parse_sidecar(raw)


@pytest.mark.parametrize(
    "corners",
    [
        [[0, 0], [1, 0], [2, 0], [0, 1]],  # three on one line
        [[0, 1], [1, 1], [0, 0], [1, 0]],  # out of order: the outline crosses itself
    ],
)
def test_corners_must_be_a_convex_quadrilateral(corners: list) -> None:
    with pytest.raises(clips.InvalidSidecar, match="convex"):
        clips.parse_sidecar(json.dumps({"frames": [{"corners": corners}]}).encode())


def test_locate_gives_frame_detections_a_footprint() -> None:
    georef = FrameGeoref(crs="EPSG:4326", matrix=(0.001, 0, 16, 0, -0.001, 48, 0, 0, 1))
    outcome = TaskOutcome(
        Task(kind=TaskKind.GROUNDING, text="vehicle"),
        "[detection] vehicle",
        "<p>vehicle</p> {<10><10><20><20>}",
        True,
        {"boxes": []},
        [Detection("vehicle", 10, 20, 30, 40)],
    )
    [det] = clips.locate(outcome, georef).detections
    assert det.lon_lat_bbox == pytest.approx((16.01, 47.96, 16.03, 47.98))
    assert det.footprint is not None and det.footprint["type"] == "Polygon"


LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'


@pytest.mark.parametrize(
    "transform",
    [[0, 0, 500_000, 0, 0, 5_300_000], [1, 2, 500_000, 2, 4, 5_300_000], [0.1, 0, 0, 0, 0, 0]],
    ids=["zero", "parallel-columns", "zero-height"],
)
def test_a_transform_without_area_is_refused(transform: list[float]) -> None:
    raw = {"crs": "EPSG:32633", "frames": [{"transform": transform}]}
    with pytest.raises(clips.InvalidSidecar, match="no area on the ground"):
        clips.parse_sidecar(json.dumps(raw).encode())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"crs": "EPSG:32633", "frames": [{"transform": [NaN, 0, 500000, 0, -1, 5300000]}]}',
        b'{"crs": "EPSG:32633", "frames": [{"transform": [1, 0, Infinity, 0, -1, 5300000]}]}',
        b'{"frames": [{"t": NaN, "corners": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}',
    ],
)
def test_non_finite_numbers_are_refused(raw: bytes) -> None:
    with pytest.raises(clips.InvalidSidecar, match="finite"):
        clips.parse_sidecar(raw)


def _frame_georef(raw: dict) -> FrameGeoref:
    return clips.georef_at(clips.parse_sidecar(json.dumps(raw).encode()), 0.0, 100, 100)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"crs": LOCAL_CS, "frames": [{"transform": [0.1, 0, 0, 0, -0.1, 0]}]},
            r"^the frame its sidecar describes .*\(LOCAL_CS\[\"site grid\"\]\) cannot be",
        ),
        (
            {"crs": "EPSG:32633", "frames": [{"transform": [0.1, 0, 1e8, 0, -0.1, 5e6]}]},
            "outside the valid area",
        ),
        (
            {"crs": "EPSG:4326", "frames": [{"transform": [0.001, 0, 16, 0, -0.001, 95]}]},
            "latitude 95, beyond",
        ),
        (
            {"crs": "EPSG:4326", "frames": [{"transform": [0.001, 0, 1000, 0, -0.001, 48]}]},
            "longitude 1000.1, beyond",
        ),
    ],
    ids=["local-cs", "out-of-domain", "lat-95", "lon-1000"],
)
def test_a_frame_that_is_no_place_on_the_globe_is_an_invalid_georeference(
    raw: dict, message: str
) -> None:
    georef = _frame_georef(raw)
    with pytest.raises(geo.InvalidGeoreference, match=message):
        clips.frame_ground(georef, 100, 100)
    # a detection on such a frame keeps no footprint, and the worker goes on
    outcome = TaskOutcome(
        Task(kind=TaskKind.GROUNDING, text="vehicle"),
        "[detection] vehicle",
        "<p>vehicle</p> {<10><10><20><20>}",
        True,
        {"boxes": []},
        [Detection("vehicle", 10, 20, 30, 40)],
    )
    [det] = clips.locate(outcome, georef).detections
    assert det.footprint is None and det.lon_lat_bbox is None


def test_corners_across_the_antimeridian_give_a_split_footprint() -> None:
    corners = [[179.99, 0.01], [-179.99, 0.01], [-179.99, 0.0], [179.99, 0.0]]
    ground = clips.frame_ground(_frame_georef({"frames": [{"corners": corners}]}), 100, 100)
    assert ground.polygon["type"] == "MultiPolygon"
    assert ground.bbox == pytest.approx((179.99, 0.0, -179.99, 0.01))
    for [ring] in ground.polygon["coordinates"]:
        assert all(abs(lon) <= 180 for lon, _ in ring)


def test_a_utm_frame_across_the_antimeridian_is_split() -> None:
    # UTM 60N easting 834,000 m is about 180 E at the equator: a 100 m frame across it
    raw = {"crs": "EPSG:32660", "frames": [{"transform": [1, 0, 833_950, 0, -1, 100]}]}
    ground = clips.frame_ground(_frame_georef(raw), 100, 100)
    west, _, east, _ = ground.bbox
    assert ground.polygon["type"] == "MultiPolygon" and west > 179.99 and east < -179.99
