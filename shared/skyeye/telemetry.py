"""OpenTelemetry: one trace per asset, carried across Kafka in W3C ``traceparent`` headers.

Each process calls :func:`setup` once. Spans go to ``HOME/logs/traces.jsonl`` (one JSON span a
line, readable without a collector); in production an OTLP exporter replaces that file by the
standard ``OTEL_*`` environment once the collector endpoint is configured.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

KafkaHeaders = list[tuple[str, bytes]]


class JsonLinesExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object a line (safe across processes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append a batch of finished spans to the file in one write."""
        lines = "".join(json.dumps(_span_record(s)) + "\n" for s in spans)
        # one append per batch: O_APPEND writes of a few KiB do not interleave between processes
        with self._lock, self._path.open("a") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: each batch opens and closes the file itself."""
        return None


def _span_record(span: ReadableSpan) -> dict[str, object]:
    ctx = span.get_span_context()
    # only a span built by hand lacks a context; every span the SDK's tracers end has one
    assert ctx is not None
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def setup(service: str, home: Path) -> None:
    """Install the tracer provider of this process (spans flushed at exit)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(JsonLinesExporter(home / "logs" / "traces.jsonl"))
    )
    trace.set_tracer_provider(provider)


def tracer(name: str) -> trace.Tracer:
    """A tracer for the module ``name``; its spans are recorded once :func:`setup` has run."""
    return trace.get_tracer(name)


def inject() -> KafkaHeaders:
    """The current span's context as Kafka message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The context a producer injected (an empty one for messages without headers)."""
    carrier = {k: v.decode(errors="replace") for k, v in headers or [] if v is not None}
    return propagate.extract(carrier)


def flush() -> None:
    """Export the spans still buffered (nothing to do before :func:`setup` has run)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()
