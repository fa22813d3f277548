"""Every search shape runs on an index, and returns what its filters say, page after page.

A catalog of realistic size (2,000 assets, 20,000 results, 60,000 detections, from
``skyeye.samples.catalog``) is loaded into a database of its own on the stack's PostgreSQL and
analysed, so the planner weighs its choices as it would in production. Each query shape that
``skyeye.catalog.search`` can produce, that is, each filter alone and in combinations, each
ordering (time, rank, meaning, fused) and each with its cursor, is run through a connection that
also asks PostgreSQL for the plan of every statement the search actually sends; a sequential
scan of results or detections fails the test.

The rows are then checked against a brute-force oracle (every row of the tables, filtered in
Python), and paged through while new results arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from skyeye import catalog
from skyeye.adapters import postgres
from skyeye.catalog.search import (
    Filters,
    Page,
    detections_of,
    search_assets,
    search_detections,
    search_results,
)
from skyeye.contracts import Task, TaskKind, Tile, WorkItem
from skyeye.samples.catalog import generate_catalog, hashed_embeddings

from .conftest import Pipeline

ASSETS = 2_000  # x 10 results each, x 3 detections per result
DATABASE = "search_plans"
SEED = 2025
# tables the issue forbids a sequential scan of
LARGE = {"results", "detections"}

Q = "ships harbour"
Q_OR = '"storage tanks" OR refinery'
SEMANTIC_Q = "ships moored along the pier of a harbour"
ROTTERDAM = (4.0, 51.86, 4.3, 51.95)
TOKYO = (139.7, 35.3, 140.1, 35.7)
# across the antimeridian, over Taveuni
ANTIMERIDIAN = (179.8, -17.2, -179.8, -16.5)
# open ocean at Taveuni's latitudes: nothing lies there
OCEAN = (-175.0, -17.2, -170.0, -16.5)
SPRING = (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC))
AUTUMN = datetime(2025, 9, 1, tzinfo=UTC)


@dataclass
class Searched:
    """The loaded catalog, and what the oracle reads of it."""

    engine: sa.Engine
    asset_ids: list[uuid.UUID]
    vector: list[float]


@pytest.fixture(scope="module")
def searched(pipeline: Pipeline) -> Iterator[Searched]:
    assert pipeline.settings.database_url is not None
    admin = sa.create_engine(pipeline.settings.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    url = sa.make_url(pipeline.settings.database_url).set(database=DATABASE)
    engine = postgres.create_engine(url.render_as_string(hide_password=False))
    try:
        postgres.migrate(engine)
        data = generate_catalog(
            engine, ASSETS, results_per_asset=10, detections_per_result=3, seed=SEED
        )
        ids = [uuid.UUID(a) for a in data.assets["asset_id"]]
        vector = hashed_embeddings([SEMANTIC_Q])[0].tolist()
        yield Searched(engine, ids, vector)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        admin.dispose()


# ---- capturing plans ---------------------------------------------------------------------------


class Explaining:
    """A connection that also records the JSON plan of every query it is asked to run."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn
        self.plans: list[tuple[str, Any]] = []

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        if isinstance(statement, sa.TextClause):
            sql = statement.text
            if sql.lstrip().upper().startswith(("SELECT", "WITH")):
                plan = self._conn.execute(
                    sa.text("EXPLAIN (FORMAT JSON) " + sql), parameters
                ).scalar_one()
                self.plans.append((sql, plan))
        return self._conn.execute(statement, parameters)


def _nodes(plan: Any) -> Iterator[dict[str, Any]]:
    if isinstance(plan, list):
        for entry in plan:
            yield from _nodes(entry)
    elif isinstance(plan, dict):
        if "Node Type" in plan:
            yield plan
        for key in ("Plan", "Plans"):
            if key in plan:
                yield from _nodes(plan[key])


