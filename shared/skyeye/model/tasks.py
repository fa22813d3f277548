"""What the model is asked about each tile or clip, and how its raw answers become catalog rows."""

from __future__ import annotations

import re
from typing import Any

from skyeye.catalog import Detection, TaskOutcome
from skyeye.contracts import Task, TaskKind, Tile
from skyeye.model import answers, prompts
from skyeye.model.answers import Box
from skyeye.settings import Settings

_SEPARATORS = re.compile(r"[,\s]+")


def default_tasks(settings: Settings) -> list[Task]:
    """Per tile: one caption, one grounding per configured phrase, each configured question."""
    tasks = [Task(kind=TaskKind.CAPTION, text=settings.caption_prompt)]
    tasks += [Task(kind=TaskKind.GROUNDING, text=p) for p in settings.grounding_phrases]
    tasks += [Task(kind=TaskKind.VQA, text=q) for q in settings.vqa_questions]
    return tasks


def clip_tasks(settings: Settings) -> list[Task]:
    """Per clip, besides each sampled frame's own tasks: one caption of all its frames."""
    return [Task(kind=TaskKind.VIDEO, text=settings.clips.caption_prompt)]


def overview_tasks(settings: Settings) -> list[Task]:
    """Per scene overview: the caption tiles get, and a detailed description.

    The description costs only a few more decoded tokens on an image already encoded.
    """
    return [
        Task(kind=TaskKind.CAPTION, text=settings.caption_prompt),
        Task(kind=TaskKind.DESCRIBE, text=prompts.detailed_description()),
    ]


def classes(task: Task) -> list[str]:
    """The class list of a CLASSIFY task, in its order."""
    return [c.strip() for c in task.text.split(",") if c.strip()]


def identify_box(task: Task, tile: Tile) -> Box:
    """An IDENTIFY task's pixel box (original image) on the model's 0-100 scale of the tile.

    The box is clipped to the tile; one that does not overlap it, or text that is not four
    numbers, is a ValueError.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in _SEPARATORS.split(task.text.strip("[]() \t\n")))
    except ValueError:
        raise ValueError(
            f"an identify task needs a pixel box 'x1,y1,x2,y2', got {task.text!r}"
        ) from None
    left, top = max(x1 - tile.x, 0), max(y1 - tile.y, 0)
    right, bottom = min(x2 - tile.x, tile.width), min(y2 - tile.y, tile.height)
    if not (left < right and top < bottom):
        raise ValueError(f"box {task.text!r} does not overlap tile {tile.index}")
    return Box.from_pixels(left, top, right, bottom, tile.width, tile.height)


def instruction(task: Task, tile: Tile | None = None) -> str:
    """The instruction for one task; IDENTIFY needs the tile its pixel box is mapped into."""
    match task.kind:
        case TaskKind.CAPTION | TaskKind.VIDEO:
            return prompts.caption(task.text)
        case TaskKind.DESCRIBE:
            return task.text
        case TaskKind.GROUNDING:
            return prompts.detection(task.text)
        case TaskKind.REFER:
            return prompts.refer(task.text)
        case TaskKind.IDENTIFY:
            if tile is None:
                raise ValueError("an identify task needs the tile to place its box")
            return prompts.identify(identify_box(task, tile))
        case TaskKind.CLASSIFY:
            if not classes(task):
                raise ValueError(f"a classify task needs a class list, got {task.text!r}")
            return prompts.classify(classes(task))
        case TaskKind.VQA | TaskKind.YES_NO | TaskKind.COUNT:
            return prompts.vqa(task.text)


def _detections(found: list[tuple[str, Box]], tile: Tile) -> tuple[dict[str, Any], list[Detection]]:
    detections = []
    for phrase, box in found:
        # 0-100 of the tile -> pixels of the tile -> pixels of the whole image
        x1, y1, x2, y2 = box.to_pixels(tile.width, tile.height)
        detections.append(
            Detection(
                phrase,
                x1 + tile.x,
                y1 + tile.y,
                x2 + tile.x,
                y2 + tile.y,
                box_0_100=(box.x1, box.y1, box.x2, box.y2),
            )
        )
    answer = {
        "boxes": [{"label": phrase, "box_0_100": [b.x1, b.y1, b.x2, b.y2]} for phrase, b in found]
    }
    return answer, detections


def interpret(task: Task, raw_text: str, tile: Tile) -> TaskOutcome:
    """Turn one raw answer into a result; text the parser cannot read is kept raw, unparsed.

    A detection's label is the model's phrase where that is a clean label
    (:func:`skyeye.model.answers.clean_label`), else the requested phrase; a [refer] box is
    always labelled with the expression asked for. Answers holding template remnants are
    unparsed (see :mod:`skyeye.model.answers`).
    """
    prompt = instruction(task, tile)
    if task.kind in (TaskKind.GROUNDING, TaskKind.REFER):
        found = answers.parse_detection(raw_text, default_phrase=task.text)
        if task.kind is TaskKind.REFER:
            # One object is asked for: the first box is the answer, labelled with the expression.
            found = [(task.text, box) for _, box in found[:1]]
        if not found:
            return TaskOutcome(task, prompt, raw_text, False, None)
        answer, detections = _detections(found, tile)
        return TaskOutcome(task, prompt, raw_text, True, answer, detections)
    value: str | int | None
    match task.kind:
        case TaskKind.CLASSIFY:
            key, value = "class", answers.parse_class(raw_text, classes(task))
        case TaskKind.YES_NO:
            key, value = "answer", answers.parse_yes_no(raw_text)
        case TaskKind.COUNT:
            key, value = "count", answers.parse_count(raw_text)
        case _:
            key, value = "text", answers.parse_text(raw_text)
    if value is None:
        return TaskOutcome(task, prompt, raw_text, False, None)
    return TaskOutcome(task, prompt, raw_text, True, {key: value})
