"""Supervisor behaviour without real servers: external endpoints and stand-in processes."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from skyeye.settings import Settings
from skyeye.stack import (
    ComponentState,
    Stack,
    StackError,
    StackLocked,
    StackState,
    read_state,
)
from skyeye.stack import components as c
from skyeye.stack.paths import StackPaths
from skyeye.stack.process import ManagedProcess, run_as
from skyeye.stack.state import process_create_time, write_state

EXTERNAL = {
    "s3_endpoint": "minio.example:9000",
    "kafka_bootstrap": "kafka.example:9092",
    "database_url": "postgresql+psycopg2://app@db.example/app",
    "ray_address": "ray.example:6379",
}
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def _settings(home: Path, **overrides: str | None) -> Settings:
    return Settings(home=home, **{**EXTERNAL, **overrides})


S3Builder = Callable[[Settings, StackPaths, int], ManagedProcess]


def _stand_in(code: str) -> tuple[S3Builder, list[ManagedProcess]]:
    """A replacement for components.s3_process that runs ``code`` instead of nanio."""
    built: list[ManagedProcess] = []

    def build(settings: Settings, paths: StackPaths, port: int) -> ManagedProcess:
        proc = ManagedProcess(
            "s3",
            [sys.executable, "-c", code],
            log_path=paths.log("s3"),
            kind="infra",
            port=port,
            grace_s=2.0,
        )
        built.append(proc)
        return proc

    return build, built


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_external_endpoints_are_recorded_not_started(tmp_path: Path) -> None:
    urls: list[str] = []
    messages: list[str] = []
    stack = Stack(_settings(tmp_path))
    endpoints = stack.start(on_database_ready=urls.append, progress=messages.append)
    try:
        assert endpoints.model_dump() == EXTERNAL
        assert urls == [EXTERNAL["database_url"]]
        assert any("external" in m for m in messages)
        state = read_state(tmp_path)
        assert state is not None
        assert state.supervisor_alive
        assert state.supervisor_pid == os.getpid()
        assert [(x.name, x.kind, x.pid) for x in state.components] == [
            ("s3", "external", None),
            ("kafka", "external", None),
            ("postgres", "external", None),
            ("ray", "external", None),
        ]
    finally:
        stack.stop()
    assert read_state(tmp_path) is None
    stack.stop()  # idempotent


def test_second_supervisor_on_one_home_is_refused(tmp_path: Path) -> None:
    first = Stack(_settings(tmp_path))
    first.start()
    try:
        with pytest.raises(StackLocked, match=f"pid {os.getpid()}"):
            Stack(_settings(tmp_path)).start()
        # The refused one must not have touched the running stack's record.
        assert read_state(tmp_path) is not None
    finally:
        first.stop()
    again = Stack(_settings(tmp_path))
    again.start()
    again.stop()


def test_service_is_restarted_and_stopped_first(tmp_path: Path) -> None:
    stack = Stack(_settings(tmp_path))
    stack.start()
    try:
        pid = stack.add_process("planner", SLEEP, env={"PLANNER_FLAG": "1"})
        proc = psutil.Process(pid)
        assert proc.environ()["PLANNER_FLAG"] == "1"
        assert proc.environ()["SKYEYE_HOME"] == str(tmp_path.resolve())
        # Own session: a terminal's Ctrl-C reaches only the supervisor.
        assert os.getsid(pid) == pid
        state = read_state(tmp_path)
        assert state is not None
        planner = state.component("planner")
        assert planner is not None
        assert (planner.kind, planner.pid, planner.alive) == ("service", pid, True)
        assert planner.log == tmp_path.resolve() / "logs" / "planner.log"
        with pytest.raises(ValueError, match="already supervised"):
            stack.add_process("planner", SLEEP)

        proc.kill()
        stop = threading.Event()
        watcher = threading.Thread(target=stack.watch, args=(stop, 0.05))
        watcher.start()
        try:

            def restarted() -> bool:
                current = read_state(tmp_path)
                entry = current.component("planner") if current else None
                return entry is not None and entry.restarts == 1 and entry.alive

            _wait_for(restarted)
        finally:
            stop.set()
            watcher.join()
        current = read_state(tmp_path)
        entry = current.component("planner") if current else None
        assert entry is not None and entry.pid is not None
        new_pid = entry.pid
        assert new_pid != pid
        assert entry.last_exit == "killed by SIGKILL" and entry.last_exit_at is not None
    finally:
        stack.stop()
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == "zombie"


def test_add_process_needs_a_started_stack(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="start the stack"):
        Stack(_settings(tmp_path)).add_process("planner", SLEEP)


def test_early_exit_reports_component_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, built = _stand_in("import sys; print('boom: bad config'); sys.exit(3)")
    monkeypatch.setattr(c, "s3_process", build)
    stack = Stack(_settings(tmp_path, s3_endpoint=None))
    with pytest.raises(StackError) as failure:
        stack.start()
    message = str(failure.value)
    log_path = tmp_path.resolve() / "logs" / "s3.log"
    assert message.startswith(f"s3 failed to start: exited with code 3; log: {log_path}")
    assert "boom: bad config" in message
    assert len(built) == 1
    assert read_state(tmp_path) is None
    Stack(_settings(tmp_path)).start()  # the lock was released


def test_lost_port_race_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build, built = _stand_in("import sys; print('Error: Address already in use'); sys.exit(1)")
    monkeypatch.setattr(c, "s3_process", build)
    with pytest.raises(StackError, match="s3 failed to start: its port was taken 3 times"):
        Stack(_settings(tmp_path, s3_endpoint=None)).start()
    assert len(built) == 3


def test_deadline_stops_a_component_that_never_gets_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs, but never listens: the S3 probe can never pass.
    build, built = _stand_in("import time; print('warming up', flush=True); time.sleep(600)")
    monkeypatch.setattr(c, "s3_process", build)
    stack = Stack(_settings(tmp_path, s3_endpoint=None), start_timeout_s=1.5)
    with pytest.raises(StackError, match=r"s3 failed to start: not ready within 2 s \(last probe"):
        stack.start()
    assert built[0].poll() is not None


def test_failing_database_hook_fails_the_start(tmp_path: Path) -> None:
    def migrate(url: str) -> None:
        raise RuntimeError(f"cannot migrate {url}")

    with pytest.raises(StackError, match="postgres failed to start: RuntimeError: cannot migrate"):
        Stack(_settings(tmp_path)).start(on_database_ready=migrate)
    assert read_state(tmp_path) is None


def test_leftovers_of_a_killed_supervisor_are_stopped(tmp_path: Path) -> None:
    with subprocess.Popen(SLEEP, start_new_session=True) as orphan:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        write_state(
            StackPaths.of(tmp_path),
            StackState(
                home=tmp_path,
                supervisor_pid=dead.pid,
                supervisor_create_time=0.0,
                started_at=datetime.now(UTC),
                components=[
                    ComponentState(
                        name="kafka",
                        kind="infra",
                        pid=orphan.pid,
                        create_time=process_create_time(orphan.pid),
                    )
                ],
            ),
        )
        stack = Stack(_settings(tmp_path))
        stack.start()
        try:
            assert orphan.poll() == -signal.SIGTERM
        finally:
            stack.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_process_runs_as_its_user_with_only_its_group(tmp_path: Path) -> None:
    account = pwd.getpwnam("nobody")
    out = tmp_path / "ids.log"
    proc = ManagedProcess(
        "ids",
        [sys.executable, "-c", "import os; print(os.getuid(), os.getgid(), os.getgroups())"],
        log_path=out,
        kind="service",
        user="nobody",
        cwd=tmp_path,
    )
    proc.start()
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert proc.poll() == 0
    assert proc.log_tail(1) == f"{account.pw_uid} {account.pw_gid} []"


def test_user_switch_keeps_popen_on_vfork() -> None:
    """No Popen ``user=``: with it Python forks and runs gRPC's fork handlers in the child."""
    argv = run_as("nobody", ["postgres", "-D", "x"])
    assert argv[-4:] == ["--", "postgres", "-D", "x"]
    assert "--clear-groups" in argv
    assert run_as(None, ["postgres"]) == ["postgres"]