def _outline(plan: Any, depth: int = 0) -> str:
    """The plan as an indented list of node types and relations, for a failure message."""
    lines = []
    node = plan[0]["Plan"] if isinstance(plan, list) else plan
    relation = f" on {node['Relation Name']}" if "Relation Name" in node else ""
    index = f" using {node['Index Name']}" if "Index Name" in node else ""
    lines.append(f"{'  ' * depth}{node['Node Type']}{relation}{index}")
    for child in node.get("Plans", []):
        lines.append(_outline(child, depth + 1))
    return "\n".join(lines)


# ---- the query shapes --------------------------------------------------------------------------


def _filters(searched: Searched) -> dict[str, dict[str, Any]]:
    """Each filter alone, then the combinations a user makes."""
    some = searched.asset_ids[::97][:12]
    start, end = SPRING
    alone: dict[str, dict[str, Any]] = {
        "nothing": {},
        "q": {"q": Q},
        "q-or-phrase": {"q": Q_OR},
        "bbox": {"bbox": ROTTERDAM},
        "bbox-antimeridian": {"bbox": ANTIMERIDIAN},
        "bbox-ocean": {"bbox": OCEAN},
        "datetime-closed": {"start": start, "end": end},
        "datetime-from": {"start": AUTUMN},
        "datetime-until": {"end": start},
        "label": {"label": "ship"},
        "label-any-case": {"label": "BUILDING"},
        "asset-kind-image": {"asset_kind": "image"},
        "asset-kind-scene": {"asset_kind": "scene"},
        "asset-kind-clip": {"asset_kind": "clip"},
        "task-kind-caption": {"task_kind": "caption"},
        "task-kind-grounding": {"task_kind": "grounding"},
        "task-kind-describe": {"task_kind": "describe"},
        "task-kind-video": {"task_kind": "video"},
        "status-done": {"status": "done"},
        "status-error": {"status": "error"},
        "ids": {"ids": some},
    }
    together: dict[str, dict[str, Any]] = {
        "q+bbox+datetime": {"q": Q, "bbox": ROTTERDAM, "start": start, "end": end},
        "bbox+datetime": {"bbox": TOKYO, "start": start, "end": end},
        "bbox+datetime+asset-kind": {"bbox": TOKYO, "start": start, "asset_kind": "scene"},
        "antimeridian+datetime+label": {"bbox": ANTIMERIDIAN, "end": AUTUMN, "label": "boat"},
        "label+bbox": {"label": "ship", "bbox": ROTTERDAM},
        "label+datetime": {"label": "building", "start": AUTUMN},
        "q+label": {"q": Q, "label": "ship"},
        "task-kind+status+bbox": {"task_kind": "vqa", "status": "error", "bbox": TOKYO},
        "asset-kind+status": {"asset_kind": "clip", "status": "planned"},
        "ids+task-kind": {"ids": some, "task_kind": "caption"},
        "everything": {
            "q": Q,
            "bbox": ROTTERDAM,
            "start": start,
            "end": end,
            "label": "ship",
            "asset_kind": "scene",
            "task_kind": "grounding",
            "status": "done",
        },
    }
    return {**alone, **together}


Search = Callable[[Any, Filters], Page]


@dataclass(frozen=True)
class Shape:
    """One query shape: which search, with which filters (mode included)."""

    name: str
    search: Search
    filters: dict[str, Any] = field(default_factory=dict)


def _shapes(searched: Searched) -> list[Shape]:
    vector = searched.vector

    def results(conn: Any, f: Filters) -> Page:
        return search_results(conn, f, None if f.mode == "text" else vector)

    some = searched.asset_ids[::97][:12]

    def detections_of_page(conn: Any, f: Filters) -> Page:
        detections_of(conn, some)
        return Page([], None)

    shapes = [Shape("detections_of[a page of assets]", detections_of_page)]
    for name, f in _filters(searched).items():
        shapes.append(Shape(f"assets[{name}]", search_assets, f))
        shapes.append(Shape(f"detections[{name}]", search_detections, f))
        shapes.append(Shape(f"results[{name}]", results, f))
        for mode in ("semantic", "hybrid"):
            shapes.append(
                Shape(f"results-{mode}[{name}]", results, {"q": SEMANTIC_Q, **f, "mode": mode})
            )
    return shapes


