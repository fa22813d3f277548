"""Serve's running replicas per deployment over time, sampled while the bench runs.

Samples come from :class:`skyeye.adapters.serve.HealthStream`: one child process (the bench, a
CLI process, never becomes a Ray driver) joins the cluster once and asks Serve every
:data:`_EVERY_S` seconds, read on a thread. (A child per sample, as ``skyeye status`` asks, cost
a start and a join each: on a busy 2-core machine one sample came every 10-14 s, and a burst
could pass between two.) A stream that ends (the cluster did not answer) is started again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from skyeye.adapters import serve as serve_adapter
from skyeye.settings import Settings

__all__ = ["ReplicaWatch", "Replicas"]

# Serve's replica states of a replica on its way to serving (the others: RUNNING, and those
# going away)
_STARTING = ("STARTING", "UPDATING", "RECOVERING")

# seconds between samples: finer than Serve's own autoscaling steps (its metrics come every
# second in the bench, its delays are seconds)
_EVERY_S = 0.5


@dataclass(frozen=True)
class Replicas:
    """One deployment's replicas in a sample: serving, and on their way to serving."""

    running: int
    starting: int

    @property
    def kept(self) -> int:
        """The replicas Serve keeps for the deployment: what its autoscaler decided."""
        return self.running + self.starting


class ReplicaWatch:
    """Samples in the background: (epoch seconds when taken, replicas by deployment)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._samples: list[tuple[float, dict[str, Replicas]]] = []
        self._first = threading.Event()
        self._stop = threading.Event()
        self._stream: serve_adapter.HealthStream | None = None
        #: streams that ended without being stopped (the cluster did not answer)
        self.unanswered = 0
        self._thread = threading.Thread(target=self._run, name="replica-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                # under the lock that stop() takes to close the stream: never one left running
                if self._stop.is_set():
                    return
                stream = self._stream = serve_adapter.HealthStream(self._settings, _EVERY_S)
            try:
                for taken, health in stream:
                    self._record(taken, health)
                if not self._stop.is_set():
                    self.unanswered += 1
                    time.sleep(_EVERY_S)
            finally:
                stream.close()

    def _record(self, taken: float, health: serve_adapter.AppHealth) -> None:
        replicas = {
            d.name: Replicas(
                running=d.replicas.get("RUNNING", 0),
                starting=sum(d.replicas.get(state, 0) for state in _STARTING),
            )
            for d in health.deployments
        }
        with self._lock:
            self._samples.append((taken, replicas))
        self._first.set()

    def wait_first(self, timeout_s: float) -> bool:
        """Whether a first sample came within ``timeout_s``."""
        return self._first.wait(timeout_s)

    def latest(self) -> dict[str, Replicas]:
        """The last sample (empty before the first)."""
        with self._lock:
            return dict(self._samples[-1][1]) if self._samples else {}

    def stop(self) -> list[tuple[float, dict[str, Replicas]]]:
        """Stop sampling; every sample taken."""
        self._stop.set()
        with self._lock:
            if self._stream is not None:
                self._stream.close()  # ends the thread's wait for the next line
        self._thread.join(timeout=10)
        with self._lock:
            return list(self._samples)
