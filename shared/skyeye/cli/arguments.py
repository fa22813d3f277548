"""Argparse types shared by the command-line entry points.

A number out of range is refused while the command line is parsed, with the option's name, so
that a long run (loading a 7B checkpoint, training) never starts only to fail on it later.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["bounded", "count", "non_negative_int"]


def bounded(
    kind: type[int] | type[float], low: float, high: float | None = None
) -> Callable[[str], int | float]:
    """An argparse type: a ``kind`` number in [low, high] (no upper bound if ``high`` is None)."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not low <= value <= (high if high is not None else math.inf):
            bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value:g}")
        return value

    return parse


count = bounded(int, 1)
non_negative_int = bounded(int, 0)
