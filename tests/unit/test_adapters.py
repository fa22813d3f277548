"""The adapters own their client's errors: what a caller sees is the project's exception, with
the client's as its cause, and the outages the consumer loop retries are still told apart.

Stubbed: the minio client (a stand-in whose calls raise the client's real exception types), the
Kafka consumer and producer; the database is a real SQLAlchemy engine pointed at a socket
folder that does not exist. The real services are exercised by tests/integration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import sqlalchemy as sa
import urllib3.exceptions
from kafka.errors import CommitFailedError
from minio.error import InvalidResponseError, S3Error, ServerError

from skyeye.adapters import kafka, postgres, s3, serve
from skyeye.adapters.s3 import (
    ObjectMissing,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreRefused,
    ObjectStoreUnavailable,
)
from skyeye.settings import Settings


def _s3_error(code: str, message: str = "says the store") -> S3Error:
    return S3Error(None, code, message, "/bucket/key", "req", "host")  # type: ignore[arg-type]


class _Client:
    """Stands in for the minio client: every call raises ``failure``, the listing after one
    object."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def stat_object(self, bucket: str, key: str, version_id: str | None = None) -> Any:
        raise self.failure

    def get_object(self, bucket: str, key: str, **kw: Any) -> Any:
        raise self.failure

    def put_object(self, *args: Any, **kw: Any) -> Any:
        raise self.failure

    def bucket_exists(self, bucket: str) -> bool:
        return False

    def make_bucket(self, bucket: str) -> None:
        raise self.failure

    def list_objects(self, bucket: str, **kw: Any) -> Iterator[Any]:
        yield SimpleNamespace(
            is_dir=False,
            is_delete_marker=False,
            object_name="a.png",
            etag="e",
            version_id=None,
            size=1,
            last_modified=None,
        )
        raise self.failure


def _store(failure: Exception) -> ObjectStore:
    store = ObjectStore(Settings(s3_endpoint="127.0.0.1:1"))
    store._client = _Client(failure)  # type: ignore[assignment]
    return store


@pytest.mark.parametrize(
    ("failure", "kind", "reason"),
    [
        (_s3_error("NoSuchKey"), ObjectMissing, None),
        (_s3_error("NoSuchVersion"), ObjectMissing, None),
        (_s3_error("AccessDenied"), ObjectStoreRefused, None),
        (_s3_error("SlowDown"), ObjectStoreUnavailable, "the object store answered SlowDown"),
        (
            ServerError("bad gateway", 502),
            ObjectStoreUnavailable,
            "the object store answered HTTP 502",
        ),
        (ServerError("range", 416), ObjectStoreError, None),
        (
            InvalidResponseError(400, "text/html", "<html>"),
            ObjectStoreUnavailable,
            "the object store sent an invalid response",
        ),
        (
            urllib3.exceptions.MaxRetryError(None, "/", "connection refused"),  # type: ignore[arg-type]
            ObjectStoreUnavailable,
            "the object store did not answer",
        ),
    ],
)
def test_the_store_raises_its_own_errors_with_the_clients_as_cause(
    failure: Exception, kind: type[ObjectStoreError], reason: str | None
) -> None:
    store = _store(failure)
    calls = [
        lambda: store.size("bucket", "key"),
        lambda: store.read("bucket", "key", max_bytes=10),
        lambda: store.put_bytes(b"x", "bucket", "key", "image/png"),
        lambda: list(store.list_objects("bucket")),
    ]
    for call in calls:
        with pytest.raises(ObjectStoreError) as raised:
            call()
        assert type(raised.value) is kind and raised.value.__cause__ is failure
        assert s3.transient_reason(raised.value) == reason


def test_a_refusal_keeps_the_stores_code_and_message() -> None:
    with pytest.raises(ObjectStoreRefused) as refused:
        _store(_s3_error("AccessDenied", "Access denied")).size("bucket", "key")
    assert (refused.value.code, refused.value.message) == ("AccessDenied", "Access denied")
    assert (
        str(refused.value) == "the object store refused the request (AccessDenied: Access denied)"
    )


def test_stat_of_an_object_that_is_gone_is_none() -> None:
    assert _store(_s3_error("NoSuchKey")).stat("bucket", "key") is None
    with pytest.raises(ObjectStoreRefused):
        _store(_s3_error("AccessDenied")).stat("bucket", "key")


def test_a_bucket_another_process_just_created_is_no_failure() -> None:
    assert _store(_s3_error("BucketAlreadyOwnedByYou")).ensure_bucket("bucket") is False
    with pytest.raises(ObjectStoreRefused):
        _store(_s3_error("AccessDenied")).ensure_bucket("bucket")


def test_a_range_read_that_fails_is_remembered_for_the_parser_that_swallows_it() -> None:
    """``size`` is stubbed so the file opens; each range read then fails as a lost
    connection."""
    store = _store(urllib3.exceptions.ProtocolError("connection lost"))
    store.size = lambda bucket, key: 100  # type: ignore[method-assign]
    opener = store.opener("bucket", "key")
    with opener("key") as stream, pytest.raises(ObjectStoreUnavailable):
        stream.read(10)
    with pytest.raises(ObjectStoreUnavailable) as raised:
        opener.raise_failure()
    assert s3.transient_reason(raised.value) == "the object store did not answer"


