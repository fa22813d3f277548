"""Ray Serve: joining the cluster, deploying an application, calling it, asking for its health.

Callers name Serve's handle types by this module's names (:data:`AppHandle`,
:data:`Response`) and never import Ray themselves; only the Serve application
(``skyeye.services.inference``), which Serve itself runs, uses Ray directly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

import ray
import ray.exceptions
import ray.serve.exceptions
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from ray.serve.schema import ServeStatus

from skyeye.settings import Settings

log = logging.getLogger(__name__)

#: The deployed application's ingress, as :func:`handle` gives it: ``app.<method>.remote(...)``
#: calls one of its methods.
AppHandle: TypeAlias = DeploymentHandle
#: A call in flight: ``.result(timeout_s=...)`` waits for its answer.
Response: TypeAlias = DeploymentResponse


# Failures of the cluster, not of the request: a replica died, is restarting or is overloaded.
_UNAVAILABLE = (
    ray.exceptions.RayActorError,
    ray.exceptions.GetTimeoutError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.RaySystemError,
    ray.serve.exceptions.BackPressureError,
    ray.serve.exceptions.DeploymentUnavailableError,
)


def transient_reason(exc: BaseException) -> str | None:
    """Why the model service is unavailable when ``exc`` says so (worth a retry), else None.

    An exception raised by the model's own code (``RayTaskError``) is not transient: the same
    input would fail the same way.
    """
    if isinstance(exc, ray.exceptions.RayTaskError):
        return None
    if isinstance(exc, _UNAVAILABLE):
        return f"the model service (Ray Serve) is unavailable ({type(exc).__name__})"
    if isinstance(exc, TimeoutError):
        return "the model service (Ray Serve) did not answer in time"
    return None


def connect(settings: Settings) -> None:
    """Join the cluster as a driver (idempotent within a process)."""
    if settings.ray_address is None:
        raise ValueError("ray_address is unset; resolve the settings against a running stack")
    if not ray.is_initialized():
        # the API's request threads join off the main thread
        worker_log = logging.getLogger("ray._private.worker")
        if not any(isinstance(f, _NoSigtermNotice) for f in worker_log.filters):
            worker_log.addFilter(_NoSigtermNotice())
        _join(settings.ray_address)


def _join(address: str) -> None:
    """Join the cluster as a driver, on this node or through Ray Client.

    ``host:port`` of the GCS on a Ray node (the embedded stack's loopback head); from a pod that
    is no Ray node, Ray Client's ``ray://host:10001``.
    """
    if address.startswith("ray://"):
        # Ray Client takes no node address: the driver runs on the head, not here
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return
    ray.init(
        address=address,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def disconnect() -> None:
    """Leave the cluster, if this process joined it (idempotent)."""
    if ray.is_initialized():
        ray.shutdown()


def deploy(app: serve.Application, settings: Settings) -> None:
    """Deploy (or update in place) the application and wait until it is running."""
    connect(settings)
    # Only deployment handles call the app: no HTTP proxy, nothing listening beyond loopback.
    serve.start(proxy_location="Disabled")
    serve.run(app, name=settings.serve_app, route_prefix=None, blocking=False)
    log.info("serve application %r is running", settings.serve_app)


def handle(settings: Settings) -> AppHandle:
    """The handle of the application named ``settings.serve_app``, joining the cluster first."""
    connect(settings)
    # a handle's router announces itself at INFO on first use: noise in a CLI's output
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return serve.get_app_handle(settings.serve_app)


@dataclass(frozen=True)
class DeploymentHealth:
    """One deployment of the application as Serve sees it, with its replicas by state."""

    name: str
    status: str
    replicas: dict[str, int]  # replica state (RUNNING, STARTING, ...) -> count
    message: str


@dataclass(frozen=True)
class AppHealth:
    """Serve's view of the application: its status and a message that says why.

    The status is Serve's (RUNNING, DEPLOYING, UNHEALTHY, ...), NOT_DEPLOYED when Serve has no
    such application, ``unknown`` when Serve could not be asked; the message is empty when
    there is nothing to say.
    """

    status: str
    message: str
    deployments: list[DeploymentHealth] = field(default_factory=list)


def app_health(settings: Settings, timeout_s: float = 15.0) -> AppHealth:
    """The application's and each deployment's status and replica counts.

    The status is ``unknown``, with the reason, when the cluster does not answer within
    ``timeout_s``.

    A child process asks: it joins the cluster as a driver, prints the answer and exits. This
    process never becomes a driver (one that stays makes a later ``ray.init`` here fail, and
    leaving the cluster from another thread has left gRPC state behind that broke a later
    fork), and a join that hangs on a half-down cluster is killed at the timeout.
    """
    if settings.ray_address is None:
        return AppHealth("unknown", "ray_address is unset; resolve the settings first")
    command = [sys.executable, "-m", __name__, settings.ray_address, settings.serve_app]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return AppHealth("unknown", f"Ray did not answer within {timeout_s:g} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        # the child's last line of complaint is Ray's exception, "Type: message"
        said = done.stderr.strip().splitlines() or [f"the asker exited with {done.returncode}"]
        log.info("serve status failed: %s", done.stderr.strip())
        return AppHealth("unknown", " ".join(said[-1].split())[:200])
    return _parsed(json.loads(lines[-1]))


class HealthStream:
    """Serve's view of the application every ``every_s`` seconds, for as long as it is read.

    One child process joins the cluster once and asks Serve at each interval, so a sample costs
    one call to Serve's controller, not a join (which takes seconds on a busy machine); this
    process never becomes a driver, as with :func:`app_health`. Iterating gives (epoch seconds
    when asked, health) until the child ends (it could not join, or the cluster went away) or
    :meth:`close` is called, from any thread.
    """

    def __init__(self, settings: Settings, every_s: float) -> None:
        if settings.ray_address is None:
            raise ValueError("ray_address is unset; resolve the settings first")
        command = [sys.executable, "-m", __name__, settings.ray_address, settings.serve_app]
        # Ray's notices on joining and leaving are noise to the reader of the samples
        self._child = subprocess.Popen(
            [*command, str(every_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def __iter__(self) -> Iterator[tuple[float, AppHealth]]:
        if self._child.stdout is None:
            raise RuntimeError("the health child has no output")
        with self._child.stdout as lines:
            for line in lines:
                answer = json.loads(line)
                yield answer.pop("at"), _parsed(answer)
        log.info("serve status stream ended (exit status %s)", self._child.wait())

    def close(self) -> None:
        """Stop the child (idempotent): its output ends, and so does the iteration."""
        self._child.kill()
        self._child.wait()


def _parsed(answer: dict[str, Any]) -> AppHealth:
    deployments = [DeploymentHealth(**d) for d in answer.pop("deployments")]
    return AppHealth(**answer, deployments=deployments)


def _report_health(address: str, app: str, every_s: float | None = None) -> None:
    """The child of :func:`app_health` and :class:`HealthStream`: join, print, leave.

    It prints the health as one JSON line, or with ``every_s`` one line every ``every_s``
    seconds, with the time it was asked, until the parent goes away.
    """
    parent = os.getppid()
    _join(address)
    try:
        while True:
            asked = time.time()
            health = asdict(_health(serve.status(), app))
            print(json.dumps(health if every_s is None else {"at": asked, **health}), flush=True)
            if every_s is None or os.getppid() != parent:
                return
            time.sleep(every_s)
    finally:
        ray.shutdown()


class _NoSigtermNotice(logging.Filter):
    """Drops Ray's warning that a driver started off the main thread sets no SIGTERM handler.

    Such a thread needs none (the process's own handler stays), and the warning would land in
    the user's terminal or the API's log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def _health(status: ServeStatus, app: str) -> AppHealth:
    overview = status.applications.get(app)
    if overview is None:
        return AppHealth("NOT_DEPLOYED", f"Serve runs no application named {app!r}")
    return AppHealth(
        status=_name(overview.status),
        message=overview.message,
        deployments=[
            DeploymentHealth(
                name=name,
                status=_name(d.status),
                replicas={_name(state): n for state, n in d.replica_states.items()},
                message=d.message,
            )
            for name, d in overview.deployments.items()
        ],
    )


def _name(status: object) -> str:
    # Serve gives enum members in some fields and their plain string values in others
    return str(getattr(status, "value", status))


@dataclass(frozen=True)
class Answers:
    """What the inference application answers about one image (or a clip's frames).

    ``texts``: one raw answer per instruction, in order. ``vectors``: each answer's sentence
    embedding (unit length, 384 values, for semantic search), None for an answer with no text;
    the whole list is None when the application computed none.
    """

    texts: list[str]
    vectors: list[list[float] | None] | None = None


if __name__ == "__main__":
    _report_health(sys.argv[1], sys.argv[2], float(sys.argv[3]) if sys.argv[3:] else None)
