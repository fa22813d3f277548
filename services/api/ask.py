"""Ask a new question about a stored asset: ``POST /assets/{asset_id}/ask``.

The question runs through the same Serve application as the pipeline, on each of the asset's
tiles or frames (or the one named), as the worker runs its planned tasks: the work item is
rebuilt from the catalog, its pixels are read the worker's way
(:mod:`skyeye.imagery.work_items`), and its answers are interpreted and placed on the ground the
same way. Each tile is first asked from its cached image embeddings (``Ingress.cached``), which
skips reading the pixels and the vision encoder; a tile that is not cached is read and encoded,
and its embeddings are cached for the next question.

The answers are stored as results of origin ``ask`` (with their sentence embeddings, so
semantic search finds them) and returned.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, TypeVar, cast

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from skyeye import catalog, imagery
from skyeye.adapters import s3
from skyeye.adapters import serve as serve_adapter
from skyeye.adapters.serve import Answers
from skyeye.catalog import TaskOutcome
from skyeye.contracts import ClipFrame, ScenePlan, Task, TaskKind, Tile, WorkItem, WorkItemKind
from skyeye.imagery import geo, work_items
from skyeye.model import tasks

from .auth import Principal, require
from .errors import problem, responses
from .state import ApiState, api_state

router = APIRouter(tags=["Ask"], responses=responses(401, 403, 404, 409, 413, 422, 429, 503, 504))

T = TypeVar("T")


class AskTask(StrEnum):
    """What is asked: the pipeline's task kinds a person may ask about a stored asset."""

    VQA = "vqa"
    REFER = "refer"
    DETECTION = "detection"
    CAPTION = "caption"
    IDENTIFY = "identify"


_KINDS = {
    AskTask.VQA: TaskKind.VQA,
    AskTask.REFER: TaskKind.REFER,
    AskTask.DETECTION: TaskKind.GROUNDING,
    AskTask.CAPTION: TaskKind.CAPTION,
    AskTask.IDENTIFY: TaskKind.IDENTIFY,
}
# The work items a question is asked about: a tile of an image or scene, a frame of a clip.
_ASKABLE = {WorkItemKind.TILE.value, WorkItemKind.FRAME.value}


class AskRequest(BaseModel):
    """A question about a stored asset."""

    model_config = ConfigDict(extra="forbid")

    task: AskTask = Field(
        description="vqa: a question; refer: one object to locate; detection: a phrase to find "
        "every instance of; caption: describe; identify: what is in a pixel box"
    )
    text: str = Field(
        "",
        description="the question, expression or phrase; for identify a pixel box 'x1,y1,x2,y2'"
        " of the whole image; for caption an optional request (default: the pipeline's)",
    )
    tile: int | None = Field(
        None,
        ge=0,
        description="ask only this tile (a clip: this frame); default: every tile or frame",
    )


class AskAnswer(BaseModel):
    """The answer about one tile or frame."""

    tile: int = Field(description="the tile's (a clip: the frame's) index")
    cached: bool = Field(description="decoded from cached image embeddings, skipping the encoder")
    result_id: int
    raw_text: str
    parsed: bool
    answer: dict[str, Any] | None
    detections: list[dict[str, Any]]


class AskResponse(BaseModel):
    """Every tile's answer to one question, as stored (results of origin ``ask``)."""

    ask_id: uuid.UUID
    asset_id: uuid.UUID
    task: AskTask
    text: str
    cached: bool = Field(description="whether every tile was answered from cached embeddings")
    answers: list[AskAnswer]
    timings_ms: dict[str, float] = Field(
        description="cache (lookups and cached answers), read (pixels), model (uncached "
        "answers), store and total"
    )


Asker = Annotated[Principal, Depends(require("ask"))]
State = Annotated[ApiState, Depends(api_state)]


@dataclass
class _Asked:
    """One work item being asked, and what came of it."""

    item: WorkItem
    instructions: list[str]
    answers: Answers | None = None
    cached: bool = False
    georef: geo.GeoTile | None = None


@router.post(
    "/assets/{asset_id}/ask",
    summary="Ask a new question about a stored asset",
    response_model=AskResponse,
)
def ask(asset_id: str, body: AskRequest, _: Asker, state: State) -> AskResponse:
    """Run one task on the asset's tiles or frames (or one of them); store and return answers.

    A tile whose image embeddings are cached is answered without the vision encoder.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    found, row, items = _load(state, asset_id)
    task = _task(state, body)
    asked = _chosen(body, task, row, items)
    deadline = time.monotonic() + state.settings.api.ask_timeout_s
    app = _serve(state.serve_app)
    with _timed(timings, "cache"):
        _ask_cached(state, app, asked, deadline)
    with _timed(timings, "read"):
        images = {id(a): _pixels(state, a) for a in asked if a.answers is None}
    with _timed(timings, "model"):
        _ask_encoded(app, asked, images, deadline)
    ask_id = uuid.uuid4()
    with _timed(timings, "store"):
        answers = _store(state, found, ask_id, task, asked)
    timings["total"] = round((time.perf_counter() - started) * 1000, 1)
    return AskResponse(
        ask_id=ask_id,
        asset_id=found,
        task=body.task,
        text=task.text,
        cached=all(a.cached for a in asked),
        answers=answers,
        timings_ms=timings,
    )


class _timed:
    """Adds the block's wall time, in ms, to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings, self._name = timings, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._timings[self._name] = round((time.perf_counter() - self._start) * 1000, 1)


