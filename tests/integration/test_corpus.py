"""A hostile corpus through the real pipeline: every input ends as its expected outcome (an error
row of the expected stage and kind, a finished asset, or nothing for an event that is not about
a new object), no consumer restarts, and a good file sent afterwards still finishes.

Every input is generated here, deterministically. Files go in through `skyeye ingest`'s own
code; events, keys and work items that ingest would refuse are published to Kafka directly, as
a misbehaving producer would.
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.transform import from_origin

from skyeye import catalog, samples
from skyeye.adapters import kafka
from skyeye.cli.ingest import ingest, wait_for
from skyeye.contracts import minio_created_event

from .conftest import Pipeline

WAIT_S = 400
DONE = "done"
IGNORED = "ignored"
LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
# What no error message may show a user: Python reprs, GDAL's virtual file names, FFmpeg's
# name for an anonymous stream, tracebacks.
LEAKS = ("<_io.", "/vsi", "'<none>'", "Traceback", " object at 0x")


@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "stage/kind" of its error row, DONE, or IGNORED
    file: Callable[[Path], Path] | None = None
    event: Callable[[Pipeline], bytes] | None = None
    work_item: bytes | None = None


# --- images ---------------------------------------------------------------------------------


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encoded(fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    _noise(300, 200).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)


def _png_bomb() -> bytes:
    # 30,000 x 30,000 RGB declared in a few hundred bytes: refused from the header
    return (
        _png_header(30_000, 30_000)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + (_chunk(b"IEND", b""))
    )


def _jpeg_bomb() -> bytes:
    data = bytearray(_encoded("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65_000, 65_000)  # height, width
    return bytes(data)


def _gif_bomb() -> bytes:
    data = bytearray(_encoded("GIF"))
    data[6:10] = struct.pack("<HH", 65_535, 65_535)
    return bytes(data)


def _cut(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def _png_garbage() -> bytes:
    data = _encoded("PNG")
    rng = np.random.default_rng(5)
    start = data.index(b"IDAT") + 4
    return data[:start] + rng.integers(0, 255, 3000, dtype=np.uint8).tobytes() + data[start:]


# --- scenes ---------------------------------------------------------------------------------


def _geotiff(
    name: str,
    crs: str,
    transform: Affine,
    *,
    size: int = 64,
    dtype: str = "uint8",
    nodata: float | None = None,
    fill: float | None = None,
) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        rng = np.random.default_rng(1)
        data = rng.integers(20, 200, (3, size, size)).astype(dtype)
        if fill is not None:
            data[:] = fill
        with rasterio.open(
            path, "w", driver="GTiff", width=size, height=size, count=3, dtype=dtype,
            crs=crs, transform=transform, nodata=nodata, compress="deflate",
        ) as dst:  # fmt: skip
            dst.write(data)
        return path

    return make


def _scene_bomb(folder: Path) -> Path:
    # 60,000 x 60,000 px declared, no block written: a few KB that would be 10.8 GB decoded
    path = folder / "bomb-scene.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=60_000, height=60_000, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500_000, 5_300_000, 10, 10), tiled=True,
        compress="deflate", sparse_ok=True,
    ):  # fmt: skip
        pass
    return path


def _corrupt_scene(folder: Path) -> Path:
    make = _geotiff("corrupt-scene.tif", "EPSG:32633", from_origin(5e5, 5e6, 10, 10), size=256)
    path = make(folder)
    data = bytearray(path.read_bytes())
    # garble the middle of the compressed pixel data, keep the header intact
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(3).bytes(3000)
    path.write_bytes(bytes(data))
    return path


# --- clips ----------------------------------------------------------------------------------


def _clip(name: str, **options: object) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        return samples.write_clip(folder / name, **options)  # type: ignore[arg-type]

    return make


def _cut_clip(folder: Path) -> Path:
    path = samples.write_clip(folder / "truncated.mp4")
    path.write_bytes(_cut(path.read_bytes(), 0.4))
    return path


def _long_clip(folder: Path) -> Path:
    # 601 s at 1 frame/s: over clips.max_duration_s (600 s), refused from the header
    return samples.write_clip(folder / "too-long.mp4", seconds=601, fps=1, width=16, height=16)


def _audio_only(folder: Path) -> Path:
    path = folder / "audio-only.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        samples_ = np.zeros((1, 8000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples_, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _with_sidecar(name: str, sidecar: bytes | dict[str, object]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = samples.write_clip(folder / name, seconds=1.0, fps=5)
        raw = sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode()
        path.with_name(path.name + ".geo.json").write_bytes(raw)
        return path

    return make


_CORNERS = [[10.0, 45.001], [10.001, 45.001], [10.001, 45.0], [10.0, 45.0]]


# --- events and work items -------------------------------------------------------------------


def _event(key: str, *, quoted: str | None = None, name: str = "s3:ObjectCreated:Put"):
    """An event for ``key`` (URL-encoded as MinIO sends it, unless ``quoted`` is given)."""

    def make(pipeline: Pipeline) -> bytes:
        bucket = pipeline.settings.bucket
        event = minio_created_event(
            bucket=bucket, key=key, size=10, etag="0" * 32, content_type="image/png", metadata={}
        )
        record = event["Records"][0]  # type: ignore[index]
        record["eventName"] = name
        event["EventName"] = name
        if quoted is not None:
            record["s3"]["object"]["key"] = quoted
        return json.dumps(event).encode()

    return make


def _raw(data: bytes) -> Callable[[Pipeline], bytes]:
    return lambda _pipeline: data


def _negative_size(pipeline: Pipeline) -> bytes:
    event = json.loads(_event("it/corpus/negative.png")(pipeline))
    event["Records"][0]["s3"]["object"]["size"] = -5
    return json.dumps(event).encode()


def _no_records(pipeline: Pipeline) -> bytes:
    event = json.loads(_event("it/corpus/none.png")(pipeline))
    event["Records"] = []
    return json.dumps(event).encode()


def _oversized(pipeline: Pipeline) -> bytes:
    event = json.loads(_event("it/corpus/big.png")(pipeline))
    event["padding"] = "x" * (pipeline.settings.max_event_bytes + 1)
    return json.dumps(event).encode()


_UNKNOWN_ITEM = json.dumps(
    {
        "work_item_id": str(uuid.UUID(int=7)),
        "asset_id": str(uuid.UUID(int=8)),
        "bucket": "incoming",
        "key": "it/corpus/never-planned.png",
        "image_width": 8,
        "image_height": 8,
        "tile": {"index": 0, "x": 0, "y": 0, "width": 8, "height": 8},
        "tasks": [{"kind": "caption", "text": "briefly describe the image"}],
    }
).encode()


CASES = [
    # images the planner refuses from their header
    Case("empty.png", "planner/unreadable_image", file=_write("empty.png", b"")),
    Case("text.jpg", "planner/unreadable_image", file=_write("text.jpg", b"not an image\n" * 40)),
    Case("bomb.png", "planner/unreadable_image", file=_write("bomb.png", _png_bomb())),
    Case("bomb.jpg", "planner/unreadable_image", file=_write("bomb.jpg", _jpeg_bomb())),
    Case("bomb.gif", "planner/unreadable_image", file=_write("bomb.gif", _gif_bomb())),
    Case(
        "zero-size.png",
        "planner/unreadable_image",
        file=_write("zero-size.png", _png_header(0, 10) + _chunk(b"IEND", b"")),
    ),
    Case("header-only.png", "planner/unreadable_image", file=_write("header-only.png", b"\x89PNG")),
    # images whose header is fine and whose pixels are not: the worker finds out
    Case(
        "truncated.jpg",
        "worker/unreadable_image",
        file=_write("truncated.jpg", _cut(samples.aerial_photos()[0].read_bytes(), 0.3)),
    ),
    Case(
        "truncated.png",
        "worker/unreadable_image",
        file=_write("truncated.png", _cut(_encoded("PNG"), 0.5)),
    ),
    Case(
        "garbage-idat.png",
        "worker/unreadable_image",
        file=_write("garbage-idat.png", _png_garbage()),
    ),
    # a WebP's size is in a chunk that Pillow reads whole: refused from the header
    Case(
        "truncated.webp",
        "planner/unreadable_image",
        file=_write("truncated.webp", _cut(_encoded("WEBP"), 0.5)),
    ),
    Case(
        "truncated.gif",
        "worker/unreadable_image",
        file=_write("truncated.gif", _cut(_encoded("GIF"), 0.5)),
    ),
    Case(
        "truncated.bmp",
        "worker/unreadable_image",
        file=_write("truncated.bmp", _cut(_encoded("BMP"), 0.5)),
    ),
    Case(
        "truncated-plain.tif",
        "worker/unreadable_image",
        file=_write("truncated-plain.tif", _cut(_encoded("TIFF"), 0.5)),
    ),
    # scenes
    Case("bomb-scene.tif", "planner/unreadable_image", file=_scene_bomb),
    Case(
        "local-cs.tif",
        "planner/invalid_georeference",
        file=_geotiff("local-cs.tif", LOCAL_CS, Affine(1, 0, 0, 0, -1, 64)),
    ),
    Case(
        "utm-outside-its-domain.tif",
        "planner/invalid_georeference",
        file=_geotiff("utm-outside-its-domain.tif", "EPSG:32633", from_origin(1e8, 5e6, 10, 10)),
    ),
    Case(
        "lon-1000.tif",
        "planner/invalid_georeference",
        file=_geotiff("lon-1000.tif", "EPSG:4326", from_origin(1000, 10, 0.01, 0.01)),
    ),
    Case(
        "lat-95.tif",
        "planner/invalid_georeference",
        file=_geotiff("lat-95.tif", "EPSG:4326", from_origin(10, 95, 0.01, 0.01)),
    ),
    Case(
        "zero-pixel-size.tif",
        "planner/invalid_georeference",
        file=_geotiff("zero-pixel-size.tif", "EPSG:32633", Affine(0, 0, 500_000, 0, 0, 5e6)),
    ),
    Case(
        "all-nodata.tif",
        "planner/no_data",
        file=_geotiff(
            "all-nodata.tif", "EPSG:32633", from_origin(5e5, 5e6, 10, 10), nodata=0, fill=0
        ),
    ),
    Case(
        "all-nodata-16bit.tif",
        "planner/no_data",
        file=_geotiff(
            "all-nodata-16bit.tif",
            "EPSG:32633",
            from_origin(5e5, 5e6, 10, 10),
            dtype="uint16",
            nodata=0,
            fill=0,
        ),
    ),
    Case("corrupt-scene.tif", "worker/unreadable_image", file=_corrupt_scene),
    Case(
        "antimeridian-wgs84.tif",
        DONE,
        file=_geotiff("antimeridian-wgs84.tif", "EPSG:4326", from_origin(179.9, -16, 0.003, 0.003)),
    ),
    Case(
        "antimeridian-utm60s.tif",
        DONE,
        # UTM 60S (central meridian 177 E): 818-824 km east spans 180 E at 17 S
        file=_geotiff(
            "antimeridian-utm60s.tif", "EPSG:32760", from_origin(818_000, 8_120_000, 100, 100)
        ),
    ),
    # clips
    Case("empty.mp4", "planner/unreadable_clip", file=_write("empty.mp4", b"")),
    Case("text.mp4", "planner/unreadable_clip", file=_write("text.mp4", b"not a video\n" * 40)),
    Case("truncated.mp4", "planner/unreadable_clip", file=_cut_clip),
    Case("audio-only.mp4", "planner/unreadable_clip", file=_audio_only),
    Case("too-long.mp4", "planner/unreadable_clip", file=_long_clip),
    Case(
        "sidecar-not-json.mp4",
        "planner/invalid_sidecar",
        file=_with_sidecar("sidecar-not-json.mp4", b"{frames: oops"),
    ),
    Case(
        "sidecar-local-cs.mp4",
        "planner/invalid_georeference",
        file=_with_sidecar(
            "sidecar-local-cs.mp4",
            {"crs": LOCAL_CS, "frames": [{"t": 0, "transform": [1, 0, 0, 0, -1, 96]}]},
        ),
    ),
    Case(
        "sidecar-zero-area.mp4",
        "planner/invalid_sidecar",
        file=_with_sidecar(
            "sidecar-zero-area.mp4",
            {"crs": "EPSG:32633", "frames": [{"t": 0, "transform": [1, 2, 5e5, 2, 4, 5e6]}]},
        ),
    ),
    Case(
        "sidecar-lon-1000.mp4",
        "planner/invalid_sidecar",
        file=_with_sidecar(
            "sidecar-lon-1000.mp4",
            {"frames": [{"t": 0, "corners": [[1000 + x, y] for x, y in _CORNERS]}]},
        ),
    ),
    Case(
        "sidecar-twisted.mp4",
        "planner/invalid_sidecar",
        file=_with_sidecar(
            "sidecar-twisted.mp4",
            {"frames": [{"t": 0, "corners": [_CORNERS[0], _CORNERS[2], _CORNERS[1], _CORNERS[3]]}]},
        ),
    ),
    Case(
        "sidecar-nan.mp4",
        "planner/invalid_sidecar",
        file=_with_sidecar(
            "sidecar-nan.mp4",
            b'{"crs": "EPSG:32633", "frames": [{"t": 0, "transform": [NaN, 0, 5e5, 0, -1, 5e6]}]}',
        ),
    ),
    # events, first one that is not about a new object: the cases after it on the same
    # partition show when it has been consumed
    Case(
        "a deletion",
        IGNORED,
        event=_event("it/corpus/deleted.png", name="s3:ObjectRemoved:Delete"),
    ),
    # object keys a producer other than `skyeye ingest` may send
    Case("key with ..", "planner/hostile_key", event=_event("it/../../etc/passwd")),
    Case("key with a newline", "planner/hostile_key", event=_event("it/line\nbreak.png")),
    Case(
        "key with NUL", "planner/hostile_key", event=_event("it/nul.png", quoted="it%2Fnul%00.png")
    ),
    Case("key with //", "planner/hostile_key", event=_event("it//double.png")),
    Case("key of 1,025 bytes", "planner/hostile_key", event=_event("k" * 1025)),
    Case("absolute key", "planner/hostile_key", event=_event("/etc/passwd")),
    # malformed events
    Case("not JSON", "planner/malformed_event", event=_raw(b"{not json")),
    Case("not UTF-8", "planner/malformed_event", event=_raw(b'{"EventName": "\xff\xfe"}')),
    Case(
        "wrong shape", "planner/malformed_event", event=_raw(b'{"EventName": 1, "Records": "no"}')
    ),
    Case("no records", "planner/malformed_event", event=_no_records),
    Case("negative size", "planner/malformed_event", event=_negative_size),
    Case("oversized event", "planner/malformed_event", event=_oversized),
    Case("a JSON array", "planner/malformed_event", event=_raw(b"[1, 2, 3]")),
    Case(
        "object never uploaded", "planner/object_unavailable", event=_event("it/corpus/ghost.png")
    ),
    # work items a misbehaving producer may send
    Case("work item not JSON", "worker/malformed_work_item", work_item=b"\x00\x01 nope"),
    Case("work item never planned", "worker/unknown_work_item", work_item=_UNKNOWN_ITEM),
]


def test_the_hostile_corpus_ends_as_expected_and_stops_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    assert len(CASES) >= 40
    s = pipeline.settings
    restarts = {
        c.name: c.restarts for c in pipeline.stack.state().components if c.kind == "service"
    }
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = {case.name: case.file(folder) for case in CASES if case.file is not None}
    done = ingest(s, list(files.values()), prefix="it/corpus")
    assets = {d.path.name: d.asset_id for d in done}

    sources: dict[str, str] = {}
    producer = kafka.producer(s)
    try:
        for case in CASES:
            if case.event is not None:
                topic, value, key = s.topic_events, case.event(pipeline), b"corpus"
            elif case.work_item is not None:
                topic, value, key = s.topic_work, case.work_item, b"corpus"
            else:
                continue
            sent = producer.send(topic, key=key, value=value).get(timeout=30)
            sources[case.name] = f"kafka:{topic}/{sent.partition}/{sent.offset}"
    finally:
        producer.close()

    wait_for(pipeline.engine, list(assets.values()), timeout_s=WAIT_S)
    outcomes, messages = _outcomes(pipeline, assets, sources)
    table = "\n".join(f"| {n} | {outcomes[n]} | {messages.get(n, '')} |" for n in outcomes)
    print(f"\n| input | outcome | message |\n| --- | --- | --- |\n{table}")
    assert outcomes == {case.name: case.expect for case in CASES}

    with pipeline.engine.connect() as conn:
        messages = [e["message"] for e in catalog.errors(conn)]
        crossing = [
            catalog.stac_asset(conn, assets[name])["lon_lat_bounds"]
            for name in ("antimeridian-wgs84.tif", "antimeridian-utm60s.tif")
        ]
    leaks = [m for m in messages if any(leak in m for leak in LEAKS)]
    assert not leaks
    for west, south, east, north in crossing:
        assert west > 0 > east and -90 < south < north < 90  # across the antimeridian

    # the pipeline goes on: a good file finishes, and no consumer was restarted
    good = folder / "good-after-corpus.png"
    _noise(64, 48, seed=9).save(good)
    [after] = ingest(s, [good], prefix="it/corpus")
    assert wait_for(pipeline.engine, [after.asset_id], timeout_s=WAIT_S) == {after.asset_id: DONE}
    now = {c.name: c.restarts for c in pipeline.stack.state().components if c.kind == "service"}
    assert now == restarts


def _outcomes(
    pipeline: Pipeline, assets: dict[str, uuid.UUID], sources: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each case's outcome as the catalog tells it, and its error message; waits for the
    errors of published messages (they have no asset to wait for)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with pipeline.engine.connect() as conn:
            errors = catalog.errors(conn)
            states = catalog.asset_states(conn, list(assets.values()))
            by_asset: dict[uuid.UUID, list[dict]] = {}
            for e in errors:
                if e["asset_id"] is not None:
                    by_asset.setdefault(e["asset_id"], []).append(e)
        by_source = {e["source"].split("#")[0]: e for e in errors}
        outcomes, messages = {}, {}
        for case in CASES:
            if case.name in sources:
                error = by_source.get(sources[case.name])
            else:
                error = next(iter(by_asset.get(assets[case.name], [])), None)
            if error is not None:
                outcomes[case.name] = f"{error['stage']}/{error['kind']}"
                messages[case.name] = error["message"]
            else:
                outcomes[case.name] = (
                    states.get(assets[case.name], IGNORED) if (case.name in assets) else IGNORED
                )
        waiting = [
            n for n, o in outcomes.items() if o == IGNORED and n in sources and n != "a deletion"
        ]
        if not waiting or time.monotonic() > deadline:
            return outcomes, messages
        time.sleep(0.5)
