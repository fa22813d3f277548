"""Time from an object landing in the bucket to its alert reaching a webhook: p50 and p95.

Runs against a running stack whose webhook deliverer may post to loopback (the receiver here
listens on 127.0.0.1); start one on a scratch state folder first, in the background:

    export SKYEYE_HOME=$(mktemp -d) SKYEYE_ALERTS__ALLOW_PRIVATE_WEBHOOKS=true
    .venv/bin/skyeye up &                      # wait for "ingest with `skyeye ingest`"
    .venv/bin/python bench/alert_latency.py --assets 50
    kill %1

It starts a webhook receiver on 127.0.0.1 and makes two standing-question rules with the
receiver as their webhook, one firing on "yes" and one on "no" to the same question (so an
asset fires one of them whenever the model's answer reads as yes or no; the question is asked
once per tile either way), then ingests ``--assets`` generated 192 x 192 GeoTIFF scenes
(``skyeye.samples.write_geotiff``: fields, a river, roofs; one tile each) one every
``--interval`` seconds (a steady stream, not a burst: a burst measures the queue, not the
path). An asset's latency runs from the moment its upload returned to the moment the receiver
got its first alert (upload, event, planner, worker with the extra question, finisher firing
the rule, webhook deliverer). The rules are deleted at the end. An asset whose answer did not
read as yes or no fires nothing; the report says how many fired.

It also follows the API's live feed (``/api/events``, alerts only, with a read token it makes
and revokes) and reports, per alert, the time from the asset finishing to the alert reaching a
feed client. "Finishing" is the alert row's ``created_at``: the start of the transaction that
finishes the asset and writes the alert (the feed shows it once that commits), so the figure
also counts that transaction's own time.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from skyeye import catalog, samples
from skyeye.adapters import feed, postgres
from skyeye.alerts import RuleSpec
from skyeye.alerts.registry import register
from skyeye.catalog import alerts as alert_store
from skyeye.catalog import tokens
from skyeye.cli.ingest import ingest
from skyeye.settings import Settings
from skyeye.stack import resolve
from skyeye.stack.state import read_state

QUESTION = "Is there any water in the image?"


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Records when each alert arrives, by asset id."""

    arrived: ClassVar[dict[str, float]] = {}
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        now = time.monotonic()
        asset_id = json.loads(body)["data"]["asset_id"]
        with self.lock:
            self.arrived.setdefault(asset_id, now)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per request would drown the report."""


class _FeedClient:
    """Follows the live feed's alerts; when (wall clock) each asset's first alert arrived."""

    def __init__(self, api_url: str, token: str) -> None:
        self.arrived: dict[str, float] = {}
        self._url, self._token = api_url, token
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        # no id yet: the feed starts from now; after a drop it resumes after the last one seen
        last: str | None = None
        while True:
            try:
                self.ready.set()
                for event in feed.follow(self._url, self._token, ["alert"], last):
                    last = event["id"]
                    asset_id = event["data"]["data"]["asset_id"]
                    self.arrived.setdefault(asset_id, time.time())
            except ConnectionError:
                time.sleep(0.5)


def main() -> None:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between uploads")
    parser.add_argument("--timeout", type=float, default=300.0, help="wait for the last alert")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = resolve(Settings())
    # the receiver is on loopback: allowed for this rule only, in this process
    alerts = settings.alerts.model_copy(update={"allow_private_webhooks": True})
    allowing = settings.model_copy(update={"alerts": alerts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    assert settings.database_url is not None
    engine = postgres.create_engine(settings.database_url)
    tag = uuid.uuid4().hex[:8]
    specs = [
        RuleSpec.model_validate(
            {
                "name": f"bench-{answer}-{tag}",
                "condition": {"kind": "ask", "question": QUESTION, "fires_on": answer},
                "webhooks": [hook],
            }
        )
        for answer in ("yes", "no")
    ]
    with engine.begin() as conn:
        made = [register(conn, spec, allowing, None) for spec in specs]
        reader = tokens.create_token(conn, ["read"], name=f"bench-feed-{tag}")
    feed_client = _FeedClient(_api_url(settings), reader.token)
    feed_client.ready.wait(10)
    landed: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for n in range(args.assets):
                name = f"bench-{uuid.uuid4().hex[:8]}-{n}.tif"
                path = samples.write_geotiff(Path(folder) / name, size=192, seed=n)
                [done] = ingest(settings, [path], prefix="bench/alerts")
                landed[str(done.asset_id)] = time.monotonic()
                time.sleep(args.interval)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = [a for r in made for a in alert_store.alerts(conn, r.name, limit=10_000)]
            fired = {str(a["asset_id"]) for a in rows}
            with _Receiver.lock:
                if fired and fired <= set(_Receiver.arrived) and _all_finished(engine, landed):
                    break
            time.sleep(0.5)
        # the feed polls every quarter second: give the last alerts time to show there
        time.sleep(2)
    finally:
        with engine.begin() as conn:
            fired_at = {
                str(a["asset_id"]): a["created_at"].timestamp()
                for r in made
                for a in alert_store.alerts(conn, r.name, limit=10_000)
            }
            for rule in made:
                alert_store.delete_rule(conn, str(rule.rule_id))
            tokens.revoke_token(conn, str(reader.record.token_id))
        server.shutdown()
    with _Receiver.lock:
        latencies = sorted(
            (_Receiver.arrived[a] - t) * 1000 for a, t in landed.items() if a in _Receiver.arrived
        )
    on_feed = dict(feed_client.arrived)
    feed_ms = sorted((on_feed[a] - t) * 1000 for a, t in fired_at.items() if a in on_feed)
    report = {
        "assets": len(landed),
        "alerts_received": len(latencies),
        "interval_s": args.interval,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(_percentile(latencies, 95), 1) if latencies else None,
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "feed_alerts": len(feed_ms),
        "feed_missing": len(set(fired_at) - set(on_feed)),
        "finish_to_feed_p50_ms": round(statistics.median(feed_ms), 1) if feed_ms else None,
        "finish_to_feed_p95_ms": round(_percentile(feed_ms, 95), 1) if feed_ms else None,
        "finish_to_feed_max_ms": round(feed_ms[-1], 1) if feed_ms else None,
        "machine": f"{platform.machine()}, {_cpus()} CPUs",
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"{report['alerts_received']} of {report['assets']} assets fired (one every "
        f"{args.interval:g} s); object landed -> webhook received: p50 {report['p50_ms']} ms, "
        f"p95 {report['p95_ms']} ms, max {report['max_ms']} ms ({report['machine']})"
    )
    print(
        f"live feed: {report['feed_alerts']} alerts ({report['feed_missing']} missing); asset "
        f"finished -> alert on /api/events: p50 {report['finish_to_feed_p50_ms']} ms, p95 "
        f"{report['finish_to_feed_p95_ms']} ms, max {report['finish_to_feed_max_ms']} ms"
    )


def _api_url(settings: Settings) -> str:
    """The running stack's results API."""
    if settings.api.public_url:
        return settings.api.public_url.rstrip("/")
    state = read_state(settings.home)
    component = None if state is None else state.component("api")
    if component is None or not component.endpoint:
        raise SystemExit("no results API in the running stack: start `skyeye up` first")
    return component.endpoint.rstrip("/")


def _all_finished(engine: postgres.Engine, landed: dict[str, float]) -> bool:
    with engine.connect() as conn:
        states = catalog.asset_states(conn, [uuid.UUID(i) for i in landed])
    return len(states) == len(landed) and all(s in ("done", "error") for s in states.values())


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
