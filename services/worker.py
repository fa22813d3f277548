"""Worker: work items -> Serve inference -> parsed results in PostgreSQL.

A clip's work item names the frames the planner extracted: they are read like images, and the
clip caption's frames go to the model together, one image slot each.

All items of one poll are decoded and submitted to the Serve app together, so the encoder and
decoder can batch across tiles; each item's results are then written in one transaction, and the
Kafka offsets are committed only after every item of the poll is stored (or recorded as failed).
The next poll is read and submitted while the model still answers this one (the consumer loop's
pipelined handling), so the model never waits while the worker stores, commits and polls.

When an asset's last item is stored the asset is *finishing*: its duplicate scene detections are
flagged and its preview JPEG is written with the remaining boxes drawn, then it is done (or
error, if an item failed). The worker that stored the last item finishes it at once; every
worker also sweeps for finishing assets between polls, so an asset whose finisher died (or
whose last item ended in a dead letter) is finished by another within seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
from opentelemetry import trace
from pydantic import ValidationError

from skyeye import catalog, imagery, telemetry
from skyeye.adapters import kafka, postgres, s3
from skyeye.adapters import serve as serve_adapter
from skyeye.adapters.kafka import Record
from skyeye.adapters.postgres import Connection, Engine
from skyeye.adapters.s3 import ObjectStore, ObjectTooLarge
from skyeye.catalog import alerts as alert_store
from skyeye.contracts import (
    PREVIEW_MEDIA_TYPE,
    AlertMessage,
    Tile,
    WorkItem,
    first_error,
    preview_key_for,
)
from skyeye.imagery import geo, previews, scenes, work_items
from skyeye.model import tasks
from skyeye.settings import Settings
from skyeye.telemetry.metrics import ASSETS, ERRORS, STAGE_SECONDS, WORK_ITEMS

from ._runtime import (
    Subject,
    TransientReason,
    inject_fault,
    run_consumer,
    service_settings,
    transient,
)

log = logging.getLogger("skyeye.worker")
T = TypeVar("T")

# What a worker's handling can wait on: the catalog, the object store, Kafka and the model.
TRANSIENT_REASONS: tuple[TransientReason, ...] = (
    postgres.transient_reason,
    s3.transient_reason,
    kafka.transient_reason,
    serve_adapter.transient_reason,
)
# Finishing assets handled per sweep, so a backlog never keeps a worker from its messages long.
_FINISH_PER_SWEEP = 16


@dataclass
class _Pending:
    item: WorkItem
    images: list[np.ndarray]
    georef: geo.GeoTile | None
    response: serve_adapter.Response
    span: trace.Span
    # when the model was called (perf_counter): the infer stage runs until its answer is in
    called: float


class Worker:
    """Runs work items through the model, stores their results, finishes their assets."""

    stage = "worker"

    def __init__(
        self, settings: Settings, engine: Engine, store: ObjectStore, app: serve_adapter.AppHandle
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store
        self._app = app
        self._model_name = settings.resolved_model_dir.name
        self._tracer = telemetry.tracer(__name__)
        self._finisher = Finisher(settings, engine, store)

    def handle_batch(self, records: Sequence[Record]) -> None:
        """Submit every item of the poll to the model first, then store each item's answers."""
        self.submit_batch(records)()

    def submit_batch(self, records: Sequence[Record]) -> Callable[[], None]:
        """Read every item of the poll and submit it to the model; returns what stores them.

        Items that fail before the model is called are recorded as errors here.
        """
        pending: list[_Pending] = []
        spans: list[trace.Span] = []

        def end_spans() -> None:
            for span in spans:
                span.end()

        try:
            for record in records:
                # one span per work item, from its read to its stored results, in the asset's
                # trace
                span = self._tracer.start_span(
                    "work_item", context=telemetry.extract(record.headers)
                )
                spans.append(span)
                with trace.use_span(span, end_on_exit=False):
                    job = self._submit_record(record, span)
                if job is not None:
                    pending.append(job)
        except BaseException:
            end_spans()
            raise

        def store() -> None:
            try:
                for job in pending:
                    with trace.use_span(job.span, end_on_exit=False):
                        self._finish(job)
            finally:
                end_spans()

        return store

    def subject(self, record: Record) -> Subject:
        """The work item a message is, when it can be read as one."""
        try:
            item = WorkItem.model_validate_json(record.value)
        except ValidationError:
            return Subject("work item")
        return Subject(
            f"work item ({item.kind} {item.tile.index} of {item.bucket}/{item.key[:200]})",
            asset_id=item.asset_id,
            work_item_id=item.work_item_id,
        )

    def idle(self) -> None:
        """Finish the assets whose finisher died, or whose last item was dead-lettered."""
        for _ in range(_FINISH_PER_SWEEP):
            if not self._finisher.finish():
                return

    def _submit_record(self, record: Record, span: trace.Span) -> _Pending | None:
        source = f"kafka:{record.topic}/{record.partition}/{record.offset}"
        span.set_attribute("skyeye.source", source)
        try:
            item = WorkItem.model_validate_json(record.value)
        except ValidationError as exc:
            message = f"malformed work item at {first_error(exc, 'message')}"
            self._error(source, "malformed_work_item", message)
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
        inject_fault(self._settings, self.stage, item.key)
        longest = max(len(t.text) for t in item.tasks)
        if longest > self._settings.max_question_chars:
            message = (
                f"a task text of {longest} characters exceeds max_question_chars="
                f"{self._settings.max_question_chars}"
            )
            self._error(f"work_item:{item.work_item_id}", "oversize_question", message, item)
            return None
        began = time.perf_counter()
        try:
            images, georef = self._read(item)
        except (imagery.UnreadableImage, ObjectTooLarge) as exc:
            self._error(f"work_item:{item.work_item_id}", "unreadable_image", str(exc), item)
            return None
        except s3.ObjectStoreRefused as exc:
            message = f"the object store refused to read the image ({exc.code})"
            self._error(f"work_item:{item.work_item_id}", "object_unavailable", message, item)
            return None
        try:
            instructions = [tasks.instruction(t, item.tile) for t in item.tasks]
        except ValueError as exc:
            self._error(f"work_item:{item.work_item_id}", "malformed_task", str(exc), item)
            return None
        STAGE_SECONDS.record(time.perf_counter() - began, {"stage": "read"})
        response = self._call(item, images, instructions)
        return _Pending(item, images, georef, response, span, time.perf_counter())

    def _read(self, item: WorkItem) -> tuple[list[np.ndarray], geo.GeoTile | None]:
        return work_items.read_work_item(self._store, self._settings, item)

    def _call(
        self, item: WorkItem, images: list[np.ndarray], instructions: list[str]
    ) -> serve_adapter.Response:
        # the encoder keeps the tile's embeddings under its work item id, for later questions
        key = str(item.work_item_id) if self._settings.embedding_cache.enabled else None
        # the handle was not asked to stream, so the call gives one response, never a generator
        # the encoder and decoder record their spans in the work item's trace
        return cast(
            serve_adapter.Response,
            self._app.infer.remote(images, instructions, cache_key=key, trace=telemetry.carrier()),
        )

    def _finish(self, job: _Pending) -> None:
        # A transient failure (Serve restarting, a timeout) propagates: the loop retries the
        # batch, and items already stored are skipped as redeliveries.
        answers: serve_adapter.Answers = job.response.result(
            timeout_s=self._settings.inference_timeout_s
        )
        began = time.perf_counter()
        STAGE_SECONDS.record(began - job.called, {"stage": "infer"})
        vectors = answers.vectors or [None] * len(answers.texts)
        outcomes = [
            dataclasses.replace(tasks.interpret(task, raw, job.item.tile), embedding=vector)
            for task, raw, vector in zip(job.item.tasks, answers.texts, vectors, strict=True)
        ]
        outcomes = work_items.locate(outcomes, job.item, job.georef)
        with self._tracer.start_as_current_span("store"), self._engine.begin() as conn:
            written = catalog.store_results(conn, job.item, outcomes, self._model_name)
            status = catalog.asset_status(conn, job.item.asset_id)
        STAGE_SECONDS.record(time.perf_counter() - began, {"stage": "store"})
        WORK_ITEMS.add(1, {"kind": job.item.kind.value, "outcome": "done"})
        log.info(
            "work item %s of asset %s: %d result(s) stored",
            job.item.work_item_id,
            job.item.asset_id,
            written,
        )
        if status == "finishing":
            # a plain image is planned as one whole-image tile: its pixels are in hand
            image = job.images[0] if job.item.scene is None and not job.item.frames else None
            self._finisher.finish(job.item.asset_id, image)

    def _error(
        self,
        source: str,
        kind: str,
        message: str,
        item: WorkItem | None = None,
    ) -> None:
        """Record a failure of ``item`` (and its asset), or of a message that is no item."""
        log.warning("%s: %s: %s", source, kind, message)
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{kind}: {message}")
        ERRORS.add(1, {"stage": "worker", "kind": kind})
        if item is not None:
            WORK_ITEMS.add(1, {"kind": item.kind.value, "outcome": "error"})
        with self._engine.begin() as conn:
            catalog.record_error(
                conn,
                source=source,
                stage="worker",
                kind=kind,
                message=message,
                asset_id=item.asset_id if item else None,
                work_item_id=item.work_item_id if item else None,
            )