def _load(state: ApiState, text: str) -> tuple[uuid.UUID, dict[str, Any], list[dict[str, Any]]]:
    """The asset (404 unknown, 409 not done), and its askable work items' catalog rows."""
    try:
        asset_id = uuid.UUID(text)
    except ValueError:
        raise problem(404, "not_found", f"no asset {text!r}: asset ids are UUIDs") from None
    with state.engine.connect() as conn:
        row = catalog.stac_asset(conn, asset_id)
        if row is None:
            raise problem(404, "not_found", f"no asset {asset_id} in the catalog")
        if row["status"] != "done":
            raise problem(
                409,
                "asset_not_done",
                f"asset {asset_id} is {row['status']}: questions can be asked once it is done",
            )
        rows = [r for r in catalog.work_items_of(conn, asset_id) if r["kind"] in _ASKABLE]
        frames = catalog.clip_frames(conn, asset_id) if row.get("duration_s") else []
    by_index = {f["frame_index"]: f for f in frames}
    return asset_id, row, [_work_item(row, r, by_index, asset_id) for r in rows]


def _work_item(
    asset: dict[str, Any],
    row: dict[str, Any],
    frames: dict[int, dict[str, Any]],
    asset_id: uuid.UUID,
) -> dict[str, Any]:
    """What is needed to rebuild one work item (its tasks are the question's)."""
    frame = frames.get(row["frame_index"]) if row["frame_index"] is not None else None
    return {
        "work_item_id": row["work_item_id"],
        "kind": WorkItemKind(row["kind"]),
        "asset_id": asset_id,
        "bucket": asset["bucket"],
        "key": asset["object_key"],
        "image_width": asset["width"],
        "image_height": asset["height"],
        "tile": Tile(
            index=row["tile_index"],
            x=row["px_x"],
            y=row["px_y"],
            width=row["px_width"],
            height=row["px_height"],
        ),
        "scene": ScenePlan.model_validate(asset["scene_plan"]) if asset["scene_plan"] else None,
        # the frame's ground placement is not kept in the catalog: its answers stay in pixels
        "frames": [
            ClipFrame(
                index=frame["frame_index"],
                time_s=frame["time_s"],
                bucket=frame["bucket"],
                key=frame["object_key"],
            )
        ]
        if frame
        else [],
    }


def _task(state: ApiState, body: AskRequest) -> Task:
    """The question as a pipeline task; 422 naming ``text`` when it is too long or missing."""
    limit = state.settings.max_question_chars
    if len(body.text) > limit:
        raise problem(
            422,
            "invalid_parameter",
            f"body field 'text': {len(body.text)} characters, over max_question_chars={limit}",
        )
    if "\x00" in body.text:
        # PostgreSQL text cannot hold NUL: refused here rather than failing the insert
        raise problem(422, "invalid_parameter", "body field 'text': contains a NUL character")
    text = body.text.strip()
    if not text and body.task is AskTask.CAPTION:
        text = state.settings.caption_prompt
    if not text:
        raise problem(422, "invalid_parameter", f"body field 'text': a {body.task} task needs one")
    return Task(kind=_KINDS[body.task], text=text)


def _chosen(
    body: AskRequest, task: Task, asset: dict[str, Any], items: Sequence[dict[str, Any]]
) -> list[_Asked]:
    """The work items to ask, with the question's instruction for each.

    422 naming ``tile`` for a tile the asset does not have, naming ``text`` for an identify box
    that is not four numbers or lies on no chosen tile.
    """
    if body.tile is not None:
        items = [i for i in items if i["tile"].index == body.tile]
        if not items:
            raise problem(
                422,
                "invalid_parameter",
                f"body field 'tile': asset {asset['asset_id']} has no tile or frame {body.tile}",
            )
    asked, refusal = [], None
    for fields in items:
        item = WorkItem(**fields, tasks=[task])
        try:
            asked.append(_Asked(item, [tasks.instruction(task, item.tile)]))
        except ValueError as exc:  # an identify box that is malformed or off this tile
            refusal = str(exc)
    if not asked:
        reason = refusal or f"asset {asset['asset_id']} has no tile to ask about"
        raise problem(422, "invalid_parameter", f"body field 'text': {reason}")
    return asked


