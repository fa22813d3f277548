from skyeye.contracts import Task, TaskKind, Tile
from skyeye.settings import Settings
from skyeye.tasks import default_tasks, instruction, interpret

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
