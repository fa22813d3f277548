"""Decoding throughput three ways: without prefix reuse, with it per tile, all tiles batched.

Every task of a tile shares the prompt up to the end of its image rows; with reuse that prefix is
run once per tile instead of once per task. Batched, one call decodes every task of every tile
together (``TextDecoder.generate_many``, as the LlmDecoder deployment does with a Serve batch):
the tiles' prefixes run as one batch, then all their tasks in one decoding loop. This encodes a
few held-out scenes of the procedural world with the model (default: the packaged skyeye-tiny,
whose answers stop at EOS as served) and decodes each tile's six tasks (caption, three detection
phrases, two questions) all three ways, checking that the answers agree.

    .venv/bin/python bench/decode_prefix.py --tiles 8 --json
    .venv/bin/python bench/decode_prefix.py --steps compiled   # the decoding steps compiled
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from skyeye.cli.arguments import count
from skyeye.lab.world import held_out_scenes
from skyeye.model import TextDecoder, VisionEncoder, prompts
from skyeye.model.checkpoint import CheckpointError
from skyeye.settings import PACKAGED_MODEL

TASKS = [
    prompts.caption(),
    prompts.detection("building"),
    prompts.detection("storage tank"),
    prompts.detection("small white boat"),
    prompts.vqa("Is there any water in the image?"),
    prompts.vqa("How many cars are in the parking lot?"),
]

# name -> what it runs over the tiles: (decoder, tiles, max_new_tokens) -> ids per tile and task
Mode = Callable[[TextDecoder, list[torch.Tensor], int], list[list[list[int]]]]
MODES: dict[str, Mode] = {
    "no_reuse": lambda decoder, tiles, n: [
        decoder.generate_ids(embeds, TASKS, max_new_tokens=n, reuse_prefix=False)
        for embeds in tiles
    ],
    "reuse": lambda decoder, tiles, n: [
        decoder.generate_ids(embeds, TASKS, max_new_tokens=n) for embeds in tiles
    ],
    "batched": lambda decoder, tiles, n: decoder.generate_ids_many(
        [(embeds, TASKS) for embeds in tiles], n
    ),
}
LABELS = {
    "no_reuse": "per tile, no reuse",
    "reuse": "per tile, reuse",
    "batched": "tiles batched",
}


def _run(
    mode: Mode, decoder: TextDecoder, tiles: list[torch.Tensor], max_new_tokens: int
) -> tuple[float, list[list[list[int]]]]:
    start = time.perf_counter()
    answers = mode(decoder, tiles, max_new_tokens)
    return time.perf_counter() - start, answers


def main(argv: list[str] | None = None) -> None:
    """Time decoding three ways (best of --repeats each); print tasks/s, speed-ups, agreement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=count, default=8, help="tiles per timed run (default 8)")
    parser.add_argument(
        "--images", type=count, default=3, help="distinct images, cycled (default 3)"
    )
    parser.add_argument(
        "--max-new-tokens", type=count, default=20, help="tokens per answer (default 20)"
    )
    parser.add_argument(
        "--repeats", type=count, default=3, help="timed runs; best kept (default 3)"
    )
    parser.add_argument("--threads", type=count, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--model", type=Path, default=PACKAGED_MODEL, help="model folder (default: skyeye-tiny)"
    )
    parser.add_argument("--seed", type=int, default=0, help="held-out scene seed (default 0)")
    parser.add_argument(
        "--steps",
        choices=["eager", "static", "compiled"],
        default="eager",
        help="how the steps after the prompt run, as SKYEYE_DECODING__STEPS (default eager)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        encoder = VisionEncoder.load(args.model)
        decoder = TextDecoder.load(args.model, steps=args.steps)
    except CheckpointError as exc:
        parser.error(f"--model: {exc}")
    images = [scene.image for scene in held_out_scenes(args.images, args.seed)]
    embeds = encoder.encode(images)
    decoder.warm_up()  # compiled steps: compiles for every shape, as a replica does at start
    tiles = [embeds[i % len(images)] for i in range(args.tiles)]

    seconds: dict[str, float] = {}
    answers: dict[str, list[list[list[int]]]] = {}
    for mode in MODES.values():
        _run(mode, decoder, tiles[:2], args.max_new_tokens)  # warm-up
    for _ in range(args.repeats):
        # Alternate the modes so that drift in machine load hits all alike.
        for name, mode in MODES.items():
            elapsed, answers[name] = _run(mode, decoder, tiles, args.max_new_tokens)
            seconds[name] = min(seconds.get(name, elapsed), elapsed)

    n_tasks = args.tiles * len(TASKS)
    rates = {name: n_tasks / seconds[name] for name in MODES}
    report: dict[str, object] = {
        "tiles": args.tiles,
        "tasks_per_tile": len(TASKS),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "steps": args.steps,
        "no_reuse_tasks_per_s": rates["no_reuse"],
        "reuse_tasks_per_s": rates["reuse"],
        "batched_tasks_per_s": rates["batched"],
        "speedup": seconds["no_reuse"] / seconds["reuse"],
        "batched_speedup": seconds["reuse"] / seconds["batched"],
        "same_answers": answers["no_reuse"] == answers["reuse"] == answers["batched"],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{args.tiles} tiles x {len(TASKS)} tasks, {args.max_new_tokens} new tokens, "
            f"{args.steps} steps"
        )
        print(f"{'mode':<20}{'tasks/s':>10}")
        for name in MODES:
            print(f"{LABELS[name]:<20}{rates[name]:>10.1f}")
        print(
            f"reuse x{report['speedup']:.2f} over no reuse, batched "
            f"x{report['batched_speedup']:.2f} over per tile with reuse, "
            f"same answers: {report['same_answers']}"
        )


if __name__ == "__main__":
    main()
