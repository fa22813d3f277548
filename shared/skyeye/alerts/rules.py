"""Alert rules: the contract of a rule (what the API takes and the CLI builds) and its conditions.

A rule has a name, an area (a lon/lat box or a GeoJSON polygon; none means everywhere), an
optional window over the imagery's time, an optional asset kind, and one condition:

- :class:`DetectionCondition`: a phrase or class detected at least ``min_count`` times on one
  asset (duplicates from overlapping scene tiles are not counted);
- :class:`TextCondition`: a full-text query (``websearch_to_tsquery``) matching a caption,
  description or answer;
- :class:`AskCondition`: a standing question asked of every new tile or frame in the area, and
  the answer that fires (:class:`AnswerTest`: ``yes``/``no``, a count comparison such as
  ``>= 3``, or a phrase the answer contains).

Everything here is pure: the catalog stores rules (:mod:`skyeye.catalog.alerts`), the planner
adds standing questions to work items, the finisher fires rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import shapely.geometry
import shapely.validation
from geojson_pydantic import MultiPolygon, Polygon
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skyeye.catalog.search import AssetKind, parse_bbox
from skyeye.contracts import Task, TaskKind

__all__ = [
    "AnswerTest",
    "AskCondition",
    "AssetKind",
    "Condition",
    "DetectionCondition",
    "RuleKind",
    "RuleSpec",
    "TextCondition",
    "rule_name_problem",
]

#: A rule's name: what the CLI takes to name it, so no spaces or slashes.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# the times a rule's window may name: any zone can hold them
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)
# The questions of a standing rule are asked like any task: the same limit on their length.
MAX_QUESTION_CHARS = 512


class RuleKind(StrEnum):
    """A rule's condition kind."""

    DETECTION = "detection"
    TEXT = "text"
    ASK = "ask"


class DetectionCondition(BaseModel):
    """Fires when the phrase or class is detected at least ``min_count`` times on one asset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["detection"] = "detection"
    phrase: str = Field(min_length=1, max_length=200, description="a phrase or class, any case")
    min_count: int = Field(1, ge=1, le=10_000, description="detections on one asset, at least")

    @field_validator("phrase")
    @classmethod
    def _words(cls, value: str) -> str:
        return _text(value)


class TextCondition(BaseModel):
    """Fires when a caption, description or answer of the asset matches a full-text query."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["text"] = "text"
    query: str = Field(
        min_length=1, max_length=512, description='web search syntax: words, "a phrase", -not, or'
    )

    @field_validator("query")
    @classmethod
    def _words(cls, value: str) -> str:
        return _text(value)