# the API's default page, its largest (ApiSettings.max_limit), and a page after the first
PAGES = [("first page", 10, False), ("first page of 100", 100, False), ("next page", 10, True)]


def test_every_search_shape_uses_an_index(searched: Searched) -> None:
    offenders = []
    shapes = _shapes(searched)
    for shape in shapes:
        for page_name, limit, with_cursor in PAGES:
            with searched.engine.connect() as conn:
                f = Filters(limit=limit, **shape.filters)
                if with_cursor:
                    cursor = shape.search(conn, f).next_cursor
                    if cursor is None:
                        continue  # fewer than one page: no next page to plan
                    f = f.model_copy(update={"cursor": cursor})
                explaining = Explaining(conn)
                shape.search(explaining, f)
                conn.rollback()
            assert explaining.plans, f"{shape.name} ran no query"
            for sql, plan in explaining.plans:
                scans = [
                    node["Relation Name"]
                    for node in _nodes(plan)
                    if node["Node Type"] == "Seq Scan" and node.get("Relation Name") in LARGE
                ]
                if scans:
                    offenders.append(f"{shape.name} ({page_name}):\n{sql}\n{_outline(plan)}")
    assert not offenders, f"{len(offenders)} shapes scan a large table:\n\n" + "\n\n".join(
        offenders
    )


# ---- the oracle: every row, filtered in Python ---------------------------------------------------

Box = tuple[float, float, float, float]


def _lon_ranges(west: float, east: float) -> list[tuple[float, float]]:
    return [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]


def intersects(bounds: Sequence[float] | None, box: Box) -> bool:
    """Whether lon/lat bounds [w, s, e, n] and a query box meet; either may cross 180."""
    if bounds is None:
        return False
    w, s, e, n = bounds
    if s > box[3] or n < box[1]:
        return False
    return any(
        a0 <= b1 and b0 <= a1
        for a0, a1 in _lon_ranges(w, e)
        for b0, b1 in _lon_ranges(box[0], box[2])
    )


