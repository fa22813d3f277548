"""Alert rules and alerts through the real stack's API process: ``/rules`` and ``/alerts``.

Rules are made, listed, shown, tested and deleted with a read and an admin token; invalid rules
are 422s naming the field. The session's stack allows webhooks on private addresses (its
receivers listen on 127.0.0.1), so their refusal is tested through an application made here by
``create_app`` with ``allow_private_webhooks`` off, over the same catalog (a TestClient).

One scene is ingested, and a caption with a word no model writes is forged on it (marked model
'test-forged'), so that a text rule made afterwards matches it for certain. The finisher fires
rules only when an asset finishes, so the alerts listed here are fired by calling the
finisher's own :func:`skyeye.catalog.alerts.fire_rules` on that asset; a local receiver then
takes the webhook deliveries and verifies their signatures with the secret the API showed once.
Every rule made here lies where no other test's assets are, or matches nothing, and is deleted
at the end.
"""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from skyeye import samples
from skyeye.catalog import alerts as alert_store
from skyeye.catalog import tokens
from skyeye.cli.ingest import Ingested, ingest, wait_for
from skyeye.cli.main import main as skyeye_main
from skyeye.services.api import create_app

from .conftest import Pipeline

WAIT_S = 300
# UTM 33N near 15 E 67.6 N, in northern Sweden: no other test's scene lies there
ORIGIN = (500_000.0, 7_500_000.0)
AROUND = [14.0, 67.0, 16.0, 68.0]
ELSEWHERE = [-60.0, -50.0, -59.0, -49.0]
WORD = "quasiturbine"
TAG = uuid.uuid4().hex[:6]


