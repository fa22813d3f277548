"""How long ``POST /assets/{id}/ask`` takes with and without the tile's cached image embeddings.

Runs against a running stack; start one on a scratch state folder first, in the background:

    export SKYEYE_HOME=$(mktemp -d)
    .venv/bin/skyeye up &                      # wait for "pipeline running"
    .venv/bin/python bench/ask_cache.py --rounds 20
    kill %1

It ingests one shipped aerial photo (640 x 480, one tile) and waits for the pipeline to finish
it, makes an ``ask`` token, then for each round asks the same question twice about the tile:

- ``uncached``: the tile's cache entry is deleted first, so the ask reads the photo from the
  object store, decodes it, runs the vision encoder, then the decoder (and caches the tile
  again, in the encoder's background writer);
- ``cached``: once the entry is back, the same ask is answered from the cached embeddings: the
  ingress reads them from the object store and only the decoder runs.

The requests go through the API application in this process (FastAPI's test client over the
real catalog, object store and Serve app), or to ``--url`` (the stack's ``api`` component, as
``skyeye status --json`` lists it) over HTTP. Figures are client-side wall times in ms, with
the medians of the server's own ``timings_ms`` breakdown.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from skyeye import catalog, samples
from skyeye.adapters import postgres
from skyeye.adapters.s3 import ObjectStore
from skyeye.cli.ingest import ingest, wait_for
from skyeye.settings import Settings
from skyeye.stack import resolve

Post = Callable[[str, dict[str, Any]], dict[str, Any]]


def _poster(settings: Settings, url: str | None, token: str) -> tuple[Post, Callable[[], None]]:
    """A function that POSTs a JSON body to the API and returns the JSON answer; and a closer."""
    headers = {"Authorization": f"Bearer {token}"}
    if url:
        import httpx

        http = httpx.Client(base_url=url, headers=headers, timeout=300)

        def post_http(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = http.post(path, json=body)
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer

        return post_http, http.close
    from fastapi.testclient import TestClient

    from skyeye.services.api import create_app

    client = TestClient(create_app(settings))
    client.__enter__()

    def post_local(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(path, json=body, headers=headers)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    return post_local, lambda: client.__exit__(None, None, None)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait_cached(store: ObjectStore, bucket: str, key: str) -> None:
    deadline = time.monotonic() + 60
    while store.stat(bucket, key) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the cache entry {key} did not appear within 60 s")
        time.sleep(0.05)


def main() -> None:
    """Ingest a photo, then time asks with and without its cached embeddings; print figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--question", default="What is in the image?")
    parser.add_argument("--url", help="the API's base URL; default: the app in this process")
    args = parser.parse_args()

    settings = resolve(Settings())
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    store = ObjectStore(settings)
    [done] = ingest(settings, samples.aerial_photos()[:1], prefix=f"bench/ask/{uuid.uuid4()}")
    states = wait_for(engine, [done.asset_id], timeout_s=600)
    if states[done.asset_id] != "done":
        raise SystemExit(f"the photo ended {states[done.asset_id]}")
    with engine.begin() as conn:
        token = catalog.create_token(conn, ["ask"], name=f"bench-{uuid.uuid4().hex[:8]}").token
        [item] = [i for i in catalog.work_items_of(conn, done.asset_id) if i["kind"] == "tile"]
    bucket = settings.derived_bucket
    key = f"{settings.embedding_cache.prefix}{item['work_item_id']}.safetensors"
    post, close = _poster(settings, args.url, token)
    path, body = f"/assets/{done.asset_id}/ask", {"task": "vqa", "text": args.question}

    times: dict[str, list[float]] = {"uncached": [], "cached": []}
    server: dict[str, list[dict[str, float]]] = {"uncached": [], "cached": []}
    try:
        for n in range(args.rounds + 1):  # round 0 warms both paths up and is not counted
            for kind in ("uncached", "cached"):
                if kind == "uncached":
                    store.remove(bucket, key)
                else:
                    _wait_cached(store, bucket, key)
                start = time.perf_counter()
                answer = post(path, body)
                elapsed = (time.perf_counter() - start) * 1000
                if answer["cached"] != (kind == "cached"):
                    raise SystemExit(f"round {n}: a {kind} ask answered cached={answer['cached']}")
                if n:
                    times[kind].append(elapsed)
                    server[kind].append(answer["timings_ms"])
    finally:
        close()
        engine.dispose()

    print(f"ask about one 640x480 tile, {args.rounds} rounds ({args.url or 'in-process app'})")
    for kind, values in times.items():
        parts = {name: statistics.median(t[name] for t in server[kind]) for name in server[kind][0]}
        breakdown = ", ".join(f"{name} {ms:.0f}" for name, ms in parts.items())
        print(
            f"  {kind:9s} median {statistics.median(values):7.1f} ms   "
            f"p95 {_percentile(values, 0.95):7.1f} ms   (server medians: {breakdown})"
        )


if __name__ == "__main__":
    main()
