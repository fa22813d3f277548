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
class StackPaths:
    """The stack's files in one state folder; socket folders move to /tmp when paths run long."""

    home: Path

    @classmethod
    def of(cls, home: Path) -> StackPaths:
        """The paths for a state folder given as the user wrote it (``~`` and links resolved)."""
        return cls(home.expanduser().resolve())

    @property
    def state_file(self) -> Path:
        """``stack.json``: the running stack's endpoints, for other processes to find them."""
        return self.home / "stack.json"

    @property
    def lock_file(self) -> Path:
        """``stack.lock``: held by the one supervisor of this state folder, naming its pid."""
        return self.home / "stack.lock"

    @property
    def logs_dir(self) -> Path:
        """The folder of the components' and services' logs, one file each."""
        return self.home / "logs"

    def log(self, name: str) -> Path:
        """The log file of one component or service, by its name in the stack."""
        return self.logs_dir / f"{name}.log"

    @property
    def s3_dir(self) -> Path:
        """The embedded S3 server's data folder: the buckets and their objects."""
        return self.home / "s3"

    @property
    def pg_dir(self) -> Path:
        """The embedded PostgreSQL's data folder (``initdb`` on first use)."""
        return self.home / "pg"

    @property
    def pg_socket_dir(self) -> Path:
        """Where PostgreSQL's Unix socket goes: the data folder, unless its path is too long."""
        if len(str(self.pg_dir)) <= PG_SOCKET_DIR_MAX:
            return self.pg_dir
        return short_dir(self.home) / "pg"

    @property
    def ray_temp_dir(self) -> Path:
        """The Ray head's temp folder, under /tmp when the sockets Ray puts in it would not fit."""
        candidate = self.home / "ray"
        if len(str(candidate)) <= RAY_TEMP_MAX:
            return candidate
        return short_dir(self.home) / "ray"
