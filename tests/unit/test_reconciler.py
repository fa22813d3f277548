"""The reconciler's pass logic, and the listing of the S3 adapter.

Stubbed: the object store (an in-memory bucket with the listing and stat the reconciler uses),
the pipeline's side (a set of known object ids, a list of published events, a dict of refusals)
and the clock (a number the test moves). The adapter tests stub the minio client with canned
listing entries; the real store is exercised by tests/integration/test_reconciler.py.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from xml.etree import ElementTree

import pytest
from kafka.errors import KafkaTimeoutError
from minio.datatypes import Object

from skyeye.adapters.s3 import ListedObject, ObjectStore, ObjectStoreUnavailable, StoredObject
from skyeye.contracts import ObjectEvent, asset_id_for
from skyeye.services.planner import Planner
from skyeye.services.reconciler import Reconciler, refusal_source
from skyeye.settings import ReconcilerSettings, Settings

BUCKET = "incoming"
T0 = 1_800_000_000.0  # the test's "now" at the start


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Bucket:
    """The ingest bucket: objects by key, each with its Last-Modified (epoch seconds)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[ListedObject, StoredObject]] = {}
        self.listed_buckets: list[str] = []
        self.fail_listing: list[BaseException] = []
        self.versions = False

    def put(
        self,
        key: str,
        modified: float,
        *,
        etag: str = "",
        version_id: str | None = None,
        content_type: str = "image/png",
        metadata: dict[str, str] | None = None,
    ) -> uuid.UUID:
        etag = etag or uuid.uuid5(uuid.NAMESPACE_URL, f"{key}@{modified}").hex
        when = datetime.fromtimestamp(modified, UTC)
        listed = ListedObject(key, etag, version_id, 1234, when)
        stored = StoredObject(
            BUCKET, key, etag, version_id, 1234, content_type, dict(metadata or {})
        )
        self.objects[key] = (listed, stored)
        return asset_id_for(BUCKET, key, version_id or etag)

    def versioned(self, bucket: str) -> bool:
        return self.versions

    def list_objects(
        self, bucket: str, prefix: str = "", *, versions: bool = False
    ) -> Iterator[ListedObject]:
        assert versions == self.versions
        self.listed_buckets.append(bucket)
        if self.fail_listing:
            raise self.fail_listing.pop(0)
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self.objects[key][0]

    def stat(self, bucket: str, key: str, version_id: str | None = None) -> StoredObject | None:
        found = self.objects.get(key)
        return None if found is None else found[1]


