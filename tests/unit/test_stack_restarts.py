"""Infrastructure restarts without real servers: stand-in processes for PostgreSQL and Ray.

The stand-ins replace components.postgres_process / ray_process and their probes (stubbed to
pass, or to fail where a test says so); everything else is the real supervisor.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from skyeye.settings import Settings
from skyeye.stack import RestartPolicy, Stack, StackError, read_state
from skyeye.stack import components as c
from skyeye.stack.paths import StackPaths
from skyeye.stack.ports import pick_ports
from skyeye.stack.process import ManagedProcess, describe_exit
from skyeye.stack.state import ComponentState

EXTERNAL = {
    "s3_endpoint": "minio.example:9000",
    "kafka_bootstrap": "kafka.example:9092",
    "database_url": "postgresql+psycopg2://app@db.example/app",
    "ray_address": "ray.example:6379",
}
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
FAST = RestartPolicy(backoff_min_s=0.01, backoff_max_s=0.04, healthy_run_s=600.0)
# Long enough for any test here to fail by its own bounded wait instead of hanging.
GUARD_S = 60.0


def _settings(home: Path, **overrides: str | None) -> Settings:
    return Settings(home=home, **{**EXTERNAL, **overrides})


def _fake_postgres(
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    probe: Callable[[Path], None] = lambda _socket_dir: None,
    port: int | None = None,
) -> None:
    """Run ``code`` as the embedded PostgreSQL server (in its data folder, like the real one),
    probed by ``probe``."""

    def build(paths: StackPaths, user: str | None) -> ManagedProcess:
        paths.pg_dir.mkdir(parents=True, exist_ok=True)
        return ManagedProcess(
            "postgres",
            [sys.executable, "-c", code],
            log_path=paths.log("postgres"),
            kind="infra",
            grace_s=2.0,
            port=port,
            cwd=paths.pg_dir,
        )

    monkeypatch.setattr(c, "prepare_postgres", lambda paths: None)
    monkeypatch.setattr(c, "postgres_process", build)
    monkeypatch.setattr(c, "postgres_probe", probe)


def _ready_once() -> Callable[[Path], None]:
    """A probe that passes at start-up and never again, like a server that cannot come back."""
    calls = []

    def probe(_socket_dir: Path) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionRefusedError("nothing listens")

    return probe


def _first_run_sleeps(flag: Path, later: str) -> str:
    """Code whose first run sleeps and whose later runs (restarts) run ``later``."""
    return (
        "import pathlib, sys, time\n"
        f"flag = pathlib.Path({str(flag)!r})\n"
        "if not flag.exists():\n"
        "    flag.touch()\n"
        "    time.sleep(600)\n"
        f"{later}\n"
    )


def _component(home: Path, name: str) -> ComponentState | None:
    state = read_state(home)
    return state.component(name) if state is not None else None


def _pid(stack: Stack, name: str) -> int:
    entry = stack.state().component(name)
    assert entry is not None and entry.pid is not None
    return entry.pid


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextlib.contextmanager
def _watching(stack: Stack) -> Iterator[list[BaseException]]:
    """Run ``stack.watch`` in a thread; yields the list its error lands in."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stack.watch(stop, 0.02)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=run)
    watcher.start()
    try:
        yield errors
    finally:
        stop.set()
        watcher.join(GUARD_S)


def _watch_until_it_fails(stack: Stack) -> StackError:
    """Run ``stack.watch`` here until it raises; fails the test if it has not within GUARD_S."""
    stop = threading.Event()
    guard = threading.Timer(GUARD_S, stop.set)
    guard.start()
    try:
        with pytest.raises(StackError) as failure:
            stack.watch(stop, 0.02)
    finally:
        guard.cancel()
    return failure.value


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("code", "reason"),
    [(0, "exited with code 0"), (3, "exited with code 3"), (-9, "killed by SIGKILL")],
)
def test_exit_reasons_read_as_words(code: int, reason: str) -> None:
    assert describe_exit(code) == reason


