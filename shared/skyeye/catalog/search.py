"""Search over the catalog: assets, results and detections by text, place, time, class and meaning.

One :class:`Filters` contract parses what a user gives (the API's query parameters and bodies,
``skyeye search``'s options) and says which parameter is wrong when one is; the three
``search_*`` functions turn it into one SQL statement each, every shape of which an index serves
(``tests/integration/test_search_plans.py`` runs EXPLAIN on each). Pages are keyset pages: the
cursor is the last row's sort key, so a page never skips or repeats rows when new ones arrive.

Sorting: newest first by the imagery's time (assets, and results without a text query), by
full-text rank (``mode=text`` with a query), by cosine distance (``mode=semantic``), or by
reciprocal-rank fusion of both (``mode=hybrid``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.engine import Connection

from skyeye.catalog.queries import LonLatBox, bounds_sql, vector_literal
from skyeye.contracts import TaskKind

__all__ = [
    "AssetKind",
    "AssetStatus",
    "Filters",
    "InvalidCursor",
    "Page",
    "SearchMode",
    "detection",
    "detections_of",
    "parse_bbox",
    "parse_interval",
    "search_assets",
    "search_detections",
    "search_results",
]

# Candidates each ranking contributes to a hybrid search, and the RRF constant (Cormack et al.).
_HYBRID_POOL = 200
_RRF_K = 60
# How many HNSW candidates a filtered semantic query may visit before it gives up (pgvector's
# iterative scan), so a selective filter still fills its page.
_HNSW_MAX_TUPLES = 50_000
_ASSET_TIME = "COALESCE(a.start_time, a.event_time, a.created_at)"


class SearchMode(StrEnum):
    """How a text query matches: words (full text), meaning (embeddings), or both fused."""

    TEXT = "text"
    SEMANTIC = "semantic"
    HYBRID = "hybrid"


class AssetKind(StrEnum):
    """What an asset is (``assets.kind``)."""

    IMAGE = "image"
    SCENE = "scene"
    CLIP = "clip"


class AssetStatus(StrEnum):
    """An asset's status, as stored."""

    REGISTERED = "registered"
    PLANNED = "planned"
    FINISHING = "finishing"
    DONE = "done"
    ERROR = "error"


class InvalidCursor(ValueError):
    """A page cursor that this search did not hand out."""


def parse_bbox(text: str | Sequence[float]) -> LonLatBox:
    """``W,S,E,N`` (or four numbers) in degrees, checked; west > east crosses the antimeridian.

    A six-number 3-D box (STAC allows one) keeps its horizontal extent.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"expected W,S,E,N in degrees, got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if len(values) == 6:
        values = [values[0], values[1], values[3], values[4]]
    if len(values) != 4:
        raise ValueError(f"expected 4 numbers W,S,E,N (or 6 for a 3-D box), got {len(values)}")
    west, south, east, north = values
    if not all(math.isfinite(v) for v in values):
        raise ValueError("coordinates must be finite numbers (no NaN or infinity)")
    if not all(-180 <= v <= 180 for v in (west, east)):
        raise ValueError("longitudes must be within [-180, 180]")
    if not all(-90 <= v <= 90 for v in (south, north)):
        raise ValueError("latitudes must be within [-90, 90]")
    if south > north:
        raise ValueError(f"south ({south:g}) is north of north ({north:g})")
    return west, south, east, north


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """An RFC 3339 instant or interval ``start/end`` with ``..`` (or nothing) for an open end.

    A time without a zone is refused: RFC 3339 requires one. An instant is the interval from
    itself to itself.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty datetime")
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"expected an instant or 'start/end', got {text!r}")
    if len(parts) == 1:
        instant = _rfc3339(parts[0])
        return instant, instant
    start = None if parts[0] in ("", "..") else _rfc3339(parts[0])
    end = None if parts[1] in ("", "..") else _rfc3339(parts[1])
    if start is None and end is None:
        raise ValueError("an interval needs at least one end ('../..' is everything)")
    if start is not None and end is not None and start > end:
        raise ValueError(f"the interval starts ({parts[0]}) after it ends ({parts[1]})")
    return start, end


