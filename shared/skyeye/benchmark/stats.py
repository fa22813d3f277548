"""The arithmetic of the figures: rates, percentiles and a replica timeline's landmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["StageScaling", "percentile", "rate", "stage_scaling"]


def rate(count: float, seconds: float) -> float:
    """``count`` per second; a ValueError for a non-positive duration, never an infinity."""
    if seconds <= 0:
        raise ValueError(f"a rate needs a positive duration, got {seconds!r} s")
    return count / seconds


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated linearly between the closest ranks.

    The same definition as numpy's default, so p99 of a few values lies between the two
    largest rather than on the largest.
    """
    if not values:
        raise ValueError("a percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class StageScaling:
    """How one Serve stage's running replicas moved during a burst.

    Times are seconds from the burst's start; None where it did not happen in the window.
    """

    start: int
    peak: int
    end: int
    to_peak_s: float | None
    back_to_start_s: float | None


def stage_scaling(timeline: Sequence[tuple[float, Mapping[str, int]]], stage: str) -> StageScaling:
    """The landmarks of ``stage`` in a timeline of (seconds from the burst, replicas by stage).

    ``to_peak_s``: the first sample at the peak count (None when the count never rose);
    ``back_to_start_s``: the first sample after the peak back at the starting count.
    """
    counts = [(t, replicas[stage]) for t, replicas in timeline if stage in replicas]
    if not counts:
        raise ValueError(f"the timeline has no sample of {stage!r}")
    start, peak = counts[0][1], max(n for _, n in counts)
    if peak == start:
        return StageScaling(start, peak, counts[-1][1], None, None)
    peaked = next(i for i, (_, n) in enumerate(counts) if n == peak)
    back = next((t for t, n in counts[peaked:] if n <= start), None)
    return StageScaling(start, peak, counts[-1][1], counts[peaked][0], back)
