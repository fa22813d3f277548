"""The live feed (``GET /api/events``, Server-Sent Events) of the real stack's API process.

A scene is ingested while a client follows the feed: it sees the asset registered, disconnects,
and resumes with ``Last-Event-ID`` once the asset is done, getting exactly the events after the
last one it saw, as the events table orders them, with no gap and no repeat. A detection rule
for buildings around the scene may fire (the tiny model's detections are not predictable): when
it does, its alert is in the feed, before the asset's finished event that names it.
"""

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from skyeye import samples
from skyeye.alerts import RuleSpec
from skyeye.catalog import alerts as alert_store
from skyeye.cli.ingest import ingest, wait_for

from .conftest import Pipeline

WAIT_S = 300
# UTM 33N near 15 E 63.1 N, in Sweden: no other test's scene lies there
ORIGIN = (500_000.0, 7_000_000.0)
AROUND = (14.5, 62.5, 15.5, 63.5)
# generous: the feed is polled every 0.25 s and pings after 15 s of silence
READ = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def token(pipeline: Pipeline) -> Iterator[str]:
    with pipeline.token("read", name="feed") as token:
        yield token


@pytest.fixture(scope="module")
def api(pipeline: Pipeline, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=pipeline.api_url(), headers={"Authorization": f"Bearer {token}"}, timeout=READ
    ) as client:
        yield client


@pytest.fixture(scope="module")
def rule(pipeline: Pipeline) -> Iterator[alert_store.StoredRule]:
    spec = RuleSpec.model_validate(
        {
            "name": f"feed-buildings-{uuid.uuid4().hex[:6]}",
            "bbox": AROUND,
            "condition": {"kind": "detection", "phrase": "building", "min_count": 1},
        }
    )
    with pipeline.engine.begin() as conn:
        stored = alert_store.create_rule(conn, spec, [])
    yield stored
    with pipeline.engine.begin() as conn:
        alert_store.delete_rule(conn, str(stored.rule_id))


def _events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The stream's events (comments and retry hints skipped), as ``{id, event, data}``.

    Fails after ``WAIT_S``: the feed pings while quiet, so a line comes at least every 15 s.
    """
    deadline = time.monotonic() + WAIT_S
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "the feed went on too long without the event awaited"
        if line == "":
            if data:
                yield {**fields, "data": json.loads("\n".join(data))}
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    raise AssertionError("the feed ended")


def _until(
    events: Iterator[dict[str, Any]], kind: str, asset_id: uuid.UUID
) -> list[dict[str, Any]]:
    """The events up to and including the first of ``kind`` about the asset."""
    seen = []
    for event in events:
        seen.append(event)
        if event["event"] == kind and event["data"].get("asset_id") == str(asset_id):
            return seen
    raise AssertionError(f"no {kind} event for {asset_id}")


def _stored_order(pipeline: Pipeline, after: int | None, through: int) -> list[int]:
    """The ids of the events after event ``after`` (None: from the first) through event
    ``through``, in the order the feed promises: by transaction, then id."""
    with pipeline.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT e.event_id FROM events e, events t WHERE t.event_id = :through"
                    " AND (e.xid, e.event_id) <= (t.xid, t.event_id)"
                    " AND (CAST(:after AS bigint) IS NULL OR (e.xid, e.event_id) >"
                    "  (SELECT a.xid, a.event_id FROM events a WHERE a.event_id = :after))"
                    " ORDER BY e.xid, e.event_id"
                ),
                {"after": after, "through": through},
            ).scalars()
        )


def test_the_feed_shows_an_asset_arrive_and_finish_and_resumes_without_gap_or_repeat(
    pipeline: Pipeline,
    api: httpx.Client,
    rule: alert_store.StoredRule,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    scene = samples.write_geotiff(
        tmp_path_factory.mktemp("feed") / "feed.tif", size=300, seed=11, origin=ORIGIN
    )
    # the feed starts now: it is open (its start fixed) before the scene is ingested
    with api.stream("GET", "/api/events") as first:
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/event-stream")
        [done] = ingest(pipeline.settings, [scene], prefix="it/feed")
        before = _until(_events(first), "asset.registered", done.asset_id)
    # disconnected; the asset goes on through the pipeline
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states == {done.asset_id: "done"}

    registered = before[-1]
    assert registered["data"] == {
        "asset_id": str(done.asset_id),
        "bucket": pipeline.settings.bucket,
        "object_key": done.key,
    }
    last = int(registered["id"])
    with api.stream("GET", "/api/events", headers={"Last-Event-ID": str(last)}) as resumed:
        assert resumed.status_code == 200
        after = _until(_events(resumed), "asset.finished", done.asset_id)

    ids = [int(e["id"]) for e in after]
    assert ids == _stored_order(pipeline, last, ids[-1])  # nothing missing, nothing twice
    assert not {int(e["id"]) for e in before} & set(ids)

    finished = after[-1]["data"]
    assert finished["status"] == "done" and finished["object_key"] == done.key
    alerts = [
        e["data"]
        for e in after
        if e["event"] == "alert" and e["data"]["data"]["rule_id"] == str(rule.rule_id)
    ]
    with pipeline.engine.connect() as conn:
        stored = alert_store.alerts(conn, rule_name=rule.name, asset_id=done.asset_id)
    assert len(alerts) == len(stored) <= 1
    for alert, row in zip(alerts, stored, strict=True):
        assert alert["type"] == "alert.fired"
        assert alert["data"]["alert_id"] == str(row["alert_id"])
        assert alert["data"]["asset_id"] == str(done.asset_id)
        assert alert["data"]["rule_name"] == rule.name
        assert {e["text"].lower() for e in alert["data"]["evidence"]} == {"building"}
        assert alert["data"]["alert_id"] in finished["alerts"]

    # ?after= resumes the same way, and kinds keeps only the kinds asked for
    with api.stream(
        "GET", "/api/events", params={"after": last, "kinds": "asset.finished"}
    ) as only:
        finishes = _until(_events(only), "asset.finished", done.asset_id)
    assert {e["event"] for e in finishes} == {"asset.finished"}
    assert [int(e["id"]) for e in finishes] == [
        int(e["id"]) for e in after if e["event"] == "asset.finished"
    ]


def test_the_feed_from_the_start_is_in_stored_order(pipeline: Pipeline, api: httpx.Client) -> None:
    with pipeline.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    if count == 0:
        pytest.skip("no events yet")
    seen = []
    with api.stream("GET", "/api/events", params={"after": 0}) as stream:
        for event in _events(stream):
            seen.append(int(event["id"]))
            if len(seen) == count:
                break
    assert seen == _stored_order(pipeline, None, seen[-1])


@pytest.mark.parametrize(
    ("headers", "params", "status", "named"),
    [
        ({"Last-Event-ID": "abc"}, {}, 400, "Last-Event-ID"),
        ({"Last-Event-ID": "999999999999"}, {}, 400, "Last-Event-ID"),
        ({}, {"after": "-1"}, 400, "after"),
        ({}, {"kinds": "asset.registered,ships"}, 400, "kinds"),
        ({"Authorization": ""}, {}, 401, ""),
    ],
)
def test_a_bad_start_is_refused_before_the_stream_opens(
    api: httpx.Client, headers: dict[str, str], params: dict[str, str], status: int, named: str
) -> None:
    response = api.get("/api/events", headers=headers, params=params)
    assert response.status_code == status, response.text
    assert named in response.json()["description"]
