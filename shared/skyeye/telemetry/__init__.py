"""OpenTelemetry for every process: one trace per asset, pipeline metrics, JSON logs.

- :mod:`.traces`: one trace per asset, carried across Kafka in W3C ``traceparent`` headers;
  spans to ``HOME/logs/traces.jsonl``, or to an OTLP collector by the standard ``OTEL_*``
  variables.
- :mod:`.metrics`: the pipeline's instruments, read by Prometheus at each service's
  ``/metrics`` and pushed over OTLP too when a collector is set.
- :mod:`.logs`: one JSON object a line, with the current trace and span ids.

Each process calls :func:`setup` once; the instruments and tracers work (recording nothing)
before it.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from . import logs, metrics, traces
from .traces import (
    JsonLinesExporter,
    KafkaHeaders,
    carrier,
    end_all,
    extract,
    inject,
    spans_for,
    tracer,
)

__all__ = [
    "JsonLinesExporter",
    "KafkaHeaders",
    "carrier",
    "end_all",
    "extract",
    "flush",
    "inject",
    "logs",
    "metrics",
    "setup",
    "spans_for",
    "tracer",
    "traces",
]


def setup(service: str, home: Path) -> None:
    """Install this process's tracer and meter providers (flushed at exit)."""
    trace.set_tracer_provider(traces.provider(service, home))
    otel_metrics.set_meter_provider(metrics.provider(service))


def flush() -> None:
    """Export the spans and metrics still buffered (nothing to do before :func:`setup`)."""
    tracers = trace.get_tracer_provider()
    if isinstance(tracers, TracerProvider):
        tracers.force_flush()
    meters = otel_metrics.get_meter_provider()
    if isinstance(meters, MeterProvider):
        meters.force_flush()
