"""Which of a [refer] box's four numbers the decoder gets wrong, and whether its hidden state knows.

For every [refer] question of some scenes the true answer ``{<x1><y1><x2><y2>}`` is fed to the
decoder (teacher forcing). At each of the four positions that predict a number this reports:

- the decoder's own error: mean absolute error (0-100 scale) of its most likely number there,
  given the true numbers before it;
- a linear probe's error: ridge regressions from each layer's hidden state at that position to
  the true number, fitted on questions about training-world scenes and scored on held-out ones;
- the same probe on the mean of the referred object's image tokens (the ``llama_proj`` rows that
  overlap its true box): how precisely the box can be read from what a head focused on the
  object alone would see, a ceiling for copying it.

A decoder that misses x1 but gets x2 and y2 once x1 and y1 are given knows the objects' extents
and fails at picking the referred object; a probe that beats the decoder at some layer means the
position is there but does not reach the number's logits.

    .venv/bin/python -m skyeye.lab.probes.box_probe [--model DIR] [--fit-scenes 200] \
        [--scenes 50] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from skyeye.lab.training import box_tokens
from skyeye.lab.world import Scene, held_out_scenes, make_samples, render_scene
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.model.answers import parse_boxes
from skyeye.settings import PACKAGED_MODEL

COORDINATES = ("x1", "y1", "x2", "y2")
# Training-world scene seeds for fitting the probes, far from the seeds a training run draws first.
_FIT_SEED_BASE = 123_456
_RIDGE = 10.0


def fit_scenes(n: int) -> Iterator[Scene]:
    """``n`` training-world scenes for fitting probes, difficulties spread over [0, 1]."""
    for i in range(n):
        yield render_scene(_FIT_SEED_BASE + i, difficulty=i / max(1, n - 1))


def _number(decoder: TextDecoder, token_id: int) -> int | None:
    """The value of a number token ``<0>``..``<100>``, None for any other token."""
    # convert_ids_to_tokens has no overload: one id gives a str, only a list of ids a list
    token: str = decoder.tokenizer.convert_ids_to_tokens(token_id)  # type: ignore[assignment]
    text = token.strip("<>")
    return int(text) if text.isdigit() else None


@torch.no_grad()
def _collect(
    encoder: VisionEncoder, decoder: TextDecoder, scenes: Iterable[Scene]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each [refer] question's hidden states, true box, the decoder's numbers and object tokens.

    As arrays: hidden (questions, layers + 1, 4, width), truth (questions, 4), the decoder's
    (questions, 4), -1 where its most likely token is not a number, object tokens (questions,
    width).
    """
    tokenizer, embed = decoder.tokenizer, decoder.llm.get_input_embeddings()
    grid, merge = encoder.config.vision.grid_size, encoder.config.merge
    hidden, truth, own, objects = [], [], [], []
    for scene in scenes:
        samples = [s for s in make_samples(scene) if s.kind == "refer"]
        if not samples:
            continue
        image = encoder.encode([scene.image])[0]
        rows = decoder._rows(image, [s.instruction for s in samples])
        for (_, prompt), sample in zip(rows, samples, strict=True):
            answer = tokenizer(sample.answer, add_special_tokens=False, split_special_tokens=True)
            ids = answer.input_ids
            numbers = [i for i, t in enumerate(ids) if _number(decoder, t) is not None][:4]
            inputs = torch.cat([prompt, embed(torch.tensor(ids[: numbers[-1]]))])[None]
            out = decoder.llm(inputs_embeds=inputs, output_hidden_states=True)
            # Position p predicts token p + 1.
            at = [prompt.shape[0] + i - 1 for i in numbers]
            hidden.append(torch.stack([h[0, at] for h in out.hidden_states]).float().numpy())
            box = parse_boxes(sample.answer)[0]
            truth.append([box.x1, box.y1, box.x2, box.y2])
            on = box_tokens((box.x1, box.y1, box.x2, box.y2), 100, grid, merge)
            objects.append(image[on].mean(dim=0).float().numpy())
            guesses = [_number(decoder, int(t)) for t in out.logits[0, at].argmax(dim=-1)]
            own.append([-1 if g is None else g for g in guesses])
    return (
        np.array(hidden),
        np.array(truth, dtype=float),
        np.array(own, dtype=float),
        np.array(objects),
    )


def _probe_error(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error on (x, y) of a standardised ridge regression fitted on the train pair."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    design = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    weights = np.linalg.solve(
        design.T @ design + _RIDGE * np.eye(design.shape[1]), design.T @ train_y
    )
    predicted = np.c_[(x - mean) / std, np.ones(len(x))] @ weights
    return float(np.abs(predicted - y).mean())


def main(argv: list[str] | None = None) -> None:
    """Print each box number's error: the decoder's, the mean box's, and the linear probes'."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL, help="model folder")
    parser.add_argument("--fit-scenes", type=int, default=200, help="scenes fitting the probes")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes scored")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    encoder, decoder = VisionEncoder.load(args.model), TextDecoder.load(args.model)
    fit = fit_scenes(args.fit_scenes)
    fit_hidden, fit_truth, _, fit_objects = _collect(encoder, decoder, fit)
    hidden, truth, own, objects = _collect(encoder, decoder, held_out_scenes(args.scenes, 0))
    # An answer that is not a number counts as the middle of the scale.
    decoder_error = np.abs(np.where(own >= 0, own, 50) - truth).mean(axis=0)
    mean_box_error = np.abs(truth - fit_truth.mean(axis=0)).mean(axis=0)
    probes = [
        [
            _probe_error(fit_hidden[:, layer, c], fit_truth[:, c], hidden[:, layer, c], truth[:, c])
            for c in range(4)
        ]
        for layer in range(hidden.shape[1])
    ]
    object_probe = [
        _probe_error(fit_objects, fit_truth[:, c], objects, truth[:, c]) for c in range(4)
    ]
    report = {
        "questions": {"fit": len(fit_truth), "scored": len(truth)},
        "decoder_mae": dict(zip(COORDINATES, np.round(decoder_error, 1).tolist(), strict=True)),
        "mean_box_mae": dict(zip(COORDINATES, np.round(mean_box_error, 1).tolist(), strict=True)),
        "probe_mae_per_layer": [np.round(p, 1).tolist() for p in probes],
        "object_tokens_probe_mae": dict(
            zip(COORDINATES, np.round(object_probe, 1).tolist(), strict=True)
        ),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{len(truth)} held-out refer questions (probes fitted on {len(fit_truth)}); "
        "MAE on the 0-100 scale, true numbers fed before each position"
    )
    print("            " + "  ".join(f"{c:>5}" for c in COORDINATES))
    print("decoder     " + "  ".join(f"{v:5.1f}" for v in decoder_error))
    print("mean box    " + "  ".join(f"{v:5.1f}" for v in mean_box_error))
    for layer, errors in enumerate(probes):
        name = "embeddings" if layer == 0 else f"layer {layer}"
        print(f"{name:<12}" + "  ".join(f"{v:5.1f}" for v in errors))
    print("object toks " + "  ".join(f"{v:5.1f}" for v in object_probe))


if __name__ == "__main__":
    main()
