"""Where the decoder looks when it starts a box: attention on the referred object's image tokens.

For [refer] questions on held-out world scenes, the prompt and the answer's opening ``{`` are fed
to the decoder (teacher forcing) and, at the position that predicts the first box number, each
layer's and head's attention over the 256 image tokens is split into the mass on tokens that
overlap the referred object and the rest. "lift" is that mass over the object's share of the
tokens: 1 is no better than looking everywhere, large means the head finds the object. A decoder
whose heads find the object but whose boxes are wrong has to learn what to copy; one whose heads
do not has to learn where to look.

It also reports the head that training supervises (``Stages.attention_supervision``: the last
layer's first head) with the true answer fed in: the share of its whole attention that lands on
the object at each position predicting a box number (x1, y1, x2, y2), as the training loss counts
it.

    .venv/bin/python -m skyeye.lab.probes.attention_probe --scenes 30 [--model DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from skyeye.lab.training import box_tokens
from skyeye.lab.world import (
    Sample,
    Scene,
    SceneObject,
    held_out_scenes,
    make_samples,
    refer_expressions,
)
from skyeye.model import TextDecoder, VisionEncoder
from skyeye.model.decoder import IMAGE_TOKEN
from skyeye.model.vocabulary import NUMBER_TOKENS
from skyeye.settings import PACKAGED_MODEL


def _refer_questions(scene: Scene) -> list[tuple[Sample, SceneObject]]:
    """Each [refer] sample of the scene, with the object its expression picks out."""
    expressions = dict(refer_expressions(scene))
    return [
        (s, next(o for e, o in expressions.items() if e in s.instruction))
        for s in make_samples(scene)
        if s.kind == "refer"
    ]


def _attention(
    decoder: TextDecoder,
    ids: list[int],
    prompt: torch.Tensor,
    answer: list[int],
    numbers: set[int],
    on_object: np.ndarray,
) -> tuple[np.ndarray, list[float]]:
    """One question's lift per (layer, head), and the supervised head's mass per box number.

    The prompt and the true answer are fed in; the lift is taken at the position that predicts
    the first box number, the supervised head's share on the object at each of the four.
    """
    embed = decoder.llm.get_input_embeddings()
    inputs = torch.cat([prompt, embed(torch.tensor(answer))])[None]
    with torch.inference_mode():
        attentions = decoder.llm(inputs_embeds=inputs, output_attentions=True).attentions
    # Position p predicts token p + 1.
    predicting = [len(ids) + i - 1 for i, t in enumerate(answer) if t in numbers][:4]
    image = torch.tensor([i == IMAGE_TOKEN for i in ids] + [False] * len(answer))
    share = on_object.mean()
    per_layer = []
    for layer in attentions:
        weights = layer[0, :, predicting[0], image].float().numpy()  # (heads, 256)
        mass = weights[:, on_object].sum(axis=1) / weights.sum(axis=1)
        per_layer.append(mass / share)
    head = attentions[-1][0, 0][:, image].float().numpy()  # (positions, 256)
    return np.stack(per_layer), [float(head[p, on_object].sum()) for p in predicting]


def main(argv: list[str] | None = None) -> None:
    """Print how much more than chance each head attends to the referred object, per layer."""
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
    # convert_tokens_to_ids has no overload: a list of tokens gives a list of ids
    number_ids: list[int] = tokenizer.convert_tokens_to_ids(list(NUMBER_TOKENS))  # type: ignore[assignment]
    numbers = set(number_ids)
    lifts: list[np.ndarray] = []  # per question: (layers, heads)
    supervised: list[list[float]] = []  # per question: mass at x1, y1, x2, y2
    for scene in held_out_scenes(args.scenes, args.seed):
        questions = _refer_questions(scene)
        if not questions:
            continue
        embeds = encoder.encode([scene.image])[0]
        rows = decoder._rows(embeds, [s.instruction for s, _ in questions])
        for (ids, prompt), (sample, target) in zip(rows, questions, strict=True):
            answer = tokenizer(
                sample.answer, add_special_tokens=False, split_special_tokens=True
            ).input_ids
            on_object = np.zeros(vision.num_patches // merge, dtype=bool)
            on_object[box_tokens(target.box, vision.image_size, vision.grid_size, merge)] = True
            lift, mass = _attention(decoder, ids, prompt, answer, numbers, on_object)
            lifts.append(lift)
            supervised.append(mass)
    mean = np.mean(lifts, axis=0)
    best_head_lift = float(np.median([q.max() for q in lifts]))
    supervised_mass = {
        name: {"mean": round(float(np.mean(m)), 3), "median": round(float(np.median(m)), 3)}
        for name, m in zip(("x1", "y1", "x2", "y2"), np.array(supervised).T, strict=True)
    }
    if args.json:
        report = {
            "questions": len(lifts),
            "lift_per_layer_head": np.round(mean, 2).tolist(),
            "best_head_lift_median": best_head_lift,
            "supervised_head_mass": supervised_mass,
        }
        print(json.dumps(report))
        return
    print(f"{len(lifts)} refer questions; lift of attention on the referred object (1 = chance)")
    for index, heads in enumerate(mean):
        print(f"layer {index}: " + "  ".join(f"{h:5.2f}" for h in heads))
    print(f"median over questions of the best head's lift: {best_head_lift:.2f}")
    print("supervised head (last layer, first head), share of its attention on the object:")
    for name, figures in supervised_mass.items():
        print(f"  predicting {name}: mean {figures['mean']:.3f}, median {figures['median']:.3f}")


if __name__ == "__main__":
    main()
