"""Reconciler: announces the objects of the ingest bucket that the pipeline has not seen.

Objects reach the planner through object-created events: MinIO's bucket notifications in
production, ``skyeye ingest`` locally (nanio sends none). An object written by any other S3
client to the embedded stack, or one whose notification MinIO lost, would never be processed.
So every ``settings.reconciler.interval_s`` (after a pass ends) this service lists the
configured prefixes of ``settings.bucket`` and publishes, for each object version without an
asset, the event MinIO would have sent (principal ``skyeye-reconciler``): a lost notification
costs latency, not data. It never lists ``settings.derived_bucket``, so what the pipeline writes
itself (clip frames, previews) never comes back in.

A pass starts only when the planner has handled every event published so far (its consumer
group has no lag on the events topic): then every object whose notification was published is
registered as an asset (or its event dead-lettered), and an object without one really lacks
its event. While the planner is behind, the pass is put off to the next interval, so a backlog
is never doubled by announcements of objects whose events are merely still queued.

Each listed object is, in this order:

- left for a later pass when younger than ``min_age_s``: its own notification is most likely
  on its way;
- refused when its key is hostile (:func:`skyeye.contracts.object_key_problem`, the planner's
  rule): an error row (stage ``reconciler``, kind ``hostile_key``, source built from a hash of
  bucket/key, never the raw key, which may hold control characters; one row per object, as
  the errors table keeps one per source), no event;
- skipped when it is a clip's sidecar: it travels with its clip;
- checked against the catalog (:func:`skyeye.catalog.known_objects`, ``BATCH`` ids a query) by
  its asset id, derived exactly as the planner derives it from the object's own notification
  (version id, else the eTag without quotes), so an announced object is never a second asset;
- when unknown, read (``stat``: content type and user metadata, as the notification carries
  them, and whether the object still exists as listed) and announced.

Incremental. A listing streams page by page, never the whole bucket in memory. S3 cannot list
"modified since", so every pass lists, but only a *full* pass checks every object against the
catalog: the first pass, and then one every ``FULL_PASS_S``. The passes between are *recent*
passes: they check only the objects modified after what the last completed pass checked (its
start less ``min_age_s``), less a margin of ``MARGIN_S`` for clock skew between the store and
this host and for uploads that appear in listings some time after their Last-Modified (S3 sets
it when an upload begins). A pass that ends early (an outage, a bug, a stop, a planner backlog,
the publication cap) completes nothing, so the next one looks back as far as the last
completed pass; an object that recent passes miss (a multipart upload that took longer than the
margin) is found by the next full pass. No object is missed forever.

Versions. In a versioned bucket an object's notification names its version id, so the listing
asks for current versions with their ids; whether the bucket is versioned is asked at each full
pass. The event itself is always built from the object's ``stat``, so it names the version the
store holds, whatever the listing said.

Quiet repeats. An announced object is remembered for ``REPUBLISH_AFTER_S``, and so is a
refused key: an object announced again before the planner registered it, or a refusal logged
every pass, would only be noise (the planner and the errors table are idempotent anyway). A
pass publishes at most ``MAX_PUBLISHED_PER_PASS`` events and then ends early, so a bucket full
of unannounced objects (a first deployment on an old bucket) reaches the planner in
installments.

Every failure ends the pass, never the process: an outage (S3, Kafka or PostgreSQL unavailable,
as each adapter's ``transient_reason`` tells) is one log line, anything else is logged with its
traceback; the next pass starts one interval later. SIGTERM and SIGINT stop it between two
objects.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from skyeye import catalog, telemetry
from skyeye.adapters import kafka, postgres, s3
from skyeye.adapters.postgres import Engine
from skyeye.adapters.s3 import ListedObject, ObjectStore, StoredObject
from skyeye.contracts import asset_id_for, object_key_problem
from skyeye.imagery import clips
from skyeye.settings import Settings

from ._observability import Health
from ._runtime import observe, service_settings, stop_on_signals, transient

log = logging.getLogger("skyeye.reconciler")
_K = TypeVar("_K")

PRINCIPAL = "skyeye-reconciler"
# object ids per catalog query
BATCH = 500
# a full pass (every object checked) at least this often; recent passes in between
FULL_PASS_S = 600.0
# how much further back than the last completed pass checked a recent pass looks
MARGIN_S = 120.0
# an object announced (a key refused) this recently is not announced (refused) again
REPUBLISH_AFTER_S = 600.0
MAX_PUBLISHED_PER_PASS = 1000

TRANSIENT_REASONS = (s3.transient_reason, kafka.transient_reason, postgres.transient_reason)


class Objects(Protocol):
    """The ingest bucket's side: :class:`skyeye.adapters.s3.ObjectStore`."""

    def versioned(self, bucket: str) -> bool:
        """Whether the bucket gives its objects version ids."""
        ...

    def list_objects(
        self, bucket: str, prefix: str = "", *, versions: bool = False
    ) -> Iterable[ListedObject]:
        """The objects under ``prefix`` (current versions with their ids, if ``versions``)."""
        ...

    def stat(self, bucket: str, key: str, version_id: str | None = None) -> StoredObject | None:
        """What the object's notification would carry; None when it no longer exists."""
        ...


