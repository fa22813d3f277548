"""The supervisor: starts, health-checks, records and stops the embedded stack."""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import TypeVar

import psutil

from skyeye.adapters import kafka as kafka_adapter
from skyeye.adapters.s3 import ObjectStore
from skyeye.settings import Settings
from skyeye.stack import components as c
from skyeye.stack.errors import StackError
from skyeye.stack.lock import HomeLock
from skyeye.stack.paths import StackPaths, short_dir
from skyeye.stack.ports import pick_ports
from skyeye.stack.process import ManagedProcess, describe_exit, stop_tree
from skyeye.stack.ray_env import RAY_LOOPBACK_ENV
from skyeye.stack.state import (
    ComponentState,
    Endpoints,
    StackState,
    process_create_time,
    read_state,
    remove_state,
    write_state,
)

log = logging.getLogger("skyeye.stack")

INFRA = ("s3", "kafka", "postgres", "ray")
# Teardown waves: services first, then what nothing else needs, then S3 (tansu writes to it
# until it exits).
_STOP_WAVES = (("ray", "postgres", "kafka"), ("s3",))
_POLL_S = 0.1
# A component that dies at once with one of these in its log lost a race for its port.
_PORT_TAKEN = re.compile(r"addrinuse|address already in use|errno 98", re.IGNORECASE)
_PORT_ATTEMPTS = 3
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

