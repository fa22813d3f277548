"""How far off the model's own [refer] boxes are: free generation, by expression and object size.

``skyeye model eval`` counts a [refer] answer as a hit at IoU > 0.5. This script says what the
misses look like. For every [refer] question of some held-out world scenes the model generates
its answer (greedy, as the evaluation does) and the first box it gives is compared with the true
one: the absolute error of each corner (0-100 scale), the share within 1 and within 3, and the
IoU, overall and split by the kind of expression ("the ship", "the largest ship", "the ship on
the left", "the red ship") and by the object's larger side. A model that picks the right object
but places its corners a few units off has median errors of a few units; one that picks the
wrong object has errors near the mean box's (about 21).

    .venv/bin/python -m skyeye.lab.probes.refer_errors [--model DIR] [--scenes 50] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skyeye.lab.evaluation import iou
from skyeye.lab.world import held_out_scenes, make_samples, refer_expressions
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.model.answers import parse_boxes
from skyeye.settings import PACKAGED_MODEL

COORDINATES = ("x1", "y1", "x2", "y2")
_SIZE_WORDS = ("largest", "smallest")
_POSITION_WORDS = ("left", "right", "top", "bottom")


def _expression_kind(text: str, kind: str) -> str:
    """How an expression picks its object: by size, by position, as the only one, or by colour."""
    words = text.split()
    if any(w in words for w in _SIZE_WORDS):
        return "size"
    if any(w in words for w in _POSITION_WORDS):
        return "position"
    return "only" if text == f"the {kind}" else "colour"


def _size_band(side: int) -> str:
    return "side < 4" if side < 4 else "side 4-7" if side < 8 else "side >= 8"


def _summary(errors: np.ndarray, ious: np.ndarray) -> dict[str, Any]:
    """Corner errors of the parsed answers; IoU over all (an unparsed answer has IoU 0)."""
    summary: dict[str, Any] = {"questions": len(ious)}
    if len(errors):
        summary |= {
            "parsed": round(len(errors) / len(ious), 3),
            "median_error": dict(zip(COORDINATES, np.median(errors, axis=0).tolist(), strict=True)),
            "mean_error": dict(
                zip(COORDINATES, np.round(errors.mean(axis=0), 1).tolist(), strict=True)
            ),
            "within_1": dict(
                zip(COORDINATES, np.round((errors <= 1).mean(axis=0), 3).tolist(), strict=True)
            ),
            "within_3": dict(
                zip(COORDINATES, np.round((errors <= 3).mean(axis=0), 3).tolist(), strict=True)
            ),
        }
    summary |= {
        "mean_iou": round(float(ious.mean()), 3),
        "iou_over_0.3": round(float((ious >= 0.3).mean()), 3),
        "iou_over_0.5": round(float((ious > 0.5).mean()), 3),
    }
    return summary


def _print_table(report: dict[str, dict[str, Any]], heading: str) -> None:
    """The report as a Markdown table under ``heading``, one row a group."""
    print(heading)
    print(
        "| group | questions | parsed | median error x1/y1/x2/y2 | mean error | within 1 (x1/y1) "
        "| mean IoU | IoU >= 0.3 | IoU > 0.5 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for group, s in report.items():
        if "median_error" in s:
            median = "/".join(f"{v:g}" for v in s["median_error"].values())
            mean = "/".join(f"{v:g}" for v in s["mean_error"].values())
            within = f"{s['within_1']['x1']:.2f}/{s['within_1']['y1']:.2f}"
        else:
            median = mean = within = "-"
        print(
            f"| {group} | {s['questions']} | {s.get('parsed', 0):.2f} | {median} | {mean} "
            f"| {within} | {s['mean_iou']:.3f} | {s['iou_over_0.3']:.3f} "
            f"| {s['iou_over_0.5']:.3f} |"
        )


def main(argv: list[str] | None = None) -> None:
    """Print the corner errors and IoU of the model's own [refer] boxes, by group."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL, help="model folder")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="held-out scene seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    encoder, decoder = VisionEncoder.load(args.model), TextDecoder.load(args.model)
    # group -> (corner errors of parsed answers, IoU of every answer)
    errors: dict[str, list[list[int]]] = defaultdict(list)
    ious: dict[str, list[float]] = defaultdict(list)
    for scene in held_out_scenes(args.scenes, args.seed):
        expressions = refer_expressions(scene)
        samples = [s for s in make_samples(scene) if s.kind == "refer"]
        if not samples:
            continue
        with torch.inference_mode():
            image = encoder.encode([scene.image])[0]
            answers = decoder.generate(image, [s.instruction for s in samples], max_new_tokens=10)
        for sample, answer, (text, target) in zip(samples, answers, expressions, strict=True):
            truth = parse_boxes(sample.answer)[0]
            groups = (
                "all",
                _expression_kind(text, target.kind),
                _size_band(max(truth.x2 - truth.x1, truth.y2 - truth.y1)),
            )
            boxes = parse_boxes(answer)
            for group in groups:
                ious[group].append(iou(boxes[0], truth) if boxes else 0.0)
                if boxes:
                    got, want = boxes[0], truth
                    errors[group].append(
                        [
                            abs(got.x1 - want.x1),
                            abs(got.y1 - want.y1),
                            abs(got.x2 - want.x2),
                            abs(got.y2 - want.y2),
                        ]
                    )
    report = {
        group: _summary(np.array(errors[group]).reshape(-1, 4), np.array(ious[group]))
        for group in sorted(ious, key=lambda g: (g != "all", g))
    }
    if args.json:
        print(json.dumps(report))
        return
    heading = f"{args.model}: [refer] answers on {args.scenes} held-out scenes (seed {args.seed})"
    _print_table(report, heading)


if __name__ == "__main__":
    main()
