"""Health probes, the metrics endpoint and JSON logs of a service process.

The consumer loop runs here with the stubbed Kafka consumer and handler of
tests/unit/test_consumer_loop.py; the probes of the real services on the real stack are tested
in tests/integration/test_observability.py.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import httpx
from kafka.errors import CommitFailedError
from opentelemetry.sdk.trace import TracerProvider

from skyeye.services._observability import Health, serve
from skyeye.services._runtime import ConsumerLoop
from skyeye.settings import ObservabilitySettings, RetrySettings, Settings
from skyeye.telemetry import logs, metrics

from .test_consumer_loop import REASONS, _Consumer, _Handler, _record


def test_readiness_fails_while_a_problem_is_reported_or_a_check_fails() -> None:
    health = Health(liveness_s=60)
    assert health.ready() == (True, {"problems": {}})
    health.report("kafka", "polling fails: broker unavailable")
    assert health.ready() == (False, {"problems": {"kafka": "polling fails: broker unavailable"}})
    health.report("kafka", None)
    assert health.ready()[0]

    def database() -> str | None:
        raise ConnectionError("connection refused")

    health.check("database", database)
    ok, detail = health.ready()
    assert not ok and detail["problems"] == {"database": "ConnectionError: connection refused"}


def test_liveness_fails_when_the_loop_stops_beating() -> None:
    health = Health(liveness_s=0.05)
    health.beat()
    assert health.live()[0]
    time.sleep(0.1)
    ok, detail = health.live()
    assert not ok and detail["last_beat_s"] >= 0.1
    health.beat()
    assert health.live()[0]


def test_a_consumer_whose_commits_fail_is_not_ready_until_one_succeeds() -> None:
    """The group rebalanced away from it: commits fail (CommitFailedError), polls still work."""
    health = Health(liveness_s=60)
    stop = threading.Event()
    consumer = _Consumer([[_record(0)]], stop)
    consumer.commit_error = CommitFailedError()
    settings = Settings(retry=RetrySettings(initial_backoff_s=0.001, max_backoff_s=0.001))
    loop = ConsumerLoop(
        _Handler(),
        settings,
        consumer,
        None,
        None,
        REASONS,
        stop,
        health,  # type: ignore[arg-type]
    )
    loop.run()
    ok, detail = health.ready()
    assert not ok and "not in its group" in str(detail["problems"]["consumer group"])
    stop.clear()
    consumer._polls = [[_record(1)]]
    consumer.commit_error = None
    loop.run()
    assert health.ready() == (True, {"problems": {}})


def test_the_server_answers_probes_and_scrapes() -> None:
    health = Health(liveness_s=60)
    settings = Settings(observability=ObservabilitySettings(port=0))
    server = serve(health, settings)
    assert server is not None
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        metrics.ERRORS.add(1, {"stage": "test", "kind": "probe"})
        assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
        health.report("database", "connection refused")
        unready = httpx.get(f"{base}/readyz")
        assert unready.status_code == 503
        assert unready.json() == {
            "status": "unhealthy",
            "problems": {"database": "connection refused"},
        }
        scraped = httpx.get(f"{base}/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith(
            "text/plain"
        )
        assert httpx.get(f"{base}/nothing").status_code == 404
    finally:
        server.shutdown()


def test_no_port_no_server() -> None:
    assert serve(Health(liveness_s=60), Settings()) is None


def test_a_log_line_is_json_with_the_trace_of_the_current_span() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter("skyeye-test"))
    logger = logging.getLogger("skyeye.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside any span")
        # a provider of its own: the span is recorded and has a trace id
        with TracerProvider().get_tracer(__name__).start_as_current_span("work_item") as span:
            logger.warning("inside %s", "a span")
            expected = f"{span.get_span_context().trace_id:032x}"
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert outside["message"] == "outside any span" and "trace_id" not in outside
    assert inside["message"] == "inside a span" and inside["service"] == "skyeye-test"
    assert inside["level"] == "WARNING" and inside["logger"] == "skyeye.test.logs"
    assert inside["trace_id"] == expected