@dataclass
class Oracle:
    """Every asset, result and detection with what the filters look at."""

    assets: dict[uuid.UUID, dict[str, Any]]
    results: dict[int, dict[str, Any]]
    detections: dict[int, dict[str, Any]]

    @classmethod
    def read(cls, engine: sa.Engine) -> Oracle:
        with engine.connect() as conn:
            assets = {
                row.asset_id: {
                    "bounds": row.bbox,
                    "seen": row.start_time or row.event_time or row.created_at,
                    "kind": {"mp4": "clip", "geotiff": "scene"}.get(row.media_format, "image"),
                    "status": row.status,
                    "labels": set(),
                    "task_kinds": set(),
                }
                for row in conn.execute(
                    sa.text(
                        "SELECT asset_id, bbox, start_time, event_time, created_at, media_format,"
                        " status FROM assets"
                    )
                )
            }
            results = {
                row.result_id: {
                    "asset_id": row.asset_id,
                    "task_kind": row.task_kind,
                    "created_at": row.created_at,
                    "raw_text": row.raw_text,
                    "embedded": row.embedded,
                    "labels": set(),
                }
                for row in conn.execute(
                    sa.text(
                        "SELECT result_id, asset_id, task_kind, created_at, raw_text,"
                        " embedding IS NOT NULL AS embedded FROM results"
                    )
                )
            }
            detections = {
                row.detection_id: {
                    "asset_id": row.asset_id,
                    "result_id": row.result_id,
                    "label": row.label.lower(),
                    "bounds": row.bbox,
                }
                for row in conn.execute(
                    sa.text("SELECT detection_id, asset_id, result_id, label, bbox FROM detections")
                )
            }
        for r in results.values():
            assets[r["asset_id"]]["task_kinds"].add(r["task_kind"])
        for d in detections.values():
            results[d["result_id"]]["labels"].add(d["label"])
            assets[d["asset_id"]]["labels"].add(d["label"])
        return cls(assets, results, detections)

    @staticmethod
    def asset_passes(
        a: dict[str, Any], f: Filters, asset_id: uuid.UUID, place: bool = True
    ) -> bool:
        return (
            (not place or f.bbox is None or intersects(a["bounds"], f.bbox))
            and (f.start is None or a["seen"] >= f.start)
            and (f.end is None or a["seen"] <= f.end)
            and (f.asset_kind is None or a["kind"] == f.asset_kind.value)
            and (f.status is None or a["status"] == f.status.value)
            and (f.ids is None or asset_id in f.ids)
        )

    def assets_for(self, f: Filters) -> list[uuid.UUID]:
        """The assets the filters (but q) select, newest imagery first."""
        label = f.label.lower() if f.label else None
        found = [
            (a["seen"], asset_id)
            for asset_id, a in self.assets.items()
            if self.asset_passes(a, f, asset_id)
            and (label is None or label in a["labels"])
            and (f.task_kind is None or f.task_kind.value in a["task_kinds"])
        ]
        return [asset_id for _, asset_id in sorted(found, reverse=True)]

    def results_for(self, f: Filters) -> list[int]:
        """The results the filters (but q) select, newest first."""
        label = f.label.lower() if f.label else None
        found = [
            (r["created_at"], result_id)
            for result_id, r in self.results.items()
            if self.asset_passes(self.assets[r["asset_id"]], f, r["asset_id"])
            and (f.task_kind is None or r["task_kind"] == f.task_kind.value)
            and (label is None or label in r["labels"])
        ]
        return [result_id for _, result_id in sorted(found, reverse=True)]

    def detections_for(self, f: Filters) -> list[int]:
        """The detections the filters (but q) select, newest first; bbox is their own place."""
        label = f.label.lower() if f.label else None
        found = [
            detection_id
            for detection_id, d in self.detections.items()
            if self.asset_passes(self.assets[d["asset_id"]], f, d["asset_id"], place=False)
            and (f.bbox is None or intersects(d["bounds"], f.bbox))
            and (label is None or d["label"] == label)
            and (
                f.task_kind is None
                or self.results[d["result_id"]]["task_kind"] == f.task_kind.value
            )
        ]
        return sorted(found, reverse=True)


@pytest.fixture(scope="module")
def oracle(searched: Searched) -> Oracle:
    return Oracle.read(searched.engine)


def _key(search: Search) -> str:
    """The id column of a search's rows."""
    if search is search_assets:
        return "asset_id"
    return "detection_id" if search is search_detections else "result_id"


def page_through(
    engine: sa.Engine,
    search: Search,
    f: Filters,
    between: Callable[[], None] = lambda: None,
) -> tuple[list[dict[str, Any]], int]:
    """Every row of a search, page after page by cursor (``between`` runs between pages)."""
    rows: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        with engine.connect() as conn:
            page = search(conn, f.model_copy(update={"cursor": cursor}))
        rows += page.rows
        pages += 1
        assert len(page.rows) <= f.limit
        if page.next_cursor is None:
            return rows, pages
        assert len(page.rows) == f.limit, "a page before the last one is full"
        cursor = page.next_cursor
        between()


def _results_search(vector: list[float]) -> Search:
    def run(conn: Any, f: Filters) -> Page:
        return search_results(conn, f, None if f.mode == "text" else vector)

    return run


def _ids(rows: list[dict[str, Any]], key: str) -> list[Any]:
    return [row[key] for row in rows]