class Finisher:
    """An asset's last step, at least once: duplicates flagged, preview drawn, rules fired.

    The asset is then done, or error when an item failed.
    """

    def __init__(self, settings: Settings, engine: Engine, store: ObjectStore) -> None:
        self._settings = settings
        self._engine = engine
        self._store = store

    def finish(self, asset_id: uuid.UUID | None = None, image: np.ndarray | None = None) -> bool:
        """Finish ``asset_id``, or sweeping, the finishing asset waiting longest; False if none.

        A swept asset is taken once it has waited a sweep's interval. ``image``: a plain
        image's pixels, when the caller has them.

        Everything happens in one transaction holding the asset's row lock: a finisher that
        dies releases the asset to the next sweep, and a transient failure leaves it finishing
        for the next sweep too.
        """
        with self._engine.begin() as conn:
            waited = 0.0 if asset_id is not None else self._settings.finish_sweep_s
            target = catalog.claim_finishing(conn, asset_id, waited_s=waited)
            if target is None:
                return False
            # in the trace of the work item that completed the asset; a sweep starts its own
            with telemetry.tracer(__name__).start_as_current_span(
                "finish", attributes={"skyeye.asset_id": str(target.asset_id)}
            ) as span:
                status, preview_key, fired = self._finish_claimed(conn, target, image)
                span.set_attributes({"skyeye.status": status, "skyeye.alerts": len(fired)})
        ASSETS.add(1, {"stage": "finisher", "outcome": status})
        log.info(
            "asset %s finished: %s, preview %s, %d alert(s)",
            target.asset_id,
            status,
            preview_key,
            len(fired),
        )
        return True

    def _finish_claimed(
        self, conn: Connection, target: catalog.FinishTarget, image: np.ndarray | None
    ) -> tuple[str, str | None, list[AlertMessage]]:
        """Finish the claimed asset: its status, preview key and the alerts fired now."""
        preview_key = None
        if target.scene is not None:
            self._attempt(
                conn,
                target,
                "finish",
                "flagging duplicate detections",
                lambda: scenes.merge_duplicates(conn, target.asset_id),
            )
        if target.any_done:
            preview_key = self._attempt(
                conn,
                target,
                "preview",
                "drawing the preview",
                lambda: self._write_preview(conn, target, image),
            )
        fired = None
        if target.any_done:
            fired = self._attempt(
                conn,
                target,
                "alerts",
                "firing the alert rules",
                lambda: alert_store.fire_rules(conn, target.asset_id, self._settings.topic_alerts),
            )
        status = catalog.complete_finish(conn, target.asset_id, preview_key)
        catalog.record_event(
            conn,
            "asset.finished",
            target.asset_id,
            {
                "asset_id": target.asset_id,
                "object_key": target.object_key,
                "status": status,
                "alerts": [m.data.alert_id for m in fired or []],
            },
        )
        return status, preview_key, fired or []

    def _attempt(
        self,
        conn: Connection,
        target: catalog.FinishTarget,
        step_name: str,
        what: str,
        step: Callable[[], T],
    ) -> T | None:
        """Run one finishing step; its value, or None when it failed for good.

        A failure that is not transient is recorded against the asset as ``<step_name>_failed``
        (its results are stored and stay), a transient one ends the transaction for a retry.
        """
        try:
            with conn.begin_nested():
                return step()
        except Exception as exc:
            if transient(exc, TRANSIENT_REASONS):
                raise
            if isinstance(exc, imagery.UnreadableImage | ObjectTooLarge | OSError):
                message = f"{what}: {exc}"
            elif isinstance(exc, s3.ObjectStoreRefused):
                message = f"{what}: the object store refused ({exc.code})"
            else:
                log.exception("asset %s: %s failed", target.asset_id, what)
                message = f"{what} failed with an internal error ({type(exc).__name__})"
            log.warning("asset %s: %s", target.asset_id, message)
            ERRORS.add(1, {"stage": "worker", "kind": f"{step_name}_failed"})
            catalog.record_error(
                conn,
                source=f"{step_name}:{target.asset_id}",
                stage="worker",
                kind=f"{step_name}_failed",
                message=message,
                asset_id=target.asset_id,
            )
            return None

    def _write_preview(
        self, conn: Connection, target: catalog.FinishTarget, image: np.ndarray | None
    ) -> str:
        max_side = self._settings.preview_max_side
        whole = Tile(index=0, x=0, y=0, width=target.width, height=target.height)
        if target.is_clip:
            # a clip's preview is its first sampled frame, with that frame's boxes
            first = catalog.clip_frames(conn, target.asset_id)[0]
            detections = catalog.kept_detections(
                conn, target.asset_id, frame_index=first["frame_index"]
            )
            image = self._read_image(first["bucket"], first["object_key"], whole)
        elif target.scene is not None:
            detections = catalog.kept_detections(conn, target.asset_id)
            with scenes.open_scene(
                self._store, self._settings, target.bucket, target.object_key
            ) as dataset:
                image = scenes.read_preview(dataset, target.scene, max_side)
        else:
            detections = catalog.kept_detections(conn, target.asset_id)
            if image is None:
                image = self._read_image(target.bucket, target.object_key, whole)
        jpeg = previews.render(image, (target.width, target.height), detections, max_side)
        key = preview_key_for(target.asset_id)
        self._store.put_bytes(jpeg, self._settings.derived_bucket, key, PREVIEW_MEDIA_TYPE)
        return key

    def _read_image(self, bucket: str, key: str, tile: Tile) -> np.ndarray:
        return work_items.read_image(self._store, self._settings, bucket, key, tile)


def main() -> None:
    """Run the worker service until SIGTERM or SIGINT."""
    settings = service_settings("skyeye-worker")
    assert settings.database_url is not None  # resolve() fills every endpoint
    engine = postgres.create_engine(settings.database_url)
    worker = Worker(settings, engine, ObjectStore(settings), serve_adapter.handle(settings))
    run_consumer(
        worker,
        settings,
        engine,
        TRANSIENT_REASONS,
        settings.topic_work,
        settings.worker_group,
        max_poll_records=8,
    )


if __name__ == "__main__":
    main()
