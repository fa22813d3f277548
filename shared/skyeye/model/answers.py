"""Reading boxes and labels out of MiniGPT-v2 answers; malformed text never raises.

Boxes are ``{<x1><y1><x2><y2>}`` with integers on a 0-100 scale of the image width and height.
The spec's evaluation regex is ``\\{<\\d{1,3}><\\d{1,3}><\\d{1,3}><\\d{1,3}>\\}``; this module
accepts the same boxes and also tolerates whitespace between the parts (MiniGPT-v2's own evaluation
deletes all spaces before matching, so a decoded " <12>" must not lose the box).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SCALE", "Box", "ParsedAnswer", "parse_boxes", "parse_detection", "parse_grounding"]

SCALE = 100

_BOX = re.compile(r"\{\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*\}")
_PHRASE = re.compile(r"<p>(.*?)</p>", re.DOTALL)


@dataclass(frozen=True)
class Box:
    """A box on the model's 0-100 scale (x right, y down), corners inclusive of degenerate boxes."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if not (0 <= self.x1 <= self.x2 <= SCALE and 0 <= self.y1 <= self.y2 <= SCALE):
            raise ValueError(f"not a box on the 0-{SCALE} scale: {self}")

    @classmethod
    def from_pixels(
        cls, x1: float, y1: float, x2: float, y2: float, width: int, height: int
    ) -> Box:
        """Pixel corners -> model scale, truncated with int() as in MiniGPT-v2's data."""
        return cls(
            int(x1 / width * SCALE),
            int(y1 / height * SCALE),
            int(x2 / width * SCALE),
            int(y2 / height * SCALE),
        )

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Model scale -> pixel corners of an image of that size (as MiniGPT-v2's evaluation)."""
        return (
            self.x1 / SCALE * width,
            self.y1 / SCALE * height,
            self.x2 / SCALE * width,
            self.y2 / SCALE * height,
        )

    def __str__(self) -> str:
        return f"{{<{self.x1}><{self.y1}><{self.x2}><{self.y2}>}}"


@dataclass(frozen=True)
class ParsedAnswer:
    """A grounding answer read leniently: whatever boxes could be read, and whether any could."""

    text: str
    boxes: tuple[tuple[str, Box], ...]

    @property
    def parsed(self) -> bool:
        return bool(self.boxes)


def _box(match: re.Match[str]) -> Box | None:
    # Out-of-range and inverted boxes are dropped, not repaired: the evaluation scores such a box
    # as a miss (IoU 0), and swapping corners would invent a box the model did not state.
    try:
        return Box(*(int(g) for g in match.groups()))
    except ValueError:
        return None


def parse_boxes(text: str) -> list[Box]:
    """Every valid box in the text, in order of appearance."""
    return [box for m in _BOX.finditer(text) if (box := _box(m)) is not None]


def parse_detection(text: str, default_phrase: str) -> list[tuple[str, Box]]:
    """``<p>phrase</p> {box}<delim>{box}...`` -> (phrase, box) pairs.

    Boxes before any ``<p>`` (a bare ``[refer]`` answer) get ``default_phrase``; later boxes get
    the nearest preceding phrase. Empty phrases fall back to ``default_phrase`` too.
    """
    phrases = [(m.end(), m.group(1).strip()) for m in _PHRASE.finditer(text)]
    pairs: list[tuple[str, Box]] = []
    for m in _BOX.finditer(text):
        box = _box(m)
        if box is None:
            continue
        label = default_phrase
        for end, phrase in phrases:
            if end > m.start():
                break
            label = phrase or default_phrase
        pairs.append((label, box))
    return pairs


def parse_grounding(text: str, default_phrase: str) -> ParsedAnswer:
    """A raw ``[refer]``/``[detection]`` answer as a :class:`ParsedAnswer`."""
    return ParsedAnswer(text=text.strip(), boxes=tuple(parse_detection(text, default_phrase)))
