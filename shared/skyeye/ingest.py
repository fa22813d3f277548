"""Upload files to the bucket and announce each with a MinIO-format object-created event.

In production MinIO's notify_kafka publishes the event; locally nanio cannot, so ingest does.
Either way the planner sees the same message. A clip's ``.geo.json`` sidecar next to it on disk
is uploaded before the clip (the planner reads it when it plans the clip) and is not an asset.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from kafka import KafkaProducer

from skyeye import catalog, clips, telemetry
from skyeye.adapters import kafka
from skyeye.adapters.s3 import ObjectStore
from skyeye.contracts import asset_id_for, minio_created_event
from skyeye.settings import Settings


@dataclass(frozen=True)
class Ingested:
    path: Path
    key: str
    asset_id: uuid.UUID


def object_key(path: Path, prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{path.name}" if prefix else path.name


def ingest(
    settings: Settings,
    paths: Sequence[Path],
    *,
    prefix: str = "uploads",
    metadata: dict[str, str] | None = None,
) -> list[Ingested]:
    store = ObjectStore(settings)
    producer = kafka.producer(settings)
    tracer = telemetry.tracer(__name__)
    done = []
    try:
        for path in paths:
            if clips.is_sidecar(path.name):
                continue  # it travels with its clip
            key = object_key(path, prefix)
            with tracer.start_as_current_span("ingest") as span:
                done.append(_ingest_one(store, producer, settings, path, key, metadata))
                span.set_attributes({"s3.key": key, "skyeye.asset_id": str(done[-1].asset_id)})
    finally:
        producer.close()
    return done


def _ingest_one(
    store: ObjectStore,
    producer: KafkaProducer,
    settings: Settings,
    path: Path,
    key: str,
    metadata: dict[str, str] | None,
) -> Ingested:
    sidecar = path.with_name(path.name + clips.SIDECAR_SUFFIX)
    if sidecar.is_file():
        store.put_file(sidecar, settings.bucket, clips.sidecar_key(key))
    stored = store.put_file(path, settings.bucket, key, metadata)
    event = minio_created_event(
        bucket=stored.bucket,
        key=stored.key,
        size=stored.size,
        etag=stored.etag,
        content_type=stored.content_type,
        metadata=stored.metadata,
        version_id=stored.version_id,
    )
    kafka.publish_json(producer, settings.topic_events, f"{stored.bucket}/{key}", event)
    version = stored.version_id or stored.etag
    return Ingested(path, key, asset_id_for(stored.bucket, key, version))


def wait_for(
    engine: sa.Engine,
    asset_ids: Sequence[uuid.UUID],
    *,
    timeout_s: float,
    progress: Callable[[dict[uuid.UUID, str]], None] | None = None,
    poll_s: float = 0.5,
) -> dict[uuid.UUID, str]:
    """Poll the catalog until every asset is done or errored; returns the final states."""
    deadline = time.monotonic() + timeout_s
    last: dict[uuid.UUID, str] = {}
    while True:
        with engine.connect() as conn:
            states = catalog.asset_states(conn, asset_ids)
        if states != last and progress:
            progress(states)
        last = states
        if all(states.get(a) in catalog.TERMINAL_ASSET_STATES for a in asset_ids):
            return states
        if time.monotonic() > deadline:
            missing = [
                str(a) for a in asset_ids if states.get(a) not in catalog.TERMINAL_ASSET_STATES
            ]
            raise TimeoutError(
                f"{len(missing)} asset(s) not finished after {timeout_s:.0f} s: "
                + ", ".join(missing)
            )
        time.sleep(poll_s)