class Downstream(Protocol):
    """The pipeline's side: the planner's backlog, the catalog, the events topic, the errors."""

    def backlog(self) -> int | None:
        """Events the planner has not handled yet (None: unknown)."""
        ...

    def known(self, object_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these object ids the pipeline has seen."""
        ...

    def publish(self, message_key: str, event: dict[str, object]) -> None:
        """Send an object-created event to the events topic (it may still be in flight)."""
        ...

    def flush(self) -> None:
        """Return once every event sent so far is durable; raise if one is not."""
        ...

    def refuse(self, source: str, message: str, detail: dict[str, object]) -> None:
        """Record (once per source) that a hostile key was not announced."""
        ...


@dataclass
class PassReport:
    """What one pass saw and did."""

    full: bool
    # events the planner had still to handle: the pass was put off
    backlog: int = 0
    listed: int = 0
    # recent passes: modified before the look-back, so not checked again
    settled: int = 0
    young: int = 0
    refused: int = 0
    checked: int = 0
    # announced recently and still without an asset
    awaited: int = 0
    new: int = 0
    published: int = 0
    # objects left unannounced for a later pass, as the pass had published its maximum
    capped: bool = False
    complete: bool = False

    def summary(self, seconds: float) -> str:
        """The pass in one log line."""
        if self.backlog:
            return f"pass put off: the planner has {self.backlog} event(s) to handle first"
        kind = "full" if self.full else "recent"
        end = "" if self.complete else " (ended early)"
        return (
            f"{kind} pass{end}: listed {self.listed}, new {self.new}, published "
            f"{self.published} in {seconds:.2f} s (checked {self.checked}, settled "
            f"{self.settled}, too young {self.young}, refused {self.refused}, awaiting the "
            f"planner {self.awaited})"
        )


def refusal_source(bucket: str, key: str) -> str:
    """The ``errors.source`` of a refused object: a hash, as keys may hold control characters."""
    digest = hashlib.sha256(f"{bucket}/{key}".encode(errors="surrogatepass")).hexdigest()
    return f"reconciler:{digest[:32]}"


class Reconciler:
    """Lists the ingest bucket and announces the objects the pipeline has not seen.

    The module docstring tells the pass logic.
    """

    def __init__(
        self,
        settings: Settings,
        objects: Objects,
        downstream: Downstream,
        *,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        full_pass_s: float = FULL_PASS_S,
        margin_s: float = MARGIN_S,
        republish_after_s: float = REPUBLISH_AFTER_S,
        max_published: int = MAX_PUBLISHED_PER_PASS,
        batch: int = BATCH,
    ) -> None:
        if settings.bucket == settings.derived_bucket:
            raise ValueError(
                f"the derived bucket is the ingest bucket ({settings.bucket!r}): what the "
                "pipeline writes would be ingested again; set SKYEYE_DERIVED_BUCKET to another"
            )
        self._settings = settings
        self._bucket = settings.bucket
        self._prefixes = list(dict.fromkeys(settings.reconciler.prefixes))
        self._min_age_s = settings.reconciler.min_age_s
        self._objects = objects
        self._downstream = downstream
        self._stop = stop or threading.Event()
        self._clock = clock
        self._full_pass_s = full_pass_s
        self._margin_s = margin_s
        self._republish_after_s = republish_after_s
        self._max_published = max_published
        self._batch = batch
        # the last completed pass checked every object modified before this (epoch seconds)
        self._checked_before: float | None = None
        # the start of the last completed full pass
        self._last_full_pass: float | None = None
        # whether the bucket has version ids, as the last full pass found it
        self._versions = False
        # what was announced (asset id) and refused (error source) recently, and when
        self._announced: dict[uuid.UUID, float] = {}
        self._refused: dict[str, float] = {}

    def run(self, health: Health | None = None) -> None:
        """Pass after pass until stopped; no failure ends the loop. ``health`` hears of each."""
        interval = self._settings.reconciler.interval_s
        while not self._stop.is_set():
            if health is not None:
                health.beat()
            began = time.monotonic()
            try:
                report = self.run_pass()
                if health is not None:
                    health.report("reconciler", None)
            except Exception as exc:
                why = transient(exc, TRANSIENT_REASONS)
                if health is not None:
                    health.report("reconciler", f"passes fail: {why or type(exc).__name__}")
                if why is not None:
                    log.warning("pass ended early: %s; next pass in %g s", why, interval)
                else:
                    log.exception("pass ended early by a bug; next pass in %g s", interval)
            else:
                if not self._stop.is_set():
                    log.info("%s", report.summary(time.monotonic() - began))
            self._stop.wait(interval)

    def run_pass(self) -> PassReport:
        """List every configured prefix once and announce what has no asset."""
        started = self._clock()
        full = self._last_full_pass is None or started - self._last_full_pass >= self._full_pass_s
        report = PassReport(full)
        # A negative lag (the log ends before the group's committed offset) queues nothing for
        # the planner: the broker lost its log end (the embedded tansu can, when killed).
        report.backlog = max(self._downstream.backlog() or 0, 0)
        if report.backlog:
            return report
        if full:
            self._versions = self._objects.versioned(self._bucket)
        look_back = None
        if not full and self._checked_before is not None:
            look_back = self._checked_before - self._margin_s
        young_after = started - self._min_age_s
        self._announced = self._recent(self._announced, started)
        self._refused = self._recent(self._refused, started)
        if not self._check_listings(report, look_back, young_after):
            return report
        report.complete = True
        self._checked_before = young_after
        if full:
            self._last_full_pass = started
        return report

    def _check_listings(
        self, report: PassReport, look_back: float | None, young_after: float
    ) -> bool:
        """Walk each prefix's listing, announcing the unknown objects a batch at a time.

        False when the pass ends early (stopped, or capped).
        """
        batch: list[tuple[uuid.UUID, ListedObject]] = []
        for prefix in self._prefixes:
            listing = self._objects.list_objects(self._bucket, prefix, versions=self._versions)
            for obj in listing:
                if self._stop.is_set():
                    return False
                report.listed += 1
                if not self._to_check(obj, report, look_back, young_after):
                    continue
                batch.append((asset_id_for(self._bucket, obj.key, obj.version_id or obj.etag), obj))
                if len(batch) >= self._batch:
                    self._announce(batch, report)
                    batch = []
                    if self._ends_early(report):
                        return False
        self._announce(batch, report)
        return not self._ends_early(report)

    def _to_check(
        self, obj: ListedObject, report: PassReport, look_back: float | None, young_after: float
    ) -> bool:
        """Whether ``obj`` is checked against the catalog; ``report`` counts why not.

        Not when modified before the look-back (settled), after ``young_after`` (too young),
        under a hostile key (refused) or when it is a clip's sidecar.
        """
        modified = obj.last_modified.timestamp()
        if look_back is not None and modified < look_back:
            report.settled += 1
            return False
        if modified > young_after:
            report.young += 1
            return False
        if (problem := object_key_problem(obj.key)) is not None:
            self._refuse(obj, problem)
            report.refused += 1
            return False
        return not clips.is_sidecar(obj.key)

    def _recent(self, seen: dict[_K, float], now: float) -> dict[_K, float]:
        return {k: at for k, at in seen.items() if now - at < self._republish_after_s}

    def _ends_early(self, report: PassReport) -> bool:
        return self._stop.is_set() or report.capped

    def _refuse(self, obj: ListedObject, problem: str) -> None:
        source = refusal_source(self._bucket, obj.key)
        if source in self._refused:
            return
        log.warning("refused object key %s: %s", ascii(obj.key)[:300], problem)
        self._downstream.refuse(
            source,
            f"{problem}; the object is not processed: copy it to a key without this problem",
            {"bucket": self._bucket, "key": ascii(obj.key)[:300]},
        )
        self._refused[source] = self._clock()

    def _announce(self, batch: list[tuple[uuid.UUID, ListedObject]], report: PassReport) -> None:
        """Check one batch against the catalog; announce the unknown objects."""
        if not batch:
            return
        report.checked += len(batch)
        known = self._downstream.known([asset_id for asset_id, _ in batch])
        tracer = telemetry.tracer(__name__)
        sent: list[tuple[uuid.UUID, str]] = []
        for asset_id, obj in batch:
            if asset_id in known:
                self._announced.pop(asset_id, None)
                continue
            if asset_id in self._announced:
                report.awaited += 1
                continue
            report.new += 1
            if report.published >= self._max_published:
                report.capped = True  # a later pass announces it
            if self._ends_early(report):
                continue
            stored = self._objects.stat(self._bucket, obj.key, obj.version_id)
            if stored is None or (obj.version_id is None and stored.etag != obj.etag):
                # deleted or replaced since the listing: a later pass sees what is there now
                continue
            event = stored.created_event(PRINCIPAL)
            # the asset's trace starts here, as it starts in `skyeye ingest` for its uploads
            with tracer.start_as_current_span("reconcile") as span:
                span.set_attributes({"s3.key": obj.key, "skyeye.asset_id": str(asset_id)})
                self._downstream.publish(f"{self._bucket}/{obj.key}", event)
            sent.append((asset_id, obj.key))
            report.published += 1
        # the batch's acks awaited together: one round trip to the broker, not one an event
        self._downstream.flush()
        for asset_id, key in sent:
            self._announced[asset_id] = self._clock()
            log.info("announced %s (asset %s)", ascii(key)[1:-1], asset_id)


class PipelineDownstream:
    """:class:`Downstream` over Kafka and the catalog database."""

    def __init__(self, settings: Settings, engine: Engine, producer: kafka.Producer) -> None:
        self._settings = settings
        self._engine = engine
        self._producer = producer
        self._in_flight: list[kafka.Sending] = []

    def backlog(self) -> int | None:
        """The planner group's lag on the events topic (None: unknown)."""
        s = self._settings
        return kafka.lag(s, s.topic_events, s.planner_group)

    def known(self, object_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these object ids have an asset or a dead-lettered event in the catalog."""
        with self._engine.connect() as conn:
            return catalog.known_objects(conn, object_ids)

    def publish(self, message_key: str, event: dict[str, object]) -> None:
        """Send the event to the events topic; :meth:`flush` waits for its ack."""
        topic = self._settings.topic_events
        self._in_flight.append(kafka.send_json(self._producer, topic, message_key, event))

    def flush(self) -> None:
        """Wait for the ack of every event sent since the last flush."""
        in_flight, self._in_flight = self._in_flight, []
        for sent in in_flight:
            sent.get(timeout=30)

    def refuse(self, source: str, message: str, detail: dict[str, object]) -> None:
        """Record the refusal as an error row (stage reconciler, kind hostile_key)."""
        with self._engine.begin() as conn:
            catalog.record_error(
                conn,
                source=source,
                stage="reconciler",
                kind="hostile_key",
                message=message,
                detail=detail,
            )


def main() -> None:
    """Run the reconciler service, pass after pass, until SIGTERM or SIGINT."""
    settings = service_settings("skyeye-reconciler")
    assert settings.database_url is not None  # resolve() fills every endpoint
    stop = stop_on_signals()
    engine = postgres.create_engine(settings.database_url)
    health = observe(settings, engine)
    producer = kafka.producer(settings)
    try:
        downstream = PipelineDownstream(settings, engine, producer)
        Reconciler(settings, ObjectStore(settings), downstream, stop=stop).run(health)
    finally:
        producer.close()
        engine.dispose()
        telemetry.flush()


if __name__ == "__main__":
    main()
