"""How long a reconciler pass takes over a bucket of N small objects, on the embedded stack.

Starts nanio, tansu and PostgreSQL (no Ray: the reconciler does not need it) in a temporary
state folder, puts N small objects into the ingest bucket with no event, and times, on the real
store, broker and catalog:

- ``listing``: the listing alone (every object, streamed page by page);
- ``first full pass``: every object unknown, each read (stat) and announced on the topic;
- ``backlog probe``: one look at the planner's lag on the events topic, as each pass begins;
- ``recent pass``: one object more; only what was modified since the first pass is checked;
- ``full pass, all known``: the steady state: every object an asset (registered here as the
  planner would), every one checked against the catalog, the one unknown announced.

No planner runs, so the planner's backlog grows with every announcement; the passes are run
with the backlog reported as 0, and the probe is timed on its own.

    .venv/bin/python bench/reconciler_pass.py --objects 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from skyeye import catalog
from skyeye.adapters import kafka, postgres
from skyeye.adapters.s3 import ObjectStore
from skyeye.contracts import asset_id_for
from skyeye.services.reconciler import PipelineDownstream, Reconciler
from skyeye.settings import ReconcilerSettings, Settings
from skyeye.stack import Stack

T = TypeVar("T")


class _NoBacklog(PipelineDownstream):
    """The real downstream with the planner's backlog reported as 0: no planner runs here."""

    def backlog(self) -> int | None:
        return 0


def _migrate(url: str) -> None:
    engine = postgres.create_engine(url)
    try:
        postgres.migrate(engine)
    finally:
        engine.dispose()


def main() -> None:
    """Start the embedded stack without Ray, time the passes, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="skyeye-bench-", dir="/tmp") as home:
        # an address for Ray that is never dialled: the stack then starts no Ray head
        base = Settings(
            home=Path(home),
            ray_address="127.0.0.1:9",
            reconciler=ReconcilerSettings(interval_s=1, min_age_s=0),
        )
        stack = Stack(base)
        stack.start(on_database_ready=_migrate)
        try:
            settings = base.model_copy(update=stack.endpoints().model_dump())
            figures = _run(settings, args.objects)
        finally:
            stack.stop()
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:>24}: {value}")


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    began = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - began, 3)


def _run(settings: Settings, count: int) -> dict[str, object]:
    assert settings.database_url is not None
    store = ObjectStore(settings)
    store.ensure_bucket(settings.bucket)
    kafka.ensure_topics(settings, [settings.topic_events])
    payload = b"\x89PNG\r\n\x1a\n" + bytes(92)

    def put(key: str) -> None:
        store.put_bytes(payload, settings.bucket, key, "image/png")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, [f"bench/{i // 100:03d}/{i:06d}.png" for i in range(count)]))
    time.sleep(1.5)  # nanio's Last-Modified has 1 s resolution
    engine = postgres.create_engine(settings.database_url)
    producer = kafka.producer(settings)
    try:
        downstream = _NoBacklog(settings, engine, producer)
        listed, listing_s = _timed(lambda: list(store.list_objects(settings.bucket)))
        # a margin of 0: the recent pass checks only what was modified after the first began
        first = Reconciler(settings, store, downstream, max_published=count, margin_s=0)
        announced, announce_s = _timed(first.run_pass)
        backlog, probe_s = _timed(PipelineDownstream(settings, engine, producer).backlog)
        put("bench/late.png")
        time.sleep(1.5)
        recent, recent_s = _timed(first.run_pass)
        # the planner's work, as far as the catalog goes: every object an asset
        with engine.begin() as conn:
            for obj in listed:
                catalog.register_asset(
                    conn,
                    catalog.AssetRecord(
                        asset_id=asset_id_for(settings.bucket, obj.key, obj.etag),
                        bucket=settings.bucket,
                        object_key=obj.key,
                        version=obj.etag,
                        size_bytes=obj.size,
                        content_type="image/png",
                        user_metadata={},
                        event_name="s3:ObjectCreated:Put",
                        event_time=None,
                    ),
                )
        steady = Reconciler(settings, store, downstream)
        full, full_s = _timed(steady.run_pass)
    finally:
        producer.close()
        engine.dispose()
    assert len(listed) == count and announced.published == count and backlog == count
    assert not recent.full and recent.published == 1, recent
    assert full.full and full.checked == count + 1 and full.published == 1
    return {
        "objects": count,
        "listing_s": listing_s,
        "first_full_pass_s": announce_s,
        "first_full_pass_published": announced.published,
        "backlog_probe_s": probe_s,
        "recent_pass_s": recent_s,
        "recent_pass_checked": recent.checked,
        "full_pass_all_known_s": full_s,
    }


if __name__ == "__main__":
    main()
