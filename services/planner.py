"""Planner: MinIO object-created events -> registered assets -> work items.

There is one work item per tile, and one for the overview of a scene cut into several tiles.
Consumes ``topic_events`` in the planner consumer group. For each object it registers the asset
(idempotently: the same object version is the same asset), reads the image header (or the
scene's metadata) through S3 range reads, records the work items, publishes them, and only then
marks the asset planned: a worker never receives an item the catalog does not know, and a crash
in between only republishes items that the worker then recognises as duplicates.

A clip is decoded here, once: its sampled frames are written as PNGs to the derived bucket
(deterministic keys, so a redelivery rewrites the same objects) and the work is one item per
frame plus one clip caption over all of them. Workers then read frames like any image.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from opentelemetry import trace

from skyeye import catalog, imagery, telemetry
from skyeye.adapters import kafka, postgres, s3
from skyeye.adapters.kafka import Record
from skyeye.adapters.postgres import Connection, Engine
from skyeye.adapters.s3 import ObjectStore, ObjectTooLarge
from skyeye.alerts import AskCondition, RuleKind, RuleSpec
from skyeye.catalog import alerts as alert_store
from skyeye.contracts import (
    ClipFrame,
    EventRecord,
    InvalidEvent,
    ObjectEvent,
    ScenePlan,
    Task,
    Tile,
    WorkItem,
    WorkItemKind,
    asset_id_for,
    object_key_problem,
    work_item_id_for,
)
from skyeye.imagery import clips, geo, scenes
from skyeye.model import tasks
from skyeye.settings import Settings
from skyeye.telemetry.metrics import ASSETS, ERRORS, STAGE_SECONDS

from ._runtime import Subject, inject_fault, run_consumer, service_settings

log = logging.getLogger("skyeye.planner")


@dataclass(frozen=True)
class _AssetPlan:
    media_format: str
    width: int
    height: int
    tiles: list[Tile]
    scene: ScenePlan | None = None
    georef: catalog.Georeference | None = None
    overview: Tile | None = None  # scenes cut into several tiles
    # scenes: each tile's lon/lat bounds, in the order of `tiles` (None where one is unplaceable)
    tile_bounds: tuple[catalog.LonLatBox | None, ...] = ()
    # clips: the sampled frames, tile i showing frame i
    clip: catalog.ClipRecord | None = None
    frames: tuple[catalog.FrameRecord, ...] = ()


class Planner:
    """Turns object-created events into registered assets and published work items."""

    stage = "planner"

    def __init__(
        self, settings: Settings, engine: Engine, store: ObjectStore, producer: kafka.Producer
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._producer = producer

    def handle_batch(self, records: Sequence[Record]) -> None:
        """Plan each event, in a span that continues the trace its headers carry."""
        tracer = telemetry.tracer(__name__)
        for record in records:
            source = f"kafka:{record.topic}/{record.partition}/{record.offset}"
            # the span continues the trace ingest (or MinIO's producer) started, if any
            with tracer.start_as_current_span(
                "plan", context=telemetry.extract(record.headers)
            ) as span:
                span.set_attribute("skyeye.source", source)
                self.handle(record.value, source)

    def subject(self, record: Record) -> Subject:
        """The object an event is about (its first record's), when the event can be read."""
        try:
            event = ObjectEvent.parse(record.value, max_bytes=self._settings.max_event_bytes)
        except InvalidEvent:
            return Subject("object-created event")
        first = event.records[0].s3
        version = first.object.version_id or first.object.e_tag or ""
        key = first.object.decoded_key
        return Subject(
            f"object-created event ({first.bucket.name}/{key[:200]})",
            asset_id=asset_id_for(first.bucket.name, key, version),
        )

    def idle(self) -> None:
        """Nothing periodic: planning happens per event."""

    def handle(self, raw: bytes, source: str) -> None:
        """Plan the objects of one event (``source`` names it in error rows); record bad input."""
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
        """Register the object of one event record as an asset, then plan and publish its work."""
        obj = record.s3.object
        bucket, key = record.s3.bucket.name, obj.decoded_key
        if not self._plannable(bucket, key, source):
            return
        version = obj.version_id or obj.e_tag or ""
        asset_id = asset_id_for(bucket, key, version)
        trace.get_current_span().set_attributes({"s3.key": key, "skyeye.asset_id": str(asset_id)})
        status = self._register(record, asset_id, version)
        if status != "registered":
            log.info("%s: asset %s already %s", source, asset_id, status)
            return
        inject_fault(self._settings, self.stage, key)
        began = time.perf_counter()
        asset_plan = self._asset_plan(record, asset_id, source)
        if asset_plan is None:
            return
        standing = self._standing_questions(asset_plan, _parse_time(record.event_time))
        items = self._work_items(record, asset_id, asset_plan, standing)
        self._publish(asset_id, asset_plan, items)
        STAGE_SECONDS.record(time.perf_counter() - began, {"stage": "plan"})
        ASSETS.add(1, {"stage": "planner", "outcome": "planned"})
        log.info(
            "%s: asset %s (%s) planned into %d work item(s)", source, asset_id, key, len(items)
        )

    def _plannable(self, bucket: str, key: str, source: str) -> bool:
        """False for a hostile key (recorded as an error) and for a clip's sidecar."""
        problem = object_key_problem(key)
        if problem:
            log.warning("%s: refused object key: %s", source, problem)
            self._error(source, "hostile_key", problem, detail={"key": ascii(key)[:300]})
            return False
        if clips.is_sidecar(key):
            log.info("%s: %s is a sidecar, read when its clip is planned", source, key)
            return False
        return True

    def _register(self, record: EventRecord, asset_id: uuid.UUID, version: str) -> str:
        """Record the object as an asset; its status ("registered" if this call added it)."""
        obj = record.s3.object
        with self._engine.begin() as conn:
            return catalog.register_asset(
                conn,
                catalog.AssetRecord(
                    asset_id=asset_id,
                    bucket=record.s3.bucket.name,
                    object_key=obj.decoded_key,
                    version=version,
                    size_bytes=obj.size,
                    content_type=obj.content_type,
                    user_metadata=obj.user_metadata,
                    event_name=record.event_name,
                    event_time=_parse_time(record.event_time),
                ),
            )

    def _asset_plan(
        self, record: EventRecord, asset_id: uuid.UUID, source: str
    ) -> _AssetPlan | None:
        """Read the object's header (a clip: sample and store its frames) into its plan.

        None, with the asset's error recorded, when the object cannot be planned.
        """
        obj = record.s3.object
        bucket, key = record.s3.bucket.name, obj.decoded_key
        try:
            if clips.is_clip_candidate(key, obj.content_type):
                return self._clip_plan(asset_id, bucket, key, obj.user_metadata)
            return self._image_plan(bucket, key, obj.content_type)
        except (imagery.UnreadableImage, ObjectTooLarge) as exc:
            self._error(source, "unreadable_image", str(exc), asset_id=asset_id)
        except clips.UnreadableClip as exc:
            self._error(source, "unreadable_clip", str(exc), asset_id=asset_id)
        except clips.InvalidSidecar as exc:
            self._error(source, "invalid_sidecar", str(exc), asset_id=asset_id)
        except geo.InvalidGeoreference as exc:
            self._error(source, "invalid_georeference", str(exc), asset_id=asset_id)
        except scenes.NoData as exc:
            self._error(source, "no_data", str(exc), asset_id=asset_id)
        except s3.ObjectStoreRefused as exc:
            self._error(source, "object_unavailable", _s3_problem(exc), asset_id)
        return None

    def _standing_questions(
        self, asset_plan: _AssetPlan, event_time: datetime | None
    ) -> list[RuleSpec]:
        """The standing-question rules whose kind and time filters the asset passes.

        Their areas are matched per work item (:meth:`_work`). A rule created later applies to
        assets planned after it.
        """
        with self._engine.connect() as conn:
            standing = alert_store.rules(conn, RuleKind.ASK)
        if asset_plan.clip is not None:
            kind, seen_at = "clip", asset_plan.clip.start_time or event_time
        else:
            placed = asset_plan.scene is not None or asset_plan.media_format == "geotiff"
            kind, seen_at = ("scene" if placed else "image"), event_time
        when = seen_at or datetime.now(UTC)
        return [r.spec for r in standing if r.spec.admits(kind, when)]

    def _work_items(
        self,
        record: EventRecord,
        asset_id: uuid.UUID,
        asset_plan: _AssetPlan,
        standing: Sequence[RuleSpec] = (),
    ) -> list[WorkItem]:
        """The asset's work items, as the catalog records and the workers receive them."""
        obj = record.s3.object
        return [
            WorkItem(
                work_item_id=work_item_id_for(asset_id, tile.index, kind),
                kind=kind,
                asset_id=asset_id,
                bucket=record.s3.bucket.name,
                key=obj.decoded_key,
                version_id=obj.version_id,
                etag=obj.e_tag,
                image_width=asset_plan.width,
                image_height=asset_plan.height,
                tile=tile,
                scene=asset_plan.scene,
                frames=frames,
                tasks=item_tasks,
                bbox=bounds,
            )
            for kind, tile, frames, item_tasks, bounds in self._work(asset_plan, standing)
        ]

    def _publish(self, asset_id: uuid.UUID, asset_plan: _AssetPlan, items: list[WorkItem]) -> None:
        """Record the plan and its items, publish the items, and only then mark the asset planned.

        A worker never receives an item the catalog does not know.
        """
        with self._engine.begin() as conn:
            if asset_plan.clip is not None:
                catalog.record_clip(conn, asset_id, asset_plan.clip, asset_plan.frames)
            self._describe(conn, asset_id, asset_plan)
            catalog.add_work_items(conn, asset_id, items)
        for item in items:
            kafka.publish_json(
                self._producer,
                self._settings.topic_work,
                str(asset_id),
                item.model_dump(mode="json"),
            )
        with self._engine.begin() as conn:
            catalog.mark_planned(conn, asset_id)

    @staticmethod
    def _describe(conn: Connection, asset_id: uuid.UUID, asset_plan: _AssetPlan) -> None:
        catalog.describe_asset(
            conn,
            asset_id,
            asset_plan.media_format,
            asset_plan.width,
            asset_plan.height,
            len(asset_plan.tiles),
            asset_plan.georef,
            asset_plan.scene,
        )

    def _image_plan(self, bucket: str, key: str, content_type: str | None) -> _AssetPlan:
        """Georeferenced rasters are tiled by the scene plan; other images are one tile."""
        if scenes.is_scene_candidate(key, content_type):
            with scenes.open_scene(self._store, self._settings, bucket, key) as dataset:
                plan = scenes.plan(dataset, self._settings)
            if plan is not None:
                return _AssetPlan(
                    "geotiff",
                    plan.width,
                    plan.height,
                    [t.as_tile() for t in plan.tiles],
                    plan.scene,
                    catalog.Georeference(
                        plan.scene.crs, plan.lon_lat_bbox, plan.transform, plan.bands
                    ),
                    plan.overview.as_tile() if plan.overview else None,
                    tuple(_tile_bounds(t, plan.scene.crs) for t in plan.tiles),
                )
        with self._store.open(bucket, key) as stream:
            info = imagery.probe(stream, max_pixels=self._settings.max_image_pixels)
        return _AssetPlan(
            info.media_format, info.width, info.height, imagery.whole_image_tiles(info)
        )

    def _clip_plan(
        self, asset_id: uuid.UUID, bucket: str, key: str, user_metadata: dict[str, str]
    ) -> _AssetPlan:
        """Sample the clip and store its frames; one tile per frame."""
        sidecar = self._sidecar(bucket, key)
        limits = self._settings.clips
        with self._store.open(bucket, key) as stream, clips.open_clip(stream) as container:
            info = clips.probe(container, limits, key)
            records = [
                self._store_frame(asset_id, index, sampled, info, sidecar)
                for index, sampled in enumerate(clips.sample(container, info, limits))
            ]
        if not records:
            raise clips.UnreadableClip("no frame could be sampled from the clip")
        start = clips.start_time(user_metadata, info)
        clip = catalog.ClipRecord(
            duration_s=info.duration_s,
            fps=info.fps,
            frame_count=info.frame_count,
            video_codec=info.codec,
            start_time=start,
            end_time=clips.end_time(start, info),
        )
        tiles = [
            Tile(index=i, x=0, y=0, width=info.width, height=info.height)
            for i in range(len(records))
        ]
        bbox = geo.union_bbox(r.lon_lat_bbox for r in records if r.lon_lat_bbox)
        return _AssetPlan(
            info.media_format,
            info.width,
            info.height,
            tiles,
            georef=catalog.Georeference(lon_lat_bbox=bbox),
            clip=clip,
            frames=tuple(records),
        )

    def _store_frame(
        self,
        asset_id: uuid.UUID,
        index: int,
        sampled: clips.SampledFrame,
        info: clips.ClipInfo,
        sidecar: clips.Sidecar | None,
    ) -> catalog.FrameRecord:
        """Write one sampled frame as a PNG to the derived bucket; its catalog record.

        The frame is placed on the ground when the sidecar says where it is.
        """
        georef = (
            clips.georef_at(sidecar, sampled.time_s, info.width, info.height) if sidecar else None
        )
        derived = self._settings.derived_bucket
        frame = ClipFrame(
            index=index,
            time_s=sampled.time_s,
            bucket=derived,
            key=f"frames/{asset_id}/{clips.png_name(index, sampled.time_s)}",
            georef=georef,
        )
        self._store.put_bytes(imagery.to_png(sampled.image), derived, frame.key, "image/png")
        ground = clips.frame_ground(georef, info.width, info.height) if georef else None
        return catalog.FrameRecord(
            frame,
            sampled.sampled_by,
            sampled.scene_score,
            ground.polygon if ground else None,
            ground.bbox if ground else None,
        )

    def _sidecar(self, bucket: str, key: str) -> clips.Sidecar | None:
        """The clip's ``.geo.json`` sidecar, uploaded before it; None when there is none."""
        try:
            raw = self._store.read(
                bucket, clips.sidecar_key(key), max_bytes=clips.MAX_SIDECAR_BYTES
            )
        except ObjectTooLarge as exc:
            raise clips.InvalidSidecar(str(exc)) from exc
        except s3.ObjectMissing:
            return None
        return clips.parse_sidecar(raw)

    def _work(
        self, asset_plan: _AssetPlan, standing: Sequence[RuleSpec] = ()
    ) -> list[tuple[WorkItemKind, Tile, list[ClipFrame], list[Task], catalog.LonLatBox | None]]:
        """Each work item's kind, tile, the clip frames it shows the model, tasks and bounds.

        A tile, frame or overview is also asked the standing questions whose area it meets:
        a scene tile by its own outline, a frame by its footprint, an overview by its scene's;
        an item that is not placed is asked the questions of rules with no area.
        """
        per_tile = tasks.default_tasks(self._settings)

        def asked(bounds: Sequence[float] | None, base: list[Task]) -> list[Task]:
            extra = [
                r.condition.task
                for r in standing
                if isinstance(r.condition, AskCondition) and r.meets(bounds)
            ]
            # rules asking the same question share one task (and one answer)
            return list(dict.fromkeys([*base, *extra]))

        georef = asset_plan.georef
        asset_bounds = None if georef is None else georef.lon_lat_bbox
        if asset_plan.clip is not None:
            work = [
                (
                    WorkItemKind.FRAME,
                    tile,
                    [record.frame],
                    asked(record.lon_lat_bbox, per_tile),
                    record.lon_lat_bbox,
                )
                for tile, record in zip(asset_plan.tiles, asset_plan.frames, strict=True)
            ]
            frames = [r.frame for r in asset_plan.frames]
            whole = Tile(index=0, x=0, y=0, width=asset_plan.width, height=asset_plan.height)
            clip_tasks = tasks.clip_tasks(self._settings)
            work.append((WorkItemKind.CLIP, whole, frames, clip_tasks, asset_bounds))
            return work
        bounds = asset_plan.tile_bounds or (asset_bounds,) * len(asset_plan.tiles)
        work = [
            (WorkItemKind.TILE, tile, [], asked(tile_bounds, per_tile), tile_bounds)
            for tile, tile_bounds in zip(asset_plan.tiles, bounds, strict=True)
        ]
        if asset_plan.overview is not None:
            overview_tasks = asked(asset_bounds, tasks.overview_tasks(self._settings))
            work.append(
                (WorkItemKind.OVERVIEW, asset_plan.overview, [], overview_tasks, asset_bounds)
            )
        return work

    def _error(
        self,
        source: str,
        kind: str,
        message: str,
        asset_id: uuid.UUID | None = None,
        detail: dict[str, object] | None = None,
    ) -> None:
        """Record that ``source`` (and its asset, when it has one) could not be planned."""
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{kind}: {message}")
        ERRORS.add(1, {"stage": "planner", "kind": kind})
        if asset_id is not None:
            ASSETS.add(1, {"stage": "planner", "outcome": "error"})
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


def _tile_bounds(tile: geo.GeoTile, crs: str) -> catalog.LonLatBox | None:
    """A scene tile's lon/lat bounds; None where its outline is no place on the globe.

    The scene's own outline was placed already, so this is the rare tile at a projection's edge.
    """
    try:
        return geo.footprint((0, 0, 100, 100), tile, crs).bbox
    except geo.InvalidGeoreference:
        return None


def _s3_problem(exc: s3.ObjectStoreRefused) -> str:
    """An S3 refusal in a user's words."""
    if isinstance(exc, s3.ObjectMissing):
        return "the object is gone from the bucket (deleted or replaced before it was planned)"
    if exc.code == "AccessDenied":
        return "the pipeline may not read the object (access denied)"
    return f"the object store refused to read the object ({exc.code})"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def main() -> None:
    """Run the planner service until SIGTERM or SIGINT."""
    settings = service_settings("skyeye-planner")
    assert settings.database_url is not None  # resolve() fills every endpoint
    store = ObjectStore(settings)
    store.ensure_bucket(settings.derived_bucket)
    engine = postgres.create_engine(settings.database_url)
    planner = Planner(settings, engine, store, kafka.producer(settings))
    run_consumer(
        planner,
        settings,
        engine,
        [postgres.transient_reason, s3.transient_reason, kafka.transient_reason],
        settings.topic_events,
        settings.planner_group,
        max_poll_records=16,
    )


if __name__ == "__main__":
    main()
