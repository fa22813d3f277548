import re

import pytest

from skyeye.adapters.postgres import migrations
from skyeye.contracts import Task, TaskKind, Tile
from skyeye.model import prompts
from skyeye.model.answers import Box
from skyeye.model.tasks import default_tasks, identify_box, instruction, interpret, overview_tasks
from skyeye.settings import Settings

TILE = Tile(index=3, x=100, y=50, width=200, height=400)


def test_default_tasks_follow_settings() -> None:
    settings = Settings(grounding_phrases=["ship"], vqa_questions=["Is it cloudy?"])
    assert [(t.kind, t.text) for t in default_tasks(settings)] == [
        (TaskKind.CAPTION, "briefly describe the image"),
        (TaskKind.GROUNDING, "ship"),
        (TaskKind.VQA, "Is it cloudy?"),
    ]


def test_instructions_use_the_skyeyegpt_task_tags() -> None:
    assert instruction(Task(kind=TaskKind.CAPTION, text="briefly describe the image")) == (
        "[caption] briefly describe the image"
    )
    assert instruction(Task(kind=TaskKind.GROUNDING, text="ship")) == "[detection] ship"
    assert instruction(Task(kind=TaskKind.VQA, text="Is it cloudy?")) == "[vqa] Is it cloudy?"


def test_grounding_boxes_map_from_tile_scale_to_image_pixels() -> None:
    task = Task(kind=TaskKind.GROUNDING, text="ship")
    outcome = interpret(task, "<p>ship</p> {<10><20><50><40>}<delim>{<0><0><100><100>}", TILE)
    assert outcome.parsed
    first, second = outcome.detections
    assert (first.label, first.x1, first.y1, first.x2, first.y2) == ("ship", 120, 130, 200, 210)
    assert (second.x1, second.y1, second.x2, second.y2) == (100, 50, 300, 450)
    assert outcome.answer == {
        "boxes": [
            {"label": "ship", "box_0_100": [10, 20, 50, 40]},
            {"label": "ship", "box_0_100": [0, 0, 100, 100]},
        ]
    }


def test_malformed_grounding_is_kept_raw_and_unparsed() -> None:
    task = Task(kind=TaskKind.GROUNDING, text="ship")
    outcome = interpret(task, "a ship {<10><20>} somewhere", TILE)
    assert not outcome.parsed
    assert outcome.raw_text == "a ship {<10><20>} somewhere"
    assert outcome.answer is None and outcome.detections == []


def test_text_answers() -> None:
    vqa = Task(kind=TaskKind.VQA, text="Is it cloudy?")
    assert interpret(vqa, " yes ", TILE).answer == {"text": "yes"}
    empty = interpret(vqa, "   ", TILE)
    assert not empty.parsed and empty.answer is None


def test_instructions_of_every_kind() -> None:
    def prompt(kind: TaskKind, text: str) -> str:
        return instruction(Task(kind=kind, text=text), TILE)

    assert prompt(TaskKind.CAPTION, "briefly describe the video frame image") == (
        prompts.video_caption()
    )
    assert prompt(TaskKind.DESCRIBE, "Describe this image in detail.") == (
        prompts.detailed_description()
    )
    assert prompt(TaskKind.REFER, "the white ship") == prompts.refer("the white ship")
    assert prompt(TaskKind.YES_NO, "Is it cloudy?") == "[vqa] Is it cloudy?"
    assert prompt(TaskKind.COUNT, "How many ships?") == "[vqa] How many ships?"
    assert prompt(TaskKind.CLASSIFY, "beach, forest ,parking lot") == (
        prompts.classify(["beach", "forest", "parking lot"])
    )
    # Pixels of the whole image -> the tile (x 100-300, y 50-450) -> 0-100 of the tile.
    assert prompt(TaskKind.IDENTIFY, "120,130,200,210") == "[identify] this {<10><20><50><40>} is"
    assert prompt(TaskKind.IDENTIFY, "[120.9 130 299.9 449.9]") == (
        "[identify] this {<10><20><99><99>} is"
    )


def test_identify_boxes_are_clipped_to_the_tile() -> None:
    task = Task(kind=TaskKind.IDENTIFY, text="0, 0, 200, 1000")
    assert identify_box(task, TILE) == Box(0, 0, 50, 100)


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "0,0,50,40", "150,60,150,90"])
def test_identify_refuses_what_is_no_box_on_the_tile(text: str) -> None:
    with pytest.raises(ValueError, match="box"):
        instruction(Task(kind=TaskKind.IDENTIFY, text=text), TILE)


def test_identify_and_classify_need_their_inputs() -> None:
    with pytest.raises(ValueError, match="tile"):
        instruction(Task(kind=TaskKind.IDENTIFY, text="120,130,200,210"))
    with pytest.raises(ValueError, match="class list"):
        instruction(Task(kind=TaskKind.CLASSIFY, text=" , "), TILE)


def test_refer_answer_is_its_first_box_labelled_with_the_expression() -> None:
    task = Task(kind=TaskKind.REFER, text="the white ship")
    outcome = interpret(task, "<p>ship</p> {<10><20><50><40>}<delim>{<0><0><9><9>}", TILE)
    assert outcome.parsed and outcome.prompt == prompts.refer("the white ship")
    (detection,) = outcome.detections
    assert (detection.label, detection.x1, detection.y1) == ("the white ship", 120, 130)
    assert outcome.answer == {"boxes": [{"label": "the white ship", "box_0_100": [10, 20, 50, 40]}]}
    missing = interpret(task, "I see no ship", TILE)
    assert not missing.parsed and missing.answer is None and missing.detections == []


