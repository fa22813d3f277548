"""Kafka: producer and consumer construction with the delivery guarantees the pipeline relies on.

Callers name the client's types by this module's names (:data:`Record`, :data:`Producer`,
:data:`Consumer`, :data:`Sending`, :data:`Delivery`) and never import the client themselves.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from kafka.structs import OffsetAndMetadata

from skyeye import telemetry
from skyeye.settings import Settings

#: A message as a consumer's poll hands it over: topic, partition, offset, key, value, headers.
Record: TypeAlias = ConsumerRecord
#: A producer made by :func:`producer`.
Producer: TypeAlias = KafkaProducer
#: A consumer made by :func:`consumer`; its offsets are committed by hand (:func:`commit`).
Consumer: TypeAlias = KafkaConsumer
#: A message sent and not yet acknowledged: ``.get(timeout=...)`` waits for its :data:`Delivery`.
Sending: TypeAlias = FutureRecordMetadata
#: Where the broker stored a message: ``topic``, ``partition`` and ``offset``.
Delivery: TypeAlias = RecordMetadata


class CommitFailed(Exception):
    """The consumer group rebalanced before the offsets were committed.

    The partitions' new owner gets the uncommitted messages again.
    """


def transient_reason(exc: BaseException) -> str | None:
    """Why the broker is unreachable when ``exc`` says so (worth a retry), else None."""
    if isinstance(exc, KafkaError) and exc.retriable:
        return f"the Kafka broker is unavailable ({type(exc).__name__})"
    return None


def _connection(settings: Settings) -> dict[str, Any]:
    """The brokers and how to reach them (TLS, SASL), as every client of ours takes them."""
    found: dict[str, Any] = {
        "bootstrap_servers": _bootstrap(settings),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_ssl_cafile is not None:
        found["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        found |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": None if password is None else password.get_secret_value(),
        }
    return found


def _bootstrap(settings: Settings) -> list[str]:
    if settings.kafka_bootstrap is None:
        raise ValueError("kafka_bootstrap is unset; resolve the settings against a running stack")
    return settings.kafka_bootstrap.split(",")


def producer(settings: Settings) -> Producer:
    """A producer whose publish, once acknowledged, is durable (acks from every replica)."""
    # acks=all: a publish that returns is durable. Without idempotence a retry may duplicate a
    # message; every consumer is idempotent, so a duplicate costs work, never a wrong row.
    return KafkaProducer(
        **_connection(settings),
        acks="all",
        enable_idempotence=settings.kafka_idempotent_producer,
        retries=10,
        linger_ms=5,
    )


def publish_json(producer_: Producer, topic: str, key: str, payload: object) -> None:
    """Publish with the current trace context in the headers; wait for the broker's ack."""
    send_json(producer_, topic, key, payload).get(timeout=30)


def send_json(producer_: Producer, topic: str, key: str, payload: object) -> Sending:
    """:func:`publish_json` without the wait for the ack.

    Many messages sent before their acks are awaited (``.get()`` on each) cost one round trip,
    not one each.
    """
    return producer_.send(
        topic, key=key.encode(), value=json.dumps(payload).encode(), headers=telemetry.inject()
    )


def publish(
    producer_: Producer,
    topic: str,
    *,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> Delivery:
    """Publish a message exactly as given (a dead letter's copy or replay); wait for the ack."""
    return send(producer_, topic, key=key, value=value, headers=headers).get(timeout=30)


def send(
    producer_: Producer,
    topic: str,
    *,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> Sending:
    """:func:`publish` without the wait for the ack (the outbox relay's batches)."""
    return producer_.send(topic, key=key, value=value, headers=headers)


def consumer(settings: Settings, topic: str, group: str, max_poll_records: int) -> Consumer:
    """A member of ``group`` reading ``topic`` from its committed offsets (the earliest first)."""
    # Offsets are committed by hand, only after the results they cover are stored.
    return KafkaConsumer(
        topic,
        **_connection(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        # inference of a batch may take a while on CPU
        max_poll_interval_ms=max(300_000, int(settings.inference_timeout_s * 2000)),
    )


def commit(consumer_: Consumer, through: Sequence[Record]) -> None:
    """Commit each partition of ``through`` up to its last message there.

    Only that far: a later poll's messages may be in hand, not yet handled. Raises
    :class:`CommitFailed` when the group rebalanced meanwhile.
    """
    last: dict[TopicPartition, int] = {}
    for record in through:
        tp = TopicPartition(record.topic, record.partition)
        last[tp] = max(last.get(tp, -1), record.offset)
    # the committed offset is the next message to read; no metadata, leader epoch unknown
    offsets = {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}
    try:
        consumer_.commit(offsets)
    except CommitFailedError as exc:
        raise CommitFailed(str(exc)) from exc


def probe(bootstrap: str) -> None:
    """Raise unless the broker at ``bootstrap`` answers an admin client's first requests."""
    KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="skyeye-stack", request_timeout_ms=10_000
    ).close()


def ensure_topics(settings: Settings, topics: Iterable[str]) -> list[str]:
    """Create the missing topics with the configured partition count; returns those created."""
    admin = KafkaAdminClient(**_connection(settings), request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        partitions = settings.topic_partitions
        created = []
        for topic in dict.fromkeys(topics):
            if topic in existing:
                continue
            # another client may create it between list and create: that is what we wanted
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
                )
                created.append(topic)
        return created
    finally:
        admin.close()


def partition_lag(consumer_: Consumer) -> dict[tuple[str, int], int]:
    """Messages not yet consumed on each partition the consumer holds, by (topic, partition).

    Local, no request: the high watermark of the partition's last fetch response against the
    consumer's position. A partition not fetched from yet is left out.
    """
    found = {}
    for tp in consumer_.assignment():
        high = consumer_.highwater(tp)
        if high is not None:
            found[(tp.topic, tp.partition)] = max(high - consumer_.position(tp), 0)
    return found


def lag(settings: Settings, topic: str, group: str, timeout_s: float = 10.0) -> int | None:
    """Messages of ``topic`` not yet committed by ``group`` (None if unknown).

    The end of each partition is read from a fetch response's high watermark: tansu's
    ListOffsets answer (``end_offsets``) is wrong with its S3 storage engine.
    """
    # Assigned, never subscribed: it reads the group's offsets without joining the group, and
    # tiny fetches keep it from pulling a backlog just to learn where the log ends.
    probe = KafkaConsumer(
        **_connection(settings),
        group_id=group,
        enable_auto_commit=False,
        max_poll_records=1,
        fetch_max_bytes=1024,
        max_partition_fetch_bytes=1024,
    )
    try:
        partitions = probe.partitions_for_topic(topic)
        if not partitions:
            return None
        tps = [TopicPartition(topic, p) for p in partitions]
        probe.assign(tps)
        committed = {tp: probe.committed(tp) or 0 for tp in tps}
        for tp, offset in committed.items():
            probe.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while any(probe.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                return None
            probe.poll(timeout_ms=200)
        return sum(probe.highwater(tp) - committed[tp] for tp in tps)
    finally:
        probe.close()
