"""How well a model answers questions about held-out scenes of the procedural world.

Families and metrics:

- grounding: ``[refer]`` accuracy, a hit when the first box of the answer has IoU > 0.5 with the
  true box (the spec's rule); an answer without a box is a miss.
- detection: ``[detection]`` F1 over boxes, each true box matched to at most one predicted box at
  IoU > 0.5 (greedy, highest IoU first); every box of the answer counts, whatever its ``<p>``
  phrase says.
- presence, count, vqa (both together), scene: exact match after :func:`normalise_answer`.
- caption: corpus BLEU-4 with the brevity penalty (Papineni et al. 2002), one reference a caption.

Boxes are compared on the model's 0-100 scale, the true box being the one the answer states
(``int()``-truncated, as MiniGPT-v2's data): a verbatim true answer scores 1 even for objects a few
pixels wide, where comparing against the exact pixel box would make perfection impossible.

Baselines are constant answers chosen with hindsight on the same samples (always "yes", the most
common count and class, the best-scoring single caption): a model must beat them to show that it
looks at the image.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from skyeye.lab.world import MAX_DETECTION_BOXES, Sample, held_out_scenes, make_samples
from skyeye.model.answers import Box, parse_boxes

__all__ = [
    "FAMILIES",
    "MAX_NEW_TOKENS",
    "EvalReport",
    "FamilyScore",
    "corpus_bleu",
    "evaluate",
    "iou",
    "normalise_answer",
    "score",
]

FAMILIES = ("grounding", "detection", "presence", "count", "vqa", "scene", "caption")

# Generation budget per sample kind: the longest true answer plus EOS and some slack (checked by
# the tests), so that a model is never cut off before it could have been right.
MAX_NEW_TOKENS = {
    "caption": 32,
    "refer": 10,
    "detection": 10 + 7 * MAX_DETECTION_BOXES,
    "presence": 4,
    "count": 4,
    "scene": 4,
}

IOU_THRESHOLD = 0.5
# Reference captions tried as the constant-caption baseline (the most common ones).
_CAPTION_TRIES = 50

_T = TypeVar("_T")
_NO_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
)
_NUMBERS = {word: str(n) for n, word in enumerate(_NUMBER_WORDS)}
_PUNCTUATION = re.compile(r"[^\w\s]")
_WORD = re.compile(r"[a-z0-9]+")


class FamilyScore(BaseModel):
    """One family's figure, how many samples it covers, and the constant answer it must beat."""

    metric: str
    score: float
    count: int  # samples scored
    baseline: float | None = None
    baseline_name: str | None = None
    parsed: float | None = None  # share of answers with at least one box (grounding, detection)