def test_each_filter_selects_exactly_its_rows_in_order(searched: Searched, oracle: Oracle) -> None:
    """Every filter and combination without a text query, paged through by cursor, against the
    oracle: the same rows, in the same order, none twice."""
    results = _results_search(searched.vector)
    wrong = []
    for name, given in _filters(searched).items():
        if "q" in given:
            continue
        f = Filters(limit=1000, **given)
        for search, expected in (
            (search_assets, oracle.assets_for(f)),
            (results, oracle.results_for(f)),
            (search_detections, oracle.detections_for(f)),
        ):
            key = _key(search)
            rows, _ = page_through(searched.engine, search, f)
            got = _ids(rows, key)
            if got != expected:
                extra = sorted(set(got) - set(expected), key=str)[:5]
                missing = sorted(set(expected) - set(got), key=str)[:5]
                wrong.append(
                    f"{getattr(search, '__name__', 'search_results')}[{name}]: {len(got)} rows,"
                    f" expected {len(expected)}; {len(got) - len(set(got))} repeated;"
                    f" extra {extra}; missing {missing}"
                )
    assert not wrong, "\n".join(wrong)


def test_rows_carry_what_was_filtered(searched: Searched) -> None:
    """The rows themselves show their filters hold: the place intersects, the time is within,
    the label is the one asked for (whatever its case)."""
    start, end = SPRING
    for box in (ROTTERDAM, ANTIMERIDIAN, OCEAN):
        f = Filters(bbox=box, start=start, end=end, limit=200)
        with searched.engine.connect() as conn:
            assets = search_assets(conn, f).rows
            results = search_results(conn, f).rows
            detections = search_detections(conn, f.model_copy(update={"label": "BOAT"})).rows
        for row in assets + results:
            assert intersects(row["lon_lat_bounds"], box), (box, row["lon_lat_bounds"])
            assert start <= row["seen_at"] <= end
        for row in detections:
            assert intersects(row["lon_lat_bounds"], box), (box, row["lon_lat_bounds"])
            assert row["label"].lower() == "boat"
            assert start <= row["seen_at"] <= end
    with searched.engine.connect() as conn:
        crossing = search_assets(conn, Filters(bbox=ANTIMERIDIAN, limit=50)).rows
    assert any(r["lon_lat_bounds"][0] > r["lon_lat_bounds"][2] for r in crossing), (
        "the catalog has assets across the antimeridian, and the query box finds them"
    )


def test_a_big_page_and_small_pages_agree(searched: Searched) -> None:
    """Pages of 7 (results of one work item share their time: ties inside a page and across
    pages) give the rows of one big page, in its order, for every ordering."""
    results = _results_search(searched.vector)
    cases: list[tuple[str, Search, dict[str, Any]]] = [
        ("assets by time", search_assets, {"bbox": TOKYO, "asset_kind": "scene"}),
        ("results by time", results, {"bbox": ROTTERDAM, "start": AUTUMN}),
        ("results by rank", results, {"q": Q}),
        ("results by meaning", results, {"q": SEMANTIC_Q, "mode": "semantic", "bbox": ROTTERDAM}),
        ("results fused", results, {"q": SEMANTIC_Q, "mode": "hybrid", "start": AUTUMN}),
        ("detections", search_detections, {"label": "ship", "bbox": ROTTERDAM}),
    ]
    for name, search, given in cases:
        key = _key(search)
        with searched.engine.connect() as conn:
            big = search(conn, Filters(limit=10_000, **given))
        assert big.next_cursor is None and len(big.rows) > 20, (name, len(big.rows))
        small, pages = page_through(searched.engine, search, Filters(limit=7, **given))
        assert pages > 3
        assert _ids(small, key) == _ids(big.rows, key), name


