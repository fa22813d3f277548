"""Planner: MinIO object-created events -> registered assets -> work items (one per tile, and
one for the overview of a scene cut into several tiles).

Consumes ``topic_events`` in the planner consumer group. For each object it registers the asset
(idempotently: the same object version is the same asset), reads the image header (or the
scene's metadata) through S3 range reads, records the work items, publishes them, and only then
marks the asset planned: a worker never receives an item the catalog does not know, and a crash
in between only republishes items that the worker then recognises as duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from minio.error import S3Error
from opentelemetry import trace
from sqlalchemy.engine import Engine

from skyeye import catalog, imagery, scenes, tasks, telemetry
from skyeye.adapters import kafka, postgres
from skyeye.adapters.s3 import ObjectStore
from skyeye.contracts import (
    EventRecord,
    InvalidEvent,
    ObjectEvent,
    ScenePlan,
    Tile,
    WorkItem,
    WorkItemKind,
    asset_id_for,
    is_preview_key,
    work_item_id_for,
)
from skyeye.services._runtime import run_consumer, service_settings
from skyeye.settings import Settings

log = logging.getLogger("skyeye.planner")

MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class _Layout:
    media_format: str
    width: int
    height: int
    tiles: list[Tile]
    scene: ScenePlan | None = None
    lon_lat_bbox: tuple[float, float, float, float] | None = None
    overview: Tile | None = None


class Planner:
    def __init__(
        self, settings: Settings, engine: Engine, store: ObjectStore, producer: KafkaProducer
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._producer = producer

    def handle_batch(self, records: Sequence[ConsumerRecord]) -> None:
        tracer = telemetry.tracer(__name__)
        for record in records:
            source = f"kafka:{record.topic}/{record.partition}/{record.offset}"
            # the span continues the trace ingest (or MinIO's producer) started, if any
            with tracer.start_as_current_span(
                "plan", context=telemetry.extract(record.headers)
            ) as span:
                span.set_attribute("skyeye.source", source)
                self.handle(record.value, source)

    def handle(self, raw: bytes, source: str) -> None:
        try:
            event = ObjectEvent.parse(raw, max_bytes=self._settings.max_event_bytes)
        except InvalidEvent as exc:
            log.warning("%s: %s", source, exc)
            self._error(source, "malformed_event", str(exc), detail={"head": raw[:200].hex()})
            return
        if not event.is_object_created:
            log.info("%s: ignoring %s", source, event.event_name)
            return
        for index, record in enumerate(event.records):
            self._plan(record, f"{source}#{index}")

    def _plan(self, record: EventRecord, source: str) -> None:
        obj = record.s3.object
        bucket, key = record.s3.bucket.name, obj.decoded_key
        problem = _key_problem(key)
        if problem:
            log.warning("%s: refused object key: %s", source, problem)
            self._error(source, "hostile_key", problem, detail={"key": ascii(key)[:300]})
            return
        if is_preview_key(key):
            # the worker's own output, announced when the bucket notifies every object created
            log.info("%s: ignoring preview %s", source, key)
            return
        version = obj.version_id or obj.e_tag or ""
        asset_id = asset_id_for(bucket, key, version)
        trace.get_current_span().set_attributes({"s3.key": key, "skyeye.asset_id": str(asset_id)})
        with self._engine.begin() as conn:
            status = catalog.register_asset(
                conn,
                catalog.AssetRecord(
                    asset_id=asset_id,
                    bucket=bucket,
                    object_key=key,
                    version=version,
                    size_bytes=obj.size,
                    content_type=obj.content_type,
                    user_metadata=obj.user_metadata,
                    event_name=record.event_name,
                    event_time=_parse_time(record.event_time),
                ),
            )
        if status != "registered":
            log.info("%s: asset %s already %s", source, asset_id, status)
            return
        try:
            layout = self._layout(bucket, key, obj.content_type)
        except imagery.UnreadableImage as exc:
            self._error(source, "unreadable_image", str(exc), asset_id=asset_id)
            return
        except S3Error as exc:
            self._error(source, "object_unavailable", f"{exc.code}: {exc.message}", asset_id)
            return
        work = [(WorkItemKind.TILE, t, tasks.default_tasks(self._settings)) for t in layout.tiles]
        if layout.overview is not None:
            work.append(
                (WorkItemKind.OVERVIEW, layout.overview, tasks.overview_tasks(self._settings))
            )
        items = [
            WorkItem(
                work_item_id=work_item_id_for(asset_id, tile.index, kind),
                kind=kind,
                asset_id=asset_id,
                bucket=bucket,
                key=key,
                version_id=obj.version_id,
                etag=obj.e_tag,
                image_width=layout.width,
                image_height=layout.height,
                tile=tile,
                scene=layout.scene,
                tasks=item_tasks,
            )
            for kind, tile, item_tasks in work
        ]
        with self._engine.begin() as conn:
            catalog.add_work_items(conn, asset_id, items)
        for item in items:
            kafka.publish_json(
                self._producer,
                self._settings.topic_work,
                str(asset_id),
                item.model_dump(mode="json"),
            )
        with self._engine.begin() as conn:
            catalog.mark_planned(
                conn,
                asset_id,
                layout.media_format,
                layout.width,
                layout.height,
                len(layout.tiles),
                crs=layout.scene.crs if layout.scene else None,
                lon_lat_bbox=layout.lon_lat_bbox,
            )
        log.info(
            "%s: asset %s (%s) planned into %d work item(s)", source, asset_id, key, len(items)
        )

    def _layout(self, bucket: str, key: str, content_type: str | None) -> _Layout:
        """Georeferenced rasters are tiled by the scene plan; other images are one tile."""
        if scenes.is_scene_candidate(key, content_type):
            with scenes.open_scene(self._store, self._settings, bucket, key) as dataset:
                plan = scenes.plan(dataset, self._settings)
            if plan is not None:
                return _Layout(
                    "geotiff",
                    plan.width,
                    plan.height,
                    [t.as_tile() for t in plan.tiles],
                    plan.scene,
                    plan.lon_lat_bbox,
                    plan.overview.as_tile() if plan.overview else None,
                )
        with self._store.open(bucket, key) as stream:
            info = imagery.probe(stream, max_pixels=self._settings.max_image_pixels)
        return _Layout(info.media_format, info.width, info.height, imagery.whole_image_tiles(info))

    def _error(
        self,
        source: str,
        kind: str,
        message: str,
        asset_id: object | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{kind}: {message}")
        with self._engine.begin() as conn:
            catalog.record_error(
                conn,
                source=source,
                stage="planner",
                kind=kind,
                message=message,
                asset_id=asset_id,
                detail=detail,
            )


def _key_problem(key: str) -> str | None:
    """Why an object key is refused, or None. Keys become log lines, rows and later file names."""
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"object key longer than {MAX_KEY_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "object key contains control characters"
    if key.startswith("/") or any(part in {"", ".", ".."} for part in key.split("/")):
        return "object key has an empty, '.' or '..' path segment"
    return None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def main() -> None:
    settings = service_settings("skyeye-planner")
    assert settings.database_url is not None  # resolve() fills every endpoint
    planner = Planner(
        settings,
        postgres.create_engine(settings.database_url),
        ObjectStore(settings),
        kafka.producer(settings),
    )
    run_consumer(
        planner.handle_batch,
        settings,
        settings.topic_events,
        settings.planner_group,
        max_poll_records=16,
    )


if __name__ == "__main__":
    main()
