import math
from pathlib import Path

import numpy as np
import pytest

from skyeye.lab.evaluation import (
    FAMILIES,
    MAX_NEW_TOKENS,
    EvalReport,
    corpus_bleu,
    evaluate,
    iou,
    normalise_answer,
    score,
)
from skyeye.lab.world import Sample, held_out_scenes, make_samples, render_scene
from skyeye.model import build_tiny_model, prompts
from skyeye.model.answers import Box
from skyeye.model.vocabulary import tiny_tokenizer

IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def test_iou_hand_checked() -> None:
    a = Box(0, 0, 10, 10)
    assert iou(a, a) == 1.0
    assert iou(a, Box(5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou(a, Box(0, 0, 10, 5)) == pytest.approx(0.5)
    assert iou(a, Box(20, 20, 30, 30)) == 0.0
    assert iou(Box(3, 3, 3, 3), Box(3, 3, 3, 3)) == 0.0  # degenerate: no area, no overlap


def test_bleu_hand_checked() -> None:
    assert corpus_bleu(["a b c d e"], [["a b c d e"]]) == pytest.approx(1.0)
    # p1..p4 = 5/6, 4/5, 3/4, 2/3: their product is 1/3; equal lengths, no penalty.
    assert corpus_bleu(["a b c d e f"], [["a b c d e g"]]) == pytest.approx(3**-0.25)
    # All n-grams match but the candidate is half as long: BP = exp(1 - 8/4).
    assert corpus_bleu(["a b c d"], [["a b c d e f g h"]]) == pytest.approx(math.exp(-1))
    # Corpus level: counts are summed before dividing, p = 9/10, 7/8, 5/6, 3/4.
    corpus = corpus_bleu(["a b c d", "a b c d e f"], [["a b c d"], ["a b c d e g"]])
    assert corpus == pytest.approx((9 / 10 * 7 / 8 * 5 / 6 * 3 / 4) ** 0.25)
    # No matching 4-gram, no smoothing.
    assert corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == 0.0
    # Clipping: "the" counts at most as often as in the reference.
    assert corpus_bleu(["the the the"], [["the cat"]], max_n=1) == pytest.approx(1 / 3)
    # Closest reference length, the shorter on a tie (3 and 5 around 4): no penalty.
    assert corpus_bleu(["a b c d"], [["a b c", "a b c d e"]], max_n=1) == pytest.approx(1.0)
    assert corpus_bleu(["a b"], [["a b c", "a b c d e"]], max_n=1) == pytest.approx(
        math.exp(1 - 3 / 2)
    )
    # Case and punctuation do not count.
    assert corpus_bleu(["An image, of a lake."], [["an image of a lake"]]) == pytest.approx(1.0)
    assert corpus_bleu([""], [["a b c d"]]) == 0.0


def test_normalise_answer() -> None:
    assert normalise_answer(" Yes. ") == "yes"
    assert normalise_answer("Three") == "3"
    assert normalise_answer("Harbour!") == "harbour"
    assert normalise_answer("storage   tank") == "storage tank"


def _refer(box: Box) -> Sample:
    return Sample(IMAGE, prompts.refer("the ship"), str(box), "refer")


def test_grounding_hits_at_iou_above_half() -> None:
    truth = Box(10, 10, 30, 30)
    samples = [_refer(truth)] * 5
    answers = [
        str(truth),
        "{<10><10><30><25>}",  # IoU 0.75
        "{<10><10><30><20>}",  # IoU exactly 0.5: not above it
        "the ship is somewhere",  # no box: a miss
        "{<50><50><60><60>}{<10><10><30><30>}",  # only the first box counts
    ]
    grounding = score(samples, answers)["grounding"]
    assert grounding.score == pytest.approx(2 / 5)
    assert grounding.parsed == pytest.approx(4 / 5)
    assert grounding.count == 5


def test_detection_f1_matches_boxes_one_to_one() -> None:
    a, b = Box(0, 0, 10, 10), Box(50, 50, 60, 60)
    sample = Sample(IMAGE, prompts.detection("ship"), f"<p>ship</p> {a}<delim>{b}", "detection")
    # One right, one far off, and a duplicate of the right one: tp 1, fp 2, fn 1.
    answer = f"<p>ship</p> {a}<delim>{{<80><80><90><90>}}<delim>{a}"
    assert score([sample], [answer])["detection"].score == pytest.approx(2 / (2 + 2 + 1))
    assert score([sample], [sample.answer])["detection"].score == 1.0
    assert score([sample], ["nothing"])["detection"].score == 0.0


def test_true_answers_score_one_everywhere() -> None:
    samples = [s for scene in held_out_scenes(6, seed=3) for s in make_samples(scene)]
    families = score(samples, [s.answer for s in samples])
    assert list(families) == list(FAMILIES)
    for name, family in families.items():
        assert family.score == pytest.approx(1.0), name
        assert family.count > 0, name
    assert families["grounding"].parsed == 1.0


def test_baselines_are_what_a_constant_answer_scores() -> None:
    samples = [s for scene in held_out_scenes(6, seed=4) for s in make_samples(scene)]
    yes = ["yes" if s.kind == "presence" else "" for s in samples]
    families = score(samples, yes)
    assert families["presence"].score == families["presence"].baseline
    truths = [s.answer for s in samples if s.kind == "presence"]
    assert families["presence"].baseline == pytest.approx(truths.count("yes") / len(truths))
    assert families["count"].score == 0.0
    assert 0 < families["caption"].baseline < 1


def test_true_answers_fit_the_generation_budget() -> None:
    tokenizer = tiny_tokenizer()
    longest: dict[str, int] = {}
    for seed in range(40):
        for sample in make_samples(render_scene(seed, difficulty=seed % 5 / 4)):
            n = len(tokenizer(sample.answer, add_special_tokens=False).input_ids)
            longest[sample.kind] = max(longest.get(sample.kind, 0), n)
    assert set(longest) == set(MAX_NEW_TOKENS)
    for kind, n in longest.items():
        assert n + 1 <= MAX_NEW_TOKENS[kind], kind  # room for EOS


def test_evaluate_runs_end_to_end(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    build_tiny_model(model, seed=0)
    report = evaluate(model, scenes=2, seed=0, batch=8)
    assert report.scenes == 2 and report.samples > 10
    for name in FAMILIES:
        family = report.families[name]
        assert 0.0 <= family.score <= 1.0
        assert family.baseline is None or 0.0 <= family.baseline <= 1.0
    assert "| grounding |" in report.table()
    assert EvalReport.model_validate_json(report.model_dump_json()) == report
