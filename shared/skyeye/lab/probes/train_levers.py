r"""Try one training lever: train with some :class:`Stages` fields overridden, then score it.

The model is skyeye-tiny at a fixed step budget, scored on held-out scenes (evaluation seed 0, as
`skyeye model eval`).

Fixed step counts (not a time budget) keep lever runs comparable on a CPU shared with other
work, and repeat exactly from the seed; ``--minutes`` sizes them from a time budget instead (the
counts are printed, to repeat the run). Overrides are ``field=value`` with JSON values:

    .venv/bin/python -m skyeye.lab.probes.train_levers --out /tmp/lev/base --threads 1 \
        pretrain_steps=250 instruct_steps=350 dense_boxes=false number_embeddings=false \
        number_sigma=0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from skyeye.lab.evaluation import evaluate
from skyeye.lab.training import Stages, train
from skyeye.model.config import ModelConfig


def _parser(tiny: ModelConfig) -> argparse.ArgumentParser:
    """The command line: where and how to train, the ViT's shape (``tiny``'s by default), levers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu", help="where the model trains, e.g. cuda")
    parser.add_argument("--workers", type=int, default=0, help="scene-assembling processes")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes scored (0: none)")
    parser.add_argument(
        "--vision-width",
        type=int,
        default=tiny.vision.hidden_size,
        help="ViT width (heads of 32, MLP 4x wide; default: skyeye-tiny's)",
    )
    parser.add_argument(
        "--vision-layers",
        type=int,
        default=tiny.vision.num_layers,
        help="ViT depth (default: skyeye-tiny's)",
    )
    parser.add_argument(
        "--tower", type=Path, help="start from this run's vision tower instead of stage 1"
    )
    parser.add_argument(
        "--init", type=Path, help="train stage 2 further from every weight of this run's folder"
    )
    parser.add_argument(
        "--minutes", type=float, help="time budget sizing the steps not fixed by overrides"
    )
    parser.add_argument("overrides", nargs="*", metavar="FIELD=VALUE", help="Stages fields")
    return parser


def _with_vision(tiny: ModelConfig, width: int, layers: int) -> ModelConfig:
    """``tiny`` with a ViT of this width and depth: heads of 32, MLP 4x wide."""
    vision = tiny.vision.model_copy(
        update={
            "hidden_size": width,
            "num_layers": layers,
            "num_heads": width // 32,
            "mlp_hidden_size": 4 * width,
        }
    )
    return tiny.model_copy(update={"vision": vision})


def main() -> None:
    """Train one lever's model and print its steps, patch figures and scores as one JSON line."""
    tiny = ModelConfig.skyeye_tiny()
    args = _parser(tiny).parse_args()
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    # The closing 20-scene evaluation of train() would only repeat part of the one below.
    stages = Stages(**{"eval_scenes": 0, "progress_every": 50, **overrides})
    start = time.perf_counter()
    minutes = 10**6 if args.minutes is None else args.minutes
    report = train(
        args.out,
        seed=args.seed,
        config=_with_vision(tiny, args.vision_width, args.vision_layers),
        minutes=minutes,
        stages=stages,
        threads=args.threads,
        device=args.device,
        workers=args.workers,
        tower=args.tower,
        init=args.init,
    )
    seconds = time.perf_counter() - start
    steps = {"pretrain": report.pretrain_steps, "instruct": report.instruct_steps}
    if args.scenes == 0:
        print(json.dumps({"overrides": overrides, "train_seconds": round(seconds), "steps": steps}))
        return
    scores = evaluate(args.out, args.scenes, 0, 16)
    print(scores.table())
    figures = {name: round(family.score, 3) for name, family in scores.families.items()}
    grounding = scores.families["grounding"].parsed
    print(
        json.dumps(
            {
                "overrides": overrides,
                "train_seconds": round(seconds),
                "steps": steps,
                "patch": report.patch_accuracy,
                "scores": figures,
                "grounding_parsed": grounding,
            }
        )
    )


if __name__ == "__main__":
    main()