@pytest.mark.parametrize("helper_env", ["inherited", "emptied"])
def test_killed_component_comes_back_the_same_without_its_old_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper_env: str
) -> None:
    # The stand-in starts a helper, as a postmaster forks backends that outlive it; an emptied
    # environment is what a PostgreSQL backend's process title leaves of its own.
    helper = "import time; time.sleep(600)"
    env = "None" if helper_env == "inherited" else "{}"
    _fake_postgres(
        monkeypatch,
        f"import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {helper!r}], env={env}); time.sleep(600)",
    )
    messages: list[str] = []
    stack = Stack(_settings(tmp_path, database_url=None), restart_policy=FAST)
    stack.start(progress=messages.append)
    try:
        before = _component(tmp_path, "postgres")
        assert before is not None and before.pid is not None
        root = psutil.Process(before.pid)
        _wait_for(lambda: len(root.children()) == 1)
        (orphan,) = root.children()
        argv = root.cmdline()
        with _watching(stack) as errors:
            root.kill()

            def back() -> bool:
                entry = _component(tmp_path, "postgres")
                return (
                    entry is not None
                    and entry.restarts == 1
                    and entry.alive
                    and entry.ready_after_s is not None
                )

            _wait_for(back)
        assert errors == []
        after = _component(tmp_path, "postgres")
        assert after is not None and after.pid is not None
        assert after.pid != before.pid
        assert (after.restarts, after.last_exit) == (1, "killed by SIGKILL")
        assert after.last_exit_at is not None and after.started_at is not None
        assert after.last_exit_at <= after.started_at
        assert after.endpoint == before.endpoint
        assert psutil.Process(after.pid).cmdline() == argv
        assert not _running(orphan)
        assert "postgres killed by SIGKILL; restarting in 0.01 s" in messages
        assert any(m.startswith("postgres back at ") for m in messages)
    finally:
        stack.stop()


def test_state_says_down_until_the_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_postgres(monkeypatch, "import time; time.sleep(600)")
    # The restart is due long after this test ends: it sees the component down.
    stack = Stack(
        _settings(tmp_path, database_url=None),
        restart_policy=RestartPolicy(backoff_min_s=GUARD_S * 10),
    )
    stack.start()
    try:
        before = _component(tmp_path, "postgres")
        assert before is not None and before.pid is not None
        with _watching(stack) as errors:
            psutil.Process(before.pid).kill()
            _wait_for(lambda: getattr(_component(tmp_path, "postgres"), "last_exit", None))
            down = _component(tmp_path, "postgres")
            assert down is not None
            assert (down.alive, down.restarts, down.ready_after_s) == (False, 0, None)
            assert down.last_exit == "killed by SIGKILL"
            # Clients keep the endpoint they know.
            assert down.endpoint == before.endpoint
            state = read_state(tmp_path)
            assert state is not None and state.endpoints() is not None
        assert errors == []
    finally:
        stack.stop()
    assert read_state(tmp_path) is None


@pytest.mark.parametrize(
    ("healthy_run_s", "delays"),
    [(600.0, ["0.01", "0.02", "0.04", "0.04"]), (0.0, ["0.01", "0.01", "0.01", "0.01"])],
)
def test_repeated_exits_back_off_then_stop_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, healthy_run_s: float, delays: list[str]
) -> None:
    _fake_postgres(monkeypatch, "import sys, time; time.sleep(0.2); sys.exit(3)")
    messages: list[str] = []
    policy = RestartPolicy(
        backoff_min_s=0.01, backoff_max_s=0.04, healthy_run_s=healthy_run_s, max_exits=5
    )
    stack = Stack(_settings(tmp_path, database_url=None), restart_policy=policy)
    stack.start(progress=messages.append)
    try:
        failure = _watch_until_it_fails(stack)
        log_path = tmp_path.resolve() / "logs" / "postgres.log"
        assert str(failure).startswith(
            "postgres exited 5 times within 10 minutes (exited with code 3 the last time); "
            f"stopping the stack; log: {log_path}"
        )
        pattern = re.compile(r"postgres exited with code 3; restarting in (\S+) s")
        assert [m[1] for m in map(pattern.fullmatch, messages) if m] == delays
        entry = stack.state().component("postgres")
        assert entry is not None and entry.restarts == 4
    finally:
        stack.stop()


def test_exits_before_ready_again_count_as_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The message is built at run time so that the command line echoed into the log does not
    # contain it.
    _fake_postgres(
        monkeypatch,
        _first_run_sleeps(tmp_path / "ran", "print('FATAL: lock file ' + 'exists'); sys.exit(1)"),
        _ready_once(),
    )
    stack = Stack(
        _settings(tmp_path, database_url=None),
        restart_policy=RestartPolicy(backoff_min_s=0.01, backoff_max_s=0.01, max_exits=3),
    )
    stack.start()
    try:
        pid = _pid(stack, "postgres")
        _wait_for((tmp_path / "ran").exists)  # the first run is under way
        psutil.Process(pid).kill()
        failure = _watch_until_it_fails(stack)
        assert str(failure).startswith(
            "postgres exited 3 times within 10 minutes (exited with code 1 the last time)"
        )
        assert "FATAL: lock file exists" in str(failure)
    finally:
        stack.stop()


