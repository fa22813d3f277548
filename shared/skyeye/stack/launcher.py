"""Bring the whole pipeline up on the embedded stack: servers, schema, Serve app, consumers.

Used by ``skyeye up``, ``skyeye demo`` and the integration tests, so all three run the same
processes the same way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable

from skyeye.adapters import postgres
from skyeye.settings import Settings
from skyeye.stack import RAY_LOOPBACK_ENV, Endpoints, Stack, StackError
from skyeye.stack.ports import accepts_connections, pick_ports

log = logging.getLogger("skyeye.pipeline")

# relay: the outbox to Kafka; webhooks: alerts to their rules' webhook endpoints
SERVICES = ("planner", "worker", "reconciler", "relay", "webhooks")
# The services that hold a Ray connection (a Serve handle).
RAY_CLIENTS = ("worker", "api")
# Seconds the API process may take to import and bind its port.
_API_START_S = 60.0


def service_env(settings: Settings, endpoints: Endpoints) -> dict[str, str]:
    """Environment for a child service: the parent's, plus these settings, endpoints pinned.

    With every endpoint pinned, the child sees exactly what the launcher was configured with.
    """
    pinned = settings.model_copy(update=endpoints.model_dump())
    # only a head this stack started is loopback-only; a remote cluster needs real addresses
    loopback = RAY_LOOPBACK_ENV if settings.ray_address is None else {}
    return {**os.environ, **pinned.as_env(), **loopback}


def _migrate(url: str) -> None:
    engine = postgres.create_engine(url)
    try:
        postgres.migrate(engine)
    finally:
        engine.dispose()


def _deploy(settings: Settings, env: dict[str, str]) -> None:
    """Deploy the Serve application on the stack's Ray; StackError names the log on failure."""
    _deployed(settings, _start_deploy(settings, env))


def _start_deploy(settings: Settings, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start deploying the Serve application, in a child process with its own log."""
    log_path = settings.home / "logs" / "deploy.log"
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "skyeye.services.inference"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _deployed(settings: Settings, deploying: subprocess.Popen[bytes]) -> None:
    """Wait for a deploy :func:`_start_deploy` started; StackError names the log on failure.

    A deploy still running at the timeout, or when waiting is interrupted, is killed.
    """
    log_path = settings.home / "logs" / "deploy.log"
    try:
        code = deploying.wait(timeout=settings.inference_timeout_s)
    except subprocess.TimeoutExpired:
        raise StackError(
            f"Serve application not deployed within {settings.inference_timeout_s:g} s; "
            f"log: {log_path}"
        ) from None
    finally:
        if deploying.poll() is None:
            deploying.kill()
            deploying.wait()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise StackError(f"Serve application failed to deploy; log: {log_path}\n" + "\n".join(tail))


def _follow_restart(stack: Stack, settings: Settings, name: str) -> None:
    """The stack's ``on_restarted`` hook: after Ray, redeploy the Serve app and restart its clients.

    A restarted Ray head starts empty and the drivers of the old one cannot reconnect: deploy
    the Serve application again, then restart its clients. The other components keep their
    data; their clients reconnect on their own.
    """
    if name != "ray":
        return
    log.warning("Ray restarted: deploying the Serve application again")
    _deploy(settings, service_env(settings, stack.endpoints()))
    for service in RAY_CLIENTS:
        stack.restart_process(service, "stopped to reconnect to the restarted Ray head")


def _start_service(
    stack: Stack,
    settings: Settings,
    env: dict[str, str],
    name: str,
    port: int,
    progress: Callable[[str], None],
) -> None:
    """One consumer service, its health probes and metrics on ``port``."""
    progress(f"starting {name}")
    stack.add_process(
        name,
        [sys.executable, "-m", f"skyeye.services.{name}"],
        {**env, "SKYEYE_OBSERVABILITY__PORT": str(port)},
        metrics=f"http://{settings.observability.host}:{port}/metrics",
    )


def _start_api(
    stack: Stack, settings: Settings, env: dict[str, str], progress: Callable[[str], None]
) -> None:
    """The results API on its configured port, or on a free loopback port kept across restarts.

    Its base URL is the component's endpoint in ``stack.json``, so ``skyeye status`` and
    clients find it.
    """
    port = settings.api.port or pick_ports(1)[0]
    endpoint = f"http://{settings.api.host}:{port}"
    progress(f"starting api on {endpoint}")
    stack.add_process(
        "api",
        [sys.executable, "-m", "skyeye.services.api"],
        {**env, "SKYEYE_API__PORT": str(port)},
        endpoint=endpoint,
        metrics=f"{endpoint}/metrics",
    )
    # clients are told the endpoint once it answers, not while the process is still importing
    deadline = time.monotonic() + _API_START_S
    while not accepts_connections(settings.api.host, port):
        if time.monotonic() > deadline:
            log_path = settings.home / "logs" / "api.log"
            raise StackError(f"the API did not listen within {_API_START_S:g} s; log: {log_path}")
        time.sleep(0.2)
    progress(f"api ready at {endpoint}")


def launch(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> Stack:
    """Start everything and return the running stack; on any failure, nothing is left running."""
    stack = Stack(settings, on_restarted=lambda name: _follow_restart(stack, settings, name))
    stack.start(on_database_ready=_migrate, progress=progress)
    try:
        env = service_env(settings, stack.endpoints())
        progress("deploying the Serve application (VisionEncoder, LlmDecoder, TextEmbedder)")
        deploying = _start_deploy(settings, env)
        try:
            # each service's health probes and metrics on a free loopback port, kept across
            # restarts
            ports = dict(zip(SERVICES, pick_ports(len(SERVICES)), strict=True))
            # what needs no Serve handle at start starts while the application deploys (the
            # API joins the cluster at its first question)
            for name in SERVICES:
                if name not in RAY_CLIENTS:
                    _start_service(stack, settings, env, name, ports[name], progress)
            _start_api(stack, settings, env, progress)
        except BaseException:
            deploying.kill()
            deploying.wait()
            raise
        _deployed(settings, deploying)
        for name in SERVICES:
            if name in RAY_CLIENTS:
                _start_service(stack, settings, env, name, ports[name], progress)
    except BaseException:
        stack.stop()
        raise
    return stack
