"""The catalog in PostgreSQL: assets, clip frames, work items, results, detections and errors.

Every write is idempotent (keyed by deterministic ids or natural keys), so a redelivered Kafka
message never writes a row twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlalchemy.engine import Connection

from skyeye.contracts import ClipFrame, ScenePlan, Task, WorkItem, WorkItemKind

TERMINAL_ASSET_STATES = frozenset({"done", "error"})
# (west, south, east, north) in degrees; west > east when the box crosses the antimeridian
LonLatBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class AssetRecord:
    """An object version as the planner registers it: where it is and what its event said."""

    asset_id: uuid.UUID
    bucket: str
    object_key: str
    version: str
    size_bytes: int | None
    content_type: str | None
    user_metadata: dict[str, str]
    event_name: str
    event_time: datetime | None


@dataclass(frozen=True)
class ClipRecord:
    """What a clip asset is, beside its frame size (the asset's width and height)."""

    duration_s: float
    fps: float | None
    frame_count: int | None
    video_codec: str
    start_time: datetime | None
    end_time: datetime | None


@dataclass(frozen=True)
class FrameRecord:
    """A sampled frame of a clip, why it was sampled, and where it lies when that is known."""

    frame: ClipFrame
    sampled_by: str
    scene_score: float | None = None
    footprint: dict[str, Any] | None = None  # GeoJSON (Multi)Polygon, EPSG:4326
    lon_lat_bbox: LonLatBox | None = None


@dataclass(frozen=True)
class Detection:
    """A box in pixels of the whole image, with its lon/lat footprint when the scene has a CRS."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    box_0_100: tuple[int, int, int, int] = (0, 0, 100, 100)
    footprint: dict[str, Any] | None = None  # GeoJSON (Multi)Polygon, EPSG:4326
    lon_lat_bbox: LonLatBox | None = None
    centrality: float | None = None  # 1 centred in its tile, 0 on the tile's edge


@dataclass(frozen=True)
class TaskOutcome:
    """The model's answer to one task of a work item: the raw text, and what parsing made of it."""

    task: Task
    prompt: str
    raw_text: str
    parsed: bool
    answer: dict[str, Any] | None
    detections: list[Detection] = field(default_factory=list)
    # the raw text's sentence embedding (unit length, 384 values), for semantic search
    embedding: Sequence[float] | None = None


def register_asset(conn: Connection, asset: AssetRecord) -> str:
    """Insert the asset if new (and tell the live feed); returns its current status either way."""
    inserted = conn.execute(
        sa.text(
            "INSERT INTO assets (asset_id, bucket, object_key, version, size_bytes, content_type,"
            " user_metadata, event_name, event_time)"
            " VALUES (:asset_id, :bucket, :object_key, :version, :size_bytes, :content_type,"
            " CAST(:user_metadata AS jsonb), :event_name, :event_time)"
            " ON CONFLICT DO NOTHING RETURNING asset_id"
        ),
        {**asset.__dict__, "user_metadata": json.dumps(asset.user_metadata)},
    ).scalar_one_or_none()
    if inserted is not None:
        record_event(
            conn,
            "asset.registered",
            asset.asset_id,
            {"asset_id": asset.asset_id, "bucket": asset.bucket, "object_key": asset.object_key},
        )
    return conn.execute(
        sa.text("SELECT status FROM assets WHERE asset_id = :id"), {"id": asset.asset_id}
    ).scalar_one()


def add_work_items(conn: Connection, asset_id: uuid.UUID, items: Sequence[WorkItem]) -> None:
    """Record the planned work items, before they are published.

    So a worker never receives an item the catalog does not know yet.
    """
    for item in items:
        conn.execute(
            sa.text(
                "INSERT INTO work_items (work_item_id, asset_id, kind, tile_index, px_x, px_y,"
                " px_width, px_height, frame_index, bbox) VALUES (:id, :asset_id, :kind, :index,"
                " :x, :y, :w, :h, :frame, :bbox) ON CONFLICT DO NOTHING"
            ),
            {
                "id": item.work_item_id,
                "asset_id": asset_id,
                "kind": item.kind.value,
                "index": item.tile.index,
                "x": item.tile.x,
                "y": item.tile.y,
                "w": item.tile.width,
                "h": item.tile.height,
                "frame": _frame_index(item),
                "bbox": _bbox_array(item.bbox),
            },
        )


def _frame_index(item: WorkItem) -> int | None:
    """The one sampled frame a frame item is about; a clip item is about them all."""
    return item.frames[0].index if item.kind is WorkItemKind.FRAME else None


def record_clip(
    conn: Connection, asset_id: uuid.UUID, clip: ClipRecord, frames: Sequence[FrameRecord]
) -> None:
    """Record what a clip is and the frames sampled from it, before its work is published."""
    conn.execute(
        sa.text(
            "UPDATE assets SET duration_s = :duration_s, fps = :fps, frame_count = :frame_count,"
            " video_codec = :video_codec, start_time = :start_time, end_time = :end_time,"
            " updated_at = now() WHERE asset_id = :id"
        ),
        {**clip.__dict__, "id": asset_id},
    )
    for record in frames:
        conn.execute(
            sa.text(
                "INSERT INTO clip_frames (asset_id, frame_index, time_s, sampled_by, scene_score,"
                " bucket, object_key, footprint, lon_lat_bbox, bbox) VALUES (:aid, :index,"
                " :time_s, :sampled_by, :score, :bucket, :key, CAST(:footprint AS jsonb),"
                " CAST(:box AS box), :bbox) ON CONFLICT DO NOTHING"
            ),
            {
                "aid": asset_id,
                "index": record.frame.index,
                "time_s": record.frame.time_s,
                "sampled_by": record.sampled_by,
                "score": record.scene_score,
                "bucket": record.frame.bucket,
                "key": record.frame.key,
                "footprint": None if record.footprint is None else json.dumps(record.footprint),
                "box": _box_literal(record.lon_lat_bbox),
                "bbox": _bbox_array(record.lon_lat_bbox),
            },
        )


@dataclass(frozen=True)
class Georeference:
    """Where an asset lies, as far as planning found out.

    Nothing for a plain image, a lon/lat box for a placed clip, everything for a scene.
    """

    crs: str | None = None
    lon_lat_bbox: LonLatBox | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    bands: list[dict[str, object]] | None = None


def describe_asset(
    conn: Connection,
    asset_id: uuid.UUID,
    media_format: str,
    width: int,
    height: int,
    tiles: int,
    georef: Georeference | None = None,
    scene: ScenePlan | None = None,
) -> None:
    """Record what planning found out about the asset; its status is left as it is.

    That is its format, size and place, and how its scene is read.
    """
    georef = georef or Georeference()
    conn.execute(
        sa.text(
            "UPDATE assets SET media_format = :fmt, width = :w, height = :h,"
            " tiles_planned = :n, crs = :crs, lon_lat_bbox = CAST(:box AS box), bbox = :bbox,"
            " transform = :transform, bands = CAST(:bands AS jsonb),"
            " scene_plan = CAST(:scene AS jsonb), updated_at = now() WHERE asset_id = :id"
        ),
        {
            "fmt": media_format,
            "w": width,
            "h": height,
            "n": tiles,
            "crs": georef.crs,
            "box": _box_literal(georef.lon_lat_bbox),
            "bbox": _bbox_array(georef.lon_lat_bbox),
            "transform": list(georef.transform) if georef.transform else None,
            "bands": json.dumps(georef.bands) if georef.bands is not None else None,
            "scene": scene.model_dump_json() if scene is not None else None,
            "id": asset_id,
        },
    )


def mark_planned(conn: Connection, asset_id: uuid.UUID) -> None:
    """Close planning once every work item is published."""
    conn.execute(
        sa.text(
            "UPDATE assets SET status = 'planned', updated_at = now()"
            " WHERE asset_id = :id AND status = 'registered'"
        ),
        {"id": asset_id},
    )
    # workers may already have finished every item
    _settle_asset(conn, asset_id)


def record_error(
    conn: Connection,
    *,
    source: str,
    stage: str,
    kind: str,
    message: str,
    asset_id: uuid.UUID | None = None,
    work_item_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a failure once per (source, stage) and mark what it failed as errored.

    An asset that is finishing keeps its state: finishing decides between done and error.
    """
    conn.execute(
        sa.text(
            "INSERT INTO errors (source, stage, kind, message, asset_id, work_item_id, detail)"
            " VALUES (:source, :stage, :kind, :message, :asset_id, :work_item_id,"
            " CAST(:detail AS jsonb)) ON CONFLICT (source, stage) DO NOTHING"
        ),
        {
            "source": source,
            "stage": stage,
            "kind": kind,
            "message": message,
            "asset_id": asset_id,
            "work_item_id": work_item_id,
            "detail": json.dumps(detail or {}, default=str),
        },
    )
    if work_item_id is not None:
        conn.execute(
            sa.text(
                "UPDATE work_items SET status = 'error', completed_at = now()"
                " WHERE work_item_id = :id AND status = 'queued'"
            ),
            {"id": work_item_id},
        )
        _settle_asset(conn, asset_id)
    elif asset_id is not None:
        conn.execute(
            sa.text(
                "UPDATE assets SET status = 'error', updated_at = now()"
                " WHERE asset_id = :id AND status NOT IN ('finishing', 'done', 'error')"
            ),
            {"id": asset_id},
        )


def work_item_status(conn: Connection, work_item_id: uuid.UUID) -> str | None:
    """A work item's status (queued, done or error); None if the catalog has no such item."""
    return conn.execute(
        sa.text("SELECT status FROM work_items WHERE work_item_id = :id"), {"id": work_item_id}
    ).scalar_one_or_none()


def _result_row(
    work_item_id: uuid.UUID, asset_id: uuid.UUID, key: str, outcome: TaskOutcome, model: str
) -> dict[str, Any]:
    """The bound parameters of one results row."""
    return {
        "wid": work_item_id,
        "aid": asset_id,
        "key": key,
        "kind": outcome.task.kind.value,
        "text": outcome.task.text,
        "prompt": outcome.prompt,
        "raw": outcome.raw_text,
        "parsed": outcome.parsed,
        "answer": None if outcome.answer is None else json.dumps(outcome.answer),
        "model": model,
        "embedding": vector_literal(outcome.embedding),
    }


def store_results(
    conn: Connection, item: WorkItem, outcomes: Iterable[TaskOutcome], model: str
) -> int:
    """Write a work item's results and close it; returns the number of new result rows."""
    written = 0
    for outcome in outcomes:
        result_id = conn.execute(
            sa.text(
                "INSERT INTO results (work_item_id, asset_id, task_key, task_kind, task_text,"
                " prompt, raw_text, parsed, answer, model, embedding) VALUES (:wid, :aid, :key,"
                " :kind, :text, :prompt, :raw, :parsed, CAST(:answer AS jsonb), :model,"
                " CAST(:embedding AS vector))"
                " ON CONFLICT (work_item_id, task_key) DO NOTHING RETURNING result_id"
            ),
            _result_row(item.work_item_id, item.asset_id, outcome.task.key, outcome, model),
        ).scalar_one_or_none()
        if result_id is None:
            continue
        written += 1
        _store_detections(conn, result_id, item.asset_id, outcome.detections)
    conn.execute(
        sa.text(
            "UPDATE work_items SET status = 'done', completed_at = now()"
            " WHERE work_item_id = :id AND status = 'queued'"
        ),
        {"id": item.work_item_id},
    )
    _settle_asset(conn, item.asset_id)
    return written


def vector_literal(values: Sequence[float] | None) -> str | None:
    """A pgvector value as its text form, ``[v1,v2,...]``; None stays NULL."""
    return None if values is None else "[" + ",".join(f"{float(v):.7g}" for v in values) + "]"


def _store_detections(
    conn: Connection, result_id: int, asset_id: uuid.UUID, detections: Sequence[Detection]
) -> None:
    """Write a new result's detections, numbered in the order the answer gave them."""
    for ordinal, det in enumerate(detections):
        conn.execute(
            sa.text(
                "INSERT INTO detections (result_id, asset_id, label, ordinal, x1, y1, x2, y2,"
                " footprint, lon_lat_bbox, bbox, centrality) VALUES (:rid, :aid, :label,"
                " :ordinal, :x1, :y1, :x2, :y2, CAST(:footprint AS jsonb), CAST(:box AS box),"
                " :bbox, :centrality)"
            ),
            {
                "rid": result_id,
                "aid": asset_id,
                "ordinal": ordinal,
                "label": det.label,
                "x1": det.x1,
                "y1": det.y1,
                "x2": det.x2,
                "y2": det.y2,
                "footprint": None if det.footprint is None else json.dumps(det.footprint),
                "box": _box_literal(det.lon_lat_bbox),
                "bbox": _bbox_array(det.lon_lat_bbox),
                "centrality": det.centrality,
            },
        )


def asset_status(conn: Connection, asset_id: uuid.UUID) -> str | None:
    """An asset's status (registered, planned, finishing, done or error); None if unknown."""
    return conn.execute(
        sa.text("SELECT status FROM assets WHERE asset_id = :id"), {"id": asset_id}
    ).scalar_one_or_none()


def located_detections(conn: Connection, asset_id: uuid.UUID) -> list[dict[str, Any]]:
    """The asset's detections with what duplicate suppression ranks them by."""
    rows = conn.execute(
        sa.text(
            "SELECT d.detection_id, d.label, d.x1, d.y1, d.x2, d.y2, d.centrality, w.tile_index"
            " FROM detections d JOIN results r USING (result_id)"
            " JOIN work_items w ON w.work_item_id = r.work_item_id"
            " WHERE d.asset_id = :id ORDER BY d.detection_id"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def kept_detections(
    conn: Connection, asset_id: uuid.UUID, frame_index: int | None = None
) -> list[Detection]:
    """The asset's detections that are not flagged duplicates, in pixels of the whole asset.

    With ``frame_index``: only those of that clip frame, in pixels of the frame.
    """
    rows = conn.execute(
        sa.text(
            "SELECT d.label, d.x1, d.y1, d.x2, d.y2 FROM detections d"
            " JOIN results r USING (result_id) JOIN work_items w USING (work_item_id)"
            " WHERE d.asset_id = :id AND NOT d.duplicate"
            " AND (CAST(:frame AS integer) IS NULL OR w.frame_index = CAST(:frame AS integer))"
            " ORDER BY d.detection_id"
        ),
        {"id": asset_id, "frame": frame_index},
    )
    return [Detection(row.label, row.x1, row.y1, row.x2, row.y2) for row in rows]


def flag_duplicates(conn: Connection, asset_id: uuid.UUID, keep: Sequence[int]) -> int:
    """Flag every detection of the asset not in ``keep``; returns how many are duplicates."""
    return (
        conn.execute(
            sa.text(
                "UPDATE detections SET duplicate = NOT (detection_id = ANY(:keep))"
                " WHERE asset_id = :id RETURNING duplicate"
            ),
            {"id": asset_id, "keep": list(keep)},
        )
        .scalars()
        .all()
        .count(True)
    )


def _box_literal(bbox: LonLatBox | None) -> str | None:
    """The GiST-indexed box of a lon/lat box.

    A box cannot cross the antimeridian, so a crossing one becomes the band of every longitude
    between its latitudes (an index may over-select; it never misses).
    """
    if bbox is None:
        return None
    west, south, east, north = bbox
    if west > east:
        west, east = -180.0, 180.0
    return f"(({west}, {south}), ({east}, {north}))"


def _bbox_array(bbox: LonLatBox | None) -> list[float] | None:
    return None if bbox is None else [float(v) for v in bbox]


def _settle_asset(conn: Connection, asset_id: uuid.UUID | None) -> None:
    """Move a planned asset on to finishing once none of its work items is still queued."""
    if asset_id is None:
        return
    conn.execute(
        sa.text(
            "UPDATE assets a SET updated_at = now(), status = 'finishing'"
            " WHERE a.asset_id = :id AND a.status = 'planned' AND NOT EXISTS ("
            "  SELECT 1 FROM work_items w WHERE w.asset_id = a.asset_id AND w.status = 'queued')"
        ),
        {"id": asset_id},
    )


@dataclass(frozen=True)
class FinishTarget:
    """An asset whose work has ended and whose last step is to do, as finishing needs it."""

    asset_id: uuid.UUID
    bucket: str
    object_key: str
    width: int
    height: int
    scene: ScenePlan | None
    is_clip: bool
    # whether any work item stored results: a preview of nothing is not drawn
    any_done: bool


def claim_finishing(
    conn: Connection, asset_id: uuid.UUID | None = None, *, waited_s: float = 0.0
) -> FinishTarget | None:
    """Lock one finishing asset (``asset_id``, or the one waiting longest) for this transaction.

    None when there is none that another transaction is not finishing already.

    The row lock is the claim: if the process finishing it dies, its connection closes, the
    lock goes with it and the next sweep takes the asset over. ``waited_s``: take only an asset
    finishing for at least that long, so a sweep leaves a fresh one to the worker that has just
    ended it.
    """
    row = conn.execute(
        sa.text(
            "SELECT a.asset_id, a.bucket, a.object_key, a.width, a.height, a.scene_plan,"
            " a.duration_s IS NOT NULL AS is_clip,"
            " EXISTS (SELECT 1 FROM work_items w WHERE w.asset_id = a.asset_id"
            "   AND w.status = 'done') AS any_done"
            " FROM assets a WHERE a.status = 'finishing'"
            " AND (CAST(:id AS uuid) IS NULL OR a.asset_id = CAST(:id AS uuid))"
            " AND a.updated_at <= now() - make_interval(secs => :waited)"
            " ORDER BY a.updated_at LIMIT 1 FOR UPDATE OF a SKIP LOCKED"
        ),
        {"id": asset_id, "waited": waited_s},
    ).one_or_none()
    if row is None:
        return None
    return FinishTarget(
        asset_id=row.asset_id,
        bucket=row.bucket,
        object_key=row.object_key,
        width=row.width,
        height=row.height,
        scene=None if row.scene_plan is None else ScenePlan.model_validate(row.scene_plan),
        is_clip=row.is_clip,
        any_done=row.any_done,
    )


def complete_finish(conn: Connection, asset_id: uuid.UUID, preview_key: str | None) -> str:
    """End finishing: done, or error when a work item failed; returns the status set."""
    return conn.execute(
        sa.text(
            "UPDATE assets a SET updated_at = now(),"
            " preview_key = COALESCE(:key, a.preview_key), status = CASE WHEN EXISTS ("
            "  SELECT 1 FROM work_items w WHERE w.asset_id = a.asset_id AND w.status = 'error')"
            "  THEN 'error' ELSE 'done' END"
            " WHERE a.asset_id = :id AND a.status = 'finishing' RETURNING a.status"
        ),
        {"id": asset_id, "key": preview_key},
    ).scalar_one()


def asset_states(conn: Connection, asset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each of these assets; an id the catalog does not hold is left out."""
    rows = conn.execute(
        sa.text("SELECT asset_id, status FROM assets WHERE asset_id = ANY(:ids)"),
        {"ids": list(asset_ids)},
    )
    return {row.asset_id: row.status for row in rows}


def assets(conn: Connection, asset_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every asset (or the one ``asset_id``): what it is, where, and its status; oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT asset_id, bucket, object_key, version, media_format, width, height, status,"
            " tiles_planned, crs, lon_lat_bbox::text AS lon_lat_bbox, preview_key, duration_s,"
            " fps, frame_count, video_codec, start_time, end_time, created_at, updated_at"
            " FROM assets"
            " WHERE CAST(:id AS uuid) IS NULL OR asset_id = CAST(:id AS uuid)"
            " ORDER BY created_at, object_key"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def results(conn: Connection, asset_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every result (or one asset's) with its work item, frame time and detections as a list."""
    rows = conn.execute(
        sa.text(
            "SELECT r.result_id, r.asset_id, w.kind AS item_kind, w.tile_index, w.frame_index,"
            " f.time_s AS frame_time_s, r.task_kind, r.task_text, r.prompt, r.raw_text, r.parsed,"
            " r.answer, r.model, r.created_at,"
            " COALESCE((SELECT json_agg(json_build_object('label', d.label, 'x1', d.x1,"
            "   'y1', d.y1, 'x2', d.x2, 'y2', d.y2, 'footprint', d.footprint,"
            "   'duplicate', d.duplicate) ORDER BY d.ordinal)"
            "   FROM detections d WHERE d.result_id = r.result_id), '[]') AS detections"
            " FROM results r JOIN work_items w USING (work_item_id)"
            " LEFT JOIN clip_frames f"
            "   ON f.asset_id = w.asset_id AND f.frame_index = w.frame_index"
            " WHERE CAST(:id AS uuid) IS NULL OR r.asset_id = CAST(:id AS uuid)"
            # whole-asset results (scene overview, clip caption) before the tiles' and frames'
            " ORDER BY r.asset_id, w.kind IN ('tile', 'frame'), w.tile_index, r.result_id"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def clip_frames(conn: Connection, asset_id: uuid.UUID) -> list[dict[str, Any]]:
    """The frames sampled from a clip asset, in frame order, with why and where each lies."""
    rows = conn.execute(
        sa.text(
            "SELECT frame_index, time_s, sampled_by, scene_score, bucket, object_key, footprint,"
            " lon_lat_bbox::text AS lon_lat_bbox FROM clip_frames WHERE asset_id = :id"
            " ORDER BY frame_index"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def errors(conn: Connection, asset_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    """Every error row (or one asset's), in the order they were recorded."""
    rows = conn.execute(
        sa.text(
            "SELECT error_id, source, stage, kind, message, asset_id, work_item_id, detail,"
            " created_at FROM errors"
            " WHERE CAST(:id AS uuid) IS NULL OR asset_id = CAST(:id AS uuid)"
            " ORDER BY error_id"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def counts(conn: Connection) -> dict[str, int]:
    """Totals of the catalog, as ``skyeye status`` shows them.

    Assets (and those finished), work items (and those queued), results, detections, previews,
    errors and dead letters.
    """
    row = conn.execute(
        sa.text(
            "SELECT (SELECT count(*) FROM assets) AS assets,"
            " (SELECT count(*) FROM assets WHERE status IN ('done', 'error')) AS assets_finished,"
            " (SELECT count(*) FROM work_items) AS work_items,"
            " (SELECT count(*) FROM work_items WHERE status = 'queued') AS work_items_queued,"
            " (SELECT count(*) FROM results) AS results,"
            " (SELECT count(*) FROM detections) AS detections,"
            " (SELECT count(*) FROM assets WHERE preview_key IS NOT NULL) AS previews,"
            " (SELECT count(*) FROM errors) AS errors,"
            " (SELECT count(*) FROM dead_letters) AS dead_letters"
        )
    ).one()
    return dict(row._mapping)


def stac_asset(conn: Connection, asset_id: uuid.UUID) -> dict[str, Any] | None:
    """Every column of the asset, with its lon/lat box as [west, south, east, north].

    Later migrations' columns too (a clip's time range, a preview key); None if unknown.
    """
    row = conn.execute(
        sa.text(
            f"SELECT a.*, {bounds_sql('a')} AS lon_lat_bounds FROM assets a WHERE a.asset_id = :id"
        ),
        {"id": asset_id},
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def asset_detections(conn: Connection, asset_id: uuid.UUID) -> list[dict[str, Any]]:
    """The asset's detections with the task, model and tile that produced each.

    Each located one also has its lon/lat box as [west, south, east, north].
    """
    rows = conn.execute(
        sa.text(
            "SELECT d.detection_id, d.label, d.x1, d.y1, d.x2, d.y2, d.footprint, d.duplicate,"
            " d.centrality, r.task_kind, r.model, w.tile_index,"
            f" {bounds_sql('d')} AS lon_lat_bounds"
            " FROM detections d JOIN results r USING (result_id)"
            " JOIN work_items w ON w.work_item_id = r.work_item_id"
            " WHERE d.asset_id = :id ORDER BY w.tile_index, r.result_id, d.ordinal"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def record_event(
    conn: Connection, kind: str, asset_id: uuid.UUID | None, payload: dict[str, Any]
) -> None:
    """Add an event to the live feed (``/api/events``), in the caller's transaction.

    ``kind``: ``asset.registered``, ``asset.finished`` or ``alert``.
    """
    conn.execute(
        sa.text(
            "INSERT INTO events (kind, asset_id, payload)"
            " VALUES (:kind, :asset, CAST(:payload AS jsonb))"
        ),
        {"kind": kind, "asset": asset_id, "payload": json.dumps(jsonable(payload))},
    )


def jsonable(value: Any) -> Any:
    """A catalog row (or a value in one) as JSON values: RFC 3339 times, UUIDs as strings.

    For ``json.dumps(..., default=jsonable)`` and JSON responses, so that the CLI's ``--json``
    and the API write times the same, standard, way (``2026-12-05T21:15:29.624110Z``).
    """
    return to_jsonable_python(value, fallback=str)


def bounds_sql(table: str) -> str:
    """SQL for a row's lon/lat bounds as [west, south, east, north], NULL when it has none.

    West > east across the antimeridian.
    """
    # rows written before the bbox column existed have only the box, which PostgreSQL keeps as
    # (upper right, lower left) and which never crosses
    box = f"{table}.lon_lat_bbox"
    return (
        f"COALESCE({table}.bbox, CASE WHEN {box} IS NOT NULL THEN"
        f" ARRAY[({box}[1])[0], ({box}[1])[1], ({box}[0])[0], ({box}[0])[1]] END)"
    )


@dataclass(frozen=True)
class DeadLetterRecord:
    """A message a consumer gave up on, as the dead-letter table keeps it."""

    dead_letter_id: uuid.UUID
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    headers: list[tuple[str, bytes]]
    kind: str
    message: str
    asset_id: uuid.UUID | None = None
    work_item_id: uuid.UUID | None = None
    dlq_partition: int | None = None
    dlq_offset: int | None = None


def existing(
    conn: Connection, asset_id: uuid.UUID | None, work_item_id: uuid.UUID | None
) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """``asset_id`` and ``work_item_id``, each kept only if the catalog has it.

    An error row may only name what exists.
    """
    row = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM assets WHERE asset_id = CAST(:a AS uuid)) AS asset,"
            " EXISTS (SELECT 1 FROM work_items WHERE work_item_id = CAST(:w AS uuid)) AS item"
        ),
        {"a": asset_id, "w": work_item_id},
    ).one()
    return (asset_id if row.asset else None, work_item_id if row.item else None)


def record_dead_letter(conn: Connection, letter: DeadLetterRecord) -> bool:
    """Index a dead letter; False if this message was dead-lettered before (a redelivery)."""
    return (
        conn.execute(
            sa.text(
                'INSERT INTO dead_letters (dead_letter_id, stage, topic, partition, "offset",'
                " message_key, payload, headers, kind, message, asset_id, work_item_id,"
                " dlq_partition, dlq_offset) VALUES (:id, :stage, :topic, :partition, :offset,"
                " :key, :payload, CAST(:headers AS jsonb), :kind, :message, :asset_id,"
                " :work_item_id, :dlq_partition, :dlq_offset)"
                " ON CONFLICT DO NOTHING RETURNING 1"
            ),
            {
                "id": letter.dead_letter_id,
                "stage": letter.stage,
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
                "key": letter.key,
                "payload": letter.payload,
                "headers": json.dumps([[k, v.hex()] for k, v in letter.headers]),
                "kind": letter.kind,
                "message": letter.message,
                "asset_id": letter.asset_id,
                "work_item_id": letter.work_item_id,
                "dlq_partition": letter.dlq_partition,
                "dlq_offset": letter.dlq_offset,
            },
        ).scalar_one_or_none()
        is not None
    )


def dead_letters(conn: Connection) -> list[dict[str, Any]]:
    """Every dead letter, oldest first, without its payload.

    Each says what it was, why it failed, when, and its replays.
    """
    rows = conn.execute(
        sa.text(
            'SELECT dead_letter_id, stage, topic, partition, "offset", kind, message, asset_id,'
            " work_item_id, dlq_partition, dlq_offset, created_at, replays, replayed_at"
            " FROM dead_letters ORDER BY created_at, dead_letter_id"
        )
    )
    return [dict(row._mapping) for row in rows]


def dead_letter(conn: Connection, dead_letter_id: uuid.UUID) -> DeadLetterRecord | None:
    """One dead letter by id, as it was recorded."""
    row = conn.execute(
        sa.text(
            'SELECT dead_letter_id, stage, topic, partition, "offset", message_key, payload,'
            " headers, kind, message, asset_id, work_item_id, dlq_partition, dlq_offset"
            " FROM dead_letters WHERE dead_letter_id = :id"
        ),
        {"id": dead_letter_id},
    ).one_or_none()
    if row is None:
        return None
    return DeadLetterRecord(
        dead_letter_id=row.dead_letter_id,
        stage=row.stage,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        key=None if row.message_key is None else bytes(row.message_key),
        payload=bytes(row.payload),
        headers=[(k, bytes.fromhex(v)) for k, v in row.headers],
        kind=row.kind,
        message=row.message,
        asset_id=row.asset_id,
        work_item_id=row.work_item_id,
        dlq_partition=row.dlq_partition,
        dlq_offset=row.dlq_offset,
    )


def mark_replayed(conn: Connection, dead_letter_id: uuid.UUID) -> None:
    """Count one more replay of the dead letter, and when it was."""
    conn.execute(
        sa.text(
            "UPDATE dead_letters SET replays = replays + 1, replayed_at = now()"
            " WHERE dead_letter_id = :id"
        ),
        {"id": dead_letter_id},
    )


def reopen(conn: Connection, asset_id: uuid.UUID | None, work_item_id: uuid.UUID | None) -> None:
    """Undo what a dead letter ended, so that its replay is handled again.

    A failed work item is queued again (and its asset planned again), an asset whose planning
    failed is registered again. Anything that has moved on since is left alone, so a
    redelivered replay reopens nothing twice.
    """
    if work_item_id is not None:
        reopened = conn.execute(
            sa.text(
                "UPDATE work_items SET status = 'queued', completed_at = NULL"
                " WHERE work_item_id = :id AND status = 'error' RETURNING asset_id"
            ),
            {"id": work_item_id},
        ).scalar_one_or_none()
        if reopened is not None:
            conn.execute(
                sa.text(
                    "UPDATE assets SET status = 'planned', updated_at = now()"
                    " WHERE asset_id = :id AND status IN ('finishing', 'done', 'error')"
                ),
                {"id": reopened},
            )
        return
    if asset_id is not None:
        conn.execute(
            sa.text(
                "UPDATE assets SET status = 'registered', updated_at = now()"
                " WHERE asset_id = :id AND status = 'error'"
            ),
            {"id": asset_id},
        )


def known_objects(conn: Connection, object_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which object versions (by :func:`skyeye.contracts.asset_id_for`) the pipeline has seen.

    Seen means registered as assets, or dead-lettered before they could be.
    """
    rows = conn.execute(
        sa.text(
            "SELECT asset_id FROM assets WHERE asset_id = ANY(:ids)"
            " UNION SELECT asset_id FROM dead_letters WHERE asset_id = ANY(:ids)"
        ),
        {"ids": list(object_ids)},
    )
    return {row.asset_id for row in rows}


def work_items_of(conn: Connection, asset_id: uuid.UUID) -> list[dict[str, Any]]:
    """The asset's work items: kind, pixel window, clip frame, lon/lat bounds and status of each.

    Whole-asset items (a scene's overview, a clip's caption) come first, then the tiles and
    frames by index: the order :func:`results` lists their results in.
    """
    rows = conn.execute(
        sa.text(
            "SELECT work_item_id, kind, tile_index, px_x, px_y, px_width, px_height, frame_index,"
            " bbox, status, created_at, completed_at FROM work_items WHERE asset_id = :id"
            " ORDER BY kind IN ('tile', 'frame'), tile_index, kind"
        ),
        {"id": asset_id},
    )
    return [dict(row._mapping) for row in rows]


def store_ask_results(
    conn: Connection,
    work_item_id: uuid.UUID,
    asset_id: uuid.UUID,
    ask_id: uuid.UUID,
    outcomes: Sequence[TaskOutcome],
    model: str,
) -> list[int]:
    """Write the answers to a question asked later about one work item; their result ids.

    They are results of origin ``ask``, keyed ``ask:<ask id>:<n>`` so that each ask adds its
    own rows beside the pipeline's; the work item and the asset keep their status.
    """
    ids = []
    for n, outcome in enumerate(outcomes):
        result_id = conn.execute(
            sa.text(
                "INSERT INTO results (work_item_id, asset_id, task_key, task_kind, task_text,"
                " prompt, raw_text, parsed, answer, model, embedding, origin) VALUES (:wid, :aid,"
                " :key, :kind, :text, :prompt, :raw, :parsed, CAST(:answer AS jsonb), :model,"
                " CAST(:embedding AS vector), 'ask') RETURNING result_id"
            ),
            _result_row(work_item_id, asset_id, f"ask:{ask_id}:{n}", outcome, model),
        ).scalar_one()
        _store_detections(conn, result_id, asset_id, outcome.detections)
        ids.append(result_id)
    return ids
