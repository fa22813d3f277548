r"""Reading boxes, labels, classes, yes/no and counts out of MiniGPT-v2 answers.

Every parser returns ``None`` (or nothing) for text it cannot read and never raises: the caller
keeps such an answer raw and marks it unparsed.

Boxes are ``{<x1><y1><x2><y2>}`` with integers on a 0-100 scale of the image width and height.
The spec's evaluation regex is ``\{<\d{1,3}><\d{1,3}><\d{1,3}><\d{1,3}>\}``; this module
accepts the same boxes and also tolerates whitespace between the parts (MiniGPT-v2's own evaluation
deletes all spaces before matching, so a decoded " <12>" must not lose the box).

Template remnants (``<``, ``>``, ``{``, ``}``, tags such as ``[INST]`` or ``[vqa]``) belong to the
prompt and box syntax, never to a caption, a yes/no, a count or a class: an answer holding one has
fallen apart ("no 5 5 4 6}", "a road <p>") and is not parsed. Phrases become labels only when
they are clean (:func:`clean_label`), so no ``<p>ship`` or ``<16>`` reaches the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "SCALE",
    "Box",
    "ParsedAnswer",
    "clean_label",
    "has_template_remnants",
    "parse_boxes",
    "parse_class",
    "parse_count",
    "parse_detection",
    "parse_grounding",
    "parse_text",
    "parse_yes_no",
]

SCALE = 100

_BOX = re.compile(r"\{\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*<(\d{1,3})>\s*\}")
_PHRASE = re.compile(r"<p>(.*?)</p>", re.DOTALL)
_YES_NO = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)
_TEMPLATE = re.compile(r"[<>{}]|\[/?[a-z_]+\]", re.IGNORECASE)
# Letters (any script), digits, spaces, hyphens and apostrophes, starting with a letter or digit.
_LABEL = re.compile(r"[^\W_](?:[^\W_]|[ \-'\u2019])*")
MAX_LABEL_CHARS = 64
_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = frozenset({"a", "an", "the"})
_UNIT_WORDS = (
    "zero one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
)
_TENS_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety"
_NUMBER_WORDS = {word: value for value, word in enumerate(_UNIT_WORDS.split())} | {"none": 0}
_TENS = {word: 10 * (i + 2) for i, word in enumerate(_TENS_WORDS.split())}
_SCALES = frozenset(
    {"hundred", "hundreds", "thousand", "thousands", "million", "millions", "dozen", "dozens"}
)
# Digits (with thousands separators or a fraction) or words; "twenty-one" reads as two words.
_NUMBER_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:\.\d+)?|[a-z]+")


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
        """Whether at least one box was read; an answer with none is kept raw as unparsed."""
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


def clean_label(text: str) -> str | None:
    """The text as a label with its spaces collapsed, or ``None`` when it is not a clean label.

    A clean label has only letters, digits, spaces, hyphens and apostrophes, at least one letter,
    and at most :data:`MAX_LABEL_CHARS` characters.
    """
    label = " ".join(text.split())
    if len(label) > MAX_LABEL_CHARS or not _LABEL.fullmatch(label):
        return None
    return label if any(c.isalpha() for c in label) else None


def has_template_remnants(text: str) -> bool:
    """Whether the text holds prompt or box syntax (``<``, ``>``, ``{``, ``}``, ``[INST]``...)."""
    return _TEMPLATE.search(text) is not None


def parse_detection(text: str, default_phrase: str) -> list[tuple[str, Box]]:
    """``<p>phrase</p> {box}<delim>{box}...`` -> (phrase, box) pairs.

    Boxes before any ``<p>`` (a bare ``[refer]`` answer) get ``default_phrase``; later boxes get
    the nearest preceding phrase. Empty phrases, and phrases that are no clean label
    (:func:`clean_label`: ``<16>``, ``ship<p>ship``), fall back to ``default_phrase`` too.
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
            label = clean_label(phrase) or default_phrase
        pairs.append((label, box))
    return pairs


def parse_grounding(text: str, default_phrase: str) -> ParsedAnswer:
    """A raw ``[refer]``/``[detection]`` answer as a :class:`ParsedAnswer`."""
    return ParsedAnswer(text=text.strip(), boxes=tuple(parse_detection(text, default_phrase)))


def parse_text(text: str) -> str | None:
    """A free-text answer (caption, description, VQA), stripped.

    ``None`` if it is empty or holds template remnants.
    """
    if has_template_remnants(text):
        return None
    return text.strip() or None


def parse_yes_no(text: str) -> str | None:
    """``"yes"`` or ``"no"`` when the answer starts with that word (any case), else ``None``.

    An answer holding template remnants gives ``None`` whatever its first word.
    """
    match = _YES_NO.match(text)
    return match.group(1).lower() if match and not has_template_remnants(text) else None


def parse_count(text: str) -> int | None:
    """The one count the answer states, in digits or words ("3", "1,200", "twenty-one", "none").

    ``None`` when it states no number, several different numbers (a range is not a count), a
    fraction, or a scale word ("two hundred") that this reader does not compose, and when it
    holds template remnants.
    """
    if has_template_remnants(text):
        return None
    tokens = _NUMBER_TOKEN.findall(text.lower())
    values: set[int] = set()
    for i, token in enumerate(tokens):
        if token in _SCALES or "." in token:
            return None
        if token[0].isdigit():
            values.add(int(token.replace(",", "")))
        elif token in _TENS:
            unit = _NUMBER_WORDS.get(tokens[i + 1], 0) if i + 1 < len(tokens) else 0
            values.add(_TENS[token] + (unit if unit < 10 else 0))
        elif token in _NUMBER_WORDS and not (i > 0 and tokens[i - 1] in _TENS):
            values.add(_NUMBER_WORDS[token])
    return values.pop() if len(values) == 1 else None


def _class_key(text: str) -> str:
    # Case, spacing and punctuation do not matter: "Parking-lot" == "parking lot" == "parkinglot".
    words = _WORD.findall(text.lower())
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return "".join(words)


def _singular_forms(key: str) -> set[str]:
    # Every reading of a trailing plural ending; two keys name the same class when their
    # readings meet ("buses" -> "bus", "industries" -> "industry", "tanks" -> "tank").
    forms = {key}
    if key.endswith("s"):
        forms.add(key[:-1])
    if key.endswith("es"):
        forms.add(key[:-2])
    if key.endswith("ies"):
        forms.add(key[:-3] + "y")
    return forms


def parse_class(text: str, classes: Sequence[str]) -> str | None:
    """The one class of ``classes`` (as written there) that the answer names, else ``None``.

    Matching ignores case, spaces, punctuation, a leading article and a plural ending. An answer
    that matches several classes keeps the one it spells exactly, if exactly one. An answer
    holding template remnants names none.
    """
    if has_template_remnants(text):
        return None
    key = _class_key(text)
    if not key:
        return None
    forms = _singular_forms(key)
    matches = list(dict.fromkeys(c for c in classes if forms & _singular_forms(_class_key(c))))
    if len(matches) > 1:
        matches = [c for c in matches if _class_key(c) == key]
    return matches[0] if len(matches) == 1 else None