def _serve(connect: Callable[[], serve_adapter.AppHandle]) -> serve_adapter.AppHandle:
    """The Serve application's handle; 503 when the cluster cannot be joined."""
    try:
        return connect()
    except Exception as exc:
        reason = serve_adapter.transient_reason(exc) or f"{type(exc).__name__}: {exc}"
        raise problem(
            503, "unavailable", f"the model service cannot be reached ({reason})"
        ) from exc


def _wait(response: Any, deadline: float) -> Any:
    """A Serve call's answer by ``deadline``; 504 past it, 503 when Serve is unavailable."""
    remaining = max(deadline - time.monotonic(), 0.001)
    try:
        return cast(serve_adapter.Response, response).result(timeout_s=remaining)
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            raise problem(
                504, "timeout", "the model did not answer within settings.api.ask_timeout_s"
            ) from exc
        if (reason := serve_adapter.transient_reason(exc)) is not None:
            raise problem(503, "unavailable", reason, {"Retry-After": "5"}) from exc
        raise


def _ask_cached(
    state: ApiState, app: serve_adapter.AppHandle, asked: list[_Asked], deadline: float
) -> None:
    """Ask every item from its cached embeddings at once; those cached get their answers."""
    if not state.settings.embedding_cache.enabled:
        return
    calls = [app.cached.remote(str(a.item.work_item_id), a.instructions) for a in asked]
    for one, call in zip(asked, calls, strict=True):
        one.answers = _wait(call, deadline)
        one.cached = one.answers is not None
        if one.cached and one.item.scene is not None:
            # the boxes need the tile's place on the ground, which the header alone gives
            one.georef = _reading(
                functools.partial(work_items.georef_of, state.store, state.settings, one.item)
            )


def _pixels(state: ApiState, one: _Asked) -> list[Any]:
    """The item's images, read as the worker reads them (the item's georeference is kept)."""
    images, one.georef = _reading(
        lambda: work_items.read_work_item(state.store, state.settings, one.item)
    )
    return images


def _reading(read: Callable[[], T]) -> T:
    """What ``read`` reads of the asset's object; 409 unreadable or gone, 503 store down."""
    try:
        return read()
    except (imagery.UnreadableImage, s3.ObjectTooLarge) as exc:
        raise problem(409, "unreadable_asset", f"the asset cannot be read: {exc}") from exc
    except s3.ObjectMissing as exc:
        raise problem(409, "asset_gone", "the asset's object is no longer in the store") from exc
    except s3.ObjectStoreUnavailable as exc:
        raise problem(503, "unavailable", exc.reason, {"Retry-After": "5"}) from exc
    except s3.ObjectStoreRefused as exc:
        raise problem(409, "unreadable_asset", f"the object store refused ({exc.code})") from exc


def _ask_encoded(
    app: serve_adapter.AppHandle,
    asked: list[_Asked],
    images: dict[int, list[Any]],
    deadline: float,
) -> None:
    """Ask the items that were not cached, from their pixels; their embeddings get cached."""
    pending = [a for a in asked if a.answers is None]
    calls = [
        app.infer.remote(images[id(a)], a.instructions, cache_key=str(a.item.work_item_id))
        for a in pending
    ]
    for one, call in zip(pending, calls, strict=True):
        one.answers = _wait(call, deadline)


def _outcomes(one: _Asked, task: Task) -> list[TaskOutcome]:
    """The item's answers interpreted and placed as the worker does, with their embeddings."""
    assert one.answers is not None
    vectors = one.answers.vectors or [None] * len(one.answers.texts)
    outcomes = [
        dataclasses.replace(tasks.interpret(task, raw, one.item.tile), embedding=vector)
        for raw, vector in zip(one.answers.texts, vectors, strict=True)
    ]
    return work_items.locate(outcomes, one.item, one.georef)


def _store(
    state: ApiState, asset_id: uuid.UUID, ask_id: uuid.UUID, task: Task, asked: list[_Asked]
) -> list[AskAnswer]:
    """Store every item's answers as results of origin ``ask``, in one transaction."""
    model = state.settings.resolved_model_dir.name
    answers = []
    with state.engine.begin() as conn:
        for one in asked:
            outcomes = _outcomes(one, task)
            ids = catalog.store_ask_results(
                conn, one.item.work_item_id, asset_id, ask_id, outcomes, model
            )
            answers += [
                _answer(one, result_id, o) for result_id, o in zip(ids, outcomes, strict=True)
            ]
    return answers


def _answer(one: _Asked, result_id: int, outcome: TaskOutcome) -> AskAnswer:
    return AskAnswer(
        tile=one.item.tile.index,
        cached=one.cached,
        result_id=result_id,
        raw_text=outcome.raw_text,
        parsed=outcome.parsed,
        answer=outcome.answer,
        detections=[
            {
                "label": d.label,
                "x1": d.x1,
                "y1": d.y1,
                "x2": d.x2,
                "y2": d.y2,
                "footprint": d.footprint,
            }
            for d in outcome.detections
        ],
    )