class EvalReport(BaseModel):
    """What :func:`evaluate` measured: the model, the held-out scenes asked about, each family."""

    model: str
    scenes: int
    seed: int
    difficulty: float | None  # None: spread evenly over [0, 1]
    samples: int
    seconds: float
    families: dict[str, FamilyScore]

    def table(self) -> str:
        """A Markdown table, one row a family."""
        lines = [
            f"model {self.model}: {self.scenes} held-out scenes (seed {self.seed}), "
            f"{self.samples} samples, {self.seconds:.1f} s",
            "| family | metric | n | score | baseline | parsed |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, family in self.families.items():
            baseline = (
                f"{family.baseline:.3f} ({family.baseline_name})"
                if family.baseline is not None
                else "-"
            )
            parsed = f"{family.parsed:.3f}" if family.parsed is not None else "-"
            lines.append(
                f"| {name} | {family.metric} | {family.count} | {family.score:.3f} "
                f"| {baseline} | {parsed} |"
            )
        return "\n".join(lines)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes, 0 when both are empty."""
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    inter = max(0, width) * max(0, height)
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation, single spaces, number words as digits."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(word, word) for word in words)


def _ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> float:
    """Corpus BLEU: the geometric mean of clipped n-gram precisions, with the brevity penalty.

    The precisions are summed over the corpus; the brevity penalty takes, for each candidate, the
    reference length closest to it (shorter wins a tie).

    No smoothing, as the standard metric: any n-gram order without a match gives 0.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    matches = [0] * max_n
    totals = [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        tokens = _WORD.findall(candidate.lower())
        ref_tokens = [_WORD.findall(r.lower()) for r in refs]
        candidate_length += len(tokens)
        reference_length += min(
            (len(r) for r in ref_tokens), key=lambda n: (abs(n - len(tokens)), n)
        )
        for n in range(1, max_n + 1):
            counts = _ngrams(tokens, n)
            most: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                most |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            totals[n - 1] += max(0, len(tokens) - n + 1)
    if candidate_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = min(0.0, 1 - reference_length / candidate_length)
    return math.exp(log_precision + brevity)


def _detection_counts(truth: list[Box], predicted: list[Box]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) after one-to-one greedy matching."""
    pairs = sorted(
        ((iou(t, p), i, j) for i, t in enumerate(truth) for j, p in enumerate(predicted)),
        reverse=True,
    )
    used_truth: set[int] = set()
    used_predicted: set[int] = set()
    for overlap, i, j in pairs:
        if overlap <= IOU_THRESHOLD:
            break
        if i not in used_truth and j not in used_predicted:
            used_truth.add(i)
            used_predicted.add(j)
    hits = len(used_truth)
    return hits, len(predicted) - hits, len(truth) - hits


def _accuracy(pairs: list[tuple[Sample, str]]) -> float:
    if not pairs:
        return 0.0
    right = sum(normalise_answer(a) == normalise_answer(s.answer) for s, a in pairs)
    return right / len(pairs)


def _constant(pairs: list[tuple[Sample, str]], answer: str) -> float:
    return _accuracy([(s, answer) for s, _ in pairs])


def _majority(pairs: list[tuple[Sample, str]]) -> str:
    return Counter(s.answer for s, _ in pairs).most_common(1)[0][0] if pairs else ""


def score(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, FamilyScore]:
    """Every family's figure for these answers, one per sample, with the baselines."""
    if len(samples) != len(answers):
        raise ValueError(f"{len(samples)} samples but {len(answers)} answers")
    by_kind: dict[str, list[tuple[Sample, str]]] = {}
    for sample, answer in zip(samples, answers, strict=True):
        by_kind.setdefault(sample.kind, []).append((sample, answer))
    families = {
        "grounding": _grounding(by_kind.get("refer", [])),
        "detection": _detection(by_kind.get("detection", [])),
        **_exact_match(
            by_kind.get("presence", []), by_kind.get("count", []), by_kind.get("scene", [])
        ),
        "caption": _caption(by_kind.get("caption", [])),
    }
    return {name: families[name] for name in FAMILIES}


def _grounding(refer: list[tuple[Sample, str]]) -> FamilyScore:
    """[refer] accuracy: a hit when the answer's first box has IoU above the threshold."""
    hits = parsed = 0
    for sample, answer in refer:
        predicted = parse_boxes(answer)
        parsed += bool(predicted)
        hits += bool(predicted) and iou(predicted[0], parse_boxes(sample.answer)[0]) > IOU_THRESHOLD
    return FamilyScore(
        metric=f"Acc@{IOU_THRESHOLD}",
        score=hits / len(refer) if refer else 0.0,
        count=len(refer),
        parsed=parsed / len(refer) if refer else 0.0,
    )


def _detection(detection: list[tuple[Sample, str]]) -> FamilyScore:
    """[detection] F1 over every box of every answer, true boxes matched one to one."""
    tp = fp = fn = parsed = 0
    for sample, answer in detection:
        predicted = parse_boxes(answer)
        parsed += bool(predicted)
        t, f, n = _detection_counts(parse_boxes(sample.answer), predicted)
        tp, fp, fn = tp + t, fp + f, fn + n
    return FamilyScore(
        metric=f"F1@{IOU_THRESHOLD}",
        score=2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        count=len(detection),
        parsed=parsed / len(detection) if detection else 0.0,
    )


def _exact_match(
    presence: list[tuple[Sample, str]],
    count: list[tuple[Sample, str]],
    scene: list[tuple[Sample, str]],
) -> dict[str, FamilyScore]:
    """Presence, count, vqa (both together) and scene accuracy, each with its constant answer."""
    common_count = _majority(count)
    families: dict[str, FamilyScore] = {}
    for name, pairs, baseline, baseline_name in (
        ("presence", presence, _constant(presence, "yes"), 'always "yes"'),
        ("count", count, _constant(count, common_count), f'always "{common_count}"'),
        (
            "vqa",
            presence + count,
            _accuracy([(s, "yes") for s, _ in presence] + [(s, common_count) for s, _ in count]),
            f'"yes" / "{common_count}"',
        ),
        ("scene", scene, _constant(scene, _majority(scene)), f'always "{_majority(scene)}"'),
    ):
        families[name] = FamilyScore(
            metric="accuracy",
            score=_accuracy(pairs),
            count=len(pairs),
            baseline=baseline,
            baseline_name=baseline_name,
        )
    return families


def _caption(captions: list[tuple[Sample, str]]) -> FamilyScore:
    """Caption BLEU-4 against the sample's caption, beside the best constant caption's."""
    references = [[s.answer] for s, _ in captions]
    # The blind captioner: the one caption that, said of every image, scores best.
    constant = [c for c, _ in Counter(s.answer for s, _ in captions).most_common(_CAPTION_TRIES)]
    return FamilyScore(
        metric="BLEU-4",
        score=corpus_bleu([a for _, a in captions], references),
        count=len(captions),
        baseline=max((corpus_bleu([c] * len(captions), references) for c in constant), default=0.0),
        baseline_name="best constant caption",
    )


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def evaluate(
    model_dir: Path,
    scenes: int,
    seed: int,
    batch: int,
    difficulty: float | None = None,
    device: str = "cpu",
) -> EvalReport:
    """Render held-out scenes, ask every sample's instruction greedily, score the answers.

    ``batch`` bounds both the images encoded at once and the instructions decoded at once (the
    decoder batches instructions about one image).
    """
    # Imported here so that scoring works in processes that never load torch.
    from skyeye.model import TextDecoder, VisionEncoder

    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    started = time.perf_counter()
    encoder = VisionEncoder.load(model_dir, device)
    decoder = TextDecoder.load(model_dir, device)
    all_samples: list[Sample] = []
    all_answers: list[str] = []
    for chunk in _chunks(held_out_scenes(scenes, seed, difficulty=difficulty), batch):
        embeds = encoder.encode([s.image for s in chunk])
        for scene, embed in zip(chunk, embeds, strict=True):
            samples = make_samples(scene)
            answers = [""] * len(samples)
            by_budget: dict[int, list[int]] = {}
            for i, sample in enumerate(samples):
                by_budget.setdefault(MAX_NEW_TOKENS[sample.kind], []).append(i)
            for budget, indices in by_budget.items():
                for part in _chunks(indices, batch):
                    instructions = [samples[i].instruction for i in part]
                    replies = decoder.generate(embed, instructions, max_new_tokens=budget)
                    for i, answer in zip(part, replies, strict=True):
                        answers[i] = answer
            # Scoring needs no pixels, and keeping them would hold every image of the run.
            all_samples += [replace(s, image=_NO_IMAGE) for s in samples]
            all_answers += answers
    return EvalReport(
        model=str(model_dir),
        scenes=scenes,
        seed=seed,
        difficulty=difficulty,
        samples=len(all_samples),
        seconds=time.perf_counter() - started,
        families=score(all_samples, all_answers),
    )
