"""Where the machine's CPU time went during a measured run, by the role of each process.

Two snapshots of every process's CPU time (user + system), before and after; the difference,
grouped by role (a Serve deployment, a service, PostgreSQL, Kafka, the Ray head, the bench),
is the CPU each role spent on the run. A process started during the run counts from zero; one
that ended during it is missed (its time is gone with it), so the figures are lower bounds.
The sum over every role against the cores' wall time says how busy the machine was.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

__all__ = ["CpuSnapshot", "role", "snapshot", "usage"]

# Ray names its workers' processes after what they run ("ray::ServeReplica:app:Deployment").
_RAY_TITLE = "ray::"
# Roles whose share of a run is below this are summed as "other", to keep the figure readable.
_MIN_SHARE = 0.01


@dataclass(frozen=True)
class CpuSnapshot:
    """Every process's role and CPU seconds, keyed by (pid, create time), at ``taken``."""

    taken: float
    processes: dict[tuple[int, float], tuple[str, float]]


def role(name: str, cmdline: Sequence[str], pid: int) -> str:
    """What a process is for, from its name and command line (a Ray title, a module, a binary).

    Serve replicas are named by their deployment; ``python -m skyeye.services.X`` by X.
    """
    if pid == os.getpid():
        return "bench"
    first = cmdline[0] if cmdline else ""
    if first.startswith(_RAY_TITLE):
        title = first[len(_RAY_TITLE) :].partition(" ")[0]
        # "ServeReplica:skyeye:VisionEncoder" -> "VisionEncoder"
        return title.rsplit(":", 1)[-1] if title.startswith("ServeReplica") else _RAY_TITLE + title
    if "-m" in cmdline[:-1]:
        return cmdline[cmdline.index("-m") + 1].rsplit(".", 1)[-1]
    if first.startswith("postgres") or name == "postgres":
        return "postgres"
    return name


def snapshot() -> CpuSnapshot:
    """The CPU time of every process on the machine now."""
    processes = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times", "create_time"]):
        info = proc.info
        times = info["cpu_times"]
        if times is None or info["create_time"] is None:
            continue
        key = (proc.pid, info["create_time"])
        processes[key] = (
            role(info["name"] or "", info["cmdline"] or [], proc.pid),
            times.user + times.system,
        )
    return CpuSnapshot(time.monotonic(), processes)


def usage(before: CpuSnapshot, after: CpuSnapshot, tiles: int) -> dict[str, Any]:
    """CPU milliseconds per tile by role, and the share of the cores' time that was busy.

    ``tiles`` must be positive, and ``after`` taken after ``before``.
    """
    if tiles < 1:
        raise ValueError(f"CPU per tile needs at least one tile, got {tiles}")
    spent: dict[str, float] = defaultdict(float)
    for key, (name, seconds) in after.processes.items():
        earlier = before.processes.get(key)
        spent[name] += seconds - (earlier[1] if earlier is not None else 0.0)
    total = sum(spent.values())
    by_role: dict[str, float] = defaultdict(float)
    for name, seconds in spent.items():
        by_role[name if seconds >= _MIN_SHARE * total else "other"] += seconds
    cores = psutil.cpu_count() or 1
    return {
        "cores": cores,
        "cores_busy": round(total / ((after.taken - before.taken) * cores), 3),
        "total_ms_per_tile": round(1000 * total / tiles, 1),
        "ms_per_tile": {
            name: round(1000 * seconds / tiles, 1)
            for name, seconds in sorted(by_role.items(), key=lambda kv: -kv[1])
        },
    }
