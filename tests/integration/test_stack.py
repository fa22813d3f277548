"""The real embedded stack: start, use every component, restart on the same home, tear down."""

from __future__ import annotations

import io
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from skyeye.settings import Settings
from skyeye.stack import Endpoints, Stack, StackNotRunning, read_state, resolve, use_loopback_ray
from skyeye.stack import components as c
from skyeye.stack.layout import Layout, short_dir

pytestmark = pytest.mark.integration

GROUP = "stack-test"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    home = tmp_path / "home"
    yield Settings(
        home=home, s3_endpoint=None, kafka_bootstrap=None, database_url=None, ray_address=None
    )
    shutil.rmtree(short_dir(Layout.of(home).home), ignore_errors=True)


def _process_tree(stack: Stack) -> set[psutil.Process]:
    tree: set[psutil.Process] = set()
    for component in stack.state().components:
        if component.pid is None:
            continue
        root = psutil.Process(component.pid)
        tree |= {root, *root.children(recursive=True)}
    return tree


def _assert_loopback_only(tree: set[psutil.Process]) -> None:
    for proc in tree:
        try:
            listening = [x for x in proc.net_connections("inet") if x.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
        for conn in listening:
            assert conn.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1"), (proc.name(), conn)


def _kafka_messages(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        return [record.value for record in consumer]
    finally:
        consumer.close()


def _committed(bootstrap: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def _ray_round_trip(address: str) -> int:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=120)
    finally:
        ray.shutdown()


def _timed_start(stack: Stack, urls: list[str]) -> tuple[Endpoints, float]:
    began = time.monotonic()
    endpoints = stack.start(on_database_ready=urls.append)
    return endpoints, time.monotonic() - began


def _timings(stack: Stack) -> str:
    parts = [f"{x.name} {x.ready_after_s:.2f}s" for x in stack.state().components]
    return ", ".join(parts)


def test_stack_serves_and_survives_a_restart(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Restored after the test; use_loopback_ray sets it for this process's Ray driver.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    use_loopback_ray()
    payload = uuid.uuid4().hex.encode()
    seen: set[psutil.Process] = set()

    # --- cold start ---
    urls: list[str] = []
    stack = Stack(settings)
    endpoints, cold_s = _timed_start(stack, urls)
    try:
        cold = _timings(stack)
        assert urls == [endpoints.database_url]
        assert resolve(settings).model_dump() == {**settings.model_dump(), **endpoints.model_dump()}
        state = read_state(settings.home)
        assert state is not None and state.supervisor_alive
        assert all(x.alive for x in state.components)
        tree = _process_tree(stack)
        seen |= tree
        _assert_loopback_only(tree)

        s3 = c.s3_client(settings, endpoints.s3_endpoint)
        assert s3.bucket_exists(settings.bucket)
        s3.put_object(settings.bucket, "probe/object.bin", io.BytesIO(payload), len(payload))
        assert s3.get_object(settings.bucket, "probe/object.bin").read() == payload

        producer = KafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks="all")
        producer.send(settings.topic_events, payload, partition=0).get(timeout=30)
        producer.close()
        assert _kafka_messages(endpoints.kafka_bootstrap, settings.topic_events) == [payload]
        committer = KafkaConsumer(bootstrap_servers=endpoints.kafka_bootstrap, group_id=GROUP)
        committer.assign([TopicPartition(settings.topic_events, 0)])
        committer.commit({TopicPartition(settings.topic_events, 0): OffsetAndMetadata(1, "", -1)})
        committer.close()

        engine = sa.create_engine(endpoints.database_url)
        with engine.begin() as db:
            assert db.execute(sa.text("select 1")).scalar() == 1
            db.execute(sa.text("create table kept (value text)"))
            db.execute(sa.text("insert into kept values (:v)"), {"v": payload.decode()})
        engine.dispose()

        assert _ray_round_trip(endpoints.ray_address) == 42
    finally:
        stop_began = time.monotonic()
        stack.stop()
        stop_s = time.monotonic() - stop_began

    assert read_state(settings.home) is None
    with pytest.raises(StackNotRunning):
        resolve(settings)
    _assert_gone(seen, settings)

    # --- warm restart on the same home ---
    urls = []
    stack = Stack(settings)
    endpoints, warm_s = _timed_start(stack, urls)
    try:
        warm = _timings(stack)
        seen |= _process_tree(stack)
        s3 = c.s3_client(settings, endpoints.s3_endpoint)
        assert s3.get_object(settings.bucket, "probe/object.bin").read() == payload
        assert _kafka_messages(endpoints.kafka_bootstrap, settings.topic_events) == [payload]
        assert _committed(endpoints.kafka_bootstrap, settings.topic_events) == 1
        engine = sa.create_engine(endpoints.database_url)
        with engine.connect() as db:
            assert db.execute(sa.text("select value from kept")).scalars().all() == [
                payload.decode()
            ]
        engine.dispose()
        assert _ray_round_trip(endpoints.ray_address) == 42
    finally:
        stack.stop()
    _assert_gone(seen, settings)
    print(
        f"\nstack cold start {cold_s:.1f}s ({cold}); stop {stop_s:.1f}s; "
        f"warm restart {warm_s:.1f}s ({warm})"
    )


def _assert_gone(processes: set[psutil.Process], settings: Settings) -> None:
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    layout = Layout.of(settings.home)
    markers = (str(layout.home), str(layout.ray_temp_dir))
    strays = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(marker in cmdline for marker in markers):
            strays.append(proc)
    assert not strays, strays
