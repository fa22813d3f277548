"""Bulk loading of a synthetic catalog (:mod:`skyeye.samples.catalog`) for tests and benchmarks.

Each table is written by one ``INSERT ... SELECT FROM unnest(...)`` of column arrays: one round
trip per table whatever the row count. Sentence embeddings travel once per distinct text (a
temporary table) and are joined in, each row's jittered by a hash of its position so no two rows
share a vector. A large load drops the results' HNSW index and builds it again at the end, as
one would for any bulk load: building it once is several times faster than inserting into it
row by row. Nothing here runs in the product; it only writes rows the product could have
written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from skyeye.adapters import postgres
from skyeye.catalog.queries import vector_literal

if TYPE_CHECKING:
    from skyeye.samples.catalog import SyntheticCatalog

__all__ = [
    "Loaded",
    "load",
    "open_database",
    "record_facts",
    "recorded_facts",
    "server_versions",
    "vacuum_analyze",
]

# More embedded rows than this in one load: build the HNSW index afterwards instead of
# inserting into it (a rebuild of 20k rows takes seconds; 100k row-by-row inserts, minutes).
_REBUILD_ABOVE = 5_000
_EMBEDDING_INDEX = "results_embedding_idx"


@dataclass(frozen=True)
class Loaded:
    """What a load wrote and how long each step took, in seconds."""

    assets: int
    work_items: int
    results: int
    detections: int
    seconds: dict[str, float]


def _array(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal of the values: ``{1,NULL,"text"}``, quotes escaped.

    Bound as one string and cast, a large array is parsed by the server's array reader; the
    driver's own ``ARRAY[...]`` form makes one expression node per element, many times slower.
    """
    parts = []
    for value in values:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, bool):
            parts.append("t" if value else "f")
        elif isinstance(value, int | float):
            parts.append(repr(value))
        else:
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def _arrays(columns: dict[str, Sequence[Any]]) -> dict[str, str]:
    return {name: _array(values) for name, values in columns.items()}


def _unnest(columns: Sequence[tuple[str, str]]) -> str:
    """``unnest(CAST(:c AS t[]), ...) WITH ORDINALITY AS x(c, ..., n)`` of bound arrays."""
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns)
    names = ", ".join(name for name, _ in columns)
    return f"unnest({arrays}) WITH ORDINALITY AS x({names}, n)"


def _lon_lat_box(p: str) -> str:
    """The GiST box of [w, s, e, n] columns.

    One across the antimeridian spans every longitude between its latitudes, as
    ``skyeye.catalog.queries._box_literal`` writes it.
    """
    return (
        f"CASE WHEN {p}west IS NULL THEN NULL"
        f" WHEN {p}west > {p}east THEN box(point(-180, {p}south), point(180, {p}north))"
        f" ELSE box(point({p}west, {p}south), point({p}east, {p}north)) END"
    )


def _bbox_array(p: str) -> str:
    return (
        f"CASE WHEN {p}west IS NULL THEN NULL ELSE ARRAY[{p}west, {p}south, {p}east, {p}north] END"
    )


def _ring(west: str, south: str, east: str, north: str) -> str:
    """A counter-clockwise GeoJSON ring of a box."""
    corners = [(west, south), (east, south), (east, north), (west, north), (west, south)]
    points = ", ".join(f"jsonb_build_array({x}, {y})" for x, y in corners)
    return f"jsonb_build_array({points})"


def _footprint(p: str) -> str:
    """The GeoJSON footprint of [w, s, e, n].

    A Polygon, or a MultiPolygon split at the antimeridian (RFC 7946 3.1.9).
    """
    w, s, e, n = (f"{p}{c}" for c in ("west", "south", "east", "north"))
    return (
        f"CASE WHEN {w} IS NULL THEN NULL"
        f" WHEN {w} > {e} THEN jsonb_build_object('type', 'MultiPolygon', 'coordinates',"
        f" jsonb_build_array(jsonb_build_array({_ring(w, s, '180', n)}),"
        f" jsonb_build_array({_ring('-180', s, e, n)})))"
        f" ELSE jsonb_build_object('type', 'Polygon', 'coordinates',"
        f" jsonb_build_array({_ring(w, s, e, n)})) END"
    )


