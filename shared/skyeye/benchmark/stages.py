"""Each model stage alone, in process: encoder images/s, decoder tasks/s and tokens/s.

The encoder at batch 1 against the configured batch size; the decoder three ways on the same
tiles and tasks: whole prompts left-padded (no prefix reuse), one tile at a time with its image
prefix computed once for all its tasks (the served path before decoding was batched across
tiles), and every tile together (the LlmDecoder's path: one decoding loop for a Serve batch).
Greedy decoding gives the same answers every way; the figure says whether they did.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .raw import BareModel
from .stats import rate

__all__ = ["decoder_rates", "encoder_rates"]


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = work()
    return time.perf_counter() - started, out


def encoder_rates(model: BareModel, images: list[np.ndarray], batch: int) -> dict[str, Any]:
    """Images/s at batch 1 and at ``batch``, after one warm-up pass of each."""
    figures: dict[str, Any] = {"images": len(images), "batch": batch}
    for size in (1, batch):
        model.encode(images[:size], size)
        seconds, _ = _timed(functools.partial(model.encode, images, size))
        figures[f"batch_{size}_images_per_s"] = round(rate(len(images), seconds), 2)
    figures["batch_speedup"] = round(
        figures[f"batch_{batch}_images_per_s"] / figures["batch_1_images_per_s"], 2
    )
    return figures


def decoder_rates(
    model: BareModel, tiles: list[torch.Tensor], instructions: list[str]
) -> dict[str, Any]:
    """Tasks/s and tokens/s of the three ways of decoding ``tiles`` (each after a warm-up)."""
    ways: dict[str, Callable[[list[torch.Tensor]], list[list[list[int]]]]] = {
        "no_reuse": lambda ts: [model.decode(t, instructions, reuse_prefix=False) for t in ts],
        "prefix_reuse": lambda ts: [model.decode(t, instructions) for t in ts],
        "tiles_batched": lambda ts: model.decode_many(ts, instructions),
    }
    n_tasks = len(tiles) * len(instructions)
    figures: dict[str, Any] = {"tiles": len(tiles), "tasks_per_tile": len(instructions)}
    answers = {}
    for name, way in ways.items():
        way(tiles[:2])
        seconds, answers[name] = _timed(functools.partial(way, tiles))
        tokens = sum(len(row) for tile in answers[name] for row in tile)
        figures[name] = {
            "tasks_per_s": round(rate(n_tasks, seconds), 2),
            "tokens_per_s": round(rate(tokens, seconds), 1),
            "tokens": tokens,
        }
    figures["batched_vs_prefix_reuse"] = round(
        figures["tiles_batched"]["tasks_per_s"] / figures["prefix_reuse"]["tasks_per_s"], 2
    )
    figures["same_answers"] = len({repr(a) for a in answers.values()}) == 1
    return figures
