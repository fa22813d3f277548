"""Serve's running replicas per deployment over time, sampled while the bench runs.

Each sample is :func:`skyeye.adapters.serve.app_health`, which asks Serve from a child process
(the bench, a CLI process, never becomes a Ray driver), as ``skyeye status`` does. Samples are
taken back to back on a thread; one costs a child's start and its join of the cluster, so they
come every few seconds on a busy 2-core machine, and the timeline says when each was taken.
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

# a sample that takes longer is dropped: the cluster is too busy to answer, not a replica count
_SAMPLE_TIMEOUT_S = 20.0


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
        #: samples Serve did not answer, and what the last of them said
        self.unanswered = 0
        self.last_unanswered = ""
        self._thread = threading.Thread(target=self._run, name="replica-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.time()
            health = serve_adapter.app_health(self._settings, timeout_s=_SAMPLE_TIMEOUT_S)
            if health.status == "unknown":
                self.unanswered += 1
                self.last_unanswered = health.message
                continue
            # the status is read somewhere within the call: its middle is the best guess
            taken = (asked + time.time()) / 2
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
        """Stop sampling (the sample in flight is waited for); every sample taken."""
        self._stop.set()
        self._thread.join(timeout=_SAMPLE_TIMEOUT_S + 5)
        with self._lock:
            return list(self._samples)
