"""One supervisor per state folder."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from skyeye.stack.errors import StackLocked


class HomeLock:
    """An exclusive ``flock`` on ``HOME/stack.lock`` holding the owner's pid.

    The kernel drops the lock when its owner dies, so a crashed supervisor never leaves the
    folder locked.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (acquired and not yet released)."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and record our pid; StackLocked, naming its pid, if another holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackLocked(
                f"another `skyeye up` (pid {owner}) is already running on {self.path.parent}; "
                "stop it first or use another SKYEYE_HOME"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up and clear the pid; nothing happens when it is not held."""
        if self._fd is None:
            return
        # Truncate before unlocking so a waiting reader never names a stale owner.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
