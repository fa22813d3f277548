"""Rules fire when assets finish, on the real stack: standing questions, detections, text.

The tiny model's answers are not predictable, so each expectation is read from what the stack
stored (the standing question's answers, the detections) and the rules' alerts must agree with
it exactly; a pair of rules asking one question, one firing on "yes" and one on "no", makes sure
something fires whenever the model answers.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from rasterio.warp import transform

from skyeye import samples
from skyeye.alerts import AskCondition, RuleSpec
from skyeye.alerts.registry import register
from skyeye.catalog import alerts as alert_store
from skyeye.catalog import tokens
from skyeye.cli.ingest import Ingested, ingest, wait_for
from skyeye.cli.main import main as skyeye_main

from .conftest import Pipeline
from .test_alert_delivery import Receiver, TopicReader

WAIT_S = 300
QUESTION = "Is there any water in the image?"
# UTM 33N near 18.2 E 54.1 N: no other test's scene lies there
ORIGIN = (700_000.0, 6_000_000.0)
HERE = (18.0, 53.9, 18.5, 54.3)
ELSEWHERE = (-10.0, -10.0, -9.0, -9.0)
# a scene of several tiles near 18.1 E 53.2 N (outside HERE), and a small area around its
# north-west corner that only its first tile reaches
WIDE_ORIGIN = (700_000.0, 5_900_000.0)
CORNER_QUESTION = "Is there a road in the image?"
[_lon], [_lat] = transform("EPSG:32633", "EPSG:4326", [WIDE_ORIGIN[0]], [WIDE_ORIGIN[1]])
CORNER = (_lon - 0.005, _lat - 0.005, _lon + 0.005, _lat + 0.005)


def _spec(
    name: str, condition: dict[str, Any], bbox: tuple | None = None, webhooks: Sequence[str] = ()
) -> RuleSpec:
    return RuleSpec.model_validate(
        {"name": name, "bbox": bbox, "condition": condition, "webhooks": list(webhooks)}
    )


@pytest.fixture(scope="module")
def receivers() -> Iterator[dict[str, Receiver]]:
    """A signature-checking webhook receiver for each of the yes/no rules (secret set later)."""
    made = {name: Receiver(secret="") for name in ("yes-here", "no-here")}
    yield made
    for receiver in made.values():
        receiver.close()


@pytest.fixture(scope="module")
def rules_(
    pipeline: Pipeline, receivers: dict[str, Receiver]
) -> Iterator[dict[str, alert_store.StoredRule]]:
    """Rules made before the assets are ingested (a standing question applies from then on)."""
    tag = uuid.uuid4().hex[:6]
    ask = {"kind": "ask", "question": QUESTION}
    specs = [
        _spec(f"yes-here-{tag}", ask | {"fires_on": "yes"}, HERE, [receivers["yes-here"].url]),
        _spec(f"no-here-{tag}", ask | {"fires_on": "no"}, HERE, [receivers["no-here"].url]),
        _spec(
            f"yes-elsewhere-{tag}",
            {"kind": "ask", "question": QUESTION, "fires_on": "yes"},
            ELSEWHERE,
        ),
        _spec(
            f"corner-{tag}",
            {"kind": "ask", "question": CORNER_QUESTION, "fires_on": "yes"},
            CORNER,
        ),
        _spec(f"buildings-{tag}", {"kind": "detection", "phrase": "BUILDING", "min_count": 1}),
        _spec(f"zeppelins-{tag}", {"kind": "text", "query": "zeppelin"}),
    ]
    with pipeline.engine.begin() as conn:
        # the path `POST /rules` and `skyeye rules create` take (the stack allows loopback)
        made = {s.name.rsplit("-", 1)[0]: register(conn, s, pipeline.settings, None) for s in specs}
    for name, receiver in receivers.items():
        [endpoint] = made[name].endpoints
        assert endpoint.secret is not None
        receiver.secret = endpoint.secret
    yield made
    # later modules' assets must not be asked this module's questions
    with pipeline.engine.begin() as conn:
        for stored in made.values():
            alert_store.delete_rule(conn, str(stored.rule_id))


@pytest.fixture(scope="module")
def assets_(
    pipeline: Pipeline,
    rules_: dict[str, alert_store.StoredRule],
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Ingested]:
    folder = tmp_path_factory.mktemp("alerts")
    scene = samples.write_geotiff(folder / "lake.tif", size=300, seed=5, origin=ORIGIN)
    done = ingest(pipeline.settings, [scene, samples.aerial_photos()[1]], prefix="it/alerts")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    return done


@pytest.fixture(scope="module")
def wide_(
    pipeline: Pipeline,
    rules_: dict[str, alert_store.StoredRule],
    tmp_path_factory: pytest.TempPathFactory,
) -> Ingested:
    """A scene cut into several tiles (448 px tiles of a 900 px scene), one corner in CORNER."""
    folder = tmp_path_factory.mktemp("alerts-wide")
    scene = samples.write_geotiff(folder / "wide.tif", size=900, seed=6, origin=WIDE_ORIGIN)
    [done] = ingest(pipeline.settings, [scene], prefix="it/alerts")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    return done


def _alerts(pipeline: Pipeline, asset_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    with pipeline.engine.connect() as conn:
        rows = alert_store.alerts(conn, asset_id=asset_id)
    return {r["rule_name"].rsplit("-", 1)[0]: r for r in rows}


def _answers(
    pipeline: Pipeline, asset_id: uuid.UUID, question: str = QUESTION
) -> list[dict[str, Any]]:
    key = AskCondition(question=question, fires_on="yes").task.key
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT w.kind, w.tile_index, w.bbox, r.answer FROM results r"
                " JOIN work_items w USING (work_item_id) WHERE r.asset_id = :id AND r.task_key = :k"
            ),
            {"id": asset_id, "k": key},
        ).all()
    return [dict(r._mapping) for r in rows]


def _meets(bounds: Sequence[float], area: Sequence[float]) -> bool:
    """Whether two lon/lat boxes that do not cross the antimeridian intersect."""
    return not (
        bounds[2] < area[0] or bounds[0] > area[2] or bounds[3] < area[1] or bounds[1] > area[3]
    )


def test_a_standing_question_is_asked_of_every_tile_in_its_area_only(
    pipeline: Pipeline, assets_: list[Ingested]
) -> None:
    scene, photo = assets_
    with pipeline.engine.connect() as conn:
        items = conn.execute(
            sa.text("SELECT count(*) FROM work_items WHERE asset_id = :id AND kind = 'tile'"),
            {"id": scene.asset_id},
        ).scalar_one()
    answered = _answers(pipeline, scene.asset_id)
    assert len([a for a in answered if a["kind"] == "tile"]) == items > 0
    # the rules asking it have areas, and the photo lies nowhere: it is not asked
    assert _answers(pipeline, photo.asset_id) == []


def test_a_standing_question_is_asked_of_the_tiles_its_area_reaches_not_the_whole_scene(
    pipeline: Pipeline, rules_: dict[str, alert_store.StoredRule], wide_: Ingested
) -> None:
    with pipeline.engine.connect() as conn:
        tiles = conn.execute(
            sa.text(
                "SELECT tile_index, bbox FROM work_items WHERE asset_id = :id AND kind = 'tile'"
                " ORDER BY tile_index"
            ),
            {"id": wide_.asset_id},
        ).all()
    assert len(tiles) > 1 and all(t.bbox is not None for t in tiles)
    reaching = {t.tile_index for t in tiles if _meets(t.bbox, CORNER)}
    asked = _answers(pipeline, wide_.asset_id, CORNER_QUESTION)
    assert {a["tile_index"] for a in asked if a["kind"] == "tile"} == reaching
    assert 0 < len(reaching) < len(tiles)
    # an alert's evidence places each answer on its tile
    fired = _alerts(pipeline, wide_.asset_id).get("corner")
    said_yes = [a for a in asked if a["answer"] and a["answer"]["answer"] == "yes"]
    assert (fired is not None) == bool(said_yes)
    if fired is not None:
        by_tile = {(a["kind"], a["tile_index"]): a["bbox"] for a in said_yes}
        assert {(e["item_kind"], e["tile_index"]) for e in fired["evidence"]} == by_tile.keys()
        for e in fired["evidence"]:
            assert e["lon_lat_bbox"] == pytest.approx(by_tile[e["item_kind"], e["tile_index"]])


def test_rules_fire_once_each_exactly_as_the_stored_answers_say(
    pipeline: Pipeline, rules_: dict[str, alert_store.StoredRule], assets_: list[Ingested]
) -> None:
    scene, photo = assets_
    said = {a["answer"]["answer"] for a in _answers(pipeline, scene.asset_id) if a["answer"]}
    fired = _alerts(pipeline, scene.asset_id)
    assert said, "the model answered no tile in a way that reads as yes or no"
    assert ("yes-here" in fired) == ("yes" in said)
    assert ("no-here" in fired) == ("no" in said)
    assert "yes-elsewhere" not in fired
    assert "zeppelins" not in fired
    with pipeline.engine.connect() as conn:
        for asset in (scene, photo):
            buildings = conn.execute(
                sa.text(
                    "SELECT count(*) FROM detections WHERE asset_id = :id AND NOT duplicate"
                    " AND lower(label) = 'building'"
                ),
                {"id": asset.asset_id},
            ).scalar_one()
            assert ("buildings" in _alerts(pipeline, asset.asset_id)) == (buildings >= 1)
    for name, alert in fired.items():
        evidence = alert["evidence"]
        assert evidence and alert["rule_id"] == rules_[name].rule_id
        if name == "yes-here":
            assert {e["task_kind"] for e in evidence} == {"yes_no"}
            # an answer is placed where its tile is
            assert all(_meets(e["lon_lat_bbox"], HERE) for e in evidence)


def test_an_alert_is_written_with_its_outbox_row_and_feed_event_and_never_twice(
    pipeline: Pipeline, assets_: list[Ingested]
) -> None:
    scene = assets_[0]
    before = _alerts(pipeline, scene.asset_id)
    assert before
    with pipeline.engine.begin() as conn:
        # the finisher running again (a redelivery, a sweep after a crash) fires nothing new
        assert alert_store.fire_rules(conn, scene.asset_id, pipeline.settings.topic_alerts) == []
        outbox = conn.execute(
            sa.text(
                "SELECT message_id, topic, message_key, payload FROM outbox"
                " WHERE message_id = ANY(:ids)"
            ),
            {"ids": [a["alert_id"] for a in before.values()]},
        ).all()
        kinds = (
            conn.execute(
                sa.text("SELECT kind FROM events WHERE asset_id = :id ORDER BY event_id"),
                {"id": scene.asset_id},
            )
            .scalars()
            .all()
        )
    assert _alerts(pipeline, scene.asset_id).keys() == before.keys()
    assert len(outbox) == len(before)
    for row in outbox:
        assert row.topic == pipeline.settings.topic_alerts
        assert row.payload["type"] == "alert.fired"
        assert row.payload["data"]["alert_id"] == str(row.message_id)
        assert row.message_key == row.payload["data"]["rule_id"]
    assert kinds[0] == "asset.registered" and kinds[-1] == "asset.finished"
    assert kinds.count("alert") == len(before)


def _cli(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = skyeye_main(["--home", str(pipeline.home), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_cli_makes_shows_tests_and_deletes_rules(
    pipeline: Pipeline,
    assets_: list[Ingested],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the webhook below is on loopback, refused unless allowed (as the stack's settings do)
    monkeypatch.setenv("SKYEYE_ALERTS__ALLOW_PRIVATE_WEBHOOKS", "true")
    name = f"cli-buildings-{uuid.uuid4().hex[:6]}"
    code, out = _cli(
        pipeline,
        capsys,
        "rules",
        "create",
        name,
        "--detect",
        "building",
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--json",
    )
    assert code == 0, out
    made = json.loads(out)
    assert made["name"] == name and made["kind"] == "detection"
    [hook] = made["webhooks"]
    assert hook["url"] == "http://127.0.0.1:9/hook" and hook["secret"].startswith("whsec_")
    code, out = _cli(pipeline, capsys, "rules", "show", name, "--json")
    assert code == 0 and "secret" not in json.loads(out)["webhooks"][0]
    code, out = _cli(pipeline, capsys, "rules", "list")
    assert code == 0 and name in out and "whsec_" not in out
    # test: the assets it would fire on are those with a kept building detection
    ids = [str(a.asset_id) for a in assets_]
    code, out = _cli(
        pipeline, capsys, "rules", "test", name, "--json", *[x for i in ids for x in ("--asset", i)]
    )
    assert code == 0, out
    would = {f["asset_id"] for f in json.loads(out)["fires_on"]}
    expected = {i for i in ids if "buildings" in _alerts(pipeline, uuid.UUID(i))}
    assert would == expected
    with pipeline.engine.connect() as conn:
        assert alert_store.alerts(conn, rule_name=name) == []  # testing fires nothing
    code, out = _cli(pipeline, capsys, "alerts", "list", "--json")
    assert code == 0 and {a["asset_id"] for a in json.loads(out)} >= set(expected)
    code, out = _cli(pipeline, capsys, "rules", "delete", name)
    assert code == 0
    code, out = _cli(pipeline, capsys, "rules", "show", name)
    assert code == 2 and "no rule" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ask", "Is there a ship?"], "--fires-on"),
        (["--ask", "Is there a ship?", "--fires-on", ">= lots"], "comparison"),
        (["--ask", "   ", "--fires-on", "yes"], "question"),
        (["--detect", "ship", "--bbox", "1,2,3"], "W,S,E,N"),
        (["--text", "ships", "--webhook", "ftp://example.com/x"], "http"),
        (["--text", "ships", "--min-count", "3"], "--min-count"),
        (["--text", "ships", "--webhook", "http://127.0.0.1:9/x"], "loopback"),
    ],
)
def test_a_bad_rule_on_the_command_line_is_one_line_and_exit_2(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    code, out = _cli(pipeline, capsys, "rules", "create", f"bad-{uuid.uuid4().hex[:6]}", *args)
    assert code == 2 and says in out, out


def test_each_alert_reaches_its_webhook_signed_and_the_topic_with_the_same_id(
    pipeline: Pipeline, receivers: dict[str, Receiver], assets_: list[Ingested]
) -> None:
    """The table, the skyeye.alerts topic and the receivers agree: same ids, none missing."""
    fired = _alerts(pipeline, assets_[0].asset_id)
    expected = {name: str(fired[name]["alert_id"]) for name in receivers if name in fired}
    assert expected  # the yes/no pair: one of them fired (see the test above)
    deadline = time.monotonic() + 90
    while any(receivers[n].ids() != [i] for n, i in expected.items()):
        assert time.monotonic() < deadline, {n: r.ids() for n, r in receivers.items()}
        time.sleep(0.2)
    for name, receiver in receivers.items():
        assert receiver.bad_signatures == 0
        if name not in expected:
            assert receiver.ids() == []
        else:
            [(_, _, payload)] = receiver.received
            assert payload["data"]["alert_id"] == expected[name]
    reader = TopicReader(pipeline, [uuid.UUID(i) for i in expected.values()])
    try:
        reader.read_until(lambda seen: set(seen) == set(expected.values()))
    finally:
        reader.close()


def test_alerts_watch_prints_the_live_feed_from_where_it_is_told(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """``skyeye alerts watch --all --json --after ID`` as a user runs it, on the stack's API."""
    with pipeline.engine.begin() as conn:
        token = tokens.create_token(conn, ["read"], name=f"watch-{uuid.uuid4().hex[:6]}").token
        last = conn.execute(sa.text("SELECT max(event_id) FROM events")).scalar_one()
    command = [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home), "alerts"]
    watch = subprocess.Popen(
        [*command, "watch", "--all", "--json", "--after", str(last)],
        env={**os.environ, "SKYEYE_API_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        photo = tmp_path / "watched.png"
        photo.write_bytes(samples.aerial_photos()[0].read_bytes())
        [done] = ingest(pipeline.settings, [photo], prefix=f"it/watch-{uuid.uuid4().hex[:6]}")
        lines: queue.Queue[str] = queue.Queue()
        stdout = watch.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + WAIT_S
        while [e["event"] for e in seen] != ["asset.registered", "asset.finished"]:
            assert time.monotonic() < deadline, seen
            try:
                event = json.loads(lines.get(timeout=1))
            except queue.Empty:
                assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
                continue
            if event["data"].get("asset_id") == str(done.asset_id):
                seen.append(event)
        assert [e["event"] for e in seen] == ["asset.registered", "asset.finished"], seen
        assert int(seen[0]["id"]) > last
    finally:
        watch.terminate()
        watch.wait(timeout=30)
