from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skyeye.stack import StackLocked
from skyeye.stack.lock import HomeLock


def test_second_lock_fails_naming_the_owner(tmp_path: Path) -> None:
    first = HomeLock(tmp_path / "stack.lock")
    first.acquire()
    with pytest.raises(StackLocked, match=f"pid {os.getpid()}"):
        HomeLock(tmp_path / "stack.lock").acquire()
    first.release()
    second = HomeLock(tmp_path / "stack.lock")
    second.acquire()
    assert second.held
    second.release()
    assert not second.held


def test_lock_of_another_process_and_its_release_on_death(tmp_path: Path) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from skyeye.stack.lock import HomeLock; "
            "HomeLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "stack.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(StackLocked, match=f"pid {holder.pid}"):
                HomeLock(tmp_path / "stack.lock").acquire()
        finally:
            holder.kill()
    # The kernel released the dead holder's lock.
    lock = HomeLock(tmp_path / "stack.lock")
    lock.acquire()
    lock.release()