def test_text_queries_match_their_words(searched: Searched, oracle: Oracle) -> None:
    """Full-text rows hold the words, best rank first; a text query with other filters gives
    the text query's rows that pass the others."""
    results = _results_search(searched.vector)
    with searched.engine.connect() as conn:
        every = search_results(conn, Filters(q=Q, limit=10_000))
        either = search_results(conn, Filters(q=Q_OR, limit=10_000)).rows
    assert every.next_cursor is None and len(every.rows) > 50
    for row in every.rows:
        text = row["raw_text"].lower()
        assert "ship" in text and "harbour" in text, text
    scores = [row["score"] for row in every.rows]
    assert scores == sorted(scores, reverse=True)
    assert either
    for row in either:
        text = row["raw_text"].lower()
        assert "storage tank" in text or "refinery" in text, text
    matching = {row["result_id"] for row in every.rows}
    for name, given in _filters(searched).items():
        if given.get("q") != Q or len(given) == 1:
            continue
        f = Filters(limit=1000, **given)
        rows, _ = page_through(searched.engine, results, f)
        expected = [r for r in oracle.results_for(f) if r in matching]
        assert sorted(_ids(rows, "result_id")) == sorted(expected), name
        assets, _ = page_through(searched.engine, search_assets, f)
        owners = {oracle.results[r]["asset_id"] for r in matching}
        expected_assets = [a for a in oracle.assets_for(f) if a in owners]
        assert _ids(assets, "asset_id") == expected_assets, name


def test_semantic_and_hybrid_pages_are_ordered_and_filtered(
    searched: Searched, oracle: Oracle
) -> None:
    results = _results_search(searched.vector)
    for name, given in _filters(searched).items():
        given = {k: v for k, v in given.items() if k != "q"}
        for mode in ("semantic", "hybrid"):
            f = Filters(q=SEMANTIC_Q, mode=mode, limit=100, **given)
            rows, _ = page_through(searched.engine, results, f)
            ids = _ids(rows, "result_id")
            assert len(ids) == len(set(ids)), (mode, name, "a row came twice")
            allowed = set(oracle.results_for(f))
            assert set(ids) <= allowed, (mode, name, sorted(set(ids) - allowed)[:5])
            scores = [row["score"] for row in rows]
            assert scores == sorted(scores, reverse=True), (mode, name)
            if mode == "semantic":
                # Approximate nearest neighbours: the iterative HNSW scan in strict order finds
                # nearly every embedded row that passes (a row found after a nearer one was
                # already returned is dropped); an exact plan finds all.
                embedded = {r for r in allowed if oracle.results[r]["embedded"]}
                assert len(ids) >= 0.95 * len(embedded), (name, len(ids), len(embedded))
    with searched.engine.connect() as conn:
        nearest = results(conn, Filters(q=SEMANTIC_Q, mode="semantic", limit=10)).rows
    # the stand-in embedding makes texts that share words neighbours
    for row in nearest:
        assert {"ship", "ships", "pier", "harbour", "moored"} & set(row["raw_text"].split()), row


def _arrive(engine: sa.Engine, vector: list[float]) -> uuid.UUID:
    """A new scene in Rotterdam, planned and answered as the pipeline writes one: a caption
    that every text query here matches and a grounding of ships, all stored now."""
    asset_id = uuid.uuid4()
    key = f"arrivals/{asset_id}.tif"
    caption = Task(kind=TaskKind.CAPTION, text="briefly describe the image")
    ships = Task(kind=TaskKind.GROUNDING, text="ship")
    item = WorkItem(
        work_item_id=uuid.uuid4(),
        asset_id=asset_id,
        bucket="ingest",
        key=key,
        image_width=448,
        image_height=448,
        tile=Tile(index=0, x=0, y=0, width=448, height=448),
        tasks=[caption, ships],
    )
    text = "a harbour with many ships moored along the pier"
    with engine.begin() as conn:
        catalog.register_asset(
            conn,
            catalog.AssetRecord(
                asset_id, "ingest", key, "v1", 1000, "image/tiff", {}, "s3:ObjectCreated:Put", None
            ),
        )
        catalog.describe_asset(
            conn,
            asset_id,
            "geotiff",
            448,
            448,
            1,
            catalog.Georeference(crs="EPSG:32631", lon_lat_bbox=(4.10, 51.90, 4.106, 51.904)),
        )
        catalog.add_work_items(conn, asset_id, [item])
        catalog.mark_planned(conn, asset_id)
        catalog.store_results(
            conn,
            item,
            [
                catalog.TaskOutcome(
                    caption,
                    "[caption] briefly describe the image",
                    text,
                    True,
                    {"text": text},
                    embedding=vector,
                ),
                catalog.TaskOutcome(
                    ships,
                    "[detection] ship",
                    "<p>ship</p> {<10><10><20><20>}",
                    True,
                    {"boxes": [{"label": "ship", "box_0_100": [10, 10, 20, 20]}]},
                    detections=[
                        catalog.Detection(
                            "ship",
                            44.8,
                            44.8,
                            89.6,
                            89.6,
                            lon_lat_bbox=(4.1006, 51.9032, 4.1012, 51.9036),
                        )
                    ],
                ),
            ],
            "skyeye-tiny",
        )
    return asset_id


