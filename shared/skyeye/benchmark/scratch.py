"""The bench's own embedded stack, in a scratch state folder, and what the bench does with it.

:func:`skyeye.stack.launcher.launch` starts it as ``skyeye up`` does (S3, Kafka, PostgreSQL,
the Ray head with the Serve application, planner, worker, the other services), with settings
the bench builds, so it sizes Serve itself and never disturbs a user's stack; it is stopped
when the bench ends, on Ctrl-C and on failure too. Imagery enters as a user's does: the file
is put in the ingest bucket and its MinIO-format object-created event published to Kafka.
Everything the bench reads back comes from the catalog and the metrics endpoints, never from
inside a service.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from skyeye import catalog
from skyeye.adapters import kafka, postgres
from skyeye.adapters.s3 import ObjectStore
from skyeye.alerts import RuleSpec
from skyeye.alerts.registry import register
from skyeye.catalog import alerts as alert_store
from skyeye.contracts import asset_id_for
from skyeye.settings import Settings
from skyeye.stack import Stack, StackError, resolve
from skyeye.stack.launcher import launch, service_env
from skyeye.stack.ports import pick_ports

from . import prometheus

__all__ = ["RAY_ENV", "Landed", "ScratchStack"]

# The bench's own Ray head runs with these (its workers and replicas inherit them): Ray exports
# its and Serve's metrics every 10 s by default, and the bench reads Serve's request counter
# after each run; Serve's handles and replicas report their load to the autoscaler every 10 s
# by default, longer than a short burst lasts.
RAY_ENV = {
    "RAY_metrics_report_interval_ms": "1000",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}
# The counter is final once it has not moved for this long (a few export intervals).
_METRIC_SETTLED_S = 3.0


@dataclass(frozen=True)
class Landed:
    """An uploaded image: its asset, and when (epoch seconds) its object was in the bucket."""

    asset_id: uuid.UUID
    key: str
    landed_at: float


class ScratchStack:
    """A running scratch stack: uploads, catalog reads, metrics and extra workers."""

    def __init__(self, stack: Stack, settings: Settings) -> None:
        self._stack = stack
        self.settings = settings
        assert settings.database_url is not None  # resolve() fills every endpoint
        self._engine = postgres.create_engine(settings.database_url)
        self._store = ObjectStore(settings)
        self._producer = kafka.producer(settings)
        self._workers = 1

    @classmethod
    @contextlib.contextmanager
    def running(cls, settings: Settings, progress: Callable[[str], None]) -> Iterator[ScratchStack]:
        """Launch the stack of ``settings`` (a scratch home), yield it, always stop it."""
        previous = {name: os.environ.get(name) for name in RAY_ENV}
        os.environ.update(RAY_ENV)
        try:
            stack = launch(settings, progress=progress)
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        try:
            scratch = cls(stack, resolve(settings))
            try:
                yield scratch
            finally:
                scratch._close()
        finally:
            progress("stopping the bench's stack")
            stack.stop()

    def _close(self) -> None:
        self._producer.close(timeout=10)
        self._engine.dispose()

    # --- imagery in -------------------------------------------------------------------------

    def upload(self, path: Path, key: str) -> Landed:
        """Put one file in the ingest bucket and announce it, as ``skyeye ingest`` does."""
        stored = self._store.put_file(path, self.settings.bucket, key)
        landed_at = time.time()
        event = stored.created_event()
        kafka.publish_json(
            self._producer, self.settings.topic_events, f"{stored.bucket}/{key}", event
        )
        asset_id = asset_id_for(stored.bucket, key, stored.version_id or stored.etag)
        return Landed(asset_id, key, landed_at)

    def upload_all(self, paths: Sequence[Path], prefix: str) -> list[Landed]:
        """Every file, one after another, under ``prefix/``."""
        return [self.upload(path, f"{prefix}/{path.name}") for path in paths]

    # --- the catalog ------------------------------------------------------------------------

    def wait_done(self, asset_ids: Sequence[uuid.UUID], timeout_s: float) -> float:
        """Wait until every asset is done; when (epoch seconds) the bench saw the last one done.

        Polled every 0.1 s: the figure is late by up to that, never early. A StackError when
        an asset ends in error or the timeout passes.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._engine.connect() as conn:
                states = catalog.asset_states(conn, asset_ids)
            seen = time.time()
            failed = [a for a, s in states.items() if s == "error"]
            if failed:
                with self._engine.connect() as conn:
                    errors = catalog.errors(conn, failed[0])
                raise StackError(f"asset {failed[0]} failed in the bench's pipeline: {errors}")
            if all(states.get(a) == "done" for a in asset_ids):
                return seen
            if time.monotonic() > deadline:
                missing = sum(states.get(a) != "done" for a in asset_ids)
                raise StackError(f"{missing} asset(s) not done within {timeout_s:g} s")
            time.sleep(0.1)

    def tiles(self, asset_ids: Sequence[uuid.UUID]) -> int:
        """The tiles the planner made of these assets, as the catalog counts them."""
        wanted = set(asset_ids)
        with self._engine.connect() as conn:
            return sum(a["tiles_planned"] for a in catalog.assets(conn) if a["asset_id"] in wanted)

    def last_results(self, asset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, float]:
        """When (epoch seconds) each asset's last work item had its results stored."""
        found = {}
        with self._engine.connect() as conn:
            for asset_id in asset_ids:
                items = catalog.work_items_of(conn, asset_id)
                found[asset_id] = max(i["completed_at"] for i in items).timestamp()
        return found

    @contextlib.contextmanager
    def standing_question(self, question: str, fires_on: str) -> Iterator[RuleSpec]:
        """A standing-question rule (no webhooks) for the block's duration, then deleted."""
        spec = RuleSpec.model_validate(
            {
                "name": f"bench-{uuid.uuid4().hex[:8]}",
                "condition": {"kind": "ask", "question": question, "fires_on": fires_on},
            }
        )
        with self._engine.begin() as conn:
            register(conn, spec, self.settings, None)
        try:
            yield spec
        finally:
            with self._engine.begin() as conn:
                alert_store.delete_rule(conn, spec.name)

    # --- metrics ----------------------------------------------------------------------------

    def serve_requests(self, deployment: str, timeout_s: float = 30.0) -> float:
        """Requests the deployment has handled, once Ray's exported counter has settled."""
        ray = self._stack.state().component("ray")
        if ray is None or ray.metrics is None:
            raise StackError("the bench's Ray head records no metrics endpoint")
        deadline = time.monotonic() + timeout_s
        last: float | None = None
        since = time.monotonic()
        while True:
            value = prometheus.counter_total(
                prometheus.scrape(ray.metrics),
                "ray_serve_deployment_request_counter_total",
                application=self.settings.serve_app,
                deployment=deployment,
            )
            now = time.monotonic()
            if value != last:
                last, since = value, now
            elif value is not None and now - since >= _METRIC_SETTLED_S:
                return value
            if now > deadline:
                raise StackError(
                    f"Serve's request counter of {deployment} did not settle in {timeout_s:g} s"
                )
            time.sleep(0.5)

    def worker_metrics(self) -> list[str]:
        """The ``/metrics`` URL of every worker process, the launcher's first."""
        components = self._stack.state().components
        return [
            c.metrics
            for c in components
            if (c.name == "worker" or c.name.startswith("worker-")) and c.metrics
        ]

    # --- more workers -----------------------------------------------------------------------

    def add_worker(self) -> None:
        """Start one more worker process in the workers' consumer group, as the launcher does."""
        self._workers += 1
        [port] = pick_ports(1)
        env = service_env(self.settings, self._stack.endpoints())
        self._stack.add_process(
            f"worker-{self._workers}",
            [sys.executable, "-m", "skyeye.services.worker"],
            {**env, "SKYEYE_OBSERVABILITY__PORT": str(port)},
            metrics=f"http://{self.settings.observability.host}:{port}/metrics",
        )

    def worker_partitions(self) -> list[set[str]]:
        """The work-topic partitions each worker holds now, from its consumer-lag gauge.

        A worker that does not answer yet (still starting) holds none.
        """
        held: list[set[str]] = []
        for url in self.worker_metrics():
            try:
                text = prometheus.scrape(url, timeout_s=2)
            except OSError:
                held.append(set())
                continue
            held.append(prometheus.label_values(text, "skyeye_consumer_lag", "partition"))
        return held

    def items_done(self) -> list[float]:
        """Work items each worker process has stored, by its own counter."""
        return [
            prometheus.counter_total(
                prometheus.scrape(url), "skyeye_work_items_total", outcome="done"
            )
            or 0.0
            for url in self.worker_metrics()
        ]
