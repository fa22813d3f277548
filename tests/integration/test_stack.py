"""The real embedded stack: start, use every component, restart on the same home, tear down;
survive each server being killed."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from minio import Minio

from skyeye.settings import Settings
from skyeye.stack import (
    ComponentState,
    Endpoints,
    Stack,
    StackNotRunning,
    read_state,
    resolve,
    use_loopback_ray,
)
from skyeye.stack.paths import StackPaths, short_dir

pytestmark = pytest.mark.integration

GROUP = "stack-test"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    home = tmp_path / "home"
    yield Settings(
        home=home, s3_endpoint=None, kafka_bootstrap=None, database_url=None, ray_address=None
    )
    shutil.rmtree(short_dir(StackPaths.of(home).home), ignore_errors=True)


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


def _s3_client(settings: Settings, endpoint: str) -> Minio:
    """A plain MinIO client of the stack's S3 server."""
    return Minio(
        endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


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

    if ray.is_initialized():  # a driver of another cluster: this test asks its own
        ray.shutdown()
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

        s3 = _s3_client(settings, endpoints.s3_endpoint)
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
        s3 = _s3_client(settings, endpoints.s3_endpoint)
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
    paths = StackPaths.of(settings.home)
    markers = (str(paths.home), str(paths.ray_temp_dir))
    strays = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(marker in cmdline for marker in markers):
            strays.append(proc)
    assert not strays, strays


def _start_busy_query(engine: sa.Engine) -> None:
    """Run a query that computes for minutes in a thread; return once it runs."""

    def run() -> None:
        # Ends with an error when the supervisor kills its backend.
        with contextlib.suppress(sa.exc.DBAPIError), engine.connect() as db:
            db.execute(sa.text("select count(*) from generate_series(1, 10000000000)"))

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 30
    while True:
        with engine.connect() as db:
            busy = db.execute(
                sa.text(
                    "select count(*) from pg_stat_activity "
                    "where state = 'active' and query like '%generate_series%' "
                    "and pid <> pg_backend_pid()"
                )
            ).scalar()
        if busy:
            return
        assert time.monotonic() < deadline, "the busy query did not start"
        time.sleep(0.1)


def _recovered(
    settings: Settings, name: str, restarts: int, errors: list[BaseException]
) -> ComponentState:
    """Wait until ``name`` has been restarted ``restarts`` times and is ready again."""
    deadline = time.monotonic() + 240
    while True:
        assert not errors, errors
        state = read_state(settings.home)
        entry = state.component(name) if state is not None else None
        if (
            entry is not None
            and entry.restarts >= restarts
            and entry.alive
            and entry.ready_after_s is not None
        ):
            return entry
        assert time.monotonic() < deadline, f"{name} did not come back: {entry}"
        time.sleep(0.2)


def test_killed_servers_come_back_with_their_data(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    use_loopback_ray()
    payload = uuid.uuid4().hex.encode()
    restarted: list[str] = []
    stack = Stack(settings, on_restarted=restarted.append)
    endpoints = stack.start()
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            stack.watch(stop, 0.2)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        s3 = _s3_client(settings, endpoints.s3_endpoint)
        s3.put_object(settings.bucket, "probe/object.bin", io.BytesIO(payload), len(payload))
        producer = KafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks="all")
        producer.send(settings.topic_events, payload, partition=0).get(timeout=30)
        producer.close()
        messages = [payload]
        engine = sa.create_engine(endpoints.database_url, poolclass=sa.NullPool)
        with engine.begin() as db:
            db.execute(sa.text("create table kept (value text)"))
            db.execute(sa.text("insert into kept values (:v)"), {"v": payload.decode()})

        downtime = {}
        # Kafka before S3: tansu keeps its log in S3 and may die (and come back) with it.
        for name in ("postgres", "kafka", "s3", "ray"):
            before = stack.state().component(name)
            assert before is not None and before.pid is not None
            if name == "postgres":
                # A backend busy computing outlives its postmaster and holds the shared memory
                # a new postmaster needs: the supervisor must kill it.
                _start_busy_query(engine)
            killed_at = time.monotonic()
            os.kill(before.pid, signal.SIGKILL)
            after = _recovered(settings, name, 1, errors)
            downtime[name] = time.monotonic() - killed_at
            assert after.restarts == 1 or name == "kafka"
            assert after.last_exit == "killed by SIGKILL"
            assert (after.endpoint, after.port) == (before.endpoint, before.port)
            assert after.pid != before.pid

            assert s3.get_object(settings.bucket, "probe/object.bin").read() == payload
            # the log goes on where it ended: a new message follows the old ones, none is lost
            producer = KafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, acks="all")
            sent = producer.send(settings.topic_events, name.encode(), partition=0).get(30)
            producer.close()
            assert sent.offset == len(messages)
            messages.append(name.encode())
            assert _kafka_messages(endpoints.kafka_bootstrap, settings.topic_events) == messages
            with engine.connect() as db:
                assert db.execute(sa.text("select value from kept")).scalars().all() == [
                    payload.decode()
                ]
        assert _ray_round_trip(endpoints.ray_address) == 42
        assert restarted[0] == "postgres" and restarted[-1] == "ray"
        assert set(restarted) == {"postgres", "kafka", "s3", "ray"}
        engine.dispose()
    finally:
        stop.set()
        watcher.join(60)
        stack.stop()
    assert not errors, errors
    figures = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in downtime.items())
    print(f"\nkilled and back (SIGKILL to ready, 1 s backoff included): {figures}")
