"""The state file ``HOME/stack.json``: what runs where, for ``skyeye status`` and clients."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Literal

import psutil
from pydantic import BaseModel

from skyeye.settings import Settings
from skyeye.stack.errors import StackNotRunning
from skyeye.stack.paths import StackPaths
from skyeye.stack.ray_env import use_loopback_ray

log = logging.getLogger("skyeye.stack")

# Component name -> the Settings field its endpoint fills.
ENDPOINT_FIELDS: dict[str, str] = {
    "s3": "s3_endpoint",
    "kafka": "kafka_bootstrap",
    "postgres": "database_url",
    "ray": "ray_address",
}

# Two processes with one pid but create times this far apart are different processes.
_CREATE_TIME_SLACK_S = 1.0

ComponentKind = Literal["infra", "service", "external"]


class Endpoints(BaseModel):
    """Where clients reach the four components, named as the Settings fields they fill."""

    s3_endpoint: str
    kafka_bootstrap: str
    database_url: str
    ray_address: str


class ComponentState(BaseModel):
    """One component or service as recorded: where it listens, its pid, and its restart history."""

    name: str
    kind: ComponentKind
    endpoint: str | None = None
    port: int | None = None
    # where its metrics are scraped (Prometheus text), when it serves any
    metrics: str | None = None
    # Ray's head only: the Ray Client address (ray://host:port) for drivers off the node
    client: str | None = None
    pid: int | None = None
    create_time: float | None = None
    log: Path | None = None
    started_at: datetime | None = None
    ready_after_s: float | None = None
    restarts: int = 0
    # Why the last run of the process ended ("exited with code 1", "killed by SIGKILL") and
    # when; None while it has never ended unexpectedly.
    last_exit: str | None = None
    last_exit_at: datetime | None = None
    # Computed by read_state from the live process table; the stored value is never trusted.
    alive: bool = False


class StackState(BaseModel):
    """The whole of ``stack.json``: the supervisor that owns the stack and every component."""

    version: int = 1
    home: Path
    supervisor_pid: int
    supervisor_create_time: float
    started_at: datetime
    components: list[ComponentState] = []
    # Computed by read_state, like ComponentState.alive.
    supervisor_alive: bool = False

    def component(self, name: str) -> ComponentState | None:
        """The recorded component of that name ("s3", "kafka", a service...), if there is one."""
        return next((c for c in self.components if c.name == name), None)

    def endpoints(self) -> Endpoints | None:
        """All four endpoints, or None while some component is not ready yet."""
        values = {}
        for name, field in ENDPOINT_FIELDS.items():
            component = self.component(name)
            if component is None or component.endpoint is None:
                return None
            values[field] = component.endpoint
        return Endpoints(**values)


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """True if ``pid`` runs and is the process recorded (not a later one reusing the pid)."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > _CREATE_TIME_SLACK_S:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_create_time(pid: int) -> float:
    """When the process started, recorded beside its pid so a reused pid is not taken for it."""
    return psutil.Process(pid).create_time()


def write_state(paths: StackPaths, state: StackState) -> None:
    """Replace the state file atomically, so readers never see half a file."""
    payload = state.model_dump_json(
        indent=2, exclude={"supervisor_alive": True, "components": {"__all__": {"alive"}}}
    )
    tmp = paths.state_file.with_name(f".{paths.state_file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, paths.state_file)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def remove_state(paths: StackPaths) -> None:
    """Delete the state file, so no client finds a stopped stack; already gone is fine."""
    paths.state_file.unlink(missing_ok=True)


def read_state(home: Path) -> StackState | None:
    """The recorded stack of ``home`` with live ``alive`` flags, or None if none is recorded."""
    paths = StackPaths.of(home)
    try:
        raw = paths.state_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        state = StackState.model_validate(json.loads(raw))
    except ValueError as exc:  # also pydantic's ValidationError
        log.warning("ignoring unreadable state file %s: %s", paths.state_file, exc)
        return None
    state.supervisor_alive = process_alive(state.supervisor_pid, state.supervisor_create_time)
    for component in state.components:
        component.alive = process_alive(component.pid, component.create_time)
    return state


def resolve(settings: Settings) -> Settings:
    """A copy of ``settings`` whose unset endpoints come from the running embedded stack.

    Raises StackNotRunning if an endpoint is unset and ``settings.home`` records no live
    supervisor. When the Ray address comes from the embedded head, this process is switched to
    loopback Ray (see :mod:`skyeye.stack.ray_env`), so call it before ``ray.init``.
    """
    unset = [name for name, field in ENDPOINT_FIELDS.items() if getattr(settings, field) is None]
    if not unset:
        return settings.model_copy()
    home = StackPaths.of(settings.home).home
    state = read_state(home)
    if state is None or not state.supervisor_alive:
        raise StackNotRunning(f"no running stack in {home}; start it with `skyeye up`")
    update: dict[str, str] = {}
    for name in unset:
        component = state.component(name)
        if component is None or component.endpoint is None:
            raise StackNotRunning(
                f"the stack in {home} (pid {state.supervisor_pid}) has no {name} endpoint yet; "
                "wait until `skyeye up` reports it ready"
            )
        update[ENDPOINT_FIELDS[name]] = component.endpoint
    ray = state.component("ray")
    if "ray" in unset and ray is not None and ray.kind == "infra":
        use_loopback_ray()
    return settings.model_copy(update=update)
