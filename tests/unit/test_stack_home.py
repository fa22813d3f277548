from __future__ import annotations

from pathlib import Path

from skyeye.stack.home import PG_SOCKET_DIR_MAX, RAY_TEMP_MAX, StackHome, short_dir


def test_short_home_keeps_everything_inside() -> None:
    layout = StackHome.of(Path("/srv/sky"))
    assert layout.ray_temp_dir == Path("/srv/sky/ray")
    assert layout.pg_socket_dir == layout.pg_dir == Path("/srv/sky/pg")
    assert layout.log("kafka") == Path("/srv/sky/logs/kafka.log")


def test_long_home_moves_sockets_to_a_short_stable_folder() -> None:
    home = Path("/srv") / ("x" * 120)
    layout = StackHome.of(home)
    assert layout.ray_temp_dir == short_dir(home) / "ray"
    assert layout.pg_socket_dir == short_dir(home) / "pg"
    assert len(str(layout.ray_temp_dir)) <= RAY_TEMP_MAX
    assert len(str(layout.pg_socket_dir)) <= PG_SOCKET_DIR_MAX
    assert short_dir(home) == short_dir(home)
    assert short_dir(home) != short_dir(home / "other")
