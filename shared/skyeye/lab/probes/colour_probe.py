"""Can an object's colour be read linearly from what the vision stage gives the decoder?

Colour expressions ("the red ship") are 40% of the [refer] questions and the weakest group. For
every object of some scenes this fits a linear softmax probe from a feature of the object to its
class and colour (e.g. ``ship:red``), on objects of training-world scenes, and scores it on the
objects of held-out scenes. Three features, in the order the vision stage computes them:

- ``patches``: the mean ``ln_vision`` patch token over the patches whose centre lies in the
  object's box (its nearest patch for an object smaller than one);
- ``merged``: the mean over the object's merged tokens (1 x 4 patches each, the tokens
  ``box_tokens`` gives for its box) before ``llama_proj``;
- ``projected``: the same tokens after ``llama_proj``: the decoder's image tokens.

Where ``patches`` reads colour and ``projected`` does not, the information is in the tower but
does not reach the decoder's tokens.

    .venv/bin/python -m skyeye.lab.probes.colour_probe [--model DIR] [--fit-scenes 200] \
        [--scenes 50] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from skyeye.lab.probes.box_probe import fit_scenes
from skyeye.lab.training import _patch_tokens, box_tokens
from skyeye.lab.world import Scene, held_out_scenes
from skyeye.model import VisionEncoder
from skyeye.model.architecture import merge_patches
from skyeye.model.vision import preprocess
from skyeye.settings import PACKAGED_MODEL

FEATURES = ("patches", "merged", "projected")
_PROBE_STEPS = 600


@torch.no_grad()
def _collect(
    encoder: VisionEncoder, scenes: Iterable[Scene]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each feature's (objects, width) array, and each object's ``class:colour`` label."""
    config = encoder.config
    grid, merge = config.vision.grid_size, config.merge
    features: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    labels: list[str] = []
    for scene in scenes:
        pixels = preprocess([scene.image], config.vision.image_size)
        patches = _patch_tokens(encoder.stage, pixels)
        merged = merge_patches(patches, merge)[0]
        projected = encoder.stage.llama_proj(merged)
        patches = patches[0]
        width, height = scene.size
        cell = width / grid
        centres = (np.arange(grid) + 0.5) * cell
        for obj in scene.objects:
            box = obj.model_box(width, height)
            on = box_tokens((box.x1, box.y1, box.x2, box.y2), 100, grid, merge)
            x1, y1, x2, y2 = obj.box
            cols = np.flatnonzero((centres >= x1) & (centres < x2))
            rows = np.flatnonzero((centres >= y1) & (centres < y2))
            inside = (rows[:, None] * grid + cols[None, :]).ravel()
            if inside.size == 0:
                cx, cy = obj.centre
                inside = np.array([int(cy // cell) * grid + int(cx // cell)])
            features["patches"].append(patches[torch.from_numpy(inside)].mean(0).numpy())
            features["merged"].append(merged[on].mean(0).numpy())
            features["projected"].append(projected[on].mean(0).float().numpy())
            labels.append(f"{obj.kind}:{obj.colour}")
    return {name: np.array(rows) for name, rows in features.items()}, labels


def _probe(fit_x: np.ndarray, fit_y: list[str], x: np.ndarray) -> list[str]:
    """A standardised linear softmax classifier fitted on (fit_x, fit_y), applied to ``x``."""
    classes = sorted(set(fit_y))
    mean, std = fit_x.mean(axis=0), fit_x.std(axis=0) + 1e-6
    inputs = torch.tensor((fit_x - mean) / std, dtype=torch.float32)
    targets = torch.tensor([classes.index(y) for y in fit_y])
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(inputs.shape[1], len(classes))
    with torch.no_grad():
        linear.weight.normal_(0, 0.01, generator=generator)
        linear.bias.zero_()
    optimiser = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(_PROBE_STEPS):
        optimiser.zero_grad()
        F.cross_entropy(linear(inputs), targets).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = linear(torch.tensor((x - mean) / std, dtype=torch.float32)).argmax(dim=1)
    return [classes[i] for i in predicted.tolist()]


def main(argv: list[str] | None = None) -> None:
    """Print how often each feature's probe names a held-out object's class and colour."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL, help="model folder")
    parser.add_argument("--fit-scenes", type=int, default=200, help="scenes fitting the probes")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes scored")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    encoder = VisionEncoder.load(args.model)
    fit = fit_scenes(args.fit_scenes)
    fit_features, fit_labels = _collect(encoder, fit)
    features, labels = _collect(encoder, held_out_scenes(args.scenes, 0))
    truth = np.array(labels)
    kinds = np.array([label.split(":")[0] for label in labels])
    # The constant guess: each class's commonest colour among the fitting objects.
    commonest = {
        kind: Counter(y for y in fit_labels if y.startswith(f"{kind}:")).most_common(1)[0][0]
        for kind in set(kinds)
    }
    guesses = {"majority": [commonest[kind] for kind in kinds]}
    classes = sorted(set(kinds))
    results: dict[str, dict[str, float]] = {}
    for name in FEATURES:
        guesses[name] = _probe(fit_features[name], fit_labels, features[name])
    for name in (*FEATURES, "majority"):
        hits = np.array(guesses[name]) == truth
        results[name] = {
            "all": round(float(hits.mean()), 3),
            **{kind: round(float(hits[kinds == kind].mean()), 3) for kind in classes},
        }
    if args.json:
        print(json.dumps({"objects": len(labels), "fit_objects": len(fit_labels), **results}))
        return
    print(f"{len(labels)} held-out objects, probes fitted on {len(fit_labels)}")
    print("class:colour accuracy   all  " + "  ".join(classes))
    for name, figures in results.items():
        print(f"{name:<20}  " + "  ".join(f"{v:.3f}" for v in figures.values()))
    print("(majority: each class's commonest colour, a constant guess)")


if __name__ == "__main__":
    main()