_ASSETS = [
    ("asset_id", "uuid"),
    ("object_key", "text"),
    ("version", "text"),
    ("size_bytes", "bigint"),
    ("content_type", "text"),
    ("media_format", "text"),
    ("width", "integer"),
    ("height", "integer"),
    ("status", "text"),
    ("tiles_planned", "integer"),
    ("event_time", "float8"),
    ("created_at", "float8"),
    ("updated_at", "float8"),
    ("crs", "text"),
    ("west", "float8"),
    ("south", "float8"),
    ("east", "float8"),
    ("north", "float8"),
    ("duration_s", "float8"),
    ("fps", "float8"),
    ("frame_count", "integer"),
    ("video_codec", "text"),
    ("start_time", "float8"),
    ("end_time", "float8"),
    ("preview_key", "text"),
]
_INSERT_ASSETS = (
    "INSERT INTO assets (asset_id, bucket, object_key, version, size_bytes, content_type,"
    " event_name, event_time, media_format, width, height, status, tiles_planned, created_at,"
    " updated_at, crs, lon_lat_bbox, bbox, duration_s, fps, frame_count, video_codec,"
    " start_time, end_time, preview_key)"
    " SELECT x.asset_id, :bucket, x.object_key, x.version, x.size_bytes, x.content_type,"
    " 's3:ObjectCreated:Put', to_timestamp(x.event_time), x.media_format, x.width, x.height,"
    " x.status, x.tiles_planned, to_timestamp(x.created_at), to_timestamp(x.updated_at), x.crs,"
    f" {_lon_lat_box('x.')}, {_bbox_array('x.')}, x.duration_s, x.fps, x.frame_count,"
    " x.video_codec, to_timestamp(x.start_time), to_timestamp(x.end_time), x.preview_key"
    f" FROM {_unnest(_ASSETS)}"
)
_ITEMS = [
    ("work_item_id", "uuid"),
    ("asset_id", "uuid"),
    ("kind", "text"),
    ("tile_index", "integer"),
    ("px_x", "integer"),
    ("px_y", "integer"),
    ("px_width", "integer"),
    ("px_height", "integer"),
    ("status", "text"),
    ("created_at", "float8"),
    ("completed_at", "float8"),
    ("frame_index", "integer"),
]
_INSERT_ITEMS = (
    "INSERT INTO work_items (work_item_id, asset_id, kind, tile_index, px_x, px_y, px_width,"
    " px_height, status, created_at, completed_at, frame_index)"
    " SELECT x.work_item_id, x.asset_id, x.kind, x.tile_index, x.px_x, x.px_y, x.px_width,"
    " x.px_height, x.status, to_timestamp(x.created_at), to_timestamp(x.completed_at),"
    f" x.frame_index FROM {_unnest(_ITEMS)}"
)
_RESULTS = [
    ("result_id", "bigint"),
    ("work_item_id", "uuid"),
    ("asset_id", "uuid"),
    ("task", "integer"),
    ("raw_text", "text"),
    ("parsed", "boolean"),
    ("answer", "jsonb"),
    ("created_at", "float8"),
    ("text_no", "integer"),
]
_TASKS = "unnest(CAST(:t_key AS text[]), CAST(:t_kind AS text[]), CAST(:t_text AS text[]),"
_TASKS += " CAST(:t_prompt AS text[])) WITH ORDINALITY AS t(key, kind, text, prompt, no)"
# a row's text's vector plus a uniform jitter in [-j, j] per component from a hash of the row's
# position and the seed, normalised again: deterministic, and distinct for every row
_JITTERED = (
    "l2_normalize(e.embedding + CAST(ARRAY(SELECT CAST(:jitter * ("
    "hashint8extended(x.n * 384 + g, :seed) % 1000000) / 1000000.0 AS real)"
    " FROM generate_series(0, 383) g) AS vector))"
)
_INSERT_RESULTS = (
    "INSERT INTO results (result_id, work_item_id, asset_id, task_key, task_kind, task_text,"
    " prompt, raw_text, parsed, answer, model, created_at, embedding)"
    " SELECT x.result_id, x.work_item_id, x.asset_id, t.key, t.kind, t.text, t.prompt,"
    " x.raw_text, x.parsed, x.answer, :model, to_timestamp(x.created_at),"
    " CASE WHEN e.embedding IS NULL THEN NULL WHEN :jitter = 0 THEN e.embedding"
    f" ELSE {_JITTERED} END"
    f" FROM {_unnest(_RESULTS)} JOIN {_TASKS} ON t.no = x.task + 1"
    " LEFT JOIN pg_temp.synthetic_texts e ON e.text_no = x.text_no"
)
_DETECTIONS = [
    ("result_id", "bigint"),
    ("asset_id", "uuid"),
    ("label", "text"),
    ("ordinal", "integer"),
    ("x1", "float8"),
    ("y1", "float8"),
    ("x2", "float8"),
    ("y2", "float8"),
    ("west", "float8"),
    ("south", "float8"),
    ("east", "float8"),
    ("north", "float8"),
    ("centrality", "real"),
    ("duplicate", "boolean"),
]
_INSERT_DETECTIONS = (
    "INSERT INTO detections (result_id, asset_id, label, ordinal, x1, y1, x2, y2, footprint,"
    " lon_lat_bbox, bbox, centrality, duplicate)"
    " SELECT x.result_id, x.asset_id, x.label, x.ordinal, x.x1, x.y1, x.x2, x.y2,"
    f" {_footprint('x.')}, {_lon_lat_box('x.')}, {_bbox_array('x.')}, x.centrality,"
    f" x.duplicate FROM {_unnest(_DETECTIONS)} ORDER BY x.n"
)


