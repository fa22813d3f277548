from __future__ import annotations

from pathlib import Path

from skyeye.stack.paths import PG_SOCKET_DIR_MAX, RAY_TEMP_MAX, StackPaths, short_dir


def test_short_home_keeps_everything_inside() -> None:
    paths = StackPaths.of(Path("/srv/sky"))
    assert paths.ray_temp_dir == Path("/srv/sky/ray")
    assert paths.pg_socket_dir == paths.pg_dir == Path("/srv/sky/pg")
    assert paths.log("kafka") == Path("/srv/sky/logs/kafka.log")


def test_long_home_moves_sockets_to_a_short_stable_folder() -> None:
    home = Path("/srv") / ("x" * 120)
    paths = StackPaths.of(home)
    assert paths.ray_temp_dir == short_dir(home) / "ray"
    assert paths.pg_socket_dir == short_dir(home) / "pg"
    assert len(str(paths.ray_temp_dir)) <= RAY_TEMP_MAX
    assert len(str(paths.pg_socket_dir)) <= PG_SOCKET_DIR_MAX
    assert short_dir(home) == short_dir(home)
    assert short_dir(home) != short_dir(home / "other")
