"""Worker: work items -> Serve inference -> parsed results in PostgreSQL.

A clip's work item names the frames the planner extracted: they are read like images, and the
clip caption's frames go to the model together, one image slot each.

All items of one poll are decoded and submitted to the Serve app together, so the encoder and
decoder can batch across tiles; each item's results are then written in one transaction, and the
Kafka offsets are committed only after every item of the poll is stored (or recorded as failed).
The worker that stores an asset's last item also finishes the asset: it flags duplicate scene
detections, then writes the asset's preview PNG with the remaining boxes drawn.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from minio.error import S3Error
from opentelemetry import trace
from pydantic import ValidationError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from sqlalchemy.engine import Engine

from skyeye import catalog, clips, geo, imagery, previews, scenes, tasks, telemetry
from skyeye.adapters import postgres
from skyeye.adapters import serve as serve_adapter
from skyeye.adapters.s3 import ObjectStore, ObjectTooLarge
from skyeye.contracts import WorkItem, preview_key_for
from skyeye.services._runtime import run_consumer, service_settings
from skyeye.settings import Settings

log = logging.getLogger("skyeye.worker")

INFERENCE_ATTEMPTS = 3


@dataclass
class _Pending:
    item: WorkItem
    images: list[np.ndarray]
    georef: geo.GeoTile | None
    instructions: list[str]
    response: DeploymentResponse
    span: trace.Span
    attempt: int = 1


class Worker:
    def __init__(
        self, settings: Settings, engine: Engine, store: ObjectStore, app: DeploymentHandle
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._app = app
        self._model_name = settings.resolved_model_dir.name
        self._tracer = telemetry.tracer(__name__)

    def handle_batch(self, records: Sequence[ConsumerRecord]) -> None:
        pending = []
        for record in records:
            # one span per work item, from its read to its stored results, in the asset's trace
            span = self._tracer.start_span("work_item", context=telemetry.extract(record.headers))
            with trace.use_span(span, end_on_exit=False):
                job = self._submit_record(record, span)
            if job is None:
                span.end()
            else:
                pending.append(job)
        for job in pending:
            with trace.use_span(job.span, end_on_exit=True):
                self._finish(job)

    def _submit_record(self, record: ConsumerRecord, span: trace.Span) -> _Pending | None:
        source = f"kafka:{record.topic}/{record.partition}/{record.offset}"
        span.set_attribute("skyeye.source", source)
        try:
            item = WorkItem.model_validate_json(record.value)
        except ValidationError as exc:
            log.warning("%s: malformed work item: %s", source, exc.errors()[0]["msg"])
            self._error(source, "malformed_work_item", str(exc.errors()[0]["msg"]))
            return None
        span.set_attributes(
            {"skyeye.asset_id": str(item.asset_id), "skyeye.work_item_id": str(item.work_item_id)}
        )
        with self._engine.connect() as conn:
            status = catalog.work_item_status(conn, item.work_item_id)
        if status is None:
            self._error(source, "unknown_work_item", f"no work item {item.work_item_id} planned")
            return None
        if status != "queued":
            log.info("work item %s is %s; skipping redelivery", item.work_item_id, status)
            return None
        longest = max(len(t.text) for t in item.tasks)
        if longest > self._settings.max_question_chars:
            message = (
                f"a task text of {longest} characters exceeds max_question_chars="
                f"{self._settings.max_question_chars}"
            )
            self._error(f"work_item:{item.work_item_id}", "oversize_question", message, item)
            return None
        try:
            images, georef = self._read(item)
        except (imagery.UnreadableImage, ObjectTooLarge) as exc:
            self._error(f"work_item:{item.work_item_id}", "unreadable_image", str(exc), item)
            return None
        except S3Error as exc:
            message = f"{exc.code}: {exc.message}"
            self._error(f"work_item:{item.work_item_id}", "object_unavailable", message, item)
            return None
        try:
            instructions = [tasks.instruction(t, item.tile) for t in item.tasks]
        except ValueError as exc:
            self._error(f"work_item:{item.work_item_id}", "malformed_task", str(exc), item)
            return None
        response = self._call(images, instructions)
        return _Pending(item, images, georef, instructions, response, span)

    def _read(self, item: WorkItem) -> tuple[list[np.ndarray], geo.GeoTile | None]:
        if item.frames:
            return [self._read_image(frame.bucket, frame.key, item) for frame in item.frames], None
        if item.scene is not None:
            with scenes.open_scene(self._store, self._settings, item.bucket, item.key) as dataset:
                image, georef = scenes.read(dataset, item)
                return [image], georef
        return [self._read_image(item.bucket, item.key, item)], None

    def _read_image(self, bucket: str, key: str, item: WorkItem) -> np.ndarray:
        data = self._store.read(bucket, key, max_bytes=self._settings.max_object_bytes)
        return imagery.read_tile(data, item.tile, max_pixels=self._settings.max_image_pixels)

    def _call(self, images: list[np.ndarray], instructions: list[str]) -> DeploymentResponse:
        return self._app.infer.remote(images, instructions)

    def _finish(self, job: _Pending) -> None:
        while True:
            try:
                answers = job.response.result(timeout_s=self._settings.inference_timeout_s)
                break
            except Exception as exc:
                if job.attempt >= INFERENCE_ATTEMPTS:
                    self._error(
                        f"work_item:{job.item.work_item_id}",
                        "inference_failed",
                        f"{type(exc).__name__}: {exc}"[:2000],
                        job.item,
                    )
                    return
                log.warning("inference attempt %d failed (%s); retrying", job.attempt, exc)
                time.sleep(2**job.attempt)
                job.attempt += 1
                job.response = self._call(job.images, job.instructions)
        outcomes = [
            tasks.interpret(task, raw, job.item.tile)
            for task, raw in zip(job.item.tasks, answers, strict=True)
        ]
        if job.georef is not None and job.item.scene is not None:
            outcomes = [scenes.locate(o, job.georef, job.item.scene.crs) for o in outcomes]
        if len(job.item.frames) == 1 and (frame_georef := job.item.frames[0].georef):
            outcomes = [clips.locate(o, frame_georef) for o in outcomes]
        with self._engine.begin() as conn:
            written = catalog.store_results(conn, job.item, outcomes, self._model_name)
        log.info(
            "work item %s of asset %s: %d result(s) stored",
            job.item.work_item_id,
            job.item.asset_id,
            written,
        )
        self._finish_asset_if_done(job)

    def _finish_asset_if_done(self, job: _Pending) -> None:
        # Once the asset's last item is stored every copy of an object is there to compare. Two
        # workers finishing together may both merge and draw: the result is the same.
        item = job.item
        with self._engine.begin() as conn:
            if catalog.asset_status(conn, item.asset_id) != "done":
                return
            if item.scene is not None:
                flagged = scenes.merge_duplicates(conn, item.asset_id)
                log.info("asset %s: %d duplicate detection(s) flagged", item.asset_id, flagged)
        self._write_preview(job)

    def _write_preview(self, job: _Pending) -> None:
        item = job.item
        bucket, key = self._settings.derived_bucket, preview_key_for(item.asset_id)
        max_side = self._settings.preview_max_side
        try:
            with self._engine.connect() as conn:
                # a clip's preview is its first sampled frame, with that frame's boxes
                first = catalog.clip_frames(conn, item.asset_id)[0] if item.frames else None
                detections = catalog.kept_detections(
                    conn, item.asset_id, frame_index=first["frame_index"] if first else None
                )
            if first is not None:
                image = self._read_image(first["bucket"], first["object_key"], item)
            elif item.scene is None:
                # a plain image is planned as one whole-image tile: its pixels are in hand
                image = job.images[0]
            else:
                with scenes.open_scene(self._store, self._settings, item.bucket, item.key) as ds:
                    image = scenes.read_preview(ds, item.scene, max_side)
            png = previews.render(
                image, (item.image_width, item.image_height), detections, max_side
            )
            self._store.put_bytes(png, bucket, key, "image/png")
        except Exception as exc:
            # A preview is a by-product for dashboards: whatever breaks it is recorded against
            # the asset, whose results are already stored and stay done.
            message = f"{type(exc).__name__}: {exc}"[:2000]
            self._error(
                f"preview:{item.asset_id}", "preview_failed", message, asset_id=item.asset_id
            )
            return
        with self._engine.begin() as conn:
            catalog.set_preview(conn, item.asset_id, key)
        log.info("asset %s: preview written to %s/%s", item.asset_id, bucket, key)

    def _error(
        self,
        source: str,
        kind: str,
        message: str,
        item: WorkItem | None = None,
        asset_id: uuid.UUID | None = None,
    ) -> None:
        """Record a failure of ``item`` (and its asset), or of the asset alone."""
        log.warning("%s: %s: %s", source, kind, message)
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{kind}: {message}")
        if item is not None:
            asset_id = item.asset_id
        with self._engine.begin() as conn:
            catalog.record_error(
                conn,
                source=source,
                stage="worker",
                kind=kind,
                message=message,
                asset_id=asset_id,
                work_item_id=item.work_item_id if item else None,
            )


def main() -> None:
    settings = service_settings("skyeye-worker")
    assert settings.database_url is not None  # resolve() fills every endpoint
    worker = Worker(
        settings,
        postgres.create_engine(settings.database_url),
        ObjectStore(settings),
        serve_adapter.handle(settings),
    )
    run_consumer(
        worker.handle_batch,
        settings,
        settings.topic_work,
        settings.worker_group,
        max_poll_records=8,
    )


if __name__ == "__main__":
    main()
