"""Alert rules: what a rule accepts, how a standing question is judged, where a rule applies."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from skyeye.alerts import AnswerTest, AskCondition, RuleSpec
from skyeye.contracts import TaskKind


def _rule(**fields: object) -> RuleSpec:
    base: dict[str, object] = {"name": "r1", "condition": {"kind": "text", "query": "ships"}}
    return RuleSpec.model_validate(base | fields)


@pytest.mark.parametrize(
    ("fires_on", "kind", "answer", "fires"),
    [
        ("yes", TaskKind.YES_NO, {"answer": "yes"}, True),
        ("No", TaskKind.YES_NO, {"answer": "yes"}, False),
        (">= 3", TaskKind.COUNT, {"count": 3}, True),
        (">=3", TaskKind.COUNT, {"count": 2}, False),
        ("< 2", TaskKind.COUNT, {"count": 1}, True),
        ("4", TaskKind.COUNT, {"count": 4}, True),
        ("!= 0", TaskKind.COUNT, {"count": 0}, False),
        ("a red car", TaskKind.VQA, {"text": "There is A red car parked."}, True),
        ("a red car", TaskKind.VQA, {"text": "a blue car"}, False),
        ("yes", TaskKind.YES_NO, None, False),  # an unparsed answer never fires
        (">= 1", TaskKind.COUNT, {"count": "many"}, False),
    ],
)
def test_an_answer_test_asks_the_right_task_and_judges_answers(
    fires_on: str, kind: TaskKind, answer: dict | None, fires: bool
) -> None:
    test = AnswerTest.parse(fires_on)
    assert test.task_kind is kind
    assert test.fires(answer) is fires


@pytest.mark.parametrize("fires_on", ["", "   ", ">= many", "=>3", "< -1"])
def test_an_unreadable_answer_condition_is_refused(fires_on: str) -> None:
    with pytest.raises(ValidationError, match="fires_on"):
        AskCondition(question="Is there a ship?", fires_on=fires_on)


def test_a_standing_question_is_one_task_whatever_rules_ask_it() -> None:
    one = AskCondition(question="Is  there a ship?", fires_on="yes")
    other = AskCondition(question="Is there a ship?", fires_on="no")
    assert one.task == other.task == one.task.model_copy()
    assert one.task.kind is TaskKind.YES_NO and one.task.text == "Is there a ship?"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": "two words"}, "name"),
        ({"name": ""}, "name"),
        ({"bbox": [0, 10, 1, 5]}, "bbox"),
        ({"bbox": [0, 0, 200, 1]}, "bbox"),
        ({"condition": {"kind": "ask", "question": " ", "fires_on": "yes"}}, "question"),
        ({"condition": {"kind": "detection", "phrase": "ship", "min_count": 0}}, "min_count"),
        ({"condition": {"kind": "psychic"}}, "condition"),
        (
            {
                "area": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                }
            },
            "area",
        ),
        (
            {
                "area": {"type": "Polygon", "coordinates": [[[0, 0], [0, 1], [1, 1], [0, 0]]]},
                "bbox": [0, 0, 1, 1],
            },
            "bbox or area",
        ),
        ({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "starts after"),
    ],
)
def test_a_bad_rule_is_refused_naming_what_is_wrong(fields: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        _rule(**fields)


def test_the_area_is_met_by_what_overlaps_it_also_across_the_antimeridian() -> None:
    everywhere = _rule()
    assert everywhere.meets(None) and everywhere.meets([10, 10, 11, 11])
    boxed = _rule(bbox=[170, -10, -170, 10])
    assert boxed.meets([175, 0, 176, 1]) and boxed.meets([-179, 0, -178, 1])
    assert not boxed.meets([10, 0, 11, 1]) and not boxed.meets(None)
    triangle = _rule(area={"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [0, 4], [0, 0]]]})
    assert triangle.bounds() == (0, 0, 4, 4)
    assert triangle.meets([0.5, 0.5, 1, 1]) and not triangle.meets([3, 3, 4, 4])


def test_kind_and_time_filters() -> None:
    rule = _rule(asset_kind="scene", start="2026-01-01T00:00:00Z", end="2026-02-01T00:00:00Z")
    inside = datetime(2026, 1, 15, tzinfo=UTC)
    assert rule.admits("scene", inside)
    assert not rule.admits("image", inside)
    assert not rule.admits("scene", datetime(2025, 12, 31, tzinfo=UTC))
    assert not rule.admits("scene", datetime(2026, 2, 2, tzinfo=UTC))