def _rfc3339(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time") from None
    if "T" not in text.upper() or moment.tzinfo is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time (it needs a date, time and zone)")
    return moment.astimezone(UTC)


class Filters(BaseModel):
    """What to search for; each field is one query parameter of the API and one CLI option.

    Every field is optional and they combine with AND. Validation errors name the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    q: str | None = Field(None, min_length=1, max_length=512, description="search text")
    mode: SearchMode = SearchMode.TEXT
    bbox: LonLatBox | None = Field(None, description="lon/lat W,S,E,N the asset intersects")
    start: datetime | None = Field(None, description="the imagery's time is at or after this")
    end: datetime | None = Field(None, description="the imagery's time is at or before this")
    label: str | None = Field(
        None, min_length=1, max_length=512, description="a detection's phrase or class"
    )
    asset_kind: AssetKind | None = None
    task_kind: TaskKind | None = None
    status: AssetStatus | None = None
    ids: tuple[uuid.UUID, ...] | None = Field(None, description="only these assets")
    limit: int = Field(10, ge=1, le=10_000)
    cursor: str | None = Field(None, max_length=512, description="from the previous page")

    @field_validator("q", "label")
    @classmethod
    def _stripped(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return None if value is None else value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> Filters:
        if self.mode is not SearchMode.TEXT and self.q is None:
            raise ValueError(f"mode={self.mode.value} needs a query text q")
        if self.start and self.end and self.start > self.end:
            raise ValueError("the datetime interval starts after it ends")
        return self


@dataclass(frozen=True)
class Page:
    """A page of rows and the cursor of the next one (None on the last page)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


def _encode_cursor(kind: str, key: Sequence[Any]) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, kind: str, arity: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not one this search handed out") from None
    if not isinstance(values, list) or len(values) != arity + 1 or values[0] != kind:
        raise InvalidCursor("cursor belongs to another kind of search or ordering")
    return values[1:]


class _Where:
    """A WHERE clause being built, with its bound parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: dict[str, Any] = {}

    def add(self, clause: str, **params: Any) -> None:
        self.clauses.append(clause)
        self.params.update(params)

    def sql(self) -> str:
        return " AND ".join(self.clauses) if self.clauses else "TRUE"


def _bbox_clause(table: str, bbox: LonLatBox) -> str:
    """Intersects: the GiST-indexed box first, then the exact bounds where the box is not exact.

    A query box across the antimeridian is two boxes. A stored box across it is kept as the band
    of every longitude between its latitudes (``catalog.queries``), which the index over-selects;
    its exact ``bbox`` bounds then decide: a row crossing the antimeridian meets a query box that
    does not when the query reaches east of the row's west or west of its east.
    """
    west, _, east, _ = bbox
    box = f"{table}.lon_lat_bbox"
    if west > east:
        # both cross, or the query's two boxes meet a plain row exactly: the box test is exact
        return (
            f"({box} && box(point(:w, :s), point(180, :n))"
            f" OR {box} && box(point(-180, :s), point(:e, :n)))"
        )
    exact = f"{table}.bbox"
    return (
        f"{box} && box(point(:w, :s), point(:e, :n))"
        f" AND ({exact} IS NULL OR {exact}[1] <= {exact}[3]"
        f" OR :e >= {exact}[1] OR :w <= {exact}[3])"
    )


def _asset_filters(where: _Where, f: Filters) -> None:
    """The filters on the asset: place, time, kind, status, ids."""
    if f.bbox is not None:
        where.add(
            _bbox_clause("a", f.bbox),
            w=f.bbox[0],
            s=f.bbox[1],
            e=f.bbox[2],
            n=f.bbox[3],
        )
    if f.start is not None:
        where.add(f"{_ASSET_TIME} >= :start", start=f.start)
    if f.end is not None:
        where.add(f"{_ASSET_TIME} <= :end", end=f.end)
    if f.asset_kind is not None:
        where.add("a.kind = :asset_kind", asset_kind=f.asset_kind.value)
    if f.status is not None:
        where.add("a.status = :status", status=f.status.value)
    if f.ids is not None:
        where.add("a.asset_id = ANY(:ids)", ids=list(f.ids))


_ASSET_COLUMNS = f"a.*, {bounds_sql('a')} AS lon_lat_bounds, {_ASSET_TIME} AS seen_at"


def search_assets(conn: Connection, f: Filters) -> Page:
    """Assets matching the filters, newest imagery first.

    With ``q`` (full text), an asset matches when one of its results does; with ``label``,
    when one of its detections has that phrase or class (any case). Semantic modes apply to
    results (:func:`search_results`); here ``q`` is always matched as words.
    """
    where = _Where()
    _asset_filters(where, f)
    if f.q is not None:
        where.add(
            "EXISTS (SELECT 1 FROM results r WHERE r.asset_id = a.asset_id"
            " AND r.search @@ websearch_to_tsquery('english', :q))",
            q=f.q,
        )
    if f.label is not None:
        where.add(
            "EXISTS (SELECT 1 FROM detections d WHERE lower(d.label) = lower(:label)"
            " AND d.asset_id = a.asset_id)",
            label=f.label,
        )
    if f.task_kind is not None:
        where.add(
            "EXISTS (SELECT 1 FROM results r WHERE r.asset_id = a.asset_id"
            " AND r.task_kind = :task_kind)",
            task_kind=f.task_kind.value,
        )
    if f.cursor is not None:
        seen, asset_id = _decode_cursor(f.cursor, "assets", 2)
        where.add(
            f"({_ASSET_TIME}, a.asset_id) < (:c_seen, :c_id)",
            c_seen=_cursor_time(seen),
            c_id=_cursor_uuid(asset_id),
        )
    rows = _fetch(
        conn,
        f"SELECT {_ASSET_COLUMNS} FROM assets a WHERE {where.sql()}"
        f" ORDER BY {_ASSET_TIME} DESC, a.asset_id DESC LIMIT :limit",
        {**where.params, "limit": f.limit + 1},
    )
    return _page(rows, f.limit, lambda r: _encode_cursor("assets", [r["seen_at"], r["asset_id"]]))


_RESULT_COLUMNS = (
    "r.result_id, r.asset_id, a.object_key, a.kind AS asset_kind, a.status AS asset_status,"
    f" {bounds_sql('a')} AS lon_lat_bounds, {_ASSET_TIME} AS seen_at, w.kind AS item_kind,"
    " w.tile_index, w.frame_index, r.task_kind, r.task_text, r.raw_text, r.parsed, r.answer,"
    " r.model, r.origin, r.created_at"
)
_RESULT_JOINS = (
    "results r JOIN assets a ON a.asset_id = r.asset_id"
    " JOIN work_items w ON w.work_item_id = r.work_item_id"
)


def _result_filters(f: Filters) -> _Where:
    where = _Where()
    _asset_filters(where, f)
    if f.task_kind is not None:
        where.add("r.task_kind = :task_kind", task_kind=f.task_kind.value)
    if f.label is not None:
        where.add(
            "EXISTS (SELECT 1 FROM detections d WHERE d.result_id = r.result_id"
            " AND lower(d.label) = lower(:label))",
            label=f.label,
        )
    return where


def search_results(
    conn: Connection, f: Filters, query_vector: Sequence[float] | None = None
) -> Page:
    """Results (captions, descriptions, answers) matching the filters, best or newest first.

    ``query_vector`` is the sentence embedding of ``f.q``, needed by the semantic and hybrid
    modes (the caller computes it: the catalog runs no model). Each row has ``score``: the
    full-text rank, the cosine similarity, or the fused score; None when sorted by time.
    """
    if f.mode is not SearchMode.TEXT and query_vector is None:
        raise ValueError(f"mode={f.mode.value} needs the query's embedding")
    where = _result_filters(f)
    if f.q is None:
        return _results_by_time(conn, f, where)
    if f.mode is SearchMode.TEXT:
        return _results_by_rank(conn, f, where)
    assert query_vector is not None
    if f.mode is SearchMode.SEMANTIC:
        return _results_by_meaning(conn, f, where, vector_literal(query_vector))
    return _results_hybrid(conn, f, where, vector_literal(query_vector))


def _results_by_time(conn: Connection, f: Filters, where: _Where) -> Page:
    if f.cursor is not None:
        created, result_id = _decode_cursor(f.cursor, "results-time", 2)
        where.add(
            "(r.created_at, r.result_id) < (:c_created, :c_id)",
            c_created=_cursor_time(created),
            c_id=_cursor_int(result_id),
        )
    rows = _fetch(
        conn,
        f"SELECT {_RESULT_COLUMNS}, NULL::float8 AS score FROM {_RESULT_JOINS}"
        f" WHERE {where.sql()} ORDER BY r.created_at DESC, r.result_id DESC LIMIT :limit",
        {**where.params, "limit": f.limit + 1},
    )
    return _page(
        rows,
        f.limit,
        lambda r: _encode_cursor("results-time", [r["created_at"], r["result_id"]]),
    )


def _results_by_rank(conn: Connection, f: Filters, where: _Where) -> Page:
    rank = "ts_rank_cd(r.search, websearch_to_tsquery('english', :q))::float8"
    where.add("r.search @@ websearch_to_tsquery('english', :q)", q=f.q)
    if f.cursor is not None:
        score, result_id = _decode_cursor(f.cursor, "results-rank", 2)
        # rank descending, then id ascending: the row after (score, id) in that order
        where.add(
            f"({rank} < :c_score OR ({rank} = :c_score AND r.result_id > :c_id))",
            c_score=_cursor_float(score),
            c_id=_cursor_int(result_id),
        )
    rows = _fetch(
        conn,
        f"SELECT {_RESULT_COLUMNS}, {rank} AS score FROM {_RESULT_JOINS}"
        f" WHERE {where.sql()} ORDER BY score DESC, r.result_id LIMIT :limit",
        {**where.params, "limit": f.limit + 1},
    )
    return _page(
        rows, f.limit, lambda r: _encode_cursor("results-rank", [r["score"], r["result_id"]])
    )


def _results_by_meaning(conn: Connection, f: Filters, where: _Where, vector: str | None) -> Page:
    distance = "(r.embedding <=> CAST(:qv AS vector))"
    where.add("r.embedding IS NOT NULL", qv=vector)
    if f.cursor is not None:
        dist, result_id = _decode_cursor(f.cursor, "results-meaning", 2)
        where.add(
            f"({distance} > :c_dist OR ({distance} = :c_dist AND r.result_id > :c_id))",
            c_dist=_cursor_float(dist),
            c_id=_cursor_int(result_id),
        )
    _nearest_first(conn)
    rows = _fetch(
        conn,
        f"SELECT {_RESULT_COLUMNS}, {distance} AS distance, 1 - {distance} AS score"
        f" FROM {_RESULT_JOINS} WHERE {where.sql()} ORDER BY distance, r.result_id LIMIT :limit",
        {**where.params, "limit": f.limit + 1},
    )
    # the cursor keeps the distance itself: 1 - (1 - d) need not give d back exactly
    return _page(
        rows,
        f.limit,
        lambda r: _encode_cursor("results-meaning", [r["distance"], r["result_id"]]),
    )


def _nearest_first(conn: Connection) -> None:
    """Settings, for this transaction, under which a nearest-neighbour query uses HNSW well.

    Filters are applied to the HNSW scan's candidates as it goes; the iterative scan keeps
    reading the graph until the page is full (or the budget is spent), in distance order. With
    the default random_page_cost (4, for spinning disks) the planner prices the graph's random
    reads above a sequential scan and sort of every embedding; 1.1 is the usual figure for SSDs
    and memory-resident indexes.
    """
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = strict_order"))
    conn.execute(sa.text(f"SET LOCAL hnsw.max_scan_tuples = {_HNSW_MAX_TUPLES}"))
    conn.execute(sa.text("SET LOCAL random_page_cost = 1.1"))


def _results_hybrid(conn: Connection, f: Filters, where: _Where, vector: str | None) -> Page:
    """Reciprocal-rank fusion of the best full-text and the nearest semantic candidates."""
    where.params.update(q=f.q, qv=vector, pool=_HYBRID_POOL, k=_RRF_K)
    cursor_clause = "TRUE"
    if f.cursor is not None:
        score, result_id = _decode_cursor(f.cursor, "results-hybrid", 2)
        cursor_clause = "(fused.score < :c_score OR (fused.score = :c_score AND fused.id > :c_id))"
        where.params.update(c_score=_cursor_float(score), c_id=_cursor_int(result_id))
    _nearest_first(conn)
    filtered = where.sql()
    sql = (
        "WITH by_text AS ("
        f"  SELECT r.result_id AS id, row_number() OVER (ORDER BY"
        "    ts_rank_cd(r.search, websearch_to_tsquery('english', :q)) DESC, r.result_id) AS n"
        f"  FROM {_RESULT_JOINS} WHERE {filtered}"
        "   AND r.search @@ websearch_to_tsquery('english', :q)"
        "  ORDER BY n LIMIT :pool),"
        " by_meaning AS ("
        "  SELECT id, row_number() OVER (ORDER BY d, id) AS n FROM ("
        "   SELECT r.result_id AS id, r.embedding <=> CAST(:qv AS vector) AS d"
        f"   FROM {_RESULT_JOINS} WHERE {filtered} AND r.embedding IS NOT NULL"
        "   ORDER BY d, r.result_id LIMIT :pool) nearest),"
        " fused AS ("
        "  SELECT id, sum(1.0 / (:k + n))::float8 AS score FROM ("
        "   SELECT id, n FROM by_text UNION ALL SELECT id, n FROM by_meaning) ranked"
        "  GROUP BY id)"
        f" SELECT {_RESULT_COLUMNS}, fused.score FROM fused"
        f" JOIN {_RESULT_JOINS} ON r.result_id = fused.id"
        f" WHERE {cursor_clause} ORDER BY fused.score DESC, fused.id LIMIT :limit"
    )
    rows = _fetch(conn, sql, {**where.params, "limit": f.limit + 1})
    return _page(
        rows, f.limit, lambda r: _encode_cursor("results-hybrid", [r["score"], r["result_id"]])
    )


_DETECTION_SELECT = (
    "SELECT d.detection_id, d.asset_id, d.label, d.x1, d.y1, d.x2, d.y2, d.footprint,"
    f" d.duplicate, d.centrality, {bounds_sql('d')} AS lon_lat_bounds, r.task_kind, r.model,"
    f" w.tile_index, a.object_key, {_ASSET_TIME} AS seen_at"
    " FROM detections d JOIN results r ON r.result_id = d.result_id"
    " JOIN work_items w ON w.work_item_id = r.work_item_id"
    " JOIN assets a ON a.asset_id = d.asset_id"
)


def search_detections(conn: Connection, f: Filters) -> Page:
    """Detections matching the filters, newest first; ``bbox`` is the detection's own place.

    A detection without a lon/lat place (a plain image's) never matches a bbox. ``q`` matches
    its phrase or class as words.
    """
    where = _Where()
    bbox, f_rest = f.bbox, f.model_copy(update={"bbox": None})
    _asset_filters(where, f_rest)
    if bbox is not None:
        where.add(_bbox_clause("d", bbox), w=bbox[0], s=bbox[1], e=bbox[2], n=bbox[3])
    if f.label is not None:
        where.add("lower(d.label) = lower(:label)", label=f.label)
    if f.q is not None:
        where.add("to_tsvector('english', d.label) @@ websearch_to_tsquery('english', :q)", q=f.q)
    if f.task_kind is not None:
        where.add("r.task_kind = :task_kind", task_kind=f.task_kind.value)
    if f.cursor is not None:
        (detection_id,) = _decode_cursor(f.cursor, "detections", 1)
        where.add("d.detection_id < :c_id", c_id=_cursor_int(detection_id))
    rows = _fetch(
        conn,
        f"{_DETECTION_SELECT} WHERE {where.sql()} ORDER BY d.detection_id DESC LIMIT :limit",
        {**where.params, "limit": f.limit + 1},
    )
    return _page(rows, f.limit, lambda r: _encode_cursor("detections", [r["detection_id"]]))


def detection(conn: Connection, detection_id: int) -> dict[str, Any] | None:
    """One detection with its asset, task, model and tile; None if there is no such detection."""
    rows = _fetch(conn, f"{_DETECTION_SELECT} WHERE d.detection_id = :id", {"id": detection_id})
    return rows[0] if rows else None


def detections_of(
    conn: Connection, asset_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """The detections of each of these assets, as :func:`skyeye.catalog.asset_detections` has them.

    One statement for a whole page of STAC Items.
    """
    rows = _fetch(
        conn,
        "SELECT d.asset_id, d.detection_id, d.label, d.x1, d.y1, d.x2, d.y2, d.footprint,"
        " d.duplicate, d.centrality, r.task_kind, r.model, w.tile_index,"
        f" {bounds_sql('d')} AS lon_lat_bounds"
        " FROM detections d JOIN results r USING (result_id)"
        " JOIN work_items w ON w.work_item_id = r.work_item_id"
        " WHERE d.asset_id = ANY(:ids) ORDER BY w.tile_index, r.result_id, d.ordinal",
        {"ids": list(asset_ids)},
    )
    found: dict[uuid.UUID, list[dict[str, Any]]] = {asset_id: [] for asset_id in asset_ids}
    for row in rows:
        found[row["asset_id"]].append(row)
    return found


def _fetch(conn: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(sa.text(sql), params)]


def _page(rows: list[dict[str, Any]], limit: int, key: Any) -> Page:
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, key(rows[-1]))


def _cursor_time(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidCursor("cursor is not one this search handed out") from None


def _cursor_uuid(value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidCursor("cursor is not one this search handed out") from None


def _cursor_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidCursor("cursor is not one this search handed out")
    return value


def _cursor_float(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidCursor("cursor is not one this search handed out")
    return float(value)