class Downstream:
    """The pipeline's side: what the catalog knows, what was published and refused."""

    def __init__(self) -> None:
        self.pending: list[int | None] = []
        self.known_ids: set[uuid.UUID] = set()
        self.queries: list[int] = []
        self.in_flight: list[tuple[str, dict[str, Any]]] = []
        self.fail_flush: list[BaseException] = []
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[tuple[str, str, dict[str, object]]] = []

    def backlog(self) -> int | None:
        return self.pending.pop(0) if self.pending else 0

    def known(self, object_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        self.queries.append(len(object_ids))
        return self.known_ids & set(object_ids)

    def publish(self, message_key: str, event: dict[str, object]) -> None:
        self.in_flight.append((message_key, event))

    def flush(self) -> None:
        in_flight, self.in_flight = self.in_flight, []
        if self.fail_flush:
            raise self.fail_flush.pop(0)
        self.published += in_flight

    def refuse(self, source: str, message: str, detail: dict[str, object]) -> None:
        self.refused.append((source, message, detail))

    def asset_ids(self) -> list[uuid.UUID]:
        """The asset id the planner derives from each published event, in order."""
        planner = Planner(Settings(), None, None, None)  # type: ignore[arg-type]
        ids = []
        for _, event in self.published:
            record = SimpleNamespace(value=_raw(event))
            subject = planner.subject(record)  # type: ignore[arg-type]
            assert subject.asset_id is not None
            ids.append(subject.asset_id)
        return ids


def _raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def _settings(**reconciler: Any) -> Settings:
    return Settings(
        bucket=BUCKET,
        reconciler=ReconcilerSettings(**{"interval_s": 10, "min_age_s": 5, **reconciler}),
    )


def _reconciler(
    bucket: Bucket,
    downstream: Downstream,
    clock: Clock,
    settings: Settings | None = None,
    **kw: Any,
) -> Reconciler:
    return Reconciler(settings or _settings(), bucket, downstream, clock=clock, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bucket() -> Bucket:
    return Bucket()


@pytest.fixture
def downstream() -> Downstream:
    return Downstream()


def test_an_unknown_object_is_announced_as_the_asset_its_own_notification_would_make(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    asset_id = bucket.put(
        "feed/a b+c.png", T0 - 60, etag="abc123-2", metadata={"start-datetime": "2026-01-01"}
    )
    report = _reconciler(bucket, downstream, clock).run_pass()
    assert (report.listed, report.checked, report.new, report.published) == (1, 1, 1, 1)
    assert report.full and report.complete
    [(message_key, event)] = downstream.published
    assert message_key == f"{BUCKET}/feed/a b+c.png"
    assert downstream.asset_ids() == [asset_id]
    parsed = ObjectEvent.parse(_raw(event), max_bytes=1024**2)
    record = parsed.records[0]
    assert parsed.is_object_created
    assert record.s3.object.decoded_key == "feed/a b+c.png"
    assert record.s3.object.e_tag == "abc123-2" and record.s3.object.size == 1234
    assert record.s3.object.content_type == "image/png"
    assert record.s3.object.user_metadata["X-Amz-Meta-Start-Datetime"] == "2026-01-01"
    assert event["Records"][0]["userIdentity"] == {"principalId": "skyeye-reconciler"}


def test_a_versioned_object_is_announced_by_its_version(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    bucket.versions = True
    asset_id = bucket.put("v.png", T0 - 60, etag="e1", version_id="3f2a-v1")
    assert asset_id != asset_id_for(BUCKET, "v.png", "e1")
    _reconciler(bucket, downstream, clock).run_pass()
    assert downstream.asset_ids() == [asset_id]


def test_known_sidecars_and_young_objects_are_not_announced(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    downstream.known_ids.add(bucket.put("seen.png", T0 - 60))
    bucket.put("clip.mp4.geo.json", T0 - 60)
    young = bucket.put("young.png", T0 - 2)
    reconciler = _reconciler(bucket, downstream, clock)
    report = reconciler.run_pass()
    assert (report.listed, report.young, report.checked, report.published) == (3, 1, 1, 0)
    assert downstream.published == []
    clock.now += 10  # the young object is now old enough, and still has no asset
    reconciler.run_pass()
    assert downstream.asset_ids() == [young]


def test_a_hostile_key_is_one_refusal_and_no_event(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    key = "evil\x1b[2J/../x.png"
    bucket.put(key, T0 - 60)
    reconciler = _reconciler(bucket, downstream, clock, full_pass_s=1, republish_after_s=300)
    reports = []
    for _ in range(3):  # full passes: each meets it; only the first refusal is written
        reports.append(reconciler.run_pass())
        clock.now += 100
    assert [r.refused for r in reports] == [1, 1, 1]
    assert downstream.published == [] and downstream.queries == []
    [(source, message, detail)] = downstream.refused
    assert source == refusal_source(BUCKET, key)
    assert source.isprintable() and "evil" not in source
    assert "control characters" in message
    assert detail["key"] == ascii(key)


def test_an_announced_object_is_not_announced_again_until_the_delay(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    asset_id = bucket.put("slow.png", T0 - 60)
    reconciler = _reconciler(bucket, downstream, clock, republish_after_s=300, full_pass_s=1)
    reconciler.run_pass()
    for _ in range(5):  # the planner lags: still no asset
        clock.now += 50
        report = reconciler.run_pass()
        assert report.awaited == 1 and report.published == 0
    clock.now += 60
    reconciler.run_pass()
    assert downstream.asset_ids() == [asset_id, asset_id]
    downstream.known_ids.add(asset_id)  # the planner caught up
    clock.now += 600
    assert reconciler.run_pass().published == 0


def test_recent_passes_check_only_recent_objects_and_full_passes_check_all(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    for i in range(4):
        downstream.known_ids.add(bucket.put(f"old/{i}.png", T0 - 3600))
    reconciler = _reconciler(
        bucket, downstream, clock, full_pass_s=600, margin_s=30, republish_after_s=10_000
    )
    assert reconciler.run_pass().checked == 4
    # an object whose notification was lost, modified just before that pass began
    fresh = bucket.put("fresh.png", T0 - 1)
    # an object that only appears now, although its Last-Modified is long past (a slow
    # upload): beyond the look-back of recent passes
    slow = bucket.put("slow-upload.png", T0 - 1000)
    clock.now += 10
    report = reconciler.run_pass()
    assert not report.full and report.complete
    assert (report.listed, report.settled, report.checked, report.published) == (6, 5, 1, 1)
    assert downstream.asset_ids() == [fresh]
    clock.now += 600  # the next full pass finds the slow upload
    report = reconciler.run_pass()
    assert report.full and report.checked == 6 and report.awaited == 1
    assert downstream.asset_ids() == [fresh, slow]


def test_a_pass_that_fails_does_not_move_the_look_back(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    reconciler = _reconciler(bucket, downstream, clock, full_pass_s=10_000, margin_s=30)
    reconciler.run_pass()
    # written while the store was down: the next passes fail, and pass it by
    missed = bucket.put("during-outage.png", T0 + 5)
    bucket.fail_listing = [ObjectStoreUnavailable("the object store did not answer")] * 3
    for _ in range(3):
        clock.now += 100
        with pytest.raises(ObjectStoreUnavailable):
            reconciler.run_pass()
    clock.now += 100
    report = reconciler.run_pass()
    assert not report.full and report.published == 1
    assert downstream.asset_ids() == [missed]


def test_a_pass_is_put_off_while_the_planner_has_events_to_handle(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    """An object whose event is still queued would look unannounced: nothing is listed until
    the planner has caught up, and the look-back does not move meanwhile."""
    reconciler = _reconciler(bucket, downstream, clock, margin_s=30)
    reconciler.run_pass()
    queued = bucket.put("queued.png", T0 + 1)
    downstream.pending = [12, 3]
    for expected in (12, 3):
        clock.now += 100
        report = reconciler.run_pass()
        assert (report.backlog, report.listed, report.complete) == (expected, 0, False)
        assert report.summary(0.1) == (
            f"pass put off: the planner has {expected} event(s) to handle first"
        )
    assert bucket.listed_buckets == [BUCKET]
    clock.now += 100
    downstream.pending = [None]  # unknown: the pass goes ahead
    report = reconciler.run_pass()
    assert not report.full and report.published == 1
    assert downstream.asset_ids() == [queued]


def test_events_the_broker_did_not_take_are_announced_again_by_the_next_pass(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    asset_id = bucket.put("a.png", T0 - 60)
    downstream.fail_flush = [KafkaTimeoutError("no ack")]
    reconciler = _reconciler(bucket, downstream, clock)
    with pytest.raises(KafkaTimeoutError):
        reconciler.run_pass()
    clock.now += 10
    assert reconciler.run_pass().published == 1
    assert downstream.asset_ids() == [asset_id]


def test_catalog_checks_are_batched(bucket: Bucket, downstream: Downstream, clock: Clock) -> None:
    for i in range(5):
        bucket.put(f"{i}.png", T0 - 60)
    report = _reconciler(bucket, downstream, clock, batch=2).run_pass()
    assert downstream.queries == [2, 2, 1]
    assert report.published == 5 and len(set(downstream.asset_ids())) == 5


def test_a_pass_publishes_at_most_its_cap_and_the_rest_follow(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    ids = {bucket.put(f"{i}.png", T0 - 60) for i in range(5)}
    reconciler = _reconciler(bucket, downstream, clock, max_published=2, batch=2)
    counts = []
    for _ in range(3):
        report = reconciler.run_pass()
        counts.append((report.published, report.complete))
        clock.now += 10
    assert counts == [(2, False), (2, False), (1, True)]
    assert set(downstream.asset_ids()) == ids and len(downstream.published) == 5


def test_an_object_deleted_or_replaced_after_the_listing_is_not_announced(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    bucket.put("gone.png", T0 - 60)
    bucket.put("replaced.png", T0 - 60, etag="old")
    listed = {key: entry[0] for key, entry in bucket.objects.items()}
    replaced = bucket.put("replaced.png", T0 - 60, etag="new")
    del bucket.objects["gone.png"]

    def stale_listing(bucket_name: str, prefix: str = "", **_: bool) -> Iterator[ListedObject]:
        yield from listed.values()

    bucket.list_objects = stale_listing  # type: ignore[method-assign]
    report = _reconciler(bucket, downstream, clock).run_pass()
    assert report.new == 2 and report.published == 0
    assert replaced not in downstream.asset_ids()


def test_only_the_ingest_bucket_is_listed_once_per_prefix(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    bucket.put("a/1.png", T0 - 60)
    bucket.put("b/2.png", T0 - 60)
    bucket.put("c/3.png", T0 - 60)
    settings = _settings(prefixes=["a/", "b/", "a/"])
    report = _reconciler(bucket, downstream, clock, settings).run_pass()
    assert bucket.listed_buckets == [BUCKET, BUCKET]
    assert report.listed == 2 and [k for k, _ in downstream.published] == [
        f"{BUCKET}/a/1.png",
        f"{BUCKET}/b/2.png",
    ]


def test_the_derived_bucket_cannot_be_the_ingest_bucket(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    settings = Settings(bucket="same", derived_bucket="same")
    with pytest.raises(ValueError, match="derived bucket is the ingest bucket"):
        Reconciler(settings, bucket, downstream, clock=clock)


def test_the_loop_survives_outages_and_bugs_and_stops_on_request(
    bucket: Bucket, downstream: Downstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Real clock and a short interval: the loop runs three passes (an outage, a bug, a good
    pass that publishes), and the stop the publication sets ends it."""
    stop = threading.Event()
    bucket.put("x.png", 0)
    bucket.fail_listing = [
        ObjectStoreUnavailable("the object store did not answer"),
        KeyError("a bug"),
    ]
    downstream.publish = lambda key, event: stop.set()  # type: ignore[method-assign]
    reconciler = Reconciler(_settings(interval_s=0.01, min_age_s=0), bucket, downstream, stop=stop)
    caplog.set_level(logging.INFO, logger="skyeye.reconciler")
    worker = threading.Thread(target=reconciler.run)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    lines = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines[0] == (
        "WARNING",
        "pass ended early: the object store did not answer; next pass in 0.01 s",
        False,
    )
    assert lines[1][0] == "ERROR" and lines[1][2]  # the bug, with its traceback
    assert len(bucket.listed_buckets) == 3


# --- the adapter's listing and stat -----------------------------------------------------


class _Client:
    """Stands in for the minio client: canned versioning status, listing and stat."""

    def __init__(self, status: str | None, entries: list[Object]) -> None:
        self.status = status
        self.entries = entries
        self.include_version: bool | None = None

    def get_bucket_versioning(self, bucket: str) -> SimpleNamespace:
        if self.status == "not XML":
            raise ElementTree.ParseError("not well-formed (invalid token)")
        return SimpleNamespace(status=self.status)

    def list_objects(self, bucket: str, **kw: Any) -> Iterator[Object]:
        self.include_version = kw["include_version"]
        assert kw["recursive"] is True
        return iter(self.entries)

    def stat_object(self, bucket: str, key: str, version_id: str | None = None) -> Object:
        return Object(
            bucket,
            key,
            etag='"e1"',
            size=3,
            version_id=version_id or "null",
            content_type="video/mp4",
            metadata={
                "Content-Type": "video/mp4",
                "X-Amz-Meta-Start-Datetime": "2026-01-01T00:00:00Z",
            },
        )


def _store(client: _Client) -> ObjectStore:
    store = ObjectStore(Settings(s3_endpoint="127.0.0.1:1"))
    store._client = client  # type: ignore[assignment]
    return store


WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def test_listing_a_plain_bucket_yields_every_object_with_unquoted_etags() -> None:
    client = _Client(
        None,
        [
            Object(BUCKET, "a.png", last_modified=WHEN, etag="e1", size=3),
            Object(BUCKET, "big.tif", last_modified=WHEN, etag="e2-4", size=9),
        ],
    )
    store = _store(client)
    assert not store.versioned(BUCKET)
    listed = list(store.list_objects(BUCKET))
    assert client.include_version is False
    assert listed == [
        ListedObject("a.png", "e1", None, 3, WHEN),
        ListedObject("big.tif", "e2-4", None, 9, WHEN),
    ]


def test_listing_a_versioned_bucket_yields_only_current_versions() -> None:
    client = _Client(
        "Enabled",
        [
            Object(BUCKET, "a.png", WHEN, "e2", 3, version_id="v2", is_latest="true"),
            Object(BUCKET, "a.png", WHEN, "e1", 3, version_id="v1", is_latest="false"),
            Object(BUCKET, "b.png", WHEN, "e3", 3, version_id="null", is_latest="true"),
            Object(BUCKET, "c.png", WHEN, "e4", 3, version_id="v4", is_latest="false"),
            Object(BUCKET, "c.png", WHEN, version_id="v5", is_latest="true", is_delete_marker=True),
        ],
    )
    store = _store(client)
    assert store.versioned(BUCKET)
    listed = list(store.list_objects(BUCKET, versions=True))
    assert client.include_version is True
    assert [(o.key, o.etag, o.version_id) for o in listed] == [
        ("a.png", "e2", "v2"),
        ("b.png", "e3", None),
    ]


def test_stat_gives_what_a_notification_carries() -> None:
    stored = _store(_Client(None, [])).stat(BUCKET, "clip.mp4")
    assert stored == StoredObject(
        BUCKET,
        "clip.mp4",
        "e1",
        None,
        3,
        "video/mp4",
        {"start-datetime": "2026-01-01T00:00:00Z"},
    )


@pytest.mark.parametrize(
    ("status", "versioned"),
    [(None, False), ("Enabled", True), ("Suspended", True), ("not XML", False)],
)
def test_versioning_as_the_store_answers_it(status: str | None, versioned: bool) -> None:
    """nanio answers the versioning question with a listing; one holding a control character
    is not XML."""
    assert _store(_Client(status, [])).versioned(BUCKET) is versioned


def test_an_object_with_a_version_the_listing_did_not_show_is_announced_with_it(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    """Versioning switched on since the last full pass: the event names the version all the
    same, so it is the asset the object's own notification makes."""
    asset_id = bucket.put("late.png", T0 - 60, etag="e1", version_id="v9")
    listed, stored = bucket.objects["late.png"]
    bucket.objects["late.png"] = (
        ListedObject(listed.key, listed.etag, None, listed.size, listed.last_modified),
        stored,
    )
    _reconciler(bucket, downstream, clock).run_pass()
    assert downstream.asset_ids() == [asset_id]


def test_a_pass_that_publishes_exactly_its_cap_is_complete(
    bucket: Bucket, downstream: Downstream, clock: Clock
) -> None:
    for i in range(2):
        bucket.put(f"{i}.png", T0 - 60)
    report = _reconciler(bucket, downstream, clock, max_published=2).run_pass()
    assert (report.published, report.complete) == (2, True)