def test_only_the_stores_own_outages_are_transient() -> None:
    assert s3.transient_reason(ObjectStoreUnavailable("the object store did not answer"))
    assert s3.transient_reason(ObjectMissing("NoSuchKey", None)) is None
    # the client's exception is the adapter's business: the adapter translates it first
    assert s3.transient_reason(urllib3.exceptions.MaxRetryError(None, "/")) is None  # type: ignore[arg-type]


# --- Kafka ---------------------------------------------------------------------------------


def test_a_commit_the_group_rebalanced_away_is_our_commit_failed() -> None:
    """The consumer is a stand-in whose commit fails as kafka-python's does after a
    rebalance."""

    class Consumer:
        def commit(self, offsets: object) -> None:
            raise CommitFailedError("rebalanced")

    record = SimpleNamespace(topic="t", partition=0, offset=4)
    with pytest.raises(kafka.CommitFailed) as failed:
        kafka.commit(Consumer(), [record])  # type: ignore[arg-type]
    assert isinstance(failed.value.__cause__, CommitFailedError)


def test_a_commit_goes_through_each_partitions_last_message_only() -> None:
    """The consumer is a stand-in that keeps the offsets it was asked to commit."""
    committed: list[dict] = []

    class Consumer:
        def commit(self, offsets: dict) -> None:
            committed.append({(tp.topic, tp.partition): o.offset for tp, o in offsets.items()})

    records = [
        SimpleNamespace(topic="t", partition=p, offset=o) for p, o in [(0, 4), (1, 9), (0, 5)]
    ]
    kafka.commit(Consumer(), records)  # type: ignore[arg-type]
    # the committed offset is the next one to read
    assert committed == [{("t", 0): 6, ("t", 1): 10}]


def test_publish_sends_the_message_as_given_and_waits_for_the_ack() -> None:
    """The producer is a stand-in that keeps what it was sent."""
    sent: list[tuple[str, dict[str, Any]]] = []
    delivery = SimpleNamespace(topic="t", partition=2, offset=7)

    class Producer:
        def send(self, topic: str, **kw: Any) -> SimpleNamespace:
            sent.append((topic, kw))
            return SimpleNamespace(get=lambda timeout: delivery)

    landed = kafka.publish(Producer(), "t", key=None, value=b"v", headers=[("h", b"1")])
    assert landed is delivery
    assert sent == [("t", {"key": None, "value": b"v", "headers": [("h", b"1")]})]


# --- PostgreSQL ----------------------------------------------------------------------------


def _unreachable() -> postgres.Engine:
    # a socket folder that does not exist: every connect fails at once
    return sa.create_engine("postgresql+psycopg2://postgres@/postgres?host=/nonexistent-skyeye")


def test_a_database_that_does_not_answer_is_a_transient_database_error() -> None:
    with pytest.raises(postgres.DatabaseError) as failed, postgres.connection(_unreachable()):
        pass
    assert failed.value.reason == "the database is unavailable"
    assert postgres.transient_reason(failed.value) == "the database is unavailable"
    assert isinstance(failed.value.__cause__, sa.exc.OperationalError)


def test_a_failing_statement_is_a_database_error_that_is_not_transient() -> None:
    """The engine is a stand-in whose connection raises a real SQLAlchemy error in the block."""

    class Connection:
        def __enter__(self) -> Connection:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    engine = SimpleNamespace(connect=Connection)
    error = sa.exc.ProgrammingError("SELECT x", {}, Exception('relation "x" does not exist'))
    with pytest.raises(postgres.DatabaseError) as failed, postgres.connection(engine):  # type: ignore[arg-type]
        raise error
    assert failed.value.reason is None and failed.value.__cause__ is error
    assert postgres.transient_reason(failed.value) is None
    assert "does not exist" in str(failed.value)


def test_serve_health_of_a_cluster_that_does_not_answer_is_unknown_and_leaves_no_driver() -> None:
    """Nothing listens at the address: the asking child is killed at the timeout."""
    health = serve.app_health(Settings(ray_address="127.0.0.1:9"), timeout_s=5)
    assert (health.status, health.message) == ("unknown", "Ray did not answer within 5 s")
    # asked from a child process: this one never joined a cluster
    assert not ray.is_initialized()


def test_serve_health_stream_of_a_cluster_that_does_not_answer_ends_when_closed() -> None:
    """Nothing listens at the address: no sample comes, and close() ends the wait for one."""
    stream = serve.HealthStream(Settings(ray_address="127.0.0.1:9"), every_s=0.5)
    closer = threading.Timer(2, stream.close)
    closer.start()
    assert list(stream) == []
    closer.join()
    stream.close()  # again: nothing left to stop
    assert not ray.is_initialized()


def test_kafka_clients_reach_brokers_over_tls_and_sasl_as_the_settings_say() -> None:
    plain = kafka._connection(Settings(kafka_bootstrap="k:9092"))
    assert plain == {"bootstrap_servers": ["k:9092"], "security_protocol": "PLAINTEXT"}
    secured = kafka._connection(
        Settings(
            kafka_bootstrap="k1:9093,k2:9093",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="skyeye",
            kafka_sasl_password="s3cret",
            kafka_ssl_cafile="/etc/skyeye/kafka-ca/ca.crt",
        )
    )
    assert secured == {
        "bootstrap_servers": ["k1:9093", "k2:9093"],
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/skyeye/kafka-ca/ca.crt",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "skyeye",
        "sasl_plain_password": "s3cret",
    }


def test_sasl_without_its_credentials_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(ValueError, match="needs kafka_sasl_username, kafka_sasl_password"):
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN")