def test_restart_not_ready_in_time_stops_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_postgres(monkeypatch, "import time; time.sleep(600)", _ready_once())
    stack = Stack(_settings(tmp_path, database_url=None), start_timeout_s=1.0, restart_policy=FAST)
    stack.start()
    try:
        pid = _pid(stack, "postgres")
        psutil.Process(pid).kill()
        failure = _watch_until_it_fails(stack)
        assert str(failure).startswith(
            "postgres failed to restart: not ready within 1 s "
            "(last probe: ConnectionRefusedError: nothing listens)"
        )
    finally:
        stack.stop()


def test_port_taken_meanwhile_is_a_clear_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = pick_ports(1)
    _fake_postgres(
        monkeypatch,
        _first_run_sleeps(
            tmp_path / "ran", "print('Error: Address already ' + 'in use'); sys.exit(1)"
        ),
        _ready_once(),
        port=port,
    )
    stack = Stack(_settings(tmp_path, database_url=None), restart_policy=FAST)
    stack.start()
    try:
        pid = _pid(stack, "postgres")
        _wait_for((tmp_path / "ran").exists)  # the first run is under way
        psutil.Process(pid).kill()
        failure = _watch_until_it_fails(stack)
        assert str(failure).startswith(
            f"postgres cannot restart: port {port} was taken by another process meanwhile; log: "
        )
    finally:
        stack.stop()


def _fake_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(settings: Settings, paths: StackPaths, ports: list[int]) -> ManagedProcess:
        return ManagedProcess(
            "ray", SLEEP, log_path=paths.log("ray"), kind="infra", grace_s=2.0, port=ports[0]
        )

    monkeypatch.setattr(c, "ray_process", build)
    monkeypatch.setattr(c, "ray_probe", lambda proc, deadline, cancel: None)


def test_ray_restart_runs_the_hook_that_restarts_its_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_ray(monkeypatch)
    restarted: list[tuple[str, bool]] = []

    def on_restarted(name: str) -> None:
        entry = stack.state().component(name)
        # The hook runs once the component is ready again.
        restarted.append((name, entry is not None and entry.ready_after_s is not None))
        stack.restart_process("worker", "stopped to reconnect to the restarted Ray head")

    stack = Stack(
        _settings(tmp_path, ray_address=None), restart_policy=FAST, on_restarted=on_restarted
    )
    stack.start()
    try:
        worker_pid = stack.add_process("worker", SLEEP)
        before = _component(tmp_path, "ray")
        assert before is not None and before.pid is not None
        with _watching(stack) as errors:
            psutil.Process(before.pid).kill()
            _wait_for(lambda: getattr(_component(tmp_path, "worker"), "restarts", 0) == 1)
        assert errors == []
        assert restarted == [("ray", True)]
        ray = _component(tmp_path, "ray")
        assert ray is not None and ray.alive
        assert (ray.restarts, ray.last_exit, ray.port) == (1, "killed by SIGKILL", before.port)
        worker = _component(tmp_path, "worker")
        assert worker is not None and worker.alive and worker.pid != worker_pid
        assert worker.last_exit == "stopped to reconnect to the restarted Ray head"
        assert not psutil.pid_exists(worker_pid) or not _running(psutil.Process(worker_pid))
    finally:
        stack.stop()


def test_failing_restart_hook_stops_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_ray(monkeypatch)

    def on_restarted(name: str) -> None:
        raise StackError("Serve application failed to deploy; log: deploy.log")

    stack = Stack(
        _settings(tmp_path, ray_address=None), restart_policy=FAST, on_restarted=on_restarted
    )
    stack.start()
    try:
        pid = _pid(stack, "ray")
        psutil.Process(pid).send_signal(signal.SIGKILL)
        failure = _watch_until_it_fails(stack)
        assert str(failure) == (
            "ray was restarted, but what depends on it could not follow: "
            "Serve application failed to deploy; log: deploy.log"
        )
    finally:
        stack.stop()
