"""The reconciler on the real pipeline: objects no event announced are processed, once.

The session pipeline runs the reconciler every 2 s with a minimum object age of 1 s
(tests/integration/conftest.py). Nothing is stubbed: objects are put with the plain minio
client, as any S3 client would put them, and nanio sends no notification.
"""

import io
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from minio import Minio
from PIL import Image

from skyeye import catalog
from skyeye.adapters import kafka
from skyeye.cli.ingest import ingest, wait_for
from skyeye.contracts import asset_id_for
from skyeye.services.reconciler import refusal_source
from skyeye.stack.paths import StackPaths

from .conftest import Pipeline

# generous: the reconciler interval and minimum age, plus planning and inference on 2 cores
WAIT_S = 120
# a pass's summary line, in the JSON log line's message
_PASS_LINE = re.compile(r"\"message\": \"(full|recent) pass: listed ")


def _plain_client(pipeline: Pipeline) -> Minio:
    s = pipeline.settings
    assert s.s3_endpoint is not None
    return Minio(
        s.s3_endpoint,
        access_key=s.s3_access_key,
        secret_key=s.s3_secret_key.get_secret_value(),
        secure=s.s3_secure,
        region=s.s3_region,
    )


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.5)


def _asset_ids(pipeline: Pipeline, key: str) -> list[uuid.UUID]:
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT asset_id FROM assets WHERE bucket = :bucket AND object_key = :key"),
            {"bucket": pipeline.settings.bucket, "key": key},
        )
        return [row.asset_id for row in rows]


def _completed_passes(pipeline: Pipeline) -> int:
    log = StackPaths.of(pipeline.home).log("reconciler")
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if _PASS_LINE.search(line))


def _settle(pipeline: Pipeline) -> None:
    """Two more reconciler passes, and the planner has handled every event published so far:
    whatever the reconciler was going to announce has reached the catalog."""
    target = _completed_passes(pipeline) + 2
    _until("two more reconciler passes", lambda: _completed_passes(pipeline) >= target)
    s = pipeline.settings
    _until("the planner has no lag", lambda: kafka.lag(s, s.topic_events, s.planner_group) == 0)


def test_an_object_put_with_a_plain_s3_client_is_processed_once(pipeline: Pipeline) -> None:
    s = pipeline.settings
    key = "it/reconciler/plain client.png"
    data = _png(1)
    put = _plain_client(pipeline).put_object(
        s.bucket, key, io.BytesIO(data), len(data), content_type="image/png"
    )
    _until("an asset for the object", lambda: bool(_asset_ids(pipeline, key)))
    [asset_id] = _asset_ids(pipeline, key)
    # the asset its own MinIO notification would have made (version: the eTag, no quotes)
    assert asset_id == asset_id_for(s.bucket, key, put.etag.strip('"'))
    states = wait_for(pipeline.engine, [asset_id], timeout_s=WAIT_S)
    assert states[asset_id] == "done"
    _settle(pipeline)
    assert _asset_ids(pipeline, key) == [asset_id]
    with pipeline.engine.connect() as conn:
        assert catalog.errors(conn, asset_id) == []
        assert len(catalog.results(conn, asset_id)) > 0


def test_an_ingested_object_is_not_announced_a_second_time(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    path = tmp_path / "announced.png"
    path.write_bytes(_png(2))
    [done] = ingest(pipeline.settings, [path], prefix="it/reconciler")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states[done.asset_id] == "done"
    _settle(pipeline)
    assert _asset_ids(pipeline, done.key) == [done.asset_id]


def test_a_hostile_key_is_one_error_row_and_no_event(pipeline: Pipeline) -> None:
    """nanio refuses such keys, as `skyeye ingest` does; MinIO and AWS store them. The object
    is written straight into nanio's data folder, which nanio lists as it finds it."""
    s = pipeline.settings
    key = "it/reconciler/bell\x07and\x1b[31mescape.png"
    path = StackPaths.of(pipeline.home).s3_dir / s.bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(3))
    source = refusal_source(s.bucket, key)

    def refusals() -> list[dict]:
        with pipeline.engine.connect() as conn:
            return [e for e in catalog.errors(conn) if e["source"] == source]

    try:
        _until("the reconciler's error row", lambda: bool(refusals()))
        _settle(pipeline)
        [error] = refusals()
        assert (error["stage"], error["kind"]) == ("reconciler", "hostile_key")
        assert "control characters" in error["message"]
        assert error["detail"]["key"] == ascii(key)
        assert error["asset_id"] is None
        with pipeline.engine.connect() as conn:
            planner_saw_it = [
                e
                for e in catalog.errors(conn)
                if e["stage"] == "planner" and e["detail"].get("key") == ascii(key)
            ]
        assert planner_saw_it == []
        assert _asset_ids(pipeline, key) == []
    finally:
        path.unlink()
