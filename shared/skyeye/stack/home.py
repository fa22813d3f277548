"""Where the embedded stack keeps its files inside the state folder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# sun_path holds 108 bytes including the terminating NUL.
UNIX_SOCKET_PATH_MAX = 107
# Ray puts sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, which
# adds up to ~65 characters to the temp folder.
RAY_TEMP_MAX = 40
# PostgreSQL binds <dir>/.s.PGSQL.5432 and locks <dir>/.s.PGSQL.5432.lock.
PG_SOCKET_DIR_MAX = UNIX_SOCKET_PATH_MAX - len("/.s.PGSQL.5432.lock")


def short_dir(home: Path) -> Path:
    """A short folder under /tmp that is stable for one state folder.

    Used when a socket under ``home`` would exceed the Unix socket path limit.
    """
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path("/tmp") / f"skyeye-{digest}"


@dataclass(frozen=True)
class StackHome:
    home: Path

    @classmethod
    def of(cls, home: Path) -> StackHome:
        return cls(home.expanduser().resolve())

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.home / "stack.lock"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    @property
    def s3_dir(self) -> Path:
        return self.home / "s3"

    @property
    def pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def pg_socket_dir(self) -> Path:
        if len(str(self.pg_dir)) <= PG_SOCKET_DIR_MAX:
            return self.pg_dir
        return short_dir(self.home) / "pg"

    @property
    def ray_temp_dir(self) -> Path:
        candidate = self.home / "ray"
        if len(str(candidate)) <= RAY_TEMP_MAX:
            return candidate
        return short_dir(self.home) / "ray"