@pytest.mark.parametrize(
    ("kind", "text", "raw", "answer"),
    [
        (TaskKind.CAPTION, "briefly describe the image", " many ships \n", {"text": "many ships"}),
        (TaskKind.DESCRIBE, "Describe this image in detail.", "a harbour", {"text": "a harbour"}),
        (TaskKind.IDENTIFY, "120,130,200,210", "a white ship ", {"text": "a white ship"}),
        (TaskKind.VQA, "What is the land use?", "farmland", {"text": "farmland"}),
        (TaskKind.CLASSIFY, "beach,parking lot", "Parking lots.", {"class": "parking lot"}),
        (TaskKind.YES_NO, "Is it cloudy?", "No.", {"answer": "no"}),
        (TaskKind.COUNT, "How many ships?", "There are twelve", {"count": 12}),
    ],
)
def test_answers_of_every_kind(
    kind: TaskKind, text: str, raw: str, answer: dict[str, object]
) -> None:
    task = Task(kind=kind, text=text)
    outcome = interpret(task, raw, TILE)
    assert outcome.parsed and outcome.answer == answer and outcome.detections == []
    assert outcome.raw_text == raw and outcome.prompt == instruction(task, TILE)


@pytest.mark.parametrize(
    ("kind", "text", "raw"),
    [
        (TaskKind.CLASSIFY, "beach,parking lot", "a forest"),
        (TaskKind.YES_NO, "Is it cloudy?", "maybe"),
        (TaskKind.COUNT, "How many ships?", "between 1 and 10"),
        (TaskKind.DESCRIBE, "Describe this image in detail.", "  "),
        (TaskKind.IDENTIFY, "120,130,200,210", ""),
    ],
)
def test_unreadable_answers_are_kept_raw_and_unparsed(kind: TaskKind, text: str, raw: str) -> None:
    outcome = interpret(Task(kind=kind, text=text), raw, TILE)
    assert not outcome.parsed and outcome.answer is None and outcome.raw_text == raw


def test_the_schema_allows_every_task_kind() -> None:
    # the latest CHECK (task_kind IN (...)) is the one in force
    latest = [m.sql for m in migrations() if "task_kind IN" in m.sql][-1]
    listed = latest.split("task_kind IN")[-1].split(")")[0]
    allowed = set(re.findall(r"'(\w+)'", listed))
    assert allowed == {kind.value for kind in TaskKind}


def test_an_overview_is_captioned_and_described() -> None:
    settings = Settings(caption_prompt="describe the scene")
    assert [(t.kind, t.text) for t in overview_tasks(settings)] == [
        (TaskKind.CAPTION, "describe the scene"),
        (TaskKind.DESCRIBE, "Describe this image in detail."),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "<p><16></p> {<10><20><50><40>}",
        "<p>ship<p>ship</p> {<10><20><50><40>}",
        "<p>{ship</p> {<10><20><50><40>}",
        "<p>ship {<10><20><50><40>}",
    ],
)
def test_a_junk_phrase_never_becomes_a_label(raw: str) -> None:
    outcome = interpret(Task(kind=TaskKind.GROUNDING, text="ship"), raw, TILE)
    assert outcome.parsed and outcome.raw_text == raw
    assert [d.label for d in outcome.detections] == ["ship"]
    assert outcome.answer == {"boxes": [{"label": "ship", "box_0_100": [10, 20, 50, 40]}]}


def test_a_clean_phrase_of_the_model_is_its_label() -> None:
    outcome = interpret(
        Task(kind=TaskKind.GROUNDING, text="vessel"), "<p>cargo ship</p> {<1><2><3><4>}", TILE
    )
    assert [d.label for d in outcome.detections] == ["cargo ship"]


@pytest.mark.parametrize(
    ("kind", "text", "raw"),
    [
        (TaskKind.YES_NO, "Is there water?", "no 5 5 4 6}"),
        (TaskKind.VQA, "Is there water?", "no 5 5 4 6}"),
        (TaskKind.CAPTION, "briefly describe the image", "a road <p>"),
        (TaskKind.COUNT, "How many ships?", "3 <delim>"),
        (TaskKind.CLASSIFY, "beach,parking lot", "beach}"),
    ],
)
def test_answers_with_template_remnants_are_kept_raw_and_unparsed(
    kind: TaskKind, text: str, raw: str
) -> None:
    outcome = interpret(Task(kind=kind, text=text), raw, TILE)
    assert not outcome.parsed and outcome.answer is None and outcome.raw_text == raw


@pytest.mark.parametrize(
    ("kind", "raw", "answer"),
    [
        (TaskKind.YES_NO, "No.", {"answer": "no"}),
        (TaskKind.VQA, "No.", {"text": "No."}),
        (TaskKind.COUNT, "There are 3 buildings.", {"count": 3}),
    ],
)
def test_clean_answers_stay_parsed(kind: TaskKind, raw: str, answer: dict) -> None:
    outcome = interpret(Task(kind=kind, text="How many buildings?"), raw, TILE)
    assert outcome.parsed and outcome.answer == answer
