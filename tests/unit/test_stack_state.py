from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyeye.settings import Settings
from skyeye.stack import ComponentState, StackNotRunning, StackState, read_state, resolve
from skyeye.stack.paths import StackPaths
from skyeye.stack.state import ComponentKind, process_create_time, write_state

ENDPOINTS = {
    "s3": "127.0.0.1:9001",
    "kafka": "127.0.0.1:9002",
    "postgres": "postgresql+psycopg2://postgres@/postgres?host=/tmp/x",
    "ray": "127.0.0.1:9003",
}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _state(home: Path, supervisor_pid: int, ray_kind: ComponentKind = "infra") -> StackState:
    components = [
        ComponentState(
            name=name,
            kind=ray_kind if name == "ray" else "infra",
            endpoint=endpoint,
            pid=os.getpid(),
            create_time=process_create_time(os.getpid()),
            log=home / "logs" / f"{name}.log",
            started_at=datetime.now(UTC),
        )
        for name, endpoint in ENDPOINTS.items()
    ]
    return StackState(
        home=home,
        supervisor_pid=supervisor_pid,
        supervisor_create_time=process_create_time(os.getpid()),
        started_at=datetime.now(UTC),
        components=components,
    )


def _settings(home: Path, **endpoints: str | None) -> Settings:
    fields = {"s3_endpoint": None, "kafka_bootstrap": None, "database_url": None}
    return Settings(home=home, **{**fields, "ray_address": None, **endpoints})


def test_round_trip_with_live_flags(tmp_path: Path) -> None:
    state = _state(tmp_path, os.getpid())
    state.components.append(ComponentState(name="planner", kind="service", pid=_dead_pid()))
    write_state(StackPaths.of(tmp_path), state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.json"]

    loaded = read_state(tmp_path)
    assert loaded is not None
    assert loaded.supervisor_alive
    assert [c.name for c in loaded.components] == ["s3", "kafka", "postgres", "ray", "planner"]
    assert [c.alive for c in loaded.components] == [True, True, True, True, False]
    assert loaded.model_dump(exclude={"supervisor_alive", "components"}) == state.model_dump(
        exclude={"supervisor_alive", "components"}
    )
    endpoints = loaded.endpoints()
    assert endpoints is not None
    assert endpoints.kafka_bootstrap == ENDPOINTS["kafka"]
    assert endpoints.database_url == ENDPOINTS["postgres"]


def test_alive_flags_in_the_file_are_not_trusted(tmp_path: Path) -> None:
    state = _state(tmp_path, _dead_pid())
    state.supervisor_alive = True
    write_state(StackPaths.of(tmp_path), state)
    stored = json.loads((tmp_path / "stack.json").read_text())
    assert "supervisor_alive" not in stored
    assert all("alive" not in component for component in stored["components"])
    loaded = read_state(tmp_path)
    assert loaded is not None
    assert not loaded.supervisor_alive


def test_reused_pid_is_not_alive(tmp_path: Path) -> None:
    state = _state(tmp_path, os.getpid())
    state.supervisor_create_time -= 3600
    write_state(StackPaths.of(tmp_path), state)
    loaded = read_state(tmp_path)
    assert loaded is not None
    assert not loaded.supervisor_alive


def test_missing_or_corrupt_state(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    (tmp_path / "stack.json").write_text("{not json")
    assert read_state(tmp_path) is None


def test_partial_state_has_no_endpoints(tmp_path: Path) -> None:
    state = _state(tmp_path, os.getpid())
    state.components[3].endpoint = None
    assert state.endpoints() is None


def test_resolve_with_explicit_endpoints_needs_no_stack(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        s3_endpoint="minio:9000",
        kafka_bootstrap="kafka:9092",
        database_url="postgresql+psycopg2://u@db/x",
        ray_address="ray-head:6379",
    )
    assert resolve(settings) == settings


def test_resolve_without_stack_raises(tmp_path: Path) -> None:
    with pytest.raises(StackNotRunning, match=r"no running stack in .*start it with `skyeye up`"):
        resolve(_settings(tmp_path))


def test_resolve_with_dead_supervisor_raises(tmp_path: Path) -> None:
    write_state(StackPaths.of(tmp_path), _state(tmp_path, _dead_pid()))
    with pytest.raises(StackNotRunning, match="no running stack"):
        resolve(_settings(tmp_path))


def test_resolve_fills_only_unset_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    write_state(StackPaths.of(tmp_path), _state(tmp_path, os.getpid()))
    resolved = resolve(_settings(tmp_path, kafka_bootstrap="kafka:9092"))
    assert resolved.s3_endpoint == ENDPOINTS["s3"]
    assert resolved.kafka_bootstrap == "kafka:9092"
    assert resolved.database_url == ENDPOINTS["postgres"]
    assert resolved.ray_address == ENDPOINTS["ray"]
    # Drivers of the embedded (loopback-only) head need Ray's single-host switch.
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_resolve_leaves_ray_alone_for_an_external_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    write_state(StackPaths.of(tmp_path), _state(tmp_path, os.getpid(), ray_kind="external"))
    assert resolve(_settings(tmp_path)).ray_address == ENDPOINTS["ray"]
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_resolve_during_start_up_names_the_missing_endpoint(tmp_path: Path) -> None:
    state = _state(tmp_path, os.getpid())
    state.components = state.components[:2]
    write_state(StackPaths.of(tmp_path), state)
    with pytest.raises(StackNotRunning, match="no postgres endpoint yet"):
        resolve(_settings(tmp_path))