def test_run_forever_stops_everything_on_sigterm(tmp_path: Path) -> None:
    stack = Stack(_settings(tmp_path))
    stack.start()
    pid = stack.add_process("worker", SLEEP)
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    stack.run_forever()
    assert signal.getsignal(signal.SIGTERM) is before
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert read_state(tmp_path) is None


def test_failure_stops_components_already_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # postgres comes up (a stand-in that passes its probe); s3 dies; postgres must be stopped.
    postgres: list[ManagedProcess] = []

    def fake_postgres(paths: StackPaths, user: str | None) -> ManagedProcess:
        proc = ManagedProcess("postgres", SLEEP, log_path=paths.log("postgres"), kind="infra")
        postgres.append(proc)
        return proc

    build, _ = _stand_in("import sys, time; time.sleep(1); sys.exit(5)")
    monkeypatch.setattr(c, "s3_process", build)
    monkeypatch.setattr(c, "prepare_postgres", lambda paths: None)
    monkeypatch.setattr(c, "postgres_process", fake_postgres)
    monkeypatch.setattr(c, "postgres_probe", lambda socket_dir: None)
    stack = Stack(_settings(tmp_path, s3_endpoint=None, database_url=None))
    with pytest.raises(StackError, match="s3 failed to start: exited with code 5"):
        stack.start()
    assert len(postgres) == 1
    assert postgres[0].poll() == -signal.SIGTERM
