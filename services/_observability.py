"""A service's health and metrics over HTTP: ``/healthz``, ``/readyz``, ``/metrics``.

- ``/healthz`` (liveness): the service's loop went round within ``liveness_s``; a loop stuck
  in a call that never returns answers 503, so an orchestrator restarts the process.
- ``/readyz`` (readiness): the database answers and nothing the loop reported is still wrong,
  e.g. a consumer whose polls or commits fail (it lost its broker or its group); 503 with the
  reasons otherwise.
- ``/metrics``: the process's metrics in the Prometheus text format
  (:mod:`skyeye.telemetry.metrics`).

The server runs on a daemon thread, only when ``settings.observability.port`` is set (the
embedded stack gives each service a free loopback port; a cluster sets 9464 on 0.0.0.0).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from skyeye.adapters import postgres
from skyeye.adapters.postgres import Engine
from skyeye.settings import Settings
from skyeye.telemetry import metrics

log = logging.getLogger("skyeye.health")

# a readiness probe's database check is reused for this long: probes must not load it
_CHECK_TTL_S = 2.0

Check = Callable[[], str | None]


class Health:
    """What the probes answer: the loop's last beat, the problems it reported, live checks."""

    def __init__(self, liveness_s: float) -> None:
        self._liveness_s = liveness_s
        self._lock = threading.Lock()
        self._beat = time.monotonic()
        self._problems: dict[str, str] = {}
        self._checks: dict[str, Check] = {}
        self._checked: dict[str, tuple[float, str | None]] = {}

    def beat(self) -> None:
        """The loop went round (call it once per iteration)."""
        with self._lock:
            self._beat = time.monotonic()

    def report(self, name: str, problem: str | None) -> None:
        """Something is wrong (``problem`` says what) or, with None, right again."""
        with self._lock:
            if problem is None:
                self._problems.pop(name, None)
            else:
                self._problems[name] = problem

    def check(self, name: str, check: Check) -> None:
        """Run ``check`` (None: fine, else what is wrong) when readiness is asked."""
        self._checks[name] = check

    def live(self) -> tuple[bool, dict[str, object]]:
        """Whether the loop beat lately, and how long ago it did."""
        with self._lock:
            age = time.monotonic() - self._beat
        return age <= self._liveness_s, {"last_beat_s": round(age, 1)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Whether every check passes and no problem is reported; the reasons when not."""
        with self._lock:
            problems = dict(self._problems)
        for name, check in self._checks.items():
            if (found := self._checked_now(name, check)) is not None:
                problems[name] = found
        return not problems, {"problems": problems}

    def _checked_now(self, name: str, check: Check) -> str | None:
        when, found = self._checked.get(name, (0.0, None))
        if time.monotonic() - when > _CHECK_TTL_S:
            try:
                found = check()
            except Exception as exc:  # a check that fails says why; it never fails the probe
                found = f"{type(exc).__name__}: {exc}"
            self._checked[name] = (time.monotonic(), found)
        return found


def database_check(engine: Engine) -> Check:
    """A readiness check: the database answers a trivial query."""

    def check() -> str | None:
        postgres.probe(engine)
        return None

    return check


def serve(health: Health, settings: Settings) -> ThreadingHTTPServer | None:
    """Answer the probes and scrapes on a daemon thread; None when no port is configured."""
    where = settings.observability
    if where.port is None:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.prometheus_text(), "text/plain; version=0.0.4")
                return
            probes = {"/healthz": health.live, "/readyz": health.ready}
            if self.path not in probes:
                self._send(404, b'{"error": "not found"}', "application/json")
                return
            ok, detail = probes[self.path]()
            body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
            self._send(200 if ok else 503, body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a probe every few seconds would fill the service's log."""

    server = ThreadingHTTPServer((where.host, where.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="observability", daemon=True).start()
    log.info("health and metrics at http://%s:%d", where.host, server.server_address[1])
    return server
