"""Traces: one per asset, carried across Kafka in W3C ``traceparent`` headers.

Spans go to ``HOME/logs/traces.jsonl`` (one JSON span a line, readable without a collector), or
to an OTLP collector when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set; the exporter then reads the other ``OTEL_*``
variables (headers, timeout, compression) itself.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
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


def provider(service: str, home: Path) -> TracerProvider:
    """The tracer provider of a process: spans to the collector when one is set, else the file."""
    made = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter: SpanExporter
    if otlp_endpoint("TRACES"):
        exporter = OTLPSpanExporter()
    else:
        exporter = JsonLinesExporter(home / "logs" / "traces.jsonl")
    made.add_span_processor(BatchSpanProcessor(exporter))
    return made


def otlp_endpoint(signal: str) -> str | None:
    """The collector endpoint the standard variables give for ``signal`` (TRACES, METRICS)."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def tracer(name: str) -> trace.Tracer:
    """A tracer for the module ``name``; its spans are recorded once :func:`setup` has run."""
    return trace.get_tracer(name)


def inject() -> KafkaHeaders:
    """The current span's context as Kafka message headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def carrier() -> dict[str, str]:
    """The current span's context as a small mapping (``traceparent``) to pass along a call."""
    found: dict[str, str] = {}
    propagate.inject(found)
    return found


def spans_for(
    name: str, carriers: Sequence[Mapping[str, str] | None], attributes: Mapping[str, Any]
) -> list[trace.Span]:
    """One span named ``name`` per request of a batch, each in the trace its carrier names.

    A batch serves several assets at once: each request's trace gets its own span over the
    whole batch. Requests without a carrier get none. End them with :func:`end_all`.
    """
    tracer_ = trace.get_tracer(__name__)
    return [
        tracer_.start_span(name, context=propagate.extract(dict(c)), attributes=dict(attributes))
        for c in carriers
        if c
    ]


def end_all(spans: Sequence[trace.Span]) -> None:
    """End the spans of :func:`spans_for`."""
    for span in spans:
        span.end()


def extract(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The context a producer injected (an empty one for messages without headers)."""
    carrier = {k: v.decode(errors="replace") for k, v in headers or [] if v is not None}
    return propagate.extract(carrier)
