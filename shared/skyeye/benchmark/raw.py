"""The bare model in this process: what a user calling it in a loop would get.

The same reader as the worker (:func:`skyeye.imagery.read_tile` on the file's bytes, one
whole-image tile per image, as the planner plans it), the encoder in batches of the configured
encoder batch size, then the decoder with prefix reuse: each tile's image prefix computed once
for all its tasks. The decoder is loaded and called as the LlmDecoder deployment does, with the
configured decoding settings.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skyeye import imagery
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.settings import Settings

from .stats import rate

__all__ = ["BareModel", "best_throughput", "read_tiles", "throughput"]


@dataclass
class BareModel:
    """The two model stages, in process, with the decoding arguments every call gets."""

    encoder: VisionEncoder
    decoder: TextDecoder
    decoding: dict[str, Any]

    @classmethod
    def load(cls, settings: Settings) -> BareModel:
        """The configured model on the configured device, decoding as the deployment does."""
        path, device = settings.resolved_model_dir, settings.device
        decoding = settings.decoding
        decoder = TextDecoder.load(
            path, device=device, double_bos=decoding.double_bos, steps=decoding.steps
        )
        decoder.warm_up()  # as the deployment's replica does before its first batch
        return cls(VisionEncoder.load(path, device=device), decoder, decoding.call_options())

    def encode(self, images: list[np.ndarray], batch: int) -> list[torch.Tensor]:
        """Each image's embeddings, from forward passes of at most ``batch`` images."""
        out: list[torch.Tensor] = []
        for start in range(0, len(images), batch):
            out.extend(self.encoder.encode(images[start : start + batch]))
        return out

    def decode(
        self, embeds: torch.Tensor, instructions: list[str], *, reuse_prefix: bool = True
    ) -> list[list[int]]:
        """One tile's answers, as token ids up to their EOS."""
        return self.decoder.generate_ids(
            embeds, instructions, **self.decoding, reuse_prefix=reuse_prefix
        )

    def decode_many(
        self, tiles: Sequence[torch.Tensor], instructions: list[str]
    ) -> list[list[list[int]]]:
        """Several tiles' answers decoded together, each tile's prefix computed once."""
        return self.decoder.generate_ids_many(
            [(embeds, instructions) for embeds in tiles], **self.decoding
        )


def read_tiles(data: bytes, settings: Settings) -> list[np.ndarray]:
    """The tiles the pipeline makes of one image file's bytes, read as the worker reads them."""
    info = imagery.probe(io.BytesIO(data), max_pixels=settings.max_image_pixels)
    return [
        imagery.read_tile(data, tile, max_pixels=settings.max_image_pixels)
        for tile in imagery.whole_image_tiles(info)
    ]


def throughput(
    model: BareModel,
    settings: Settings,
    paths: Sequence[Path],
    instructions: list[str],
    *,
    batched: bool = False,
) -> dict[str, Any]:
    """Tiles/s from the files' bytes to every tile's answers (reading the files is not timed).

    ``batched``: the decoder takes up to the configured decoder batch size of tiles together
    (:meth:`BareModel.decode_many`), as a Serve batch of the LlmDecoder does, instead of one
    tile at a time.
    """
    files = [path.read_bytes() for path in paths]
    started = time.perf_counter()
    tiles = [tile for data in files for tile in read_tiles(data, settings)]
    embeds = model.encode(tiles, settings.encoder.max_batch_size)
    if batched:
        group = settings.decoder.max_batch_size
        answers = [
            row
            for start in range(0, len(embeds), group)
            for tile in model.decode_many(embeds[start : start + group], instructions)
            for row in tile
        ]
    else:
        answers = [row for e in embeds for row in model.decode(e, instructions)]
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in answers)
    return {
        "tiles": len(tiles),
        "tasks_per_tile": len(instructions),
        "encoder_batch": settings.encoder.max_batch_size,
        "decoder_tiles_together": settings.decoder.max_batch_size if batched else 1,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(rate(len(tiles), seconds), 3),
        "tokens_per_s": round(rate(tokens, seconds), 1),
    }


def best_throughput(
    model: BareModel,
    settings: Settings,
    paths: Sequence[Path],
    instructions: list[str],
    *,
    repeats: int,
    batched: bool = False,
) -> dict[str, Any]:
    """The fastest of ``repeats`` runs of :func:`throughput`, with every run's tiles/s.

    On a shared CPU another process's burst can slow one run several times over (torch's
    threads wait on each other when a core is taken); the best run is the model's own speed.
    """
    runs = [
        throughput(model, settings, paths, instructions, batched=batched) for _ in range(repeats)
    ]
    best = max(runs, key=lambda run: run["tiles_per_s"])
    return {**best, "runs_tiles_per_s": [run["tiles_per_s"] for run in runs]}
