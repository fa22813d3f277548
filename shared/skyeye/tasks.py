"""What the model is asked about each tile, and how its raw answers become catalog rows."""

from __future__ import annotations

from skyeye.catalog import Detection, TaskOutcome
from skyeye.contracts import Task, TaskKind, Tile
from skyeye.model import answers, prompts
from skyeye.settings import Settings


def default_tasks(settings: Settings) -> list[Task]:
    """Per tile: one caption, one grounding per configured phrase, each configured question."""
    tasks = [Task(kind=TaskKind.CAPTION, text=settings.caption_prompt)]
    tasks += [Task(kind=TaskKind.GROUNDING, text=p) for p in settings.grounding_phrases]
    tasks += [Task(kind=TaskKind.VQA, text=q) for q in settings.vqa_questions]
    return tasks


def instruction(task: Task) -> str:
    match task.kind:
        case TaskKind.CAPTION:
            return prompts.caption(task.text)
        case TaskKind.GROUNDING:
            return prompts.detection(task.text)
        case TaskKind.VQA:
            return prompts.vqa(task.text)


def interpret(task: Task, raw_text: str, tile: Tile) -> TaskOutcome:
    """Turn one raw answer into a result; text the parser cannot read is kept raw, unparsed."""
    prompt = instruction(task)
    if task.kind is not TaskKind.GROUNDING:
        text = raw_text.strip()
        return TaskOutcome(task, prompt, raw_text, bool(text), {"text": text} if text else None)
    found = answers.parse_detection(raw_text, default_phrase=task.text)
    detections = []
    for phrase, box in found:
        # 0-100 of the tile -> pixels of the tile -> pixels of the whole image
        x1, y1, x2, y2 = box.to_pixels(tile.width, tile.height)
        detections.append(Detection(phrase, x1 + tile.x, y1 + tile.y, x2 + tile.x, y2 + tile.y))
    answer = {
        "boxes": [
            {"label": d.label, "box_0_100": [b.x1, b.y1, b.x2, b.y2]}
            for d, (_, b) in zip(detections, found, strict=True)
        ]
    }
    return TaskOutcome(task, prompt, raw_text, bool(found), answer if found else None, detections)