T = TypeVar("T")
Progress = Callable[[str], None]
DatabaseHook = Callable[[str], None]
# Called with an infrastructure component's name once it is ready again after a restart.
RestartHook = Callable[[str], None]
# Probes the component's readiness; the float is the deadline (time.monotonic()) to respect.
Probe = Callable[[ManagedProcess, float], object]


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a process that exited on its own.

    Services are restarted for as long as the stack runs; an infrastructure component that
    exits ``max_exits`` times within ``window_s`` stops the stack, as does one that is not
    ready again within the stack's start timeout.
    """

    backoff_min_s: float = 1.0
    backoff_max_s: float = 30.0
    # A process that ran at least this long before dying restarts at the minimum backoff again.
    healthy_run_s: float = 30.0
    max_exits: int = 5
    window_s: float = 600.0


class _PortTaken(Exception):
    pass


class _ExitedEarly(StackError):
    """The component exited before it was ready."""


class Stack:
    """The embedded stack of one state folder (``settings.home``).

    Components whose endpoint is set in ``settings`` are external: recorded, never started.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        start_timeout_s: float = 180.0,
        restart_policy: RestartPolicy | None = None,
        on_restarted: RestartHook | None = None,
    ) -> None:
        """``start_timeout_s`` bounds each start and restart of a component.

        ``on_restarted(name)`` runs (in a supervisor thread) each time infrastructure component
        ``name`` is ready again after a restart, e.g. to redeploy what lived in it; if it raises,
        the stack stops.
        """
        self.settings = settings
        self.paths = StackPaths.of(settings.home)
        self.start_timeout_s = start_timeout_s
        self.restart_policy = restart_policy or RestartPolicy()
        self._on_restarted = on_restarted
        self._lock = threading.RLock()
        self._home_lock = HomeLock(self.paths.lock_file)
        self._cancel = threading.Event()
        self._infra: dict[str, ManagedProcess] = {}
        self._external: dict[str, ComponentState] = {}
        self._services: dict[str, ManagedProcess] = {}
        self._probes: dict[str, Probe] = {}
        self._restart_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._exits: dict[str, deque[float]] = {}
        # Infrastructure being restarted by a thread, and services held by restart_process:
        # the watch loop leaves them alone meanwhile.
        self._recovering: set[str] = set()
        self._held: set[str] = set()
        self._failure: StackError | None = None
        self._started_at: datetime | None = None
        self._progress: Progress | None = None
        self._progress_lock = threading.Lock()
        self._started = False
        self._create_time = process_create_time(os.getpid())

    # --- public API -----------------------------------------------------------------------

    def start(
        self,
        on_database_ready: DatabaseHook | None = None,
        progress: Progress | None = None,
    ) -> Endpoints:
        """Start the embedded components and wait until each is usable.

        S3 comes first and Kafka after it (tansu keeps its log in S3); PostgreSQL and Ray start
        alongside. ``on_database_ready(database_url)`` runs once the database answers (also
        for an external database), e.g. to apply migrations. ``progress`` receives one line
        per step, possibly from worker threads. On any failure everything already started is
        stopped and StackError names the component and its log.
        """
        with self._lock:
            if self._started:
                raise StackError("this stack was already started")
            self._started = True
        self._progress = progress
        self.paths.home.mkdir(parents=True, exist_ok=True)
        self._home_lock.acquire()
        atexit.register(self.stop)
        began = time.monotonic()
        try:
            self._record_externals()
            self._prepare_home()
            self._started_at = datetime.now(UTC)
            self._write_state()
            self._start_components(on_database_ready, began + self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self._report(f"stack ready in {time.monotonic() - began:.1f} s")
        return self.endpoints()

    def endpoints(self) -> Endpoints:
        """Where clients reach S3, Kafka, PostgreSQL and Ray; StackError until all are ready."""
        endpoints = self.state().endpoints()
        if endpoints is None:
            raise StackError("the stack is not started (or not ready yet)")
        return endpoints

    def state(self) -> StackState:
        """The stack as ``stack.json`` records it: S3, Kafka, PostgreSQL, Ray, then services."""
        with self._lock:
            components = []
            for name in INFRA:
                if name in self._infra:
                    components.append(self._infra[name].state())
                elif name in self._external:
                    components.append(self._external[name])
            components += [proc.state() for proc in self._services.values()]
            return StackState(
                home=self.paths.home,
                supervisor_pid=os.getpid(),
                supervisor_create_time=self._create_time,
                started_at=self._started_at or datetime.now(UTC),
                components=components,
            )

    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        metrics: str | None = None,
    ) -> int:
        """Start a service process (planner, worker consumer, ...) under supervision.

        It logs to ``HOME/logs/<name>.log``, appears in ``stack.json`` (with ``endpoint``, for
        a service that serves one, such as the API's base URL), is restarted with backoff by
        :meth:`watch` when it dies, and is stopped before the infrastructure. Its environment
        is this process's, plus ``SKYEYE_HOME`` and the loopback-Ray switch, plus ``env``;
        ``metrics`` is where its metrics are scraped.
        Returns its pid.
        """
        if not _SERVICE_NAME.fullmatch(name) or name in INFRA:
            raise ValueError(f"invalid service name {name!r}")
        full_env = {**os.environ, "SKYEYE_HOME": str(self.paths.home)}
        if "ray" in self._infra:
            full_env.update(RAY_LOOPBACK_ENV)
        full_env.update(env or {})
        proc = ManagedProcess(
            name,
            argv,
            env=full_env,
            log_path=self.paths.log(name),
            kind="service",
            endpoint=endpoint,
            metrics=metrics,
        )
        with self._lock:
            if not self._home_lock.held or self._cancel.is_set():
                raise StackError("start the stack before adding processes")
            if name in self._services:
                raise ValueError(f"a process named {name!r} is already supervised")
            proc.start()
            self._services[name] = proc
        self._report(f"{name} started (pid {proc.pid}, log {proc.log_path})")
        self._write_state()
        assert proc.pid is not None
        return proc.pid

    def watch(self, stop_event: threading.Event | None = None, poll_s: float = 0.5) -> None:
        """Supervise until ``stop_event`` is set.

        A process that exits is logged and restarted with exponential backoff (see
        :class:`RestartPolicy`); an infrastructure component on the same ports and data
        folder, its leftover processes killed first, then probed until ready and announced to
        ``on_restarted``. StackError when an infrastructure component fails too often or
        cannot come back: the caller should then stop the stack.
        """
        stop_event = stop_event or threading.Event()
        while not stop_event.wait(poll_s) and not self._cancel.is_set():
            if self._failure is not None:
                raise self._failure
            for proc in list(self._infra.values()):
                self._tend_infra(proc)
            for proc in list(self._services.values()):
                self._tend_service(proc)

    def restart_process(self, name: str, reason: str) -> None:
        """Stop service ``name`` now and start it again, counted as a restart with ``reason``.

        For example, to reconnect it to an infrastructure component that was restarted;
        ``reason`` is recorded as its last exit.
        """
        with self._lock:
            proc = self._services.get(name)
            if proc is None:
                raise ValueError(f"no process named {name!r} is supervised")
            if self._cancel.is_set():
                return
            self._held.add(name)
            self._restart_at.pop(name, None)
        try:
            proc.stop()
            with self._lock:
                if self._cancel.is_set():
                    return
                proc.record_exit(reason)
                proc.restarts += 1
                proc.start()
        finally:
            with self._lock:
                self._held.discard(name)
        self._report(f"restarted {name} (pid {proc.pid}): {reason}")
        self._write_state()

    def run_forever(self) -> None:
        """Supervise until SIGINT, SIGTERM or SIGHUP, then stop everything.

        Signal handlers can only be installed from the main thread.
        """
        stop_event = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: stopping the stack", signal.Signals(signum).name)
            stop_event.set()

        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, on_signal) for sig in handled}
        try:
            self.watch(stop_event)
        finally:
            try:
                self.stop()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop services, then Ray, PostgreSQL and Kafka, then S3. Idempotent."""
        self._cancel.set()
        with self._lock:
            services = list(reversed(self._services.values()))
            infra = dict(self._infra)
        _stop_parallel(services)
        for wave in _STOP_WAVES:
            _stop_parallel([infra[name] for name in wave if name in infra])
        with self._lock:
            if self._home_lock.held:
                remove_state(self.paths)
                self._home_lock.release()
                self._report("stack stopped")
        atexit.unregister(self.stop)

    # --- start-up -------------------------------------------------------------------------

    def _prepare_home(self) -> None:
        self.paths.logs_dir.mkdir(parents=True, exist_ok=True)
        needs_short = (
            "postgres" not in self._external and self.paths.pg_socket_dir != self.paths.pg_dir
        ) or ("ray" not in self._external and self.paths.ray_temp_dir.parent != self.paths.home)
        if needs_short:
            folder = short_dir(self.paths.home)
            folder.mkdir(mode=0o755, exist_ok=True)
            # It sits in the shared /tmp: refuse one planted by another user.
            if folder.stat().st_uid != os.geteuid():
                raise StackError(f"{folder} belongs to another user; remove it and retry")
        stale = read_state(self.paths.home)
        if stale is not None:
            self._stop_leftovers([x for x in stale.components if x.alive])

    @staticmethod
    def _stop_leftovers(components: list[ComponentState]) -> None:
        """Stop what a killed supervisor left running: it holds the data folders."""

        def stop(component: ComponentState) -> None:
            # psutil.Process(None) would be this very process.
            if component.pid is None:
                return
            log.warning(
                "stopping %s (pid %d) left over from an earlier `skyeye up`",
                component.name,
                component.pid,
            )
            sig = signal.SIGINT if component.name == "postgres" else signal.SIGTERM
            try:
                stop_tree(psutil.Process(component.pid), sig, 30.0, component.name)
            except psutil.NoSuchProcess:
                return

        waves = [[x for x in components if x.kind == "service"]]
        waves += [[x for x in components if x.name in wave] for wave in _STOP_WAVES]
        for wave in waves:
            _in_parallel([functools.partial(stop, x) for x in wave])

    def _record_externals(self) -> None:
        for name, field in (
            ("s3", "s3_endpoint"),
            ("kafka", "kafka_bootstrap"),
            ("postgres", "database_url"),
            ("ray", "ray_address"),
        ):
            value = getattr(self.settings, field)
            if value is not None:
                self._external[name] = ComponentState(name=name, kind="external", endpoint=value)

    def _start_components(self, on_database_ready: DatabaseHook | None, deadline: float) -> None:
        steps: list[Callable[[], None]] = [
            lambda: self._start_s3_and_kafka(deadline),
            lambda: self._start_postgres(on_database_ready, deadline),
            lambda: self._start_ray(deadline),
        ]
        pool = concurrent.futures.ThreadPoolExecutor(len(steps), thread_name_prefix="skyeye-up")
        try:
            pending = {pool.submit(step) for step in steps}
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.5, return_when=concurrent.futures.FIRST_EXCEPTION
                )
                errors = [exc for f in done if (exc := f.exception()) is not None]
                if errors:
                    # The other steps notice the cancel within one poll and give up.
                    self._cancel.set()
                    concurrent.futures.wait(pending)
                    raise next((e for e in errors if not isinstance(e, c.Cancelled)), errors[0])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _start_s3_and_kafka(self, deadline: float) -> None:
        if "s3" in self._external:
            s3_endpoint = self._external["s3"].endpoint
            assert s3_endpoint is not None
            # An external S3's data bucket is provisioned by whoever runs it.
            buckets = []
        else:
            s3 = self._launch(
                "s3",
                lambda ports: c.s3_process(self.settings, self.paths, ports[0]),
                1,
                lambda proc, _deadline: c.s3_probe(self.settings, proc.address),
                deadline,
            )
            s3_endpoint = s3.address
            buckets = [self.settings.bucket]
        if "kafka" not in self._external:
            buckets.append(self.settings.kafka_storage_bucket)
        if buckets:
            self._step("s3", lambda: self._ensure_buckets(s3_endpoint, buckets))
        self._mark_ready("s3", s3_endpoint)
        if "kafka" in self._external:
            self._mark_ready("kafka", self._external["kafka"].endpoint or "")
            return
        kafka = self._launch(
            "kafka",
            lambda ports: c.kafka_process(self.settings, self.paths, ports[0], s3_endpoint),
            1,
            lambda proc, _deadline: c.kafka_probe(proc.address),
            deadline,
        )
        self._step("kafka", lambda: self._ensure_topics(kafka.address))
        self._mark_ready("kafka", kafka.address)

    def _start_postgres(self, on_database_ready: DatabaseHook | None, deadline: float) -> None:
        if "postgres" in self._external:
            url = self._external["postgres"].endpoint
            assert url is not None
        else:
            self._report("starting postgres")
            began = time.monotonic()
            user = self._step("postgres", lambda: c.prepare_postgres(self.paths))
            socket_dir = self.paths.pg_socket_dir
            self._launch(
                "postgres",
                lambda _ports: c.postgres_process(self.paths, user),
                0,
                lambda _proc, _deadline: c.postgres_probe(socket_dir),
                deadline,
                began,
            )
            url = c.postgres_url(socket_dir)
        if on_database_ready is not None:
            self._step("postgres", lambda: on_database_ready(url))
        self._mark_ready("postgres", url)

    def _start_ray(self, deadline: float) -> None:
        if "ray" in self._external:
            self._mark_ready("ray", self._external["ray"].endpoint or "")
            return
        proc = self._launch(
            "ray",
            lambda ports: c.ray_process(self.settings, self.paths, ports),
            4,
            lambda proc, until: c.ray_probe(proc, until, self._cancel),
            deadline,
        )
        self._mark_ready("ray", proc.address)

    def _launch(
        self,
        name: str,
        build: Callable[[list[int]], ManagedProcess],
        port_count: int,
        probe: Probe,
        deadline: float,
        began: float | None = None,
    ) -> ManagedProcess:
        """Spawn a component and poll ``probe`` until it passes; retry on a lost port race.

        ``began``: when preparation (e.g. initdb) started, so that its readiness time counts it.
        """
        if began is None:
            self._report(f"starting {name}")
        for _attempt in range(_PORT_ATTEMPTS):
            ports = pick_ports(port_count)
            proc = self._step(name, functools.partial(build, ports))
            with self._lock:
                if self._cancel.is_set():
                    raise c.Cancelled()
                self._step(name, proc.start)
                self._infra[name] = proc
                self._probes[name] = probe
            self._write_state()
            try:
                self._wait_ready(proc, probe, deadline, began)
                return proc
            except _PortTaken:
                log.warning("%s lost port %s to another process; retrying", name, ports)
                with self._lock:
                    del self._infra[name]
        raise StackError(
            f"{name} failed to start: its port was taken {_PORT_ATTEMPTS} times in a row; "
            f"log: {self.paths.log(name)}"
        )

    def _wait_ready(
        self,
        proc: ManagedProcess,
        probe: Probe,
        deadline: float,
        began: float | None,
        action: str = "start",
    ) -> None:
        last_error = "no answer yet"
        while True:
            if self._cancel.is_set():
                raise c.Cancelled()
            code = proc.poll()
            if code is not None:
                if _PORT_TAKEN.search(proc.log_tail()):
                    raise _PortTaken()
                raise _ExitedEarly(
                    f"{proc.name} failed to {action}: {describe_exit(code)}; log: {proc.log_path}"
                    + _tail_suffix(proc)
                )
            try:
                probe(proc, deadline)
            except c.Cancelled:
                raise
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                since = proc.started_monotonic if began is None else began
                proc.ready_after_s = round(time.monotonic() - since, 2)
                return
            if time.monotonic() >= deadline:
                proc.stop()
                raise StackError(
                    f"{proc.name} failed to {action}: not ready within "
                    f"{self.start_timeout_s:.0f} s (last probe: {last_error}); "
                    f"log: {proc.log_path}" + _tail_suffix(proc)
                )
            self._cancel.wait(_POLL_S)

    def _step(self, name: str, action: Callable[[], T]) -> T:
        """Run one start-up step of ``name`` (folders, initdb, buckets, hooks).

        Any failure fails ``name``'s start with a StackError naming it.
        """
        if self._cancel.is_set():
            raise c.Cancelled()
        try:
            return action()
        except StackError:
            raise
        except Exception as exc:
            raise StackError(
                f"{name} failed to start: {type(exc).__name__}: {exc}; log: {self.paths.log(name)}"
            ) from exc

    def _ensure_buckets(self, s3_endpoint: str, names: list[str]) -> None:
        store = ObjectStore(self.settings.model_copy(update={"s3_endpoint": s3_endpoint}))
        created = [name for name in dict.fromkeys(names) if store.ensure_bucket(name)]
        if created:
            self._report(f"created buckets {', '.join(created)}")

    def _ensure_topics(self, bootstrap: str) -> None:
        created = kafka_adapter.ensure_topics(
            self.settings.model_copy(update={"kafka_bootstrap": bootstrap}),
            [
                self.settings.topic_events,
                self.settings.topic_work,
                self.settings.topic_dead_letter,
                self.settings.topic_alerts,
            ],
        )
        if created:
            self._report(f"created topics {', '.join(created)}")

    def _mark_ready(self, name: str, endpoint: str) -> None:
        with self._lock:
            proc = self._infra.get(name)
            if proc is not None:
                proc.endpoint = endpoint
                took = f" in {proc.ready_after_s:.1f} s" if proc.ready_after_s is not None else ""
                message = f"{name} ready at {endpoint}{took}"
            else:
                message = f"{name}: using external {endpoint}"
        self._write_state()
        self._report(message)

    # --- supervision ----------------------------------------------------------------------

    def _tend_service(self, proc: ManagedProcess) -> None:
        # Under the lock: restart_process must never find a restart of its own under way.
        with self._lock:
            if proc.name in self._held or self._cancel.is_set():
                return
            if proc.name in self._restart_at:
                if time.monotonic() >= self._restart_at[proc.name]:
                    del self._restart_at[proc.name]
                    proc.restarts += 1
                    proc.start()
                    log.info(
                        "restarted %s (pid %d, restart %d)", proc.name, proc.pid, proc.restarts
                    )
                    self._write_state()
                return
            code = proc.poll()
            if code is None:
                return
            self._note_exit(proc, code)
            self._restart_at[proc.name] = time.monotonic() + self._restart_delay(proc)

    def _tend_infra(self, proc: ManagedProcess) -> None:
        if proc.name in self._recovering:
            return
        code = proc.poll()
        if code is None:
            return
        exits = self._note_exit(proc, code)
        policy = self.restart_policy
        if exits >= policy.max_exits:
            raise StackError(
                f"{proc.name} exited {exits} times within {_duration(policy.window_s)} "
                f"({proc.last_exit} the last time); stopping the stack; log: {proc.log_path}"
                + _tail_suffix(proc)
            )
        self._recovering.add(proc.name)
        threading.Thread(
            target=self._recover,
            args=(proc, self._restart_delay(proc), time.monotonic()),
            name=f"skyeye-restart-{proc.name}",
            daemon=True,
        ).start()

    def _note_exit(self, proc: ManagedProcess, code: int) -> int:
        """Record an unexpected exit of ``proc`` in the state file; returns its recent exits.

        Recent exits are those within the restart policy's window, this one included.
        """
        now = time.monotonic()
        exits = self._exits.setdefault(proc.name, deque())
        exits.append(now)
        while exits[0] <= now - self.restart_policy.window_s:
            exits.popleft()
        if now - proc.started_monotonic >= self.restart_policy.healthy_run_s:
            self._backoff.pop(proc.name, None)
        with self._lock:
            proc.record_exit(describe_exit(code))
        self._write_state()
        log.error(
            "%s (pid %s) %s; log: %s%s",
            proc.name, proc.pid, proc.last_exit, proc.log_path, _tail_suffix(proc),
        )  # fmt: skip
        return len(exits)

    def _restart_delay(self, proc: ManagedProcess) -> float:
        """The backoff before the next restart of ``proc``.

        It doubles up to the policy's maximum with each exit, back to the minimum after a healthy
        run.
        """
        policy = self.restart_policy
        delay = self._backoff.get(proc.name, policy.backoff_min_s)
        self._backoff[proc.name] = min(delay * 2, policy.backoff_max_s)
        self._report(f"{proc.name} {proc.last_exit}; restarting in {delay:g} s")
        return delay

    def _recover(self, proc: ManagedProcess, delay: float, exited_at: float) -> None:
        """Restart infrastructure component ``proc`` after ``delay`` seconds.

        It runs in a thread of its own, so that a slow start holds up nothing else; a failure is
        raised by watch().
        """
        try:
            if self._cancel.wait(delay):
                return
            proc.kill_leftovers()
            with self._lock:
                if self._cancel.is_set():
                    return
                proc.restarts += 1
                proc.start()
            self._write_state()
            deadline = time.monotonic() + self.start_timeout_s
            try:
                self._wait_ready(proc, self._probes[proc.name], deadline, None, "restart")
            except _ExitedEarly:
                # watch() counts it as one more exit.
                return
            except _PortTaken:
                where = f"port {proc.port}" if proc.port is not None else "its socket"
                raise StackError(
                    f"{proc.name} cannot restart: {where} was taken by another process meanwhile;"
                    f" log: {proc.log_path}" + _tail_suffix(proc)
                ) from None
            self._write_state()
            self._report(
                f"{proc.name} back at {proc.endpoint} after {time.monotonic() - exited_at:.1f} s "
                f"(restart {proc.restarts})"
            )
            if self._on_restarted is not None:
                try:
                    self._on_restarted(proc.name)
                except Exception as exc:
                    raise StackError(
                        f"{proc.name} was restarted, but what depends on it could not follow: {exc}"
                    ) from exc
        except c.Cancelled:
            return
        except StackError as exc:
            log.error("%s", exc)
            self._failure = self._failure or exc
        except Exception as exc:
            log.exception("restarting %s failed", proc.name)
            self._failure = self._failure or StackError(
                f"{proc.name} failed to restart: {type(exc).__name__}: {exc}; log: {proc.log_path}"
            )
        finally:
            self._recovering.discard(proc.name)

    # --- helpers --------------------------------------------------------------------------

    def _write_state(self) -> None:
        with self._lock:
            if self._home_lock.held:
                write_state(self.paths, self.state())

    def _report(self, message: str) -> None:
        log.info(message)
        if self._progress is not None:
            with self._progress_lock:
                self._progress(message)


def _stop_parallel(procs: list[ManagedProcess]) -> None:
    _in_parallel([proc.stop for proc in procs])


def _in_parallel(actions: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=action, daemon=True) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} s"


def _tail_suffix(proc: ManagedProcess) -> str:
    tail = proc.log_tail()
    return f"\n--- last lines of {proc.log_path} ---\n{tail}" if tail else ""