def load(conn: Connection, data: SyntheticCatalog, jitter: float = 0.01) -> Loaded:
    """Write ``data`` in the connection's transaction, then ANALYZE the tables it filled.

    Args:
        conn: a connection; the caller commits.
        data: the rows (:func:`skyeye.samples.catalog.synthesize`).
        jitter: how far each row's embedding may stray from its text's, per component.

    Returns:
        The counts and timings. Result ids are drawn from the table's sequence and written to
        ``data.results["result_id"]``.
    """
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal began
        now = time.perf_counter()
        seconds[name] = round(now - began, 3)
        began = now

    # Memory for an in-memory HNSW build, for this transaction only.
    conn.execute(sa.text("SET LOCAL maintenance_work_mem = '1GB'"))
    conn.execute(
        sa.text(
            "CREATE TEMPORARY TABLE synthetic_texts (text_no integer PRIMARY KEY,"
            " embedding vector(384)) ON COMMIT DROP"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO pg_temp.synthetic_texts SELECT x.n - 1, CAST(x.v AS vector)"
            " FROM unnest(CAST(:vectors AS text[])) WITH ORDINALITY AS x(v, n)"
        ),
        {"vectors": _array([vector_literal(v) for v in data.embeddings.tolist()])},
    )
    conn.execute(
        sa.text(_INSERT_ASSETS),
        {"bucket": "ingest", **_arrays({c: data.assets[c] for c, _ in _ASSETS})},
    )
    conn.execute(sa.text(_INSERT_ITEMS), _arrays({c: data.work_items[c] for c, _ in _ITEMS}))
    lap("assets and work items")
    count = len(data.results["task"])
    ids = list(
        conn.execute(
            sa.text(
                "SELECT nextval(pg_get_serial_sequence('results', 'result_id'))"
                " FROM generate_series(1, :n)"
            ),
            {"n": count},
        ).scalars()
    )
    data.results["result_id"] = ids
    embedded = sum(1 for n in data.results["text_no"] if n is not None)
    index_sql = None
    if embedded > _REBUILD_ABOVE:
        index_sql = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
            {"name": _EMBEDDING_INDEX},
        ).scalar_one_or_none()
        if index_sql is not None:
            conn.execute(sa.text(f"DROP INDEX {_EMBEDDING_INDEX}"))
    tasks = data.tasks
    conn.execute(
        sa.text(_INSERT_RESULTS),
        {
            **_arrays(
                {
                    **{c: data.results[c] for c, _ in _RESULTS},
                    "t_key": [t[0] for t in tasks],
                    "t_kind": [t[1] for t in tasks],
                    "t_text": [t[2] for t in tasks],
                    "t_prompt": [t[3] for t in tasks],
                }
            ),
            "model": "skyeye-tiny",
            "jitter": float(jitter),
            "seed": int(data.seed),
        },
    )
    lap("results")
    if index_sql is not None:
        conn.execute(sa.text(index_sql))
        lap("embedding index")
    detections: dict[str, Any] = {c: data.detections.get(c) for c, _ in _DETECTIONS}
    detections["result_id"] = [ids[i] for i in data.detections["result"]]
    conn.execute(sa.text(_INSERT_DETECTIONS), _arrays(detections))
    lap("detections")
    for table in ("assets", "work_items", "results", "detections"):
        conn.execute(sa.text(f"ANALYZE {table}"))
    lap("analyze")
    return Loaded(
        assets=len(data.assets["asset_id"]),
        work_items=len(data.work_items["work_item_id"]),
        results=count,
        detections=len(detections["result_id"]),
        seconds=seconds,
    )


def open_database(url: str, name: str, *, create: bool) -> Engine | None:
    """An engine on database ``name`` of the server at ``url`` (a maintenance database's URL).

    With ``create``, the database is dropped if it exists and made afresh (empty, unmigrated);
    without, None when there is no such database.
    """
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if create:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            elif not exists:
                return None
    finally:
        admin.dispose()
    target = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    return postgres.create_engine(target)


def recorded_facts(engine: Engine) -> dict[str, Any] | None:
    """What :func:`record_facts` wrote of the catalog in this database; None if nothing."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('synthetic_catalog')")).scalar() is None:
            return None
        facts: dict[str, Any] | None = conn.execute(
            sa.text("SELECT facts FROM synthetic_catalog")
        ).scalar_one_or_none()
        return facts


def record_facts(engine: Engine, facts: dict[str, Any]) -> None:
    """Keep what the loaded catalog is (size, seed, timings) beside it, for reuse."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS synthetic_catalog (facts jsonb)"))
        conn.execute(sa.text("DELETE FROM synthetic_catalog"))
        conn.execute(
            sa.text("INSERT INTO synthetic_catalog VALUES (CAST(:facts AS jsonb))"),
            {"facts": json.dumps(facts)},
        )


def vacuum_analyze(engine: Engine) -> None:
    """VACUUM ANALYZE the database, as autovacuum would in time after a bulk load.

    Until then a fresh table's visibility map is empty and index-only scans read the heap.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))


def server_versions(engine: Engine) -> dict[str, str]:
    """The PostgreSQL server's and the pgvector extension's versions."""
    with engine.connect() as conn:
        return {
            "postgresql": conn.execute(sa.text("SHOW server_version")).scalar_one(),
            "pgvector": conn.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar_one(),
        }