class Receiver:
    """A webhook receiver on 127.0.0.1 that takes every delivery whose signature verifies."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.verified: list[dict[str, Any]] = []
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                self.send_response(receiver._take(body, dict(self.headers)))
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def _take(self, body: bytes, headers: dict[str, str]) -> int:
        for secret in self.secrets:
            try:
                self.verified.append(Webhook(secret).verify(body, headers))
            except WebhookVerificationError:
                continue
            return 204
        self.refused += 1
        return 401

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _token(pipeline: Pipeline, scope: str) -> str:
    with pipeline.engine.begin() as conn:
        return tokens.create_token(conn, [scope], name=f"rules-{scope}-{TAG}").token


@pytest.fixture(scope="module")
def reader(pipeline: Pipeline) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=pipeline.api_url(),
        headers={"Authorization": f"Bearer {_token(pipeline, 'read')}"},
        timeout=60,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def admin_token(pipeline: Pipeline) -> str:
    return _token(pipeline, "admin")


@pytest.fixture(scope="module")
def admin(pipeline: Pipeline, admin_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=pipeline.api_url(), headers={"Authorization": f"Bearer {admin_token}"}, timeout=60
    ) as client:
        yield client
        # this module's rules must not fire on later modules' assets
        for rule in client.get("/rules").json()["rules"]:
            if rule["name"].endswith(TAG):
                client.delete(f"/rules/{rule['name']}")


@pytest.fixture(scope="module")
def scene(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """A scene, done, with a caption that says WORD."""
    path = samples.write_geotiff(
        tmp_path_factory.mktemp("rules") / "rules.tif", size=300, seed=13, origin=ORIGIN
    )
    [done] = ingest(pipeline.settings, [path], prefix="it/rules")
    states = wait_for(pipeline.engine, [done.asset_id], timeout_s=WAIT_S)
    assert states == {done.asset_id: "done"}
    with pipeline.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO results (work_item_id, asset_id, task_key, task_kind, task_text,"
                " prompt, raw_text, parsed, model) SELECT work_item_id, asset_id, :key,"
                " 'caption', 'forged', 'forged', :text, true, 'test-forged' FROM work_items"
                " WHERE asset_id = :id ORDER BY kind, tile_index LIMIT 1"
            ),
            {
                "key": f"forged:{uuid.uuid4()}",
                "text": f"a {WORD} engine beside a barn",
                "id": done.asset_id,
            },
        )
    return done


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def _rule(name: str, condition: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": f"{name}-{TAG}", "condition": condition, **fields}


NOTHING = {"kind": "text", "query": "zeppelinhangar"}


def test_a_reader_lists_and_shows_rules_and_only_an_admin_makes_and_deletes_them(
    reader: httpx.Client, admin: httpx.Client
) -> None:
    body = _rule("crud", NOTHING, bbox=ELSEWHERE, webhooks=["HTTP://127.0.0.1:9/Hook#part"])
    refused = reader.post("/rules", json=body)
    assert refused.status_code == 403 and "'admin'" in refused.json()["description"]

    made = admin.post("/rules", json=body)
    assert made.status_code == 201, made.text
    rule = made.json()
    assert made.headers["location"].endswith(f"/rules/{body['name']}")
    assert rule["name"] == body["name"] and rule["kind"] == "text"
    assert rule["condition"] == NOTHING and rule["bbox"] == ELSEWHERE
    [hook] = rule["webhooks"]
    assert hook["url"] == "http://127.0.0.1:9/Hook"  # normalised: scheme, no fragment
    assert hook["secret"].startswith("whsec_") and not hook["disabled"]

    # the secret is shown once: never by a read
    shown = reader.get(f"/rules/{body['name']}")
    assert shown.status_code == 200
    assert shown.json() == {**rule, "webhooks": [{k: v for k, v in hook.items() if k != "secret"}]}
    assert reader.get(f"/rules/{rule['rule_id']}").json() == shown.json()
    listed = reader.get("/rules").json()["rules"]
    assert shown.json() in listed
    assert "whsec_" not in json.dumps(listed)

    assert reader.delete(f"/rules/{body['name']}").status_code == 403
    assert admin.delete(f"/rules/{body['name']}").status_code == 204
    assert reader.get(f"/rules/{body['name']}").status_code == 404
    assert admin.delete(f"/rules/{body['name']}").status_code == 404
    assert body["name"] not in {r["name"] for r in reader.get("/rules").json()["rules"]}


def test_a_name_in_use_is_a_409(admin: httpx.Client) -> None:
    body = _rule("twice", NOTHING, bbox=ELSEWHERE)
    assert admin.post("/rules", json=body).status_code == 201
    again = admin.post("/rules", json={**body, "condition": {"kind": "text", "query": "other"}})
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "rule_exists" and "'name'" in again.json()["description"]


def test_a_deleted_rules_name_is_free_again(admin: httpx.Client) -> None:
    body = _rule("again", NOTHING, bbox=ELSEWHERE)
    assert admin.post("/rules", json=body).status_code == 201
    assert admin.delete(f"/rules/{body['name']}").status_code == 204
    made = admin.post("/rules", json=body)
    assert made.status_code == 201, made.text


SQUARE_EIGHT = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


def _ask(fires_on: str, question: str = "Ships?") -> dict[str, Any]:
    return {"condition": {"kind": "ask", "question": question, "fires_on": fires_on}}


@pytest.mark.parametrize(
    ("fields", "named", "says"),
    [
        ({"area": SQUARE_EIGHT}, "'area'", "not valid"),
        ({"bbox": [10, 5, 11, 4]}, "'bbox'", "north"),
        (_ask("yes", question="   "), "'condition.question'", "blank"),
        (_ask(">= many"), "'condition.fires_on'", "comparison"),
        (_ask(""), "'condition.fires_on'", "1 char"),
        ({"condition": {"kind": "detection", "phrase": "x", "min_count": 0}}, "min_count", ">= 1"),
        ({"webhooks": ["ftp://example.com/hook"]}, "'webhooks[0]'", "http"),
        ({"webhooks": ["https://"]}, "'webhooks[0]'", "no host"),
        ({"name": "two words"}, "'name'", "pattern"),
        ({"colour": "red"}, "'colour'", "extra"),
    ],
)
def test_an_invalid_rule_is_a_422_naming_the_field(
    admin: httpx.Client, fields: dict[str, Any], named: str, says: str
) -> None:
    response = admin.post("/rules", json={**_rule("bad", NOTHING), **fields})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "invalid_rule"
    assert named in error["description"] and says in error["description"], error


def test_a_webhook_at_the_api_itself_is_refused(pipeline: Pipeline, admin: httpx.Client) -> None:
    api = pipeline.api_url()
    for url in (f"{api}/rules", api.replace("127.0.0.1", "localhost") + "/x"):
        body = _rule("self", NOTHING, webhooks=["https://93.184.215.14/", url])
        response = admin.post("/rules", json=body)
        assert response.status_code == 422, response.text
        assert "'webhooks[1]'" in response.json()["description"]
        assert "the SkyEye API itself" in response.json()["description"]


def test_a_body_that_is_no_json_object_is_a_400(admin: httpx.Client) -> None:
    for content in (b"{not json", b"[]", b""):
        response = admin.post(
            "/rules", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (content, response.text)
        assert "request body" in response.json()["description"]


def test_private_webhooks_are_refused_unless_allowed(pipeline: Pipeline, admin_token: str) -> None:
    """Through a TestClient app over the session's catalog, made with private targets off."""
    alerts = pipeline.settings.alerts.model_copy(update={"allow_private_webhooks": False})
    settings = pipeline.settings.model_copy(update={"alerts": alerts})
    headers = {"Authorization": f"Bearer {admin_token}"}
    with TestClient(create_app(settings), headers=headers) as client:
        for url, kind in (
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://10.1.2.3/hook", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[::1]:8080/", "loopback"),
        ):
            response = client.post("/rules", json=_rule("private", NOTHING, webhooks=[url]))
            assert response.status_code == 422, response.text
            assert "'webhooks[0]'" in response.json()["description"]
            assert kind in response.json()["description"]
    assert pipeline.settings.alerts.allow_private_webhooks  # as the stack runs: taken there


