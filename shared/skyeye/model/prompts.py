"""Instruction texts of SkyEyeGPT's tasks and MiniGPT-v2's single-turn chat template.

An instruction is what follows the image in the prompt (task tag + text); :func:`wrap` places it
in ``[INST] <Img><ImageHere></Img> {instruction} [/INST]``. BOS is not part of the text: the
decoder adds it as a token (see :mod:`skyeye.model.decoder`). :func:`search_text` says what
an answer to an instruction is found by in semantic search.
"""

from __future__ import annotations

from collections.abc import Sequence

from skyeye.model import answers
from skyeye.model.answers import Box

__all__ = [
    "IMAGE_PLACEHOLDER",
    "caption",
    "classify",
    "detailed_description",
    "detection",
    "identify",
    "refer",
    "video_caption",
    "vqa",
    "wrap",
]

IMAGE_PLACEHOLDER = "<ImageHere>"
_IMAGE_SLOT = f"<Img>{IMAGE_PLACEHOLDER}</Img>"


def caption(text: str = "briefly describe the image") -> str:
    """A short-caption instruction (``[caption]`` tag); the default text is MiniGPT-v2's own."""
    return f"[caption] {text}"


def detailed_description() -> str:
    """The untagged request for a long description that a scene's overview gets."""
    return "Describe this image in detail."


def video_caption() -> str:
    """A caption instruction worded for a clip's frames shown together in one prompt."""
    return caption("briefly describe the video frame image")


_REFER = "[refer] give me the location of "
_DETECTION = "[detection] "


def refer(expression: str) -> str:
    """Ask for the box of the one object a referring expression describes (``[refer]``)."""
    return f"{_REFER}{expression}"


def detection(phrase: str) -> str:
    """Ask for a box around every object the phrase names (``[detection]``, grounding)."""
    return f"{_DETECTION}{phrase}"


def identify(box: Box) -> str:
    """Ask what the object inside a box on the 0-100 scale is (``[identify]``)."""
    return f"[identify] this {box} is"


def vqa(question: str) -> str:
    """A free question about the image (``[vqa]``); yes/no and count questions use it too."""
    return f"[vqa] {question}"


def classify(classes: Sequence[str]) -> str:
    """A ``[vqa]`` question asking for exactly one of ``classes``, in SkyEyeGPT's wording."""
    return vqa(
        f"Classify the image within one of the given classes: {', '.join(classes)}. "
        "Answer it using the above category word or phrase."
    )


def wrap(instruction: str, n_images: int = 1) -> str:
    """The full prompt text, one ``<Img><ImageHere></Img>`` per image (video frames in order)."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if IMAGE_PLACEHOLDER in instruction:
        raise ValueError(f"an instruction may not contain {IMAGE_PLACEHOLDER}")
    return f"[INST] {_IMAGE_SLOT * n_images} {instruction} [/INST]"


def search_text(instruction: str, text: str) -> str:
    """What semantic search matches an answer by: a box answer's phrases, else its text.

    Box coordinates are noise to a sentence embedding, so an answer with boxes is matched by
    what it boxes: a :func:`refer` answer by its expression (the row's label), a
    :func:`detection` answer by the distinct phrases its boxes get as labels
    (:func:`~skyeye.model.answers.parse_detection`). Every other answer, and a box answer
    without a box, by its own text.
    """
    if instruction.startswith(_REFER):
        return instruction.removeprefix(_REFER) if answers.parse_boxes(text) else text
    if instruction.startswith(_DETECTION):
        asked = instruction.removeprefix(_DETECTION)
        phrases = dict.fromkeys(label for label, _ in answers.parse_detection(text, asked))
        return ", ".join(phrases) if phrases else text
    return text