class AskCondition(BaseModel):
    """A standing question asked of every new tile and frame in the area, and what fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ask"] = "ask"
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    fires_on: str = Field(
        min_length=1,
        max_length=200,
        description="yes or no; a count comparison such as '>= 3' (or a number: '== N'); "
        "else a phrase the answer contains",
    )

    @field_validator("question")
    @classmethod
    def _asked(cls, value: str) -> str:
        return _text(value)

    @field_validator("fires_on")
    @classmethod
    def _parsed(cls, value: str) -> str:
        return AnswerTest.parse(_text(value)).text

    @property
    def test(self) -> AnswerTest:
        """How an answer is judged."""
        return AnswerTest.parse(self.fires_on)

    @property
    def task(self) -> Task:
        """The task the planner adds to each work item in the area (and the finisher reads)."""
        return Task(kind=self.test.task_kind, text=self.question)


Condition = Annotated[
    DetectionCondition | TextCondition | AskCondition, Field(discriminator="kind")
]

_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|=|>|<)?\s*(\d{1,9})\s*$")
_COMPARE = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@dataclass(frozen=True)
class AnswerTest:
    """The answer that fires a standing question, and the task kind that asks it.

    ``yes``/``no`` asks a yes-no question; a comparison (``>= 3``; a bare number means ``==``)
    asks a count; anything else asks an open question whose answer must contain the phrase
    (any case).
    """

    text: str
    task_kind: TaskKind
    operator: str | None = None
    number: int | None = None

    @classmethod
    def parse(cls, text: str) -> AnswerTest:
        """The test ``text`` describes; ValueError when it is blank."""
        words = " ".join(text.split())
        if not words:
            raise ValueError("the answer that fires must not be blank")
        if words.lower() in ("yes", "no"):
            return cls(words.lower(), TaskKind.YES_NO)
        if match := _COMPARISON.match(words):
            operator = {"=": "==", None: "=="}.get(match.group(1), match.group(1))
            number = int(match.group(2))
            return cls(f"{operator} {number}", TaskKind.COUNT, operator, number)
        if words[0] in "<>=!":
            raise ValueError(f"{text!r} is not a comparison such as '>= 3'")
        return cls(words, TaskKind.VQA)

    def fires(self, answer: dict[str, Any] | None) -> bool:
        """Whether a parsed answer (``results.answer``) fires; an unparsed one never does."""
        if answer is None:
            return False
        if self.task_kind is TaskKind.YES_NO:
            return answer.get("answer") == self.text
        if self.task_kind is TaskKind.COUNT:
            count = answer.get("count")
            if not isinstance(count, int) or self.operator is None or self.number is None:
                return False
            return bool(_COMPARE[self.operator](count, self.number))
        said = answer.get("text")
        return isinstance(said, str) and self.text.lower() in said.lower()


class RuleSpec(BaseModel):
    """A rule as a user writes it: ``POST /rules``' body and ``skyeye rules create``'s options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="unique; letters, digits, _ . -")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="lon/lat W,S,E,N the asset must meet; W > E crosses 180 degrees"
    )
    area: Polygon | MultiPolygon | None = Field(
        None, description="a GeoJSON (Multi)Polygon in lon/lat the asset must meet (or bbox)"
    )
    start: datetime | None = Field(None, description="the imagery's time is at or after this")
    end: datetime | None = Field(None, description="the imagery's time is at or before this")
    asset_kind: AssetKind | None = None
    condition: Condition
    webhooks: list[str] = Field(
        default_factory=list, max_length=100, description="http(s) URLs told of each alert"
    )

    @field_validator("bbox")
    @classmethod
    def _box(cls, value: tuple[float, float, float, float] | None) -> Any:
        if value is None:
            return None
        # one parser for every lon/lat box of the product, so messages read the same
        return parse_bbox(value)

    @field_validator("area")
    @classmethod
    def _valid_area(cls, value: Polygon | MultiPolygon | None) -> Polygon | MultiPolygon | None:
        if value is None:
            return None
        shape = shapely.geometry.shape(value.model_dump())
        if shape.is_empty or not shape.is_valid:
            raise ValueError(
                f"the polygon is not valid ({shapely.validation.explain_validity(shape)})"
            )
        west, south, east, north = shape.bounds
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise ValueError("the polygon must lie within lon [-180, 180] and lat [-90, 90]")
        return value

    @field_validator("start", "end")
    @classmethod
    def _instant(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("needs a time zone (RFC 3339)")
        # stored, then read back in the database's zone: a time no zone can hold (year 10000
        # somewhere) would make every later listing of rules fail
        if not _EARLIEST <= value <= _LATEST:
            raise ValueError(f"{value.isoformat()} is out of range (years 1 to 9999)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        if self.bbox is not None and self.area is not None:
            raise ValueError("give bbox or area, not both")
        if self.start and self.end and self.start > self.end:
            raise ValueError("the time window starts after it ends")
        return self

    @property
    def kind(self) -> RuleKind:
        """The condition's kind."""
        return RuleKind(self.condition.kind)

    def bounds(self) -> tuple[float, float, float, float] | None:
        """The area's lon/lat bounds (W > E across the antimeridian); None for everywhere."""
        if self.bbox is not None:
            return self.bbox
        if self.area is not None:
            west, south, east, north = shapely.geometry.shape(self.area.model_dump()).bounds
            return west, south, east, north
        return None

    def admits(self, asset_kind: str, seen_at: datetime) -> bool:
        """Whether an asset of this kind and imagery time passes the kind and time filters."""
        if self.asset_kind is not None and self.asset_kind.value != asset_kind:
            return False
        if self.start is not None and seen_at < self.start:
            return False
        return self.end is None or seen_at <= self.end

    def meets(self, bounds: Sequence[float] | None) -> bool:
        """Whether an asset (or tile) with these lon/lat bounds lies in the rule's area.

        A rule without an area meets everything, an unplaced asset included; a rule with one
        never meets an unplaced asset.
        """
        if self.bbox is None and self.area is None:
            return True
        if bounds is None:
            return False
        if self.area is not None:
            shape = shapely.geometry.shape(self.area.model_dump())
            return any(shape.intersects(box) for box in _boxes(bounds))
        assert self.bbox is not None
        return any(a.intersects(b) for a in _boxes(self.bbox) for b in _boxes(bounds))


def _boxes(bounds: Sequence[float]) -> list[shapely.geometry.base.BaseGeometry]:
    """A lon/lat box as one or two shapely boxes (two across the antimeridian)."""
    west, south, east, north = bounds
    if west <= east:
        return [shapely.geometry.box(west, south, east, north)]
    return [
        shapely.geometry.box(west, south, 180, north),
        shapely.geometry.box(-180, south, east, north),
    ]


def _text(value: str) -> str:
    words = " ".join(value.split())
    if not words:
        raise ValueError("must not be blank")
    if "\x00" in words:
        raise ValueError("must not contain a NUL character")
    return words


def rule_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a rule; None when it can."""
    if re.fullmatch(NAME_PATTERN, name):
        return None
    return (
        "a rule's name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
    )
