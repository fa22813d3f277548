"""Structured logs: one JSON object a line, with the trace and span of the current span.

So a log line of a service can be found from a trace (and a trace from a line) by its
``trace_id``, whatever collects the lines (the embedded stack's log files, a cluster's log
agent reading stdout).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from opentelemetry import trace

__all__ = ["JsonFormatter", "configure"]


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, service, trace_id, span_id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (an exception's traceback in ``exc_info``)."""
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self._service,
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = f"{context.trace_id:032x}"
            line["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(service: str, level: int = logging.INFO) -> None:
    """Send this process's log records to stderr as JSON lines (replacing other handlers)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
