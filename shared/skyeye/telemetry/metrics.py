"""The pipeline's metrics: OpenTelemetry instruments, read by Prometheus and pushed over OTLP.

Each service reads them at ``/metrics`` (:func:`prometheus_text`, Prometheus text format; names
as the OpenTelemetry Prometheus exporter writes them, e.g. ``skyeye_stage_duration_seconds``),
and an OTLP collector receives them too when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set. The Serve
stages' own figures (encoder and decoder latency per deployment, ``serve_actual_batch_size``)
are Ray Serve's built-in metrics, exported by each Ray node on its metrics port.

The instruments exist before :func:`provider` is installed (the API's proxy meter binds them
then), so modules define them at import.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from .traces import otlp_endpoint

__all__ = [
    "ASSETS",
    "ERRORS",
    "STAGE_SECONDS",
    "WORK_ITEMS",
    "ConsumerLag",
    "prometheus_text",
    "provider",
]

_meter = metrics.get_meter("skyeye")
# seconds, from a fast database write to a slow model call on a CPU
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: assets by stage (planner, finisher) and outcome (planned, done, error): assets per second
ASSETS = _meter.create_counter(
    "skyeye.assets", unit="{asset}", description="assets planned or finished, by outcome"
)
#: work items (tiles, frames, overviews, clips) stored or failed: tiles per second
WORK_ITEMS = _meter.create_counter(
    "skyeye.work_items", unit="{item}", description="work items handled, by kind and outcome"
)
#: plan (an object to published work items), read (a tile's pixels), infer (the Serve round
#: trip: encoder and decoder), store (results into PostgreSQL)
STAGE_SECONDS = _meter.create_histogram(
    "skyeye.stage.duration",
    unit="s",
    description="time spent per asset (plan) or work item (read, infer, store)",
    explicit_bucket_boundaries_advisory=_SECONDS,
)
#: error rows written, by stage and kind (the reason a user reads in `skyeye errors`)
ERRORS = _meter.create_counter(
    "skyeye.errors", unit="{error}", description="errors recorded, by stage and kind"
)

# the registry /metrics reads; its own, so nothing else in the process (Ray) adds to it
_REGISTRY = CollectorRegistry()


def provider(service: str) -> MeterProvider:
    """The meter provider of a process: Prometheus always, OTLP too when an endpoint is set."""
    readers: list[MetricReader] = [PrometheusMetricReader(registry=_REGISTRY)]
    if otlp_endpoint("METRICS"):
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return MeterProvider(
        metric_readers=readers, resource=Resource.create({"service.name": service})
    )


def prometheus_text() -> bytes:
    """Every metric of this process in the Prometheus text format."""
    return generate_latest(_REGISTRY)


class ConsumerLag:
    """``skyeye.consumer.lag``: messages not yet consumed, per topic and partition.

    The consumer loop measures it (its Kafka client is not shared across threads) and
    :meth:`set` keeps the last figures; a scrape reads them.
    """

    def __init__(self, group: str) -> None:
        self._group = group
        self._lock = threading.Lock()
        self._lag: dict[tuple[str, int], int] = {}
        _meter.create_observable_gauge(
            "skyeye.consumer.lag",
            callbacks=[self._observe],
            unit="{message}",
            description="messages of the topic not yet consumed by the group, per partition",
        )

    def set(self, lag: dict[tuple[str, int], int]) -> None:
        """The lag of each (topic, partition) the consumer holds now; others are dropped."""
        with self._lock:
            self._lag = dict(lag)

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            lag = dict(self._lag)
        for (topic, partition), value in lag.items():
            yield Observation(
                value, {"topic": topic, "partition": str(partition), "group": self._group}
            )
