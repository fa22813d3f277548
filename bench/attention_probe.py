"""Where the decoder looks when it starts a box: attention on the referred object's image tokens.

For [refer] questions on held-out world scenes, the prompt and the answer's opening ``{`` are fed
to the decoder (teacher forcing) and, at the position that predicts the first box number, each
layer's and head's attention over the 256 image tokens is split into the mass on tokens that
overlap the referred object and the rest. "lift" is that mass over the object's share of the
tokens: 1 is no better than looking everywhere, large means the head finds the object. A decoder
whose heads find the object but whose boxes are wrong has to learn what to copy; one whose heads
do not has to learn where to look.

    .venv/bin/python bench/attention_probe.py --scenes 30 [--model DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from skyeye.model import TextDecoder, VisionEncoder
from skyeye.model.decoder import IMAGE_TOKEN
from skyeye.settings import PACKAGED_MODEL
from skyeye.training import box_tokens
from skyeye.world import held_out_scenes, make_samples, refer_expressions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL, help="model folder")
    parser.add_argument("--scenes", type=int, default=30, help="held-out scenes (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="held-out scene seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    encoder, decoder = VisionEncoder.load(args.model), TextDecoder.load(args.model)
    # SDPA returns no attention weights; eager computes the same attention and keeps them
    decoder.llm.set_attn_implementation("eager")
    vision, merge = encoder.config.vision, encoder.config.merge
    tokenizer = decoder.tokenizer
    opening = tokenizer("{", add_special_tokens=False, split_special_tokens=True).input_ids
    lifts: list[np.ndarray] = []  # per question: (layers, heads)
    for scene in held_out_scenes(args.scenes, args.seed):
        expressions = dict(refer_expressions(scene))
        questions = [
            (s, next(o for e, o in expressions.items() if e in s.instruction))
            for s in make_samples(scene)
            if s.kind == "refer"
        ]
        if not questions:
            continue
        embeds = encoder.encode([scene.image])[0]
        rows = decoder._rows(embeds, [s.instruction for s, _ in questions])
        embed = decoder.llm.get_input_embeddings()
        for (ids, prompt), (_, target) in zip(rows, questions, strict=True):
            inputs = torch.cat([prompt, embed(torch.tensor(opening))])[None]
            with torch.inference_mode():
                attentions = decoder.llm(inputs_embeds=inputs, output_attentions=True).attentions
            image = torch.tensor([i == IMAGE_TOKEN for i in ids] + [False] * len(opening))
            on_object = np.zeros(vision.num_patches // merge, dtype=bool)
            on_object[box_tokens(target.box, vision.image_size, vision.grid_size, merge)] = True
            share = on_object.mean()
            per_layer = []
            for layer in attentions:
                weights = layer[0, :, -1, image].float().numpy()  # (heads, 256)
                mass = weights[:, on_object].sum(axis=1) / weights.sum(axis=1)
                per_layer.append(mass / share)
            lifts.append(np.stack(per_layer))
    mean = np.mean(lifts, axis=0)
    report = {
        "questions": len(lifts),
        "lift_per_layer_head": np.round(mean, 2).tolist(),
        "best_head_lift_median": float(np.median([q.max() for q in lifts])),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{len(lifts)} refer questions; lift of attention on the referred object (1 = chance)")
    for index, heads in enumerate(mean):
        print(f"layer {index}: " + "  ".join(f"{h:5.2f}" for h in heads))
    print(f"median over questions of the best head's lift: {report['best_head_lift_median']:.2f}")


if __name__ == "__main__":
    main()
