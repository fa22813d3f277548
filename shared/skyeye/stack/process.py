"""A supervised child process: spawn with its log file, tail the log, stop its whole tree."""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psutil

from skyeye.stack.errors import StackError
from skyeye.stack.ports import LOOPBACK
from skyeye.stack.state import ComponentKind, ComponentState

log = logging.getLogger("skyeye.stack")

_TAIL_BYTES = 64 * 1024
# Children get this long to exit after their parent did before they are killed.
_ORPHAN_GRACE_S = 2.0
# Every process a ManagedProcess starts carries this variable, and so do its descendants: once
# the root is gone they are re-parented, so the environment is what still finds them (except
# where a server overwrites it with its process title: see ManagedProcess's ``cwd``).
TREE_MARKER = "SKYEYE_STACK_TREE"


def describe_exit(code: int) -> str:
    """Why a process ended, in words, from its Popen return code.

    For example "exited with code 1" or "killed by SIGKILL".
    """
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def run_as(user: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user`` with its own primary group and no other groups (None: as we are).

    The switch is made by util-linux's ``setpriv`` rather than Popen's ``user=``: with ``user=``
    Python forks instead of vforking, and a fork runs the ``pthread_atfork`` handlers of the
    libraries loaded here. gRPC's (Ray's client) then crashed the child with SIGABRT before it
    could exec, now and then, when the supervisor restarted PostgreSQL.
    """
    if user is None:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise StackError(
            f"running as root, the stack starts PostgreSQL as the user {user}, which needs "
            "setpriv (util-linux): install it, or run the stack as a user other than root"
        )
    account = pwd.getpwnam(user)
    # The primary group only: root's other groups would let group permission bits (often 0) on
    # root's folders apply instead of the world bits.
    return [
        setpriv,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


def _running(proc: psutil.Process) -> bool:
    # A zombie has exited; it lingers only until its (possibly slow) reaper collects it.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until none of ``procs`` runs; returns those still running at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop_tree(
    proc: psutil.Process,
    stop_signal: int,
    grace_s: float,
    name: str,
    reap: subprocess.Popen[bytes] | None = None,
) -> None:
    """Signal ``proc``, give it ``grace_s`` to exit, then SIGKILL it and every descendant.

    Descendants are listed before signalling because once the parent is gone they are
    re-parented and can no longer be found from it. ``reap`` is the Popen of our own child,
    waited on so that it does not stay a zombie.
    """
    try:
        family = proc.children(recursive=True)
        proc.send_signal(stop_signal)
    except psutil.NoSuchProcess:
        return
    if _wait_gone([proc], grace_s):
        log.warning(
            "%s (pid %d) ignored %s for %.0f s: killing it",
            name,
            proc.pid,
            signal.Signals(stop_signal).name,
            grace_s,
        )
        try:
            family += proc.children(recursive=True)
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if reap is not None:
        reap.wait()
    for child in _wait_gone(family, _ORPHAN_GRACE_S):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    _wait_gone(family, _ORPHAN_GRACE_S)


class ManagedProcess:
    """One child of the supervisor, started in its own session.

    A terminal's Ctrl-C so reaches only the supervisor, which then stops the children in
    dependency order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        kind: ComponentKind,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        grace_s: float = 15.0,
        port: int | None = None,
        endpoint: str | None = None,
        metrics: str | None = None,
        client: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``cwd`` is the folder to start in, for servers that overwrite their environment.

        Such a server (PostgreSQL) overwrites the environment of its processes with a process
        title; its leftovers are then recognised as processes of the same executable in that
        folder.
        """
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.kind: ComponentKind = kind
        self.user = user
        self.stop_signal = stop_signal
        self.grace_s = grace_s
        self.port = port
        self.endpoint = endpoint
        self.metrics = metrics
        self.client = client
        self.cwd = cwd
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_exit_at: datetime | None = None
        self.started_at: datetime | None = None
        self.started_monotonic = 0.0
        self.ready_after_s: float | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._create_time: float | None = None
        self._log_offset = 0
        self._tree_id = f"{name}-{uuid.uuid4().hex}"

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` of a component that listens on TCP."""
        if self.port is None:
            raise ValueError(f"{self.name} has no TCP port")
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The pid of the current or last run; None before the first start."""
        return self._popen.pid if self._popen is not None else None

    def start(self) -> None:
        """Start a new run in its own session, its output appended to the log after a header."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._log_offset = out.tell()
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            out.write(
                f"--- {stamp} skyeye.stack starts {self.name}: {shlex.join(self.argv)}\n".encode()
            )
            out.flush()
            env = dict(self.env if self.env is not None else os.environ)
            env[TREE_MARKER] = self._tree_id
            self._popen = subprocess.Popen(
                run_as(self.user, self.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        self.started_at = datetime.now(UTC)
        self.started_monotonic = time.monotonic()
        self.ready_after_s = None
        try:
            self._create_time = psutil.Process(self._popen.pid).create_time()
        except psutil.NoSuchProcess:
            self._create_time = None
        log.debug("%s started, pid %d", self.name, self._popen.pid)

    def poll(self) -> int | None:
        """The exit code if the process has ended (or never started), else None."""
        if self._popen is None:
            return -1
        return self._popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines this run of the process wrote to its log."""
        try:
            with open(self.log_path, "rb") as src:
                # Service logs grow without bound: read only the end of this run's part.
                size = src.seek(0, os.SEEK_END)
                src.seek(max(self._log_offset, size - _TAIL_BYTES))
                text = src.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def record_exit(self, reason: str) -> None:
        """Note why the current run ended, for ``skyeye status``."""
        self.last_exit = reason
        self.last_exit_at = datetime.now(UTC)
        self.ready_after_s = None

    def kill_leftovers(self) -> None:
        """SIGKILL whatever any run of this process left behind once its root was gone.

        A killed PostgreSQL postmaster leaves backends that hold its shared memory and keep a new
        postmaster from starting; a killed Ray head leaves servers on its ports.
        """
        exe = os.path.realpath(self.argv[0])
        cwd = str(self.cwd.resolve()) if self.cwd is not None else None
        found = []
        for proc in psutil.process_iter(["environ", "exe", "cwd", "name"], ad_value=None):
            info = proc.info
            ours = (info["environ"] or {}).get(TREE_MARKER) == self._tree_id or (
                cwd is not None and info["cwd"] == cwd and info["exe"] == exe
            )
            if ours and proc.pid != os.getpid() and _running(proc):
                found.append(proc)
        for proc in found:
            log.warning(
                "killing %s's leftover process %d (%s)", self.name, proc.pid, proc.info["name"]
            )
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        _wait_gone(found, _ORPHAN_GRACE_S)

    def stop(self) -> None:
        """Stop the current run and its whole tree; of a run already ended, kill the leftovers."""
        if self._popen is None:
            return
        if self._popen.poll() is not None:
            self.kill_leftovers()
            return
        log.info("stopping %s (pid %d)", self.name, self._popen.pid)
        try:
            proc = psutil.Process(self._popen.pid)
        except psutil.NoSuchProcess:
            self._popen.wait()
            return
        stop_tree(proc, self.stop_signal, self.grace_s, self.name, reap=self._popen)

    def state(self) -> ComponentState:
        """The process as ``stack.json`` records it for ``skyeye status`` and clients."""
        return ComponentState(
            name=self.name,
            kind=self.kind,
            endpoint=self.endpoint,
            port=self.port,
            metrics=self.metrics,
            client=self.client,
            pid=self.pid,
            create_time=self._create_time,
            log=self.log_path,
            started_at=self.started_at,
            ready_after_s=self.ready_after_s,
            restarts=self.restarts,
            last_exit=self.last_exit,
            last_exit_at=self.last_exit_at,
        )