def test_too_many_webhooks_are_a_422(pipeline: Pipeline, admin: httpx.Client) -> None:
    most = pipeline.settings.alerts.max_webhooks_per_rule
    urls = [f"http://127.0.0.1:9/{i}" for i in range(most + 1)]
    response = admin.post("/rules", json=_rule("many", NOTHING, webhooks=urls))
    assert response.status_code == 422 and "'webhooks'" in response.json()["description"]
    same = admin.post("/rules", json=_rule("same", NOTHING, webhooks=["http://127.0.0.1:9/a"] * 2))
    assert same.status_code == 422 and "'webhooks'" in same.json()["description"]


def test_testing_a_rule_finds_what_it_would_fire_on_and_writes_nothing(
    pipeline: Pipeline,
    reader: httpx.Client,
    admin: httpx.Client,
    scene: Ingested,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = _rule("test-here", {"kind": "text", "query": WORD}, bbox=AROUND)
    away = _rule("test-away", {"kind": "text", "query": WORD}, bbox=ELSEWHERE)
    for body in (here, away):
        assert admin.post("/rules", json=body).status_code == 201

    newest = reader.post(f"/rules/{here['name']}/test")
    assert newest.status_code == 200, newest.text
    answer = newest.json()
    assert answer["rule"] == here["name"] and answer["assets"] >= 1
    [fired] = answer["fires_on"]
    assert fired["asset_id"] == str(scene.asset_id) and fired["object_key"] == scene.key
    assert [e["text"] for e in fired["evidence"]] == [f"a {WORD} engine beside a barn"]
    # `skyeye rules test` picks the same assets by default and answers the same
    capsys.readouterr()
    code = skyeye_main(["--home", str(pipeline.home), "rules", "test", here["name"], "--json"])
    assert code == 0
    said = json.loads(capsys.readouterr().out)
    assert said["fires_on"] == answer["fires_on"] and said["unknown"] == []

    unknown = str(uuid.uuid4())
    chosen = reader.post(
        f"/rules/{here['name']}/test", json={"asset_ids": [str(scene.asset_id), unknown]}
    ).json()
    assert chosen["assets"] == 1 and chosen["unknown"] == [unknown]
    assert chosen["fires_on"] == answer["fires_on"]

    elsewhere = reader.post(
        f"/rules/{away['name']}/test", json={"asset_ids": [str(scene.asset_id)]}
    ).json()
    assert elsewhere["assets"] == 1 and elsewhere["fires_on"] == []

    bad = reader.post(f"/rules/{here['name']}/test", json={"limit": 0})
    assert bad.status_code == 422 and "'limit'" in bad.json()["description"]
    assert reader.post("/rules/no-such-rule/test").status_code == 404

    # nothing was fired: no alert for either rule
    for body in (here, away):
        listed = reader.get("/alerts", params={"rule": body["name"]})
        assert listed.status_code == 200 and listed.json()["alerts"] == []


def test_alerts_are_listed_newest_first_with_evidence_and_deliveries(
    pipeline: Pipeline,
    reader: httpx.Client,
    admin: httpx.Client,
    scene: Ingested,
    receiver: Receiver,
) -> None:
    first = _rule("fired-first", {"kind": "text", "query": WORD}, bbox=AROUND)
    first["webhooks"] = [receiver.url]
    made = admin.post("/rules", json=first)
    assert made.status_code == 201, made.text
    receiver.secrets.append(made.json()["webhooks"][0]["secret"])
    _fire(pipeline, scene)
    second = _rule("fired-second", {"kind": "text", "query": WORD}, bbox=AROUND)
    assert admin.post("/rules", json=second).status_code == 201
    _fire(pipeline, scene)

    listed = reader.get("/alerts", params={"asset_id": str(scene.asset_id)})
    assert listed.status_code == 200, listed.text
    mine = [a for a in listed.json()["alerts"] if a["rule_name"] in (first["name"], second["name"])]
    assert [a["rule_name"] for a in mine] == [second["name"], first["name"]]  # newest first
    for alert in mine:
        assert alert["asset_id"] == str(scene.asset_id) and alert["object_key"] == scene.key
        [evidence] = alert["evidence"]
        assert WORD in evidence["text"]
    assert [a["deliveries"] for a in mine] == [0, 1]

    # the webhook gets the alert, signed with the secret shown when the rule was made
    alert_id = mine[1]["alert_id"]
    deadline = time.monotonic() + 60
    while not receiver.verified and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [v["data"]["alert_id"] for v in receiver.verified] == [alert_id]
    assert receiver.refused == 0
    while time.monotonic() < deadline:
        [row] = reader.get("/alerts", params={"rule": first["name"]}).json()["alerts"]
        if row["delivered"] == 1:
            break
        time.sleep(0.2)
    assert row["alert_id"] == alert_id and (row["deliveries"], row["delivered"]) == (1, 1)
    # the delivery log: one delivery, taken at the first try
    log = reader.get(f"/rules/{first['name']}/deliveries")
    assert log.status_code == 200, log.text
    [entry] = log.json()["deliveries"]
    assert (entry["alert_id"], entry["url"], entry["status"]) == (
        alert_id,
        receiver.url,
        "delivered",
    )
    assert [a["status_code"] for a in entry["attempt_log"]] == [entry["last_status_code"]]
    assert reader.get(f"/rules/{second['name']}/deliveries").json()["deliveries"] == []
    assert reader.get("/rules/no-such-rule/deliveries").status_code == 404

    limited = reader.get("/alerts", params={"asset_id": str(scene.asset_id), "limit": 1})
    assert limited.json()["numberReturned"] == 1
    assert reader.get("/alerts", params={"rule": "no such"}).status_code == 400
    assert reader.get("/alerts", params={"asset_id": "x"}).status_code == 400


def _fire(pipeline: Pipeline, scene: Ingested) -> None:
    """Fire the live rules on the scene, as the finisher does when an asset finishes."""
    with pipeline.engine.begin() as conn:
        alert_store.fire_rules(conn, scene.asset_id, pipeline.settings.topic_alerts)