def test_pages_neither_skip_nor_repeat_while_results_arrive(searched: Searched) -> None:
    """New results arrive between every two pages, matching the very filters paged through.

    Newest-first listings never show them (they are newer than the first page) and skip
    nothing; a ranked listing may show them where they rank, and skips nothing either.
    """
    results = _results_search(searched.vector)
    arrived: list[uuid.UUID] = []
    cases: list[tuple[str, Search, dict[str, Any], bool]] = [
        ("results by time", results, {"bbox": ROTTERDAM}, True),
        ("results by time, all", results, {"task_kind": "caption", "start": AUTUMN}, True),
        ("assets by time", search_assets, {"bbox": ROTTERDAM}, True),
        ("detections", search_detections, {"label": "ship"}, True),
        ("results by rank", results, {"q": Q, "bbox": ROTTERDAM}, False),
        (
            "results by meaning",
            results,
            {"q": SEMANTIC_Q, "mode": "semantic", "bbox": ROTTERDAM},
            False,
        ),
    ]
    try:
        for name, search, given, newest_first in cases:
            key = _key(search)
            with searched.engine.connect() as conn:
                before = _ids(search(conn, Filters(limit=10_000, **given)).rows, key)
            new_before = len(arrived)

            def between() -> None:
                arrived.append(_arrive(searched.engine, searched.vector))

            rows, pages = page_through(searched.engine, search, Filters(limit=40, **given), between)
            got = _ids(rows, key)
            assert pages > 2 and len(arrived) > new_before, name
            assert len(got) == len(set(got)), f"{name}: a row came twice"
            if newest_first:
                assert got == before, f"{name}: pages differ from the listing before the arrivals"
            else:
                assert set(before) <= set(got), f"{name}: skipped {set(before) - set(got)}"
                table = "assets" if key == "asset_id" else "results"
                with searched.engine.connect() as conn:
                    owners = {
                        row.asset_id
                        for row in conn.execute(
                            sa.text(f"SELECT asset_id FROM {table} WHERE {key} = ANY(:ids)"),
                            {"ids": list(set(got) - set(before))},
                        )
                    }
                assert owners <= set(arrived), f"{name}: rows that did not arrive"
        # and they are there for a listing that starts now
        with searched.engine.connect() as conn:
            newest = search_assets(conn, Filters(bbox=ROTTERDAM, limit=len(arrived))).rows
        assert {row["asset_id"] for row in newest} == set(arrived)
    finally:
        with searched.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM assets WHERE asset_id = ANY(:ids)"), {"ids": arrived})


def test_detections_of_a_page_of_assets(searched: Searched, oracle: Oracle) -> None:
    """The detections of a page of STAC Items, in one statement (and on an index, above)."""
    some = searched.asset_ids[::50]
    with searched.engine.connect() as conn:
        found = detections_of(conn, some)
    for asset_id in some:
        expected = {i for i, d in oracle.detections.items() if d["asset_id"] == asset_id}
        assert {row["detection_id"] for row in found[asset_id]} == expected
