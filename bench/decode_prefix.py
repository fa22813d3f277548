"""Decoding throughput with and without prefix KV-cache reuse, on a CPU model.

Every task of a tile shares the prompt up to the end of its image rows; with reuse that prefix is
run once per tile instead of once per task. This encodes a few held-out scenes of the procedural
world with the model (default: the packaged skyeye-tiny, whose answers stop at EOS as served) and
decodes each tile's six tasks (caption, three detection phrases, two questions) both ways,
checking that the answers agree.

    .venv/bin/python bench/decode_prefix.py --tiles 8 --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from skyeye.lab.world import held_out_scenes
from skyeye.model import TextDecoder, VisionEncoder, prompts
from skyeye.settings import PACKAGED_MODEL

TASKS = [
    prompts.caption(),
    prompts.detection("building"),
    prompts.detection("storage tank"),
    prompts.detection("small white boat"),
    prompts.vqa("Is there any water in the image?"),
    prompts.vqa("How many cars are in the parking lot?"),
]


def _run(
    decoder: TextDecoder, tiles: list[torch.Tensor], max_new_tokens: int, reuse: bool
) -> tuple[float, list[list[list[int]]]]:
    start = time.perf_counter()
    answers = [
        decoder.generate_ids(embeds, TASKS, max_new_tokens, reuse_prefix=reuse) for embeds in tiles
    ]
    return time.perf_counter() - start, answers


def main(argv: list[str] | None = None) -> None:
    """Time decoding both ways (best of --repeats each); print tasks/s, speed-up, agreement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=8, help="tiles per timed run (default 8)")
    parser.add_argument("--images", type=int, default=3, help="distinct images, cycled (default 3)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=20, help="tokens per answer (default 20)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; best kept (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--model", type=Path, default=PACKAGED_MODEL, help="model folder (default: skyeye-tiny)"
    )
    parser.add_argument("--seed", type=int, default=0, help="held-out scene seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = [scene.image for scene in held_out_scenes(args.images, args.seed)]
    embeds = VisionEncoder.load(args.model).encode(images)
    decoder = TextDecoder.load(args.model)
    tiles = [embeds[i % len(images)] for i in range(args.tiles)]

    seconds: dict[bool, float] = {}
    answers: dict[bool, list[list[list[int]]]] = {}
    _run(decoder, tiles[:1], args.max_new_tokens, reuse=True)  # warm-up
    for _ in range(args.repeats):
        # Alternate the modes so that drift in machine load hits both alike.
        for reuse in (False, True):
            elapsed, answers[reuse] = _run(decoder, tiles, args.max_new_tokens, reuse)
            seconds[reuse] = min(seconds.get(reuse, elapsed), elapsed)

    n_tasks = args.tiles * len(TASKS)
    report: dict[str, object] = {
        "tiles": args.tiles,
        "tasks_per_tile": len(TASKS),
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "no_reuse_tasks_per_s": n_tasks / seconds[False],
        "reuse_tasks_per_s": n_tasks / seconds[True],
        "speedup": seconds[False] / seconds[True],
        "same_answers": answers[True] == answers[False],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.tiles} tiles x {len(TASKS)} tasks, {args.max_new_tokens} new tokens")
        print(f"{'mode':<14}{'tasks/s':>10}")
        print(f"{'no reuse':<14}{report['no_reuse_tasks_per_s']:>10.1f}")
        print(f"{'prefix reuse':<14}{report['reuse_tasks_per_s']:>10.1f}")
        print(f"speedup x{report['speedup']:.2f}, same answers: {report['same_answers']}")


if __name__ == "__main__":
    main()
