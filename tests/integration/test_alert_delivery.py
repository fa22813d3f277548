"""Alerts reach Kafka and webhooks on the real stack: the outbox relay and the webhook deliverer.

The rows the finisher writes when a rule fires (a rule and its webhook endpoints; per alert an
asset, the alert, its outbox row and one pending delivery per endpoint) are written here
directly with SQL (:func:`_fire`), so these tests depend on no model output: firing itself is
tested in test_alerts.py. Each asset is registered for the purpose and has no object; each
rule's condition matches nothing and the rule is deleted afterwards, so it never fires on
another test's assets.

The webhook receivers are local HTTP servers on 127.0.0.1 (the pipeline fixture allows private
targets and retries within a second or so); they verify every signature with the
standardwebhooks package.
"""

import json
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook, WebhookVerificationError

from skyeye import catalog
from skyeye.adapters import kafka, webhook
from skyeye.alerts import DetectionCondition
from skyeye.catalog import delivery, tokens
from skyeye.cli.main import main as skyeye_main
from skyeye.contracts import AlertData, AlertMessage
from skyeye.services.relay import FAULT_EXIT_CODE, MESSAGE_ID_HEADER

from .conftest import Pipeline

WAIT_S = 90


class Receiver:
    """A webhook receiver on 127.0.0.1, in a thread.

    It answers each request whose signature verifies with the next of ``answers`` (the last
    one repeated), and one that does not with 401.
    """

    def __init__(self, secret: str, answers: Sequence[int] = (204,)) -> None:
        self.secret = secret
        self.answers = list(answers)
        # (webhook-id, the answer given, the payload) per verified request, in order
        self.received: list[tuple[str, int, Any]] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                code = receiver._answer(body, dict(self.headers))
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/skyeye"

    def _answer(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            with self._lock:
                self.bad_signatures += 1
            return 401
        with self._lock:
            code = self.answers[min(len(self.received), len(self.answers) - 1)]
            self.received.append((headers["webhook-id"], code, payload))
        return code

    def ids(self) -> list[str]:
        with self._lock:
            return [webhook_id for webhook_id, _, _ in self.received]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass(frozen=True)
class Fired:
    rule_id: uuid.UUID
    alert_ids: list[uuid.UUID]
    endpoint_ids: list[uuid.UUID]


Fire = Callable[..., Fired]


@pytest.fixture
def fire(pipeline: Pipeline) -> Iterator[Fire]:
    """:func:`_fire` for this test; its rules are deleted afterwards."""
    rules: list[uuid.UUID] = []

    def fire_(
        endpoints: Sequence[tuple[str, str]], alert_ids: Sequence[uuid.UUID], **kwargs: Any
    ) -> Fired:
        fired = _fire(pipeline, endpoints, alert_ids, **kwargs)
        rules.append(fired.rule_id)
        return fired

    yield fire_
    with pipeline.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE rules SET deleted_at = now() WHERE rule_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": [str(r) for r in rules]},
        )


def _fire(
    pipeline: Pipeline,
    endpoints: Sequence[tuple[str, str]],
    alert_ids: Sequence[uuid.UUID],
    conn: sa.Connection | None = None,
) -> Fired:
    """What the finisher writes when a rule fires, written here with SQL.

    A rule with a webhook endpoint per (url, secret), and per alert id an asset, the alert,
    its outbox row (topic ``skyeye.alerts``, key the rule id, id the alert id, payload the
    :class:`AlertMessage`) and a pending delivery per endpoint. In ``conn``'s transaction
    when given, else in one of its own.
    """
    if conn is None:
        with pipeline.engine.begin() as own:
            return _fire(pipeline, endpoints, alert_ids, own)
    s = pipeline.settings
    tag = uuid.uuid4().hex[:8]
    rule_id, rule_name = uuid.uuid4(), f"delivery-{tag}"
    conn.execute(
        sa.text(
            "INSERT INTO rules (rule_id, name, condition, kind)"
            " VALUES (:id, :name, CAST(:condition AS jsonb), 'detection')"
        ),
        {
            "id": rule_id,
            "name": rule_name,
            "condition": DetectionCondition(phrase=f"nothing-{tag}").model_dump_json(),
        },
    )
    endpoint_ids = [uuid.uuid4() for _ in endpoints]
    for endpoint_id, (url, secret) in zip(endpoint_ids, endpoints, strict=True):
        conn.execute(
            sa.text(
                "INSERT INTO webhook_endpoints (endpoint_id, rule_id, url, secret)"
                " VALUES (:id, :rule, :url, :secret)"
            ),
            {"id": endpoint_id, "rule": rule_id, "url": url, "secret": secret},
        )
    for alert_id in alert_ids:
        asset_id = uuid.uuid4()
        key = f"it/alert-delivery/{asset_id}.jpg"
        catalog.register_asset(
            conn,
            catalog.AssetRecord(
                asset_id=asset_id,
                bucket=s.bucket,
                object_key=key,
                version="v1",
                size_bytes=None,
                content_type=None,
                user_metadata={},
                event_name="s3:ObjectCreated:Put",
                event_time=None,
            ),
        )
        message = AlertMessage(
            timestamp=datetime.now(UTC),
            data=AlertData(
                alert_id=alert_id,
                rule_id=rule_id,
                rule_name=rule_name,
                asset_id=asset_id,
                bucket=s.bucket,
                object_key=key,
                evidence=[],
            ),
        )
        conn.execute(
            sa.text(
                "INSERT INTO alerts (alert_id, rule_id, rule_name, asset_id, evidence)"
                " VALUES (:id, :rule, :name, :asset, '[]')"
            ),
            {"id": alert_id, "rule": rule_id, "name": rule_name, "asset": asset_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO outbox (message_id, topic, message_key, payload)"
                " VALUES (:id, :topic, :key, CAST(:payload AS jsonb))"
            ),
            {
                "id": alert_id,
                "topic": s.topic_alerts,
                "key": str(rule_id),
                "payload": message.model_dump_json(),
            },
        )
        for endpoint_id in endpoint_ids:
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_deliveries (delivery_id, endpoint_id, alert_id)"
                    " VALUES (gen_random_uuid(), :endpoint, :alert)"
                ),
                {"endpoint": endpoint_id, "alert": alert_id},
            )
    return Fired(rule_id, list(alert_ids), endpoint_ids)


def _wait(what: str, done: Callable[[], bool], pipeline: Pipeline) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        pipeline.check_supervisor()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _header(record: kafka.Record, name: str) -> str | None:
    return next((v.decode() for k, v in record.headers or [] if k == name), None)


class TopicReader:
    """The alerts topic from its beginning, read with the kafka adapter's consumer (a group of
    its own), keeping the messages whose ``message-id`` is one of ``ids``."""

    def __init__(self, pipeline: Pipeline, ids: Sequence[uuid.UUID]) -> None:
        s = pipeline.settings
        self._ids = {str(i) for i in ids}
        self._consumer = kafka.consumer(s, s.topic_alerts, f"it-alerts-{uuid.uuid4().hex}", 100)
        self.seen: dict[str, list[kafka.Record]] = defaultdict(list)

    def read_until(self, done: Callable[[dict[str, list[kafka.Record]]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done(self.seen):
            assert time.monotonic() < deadline, {k: len(v) for k, v in self.seen.items()}
            for batch in self._consumer.poll(timeout_ms=500).values():
                for record in batch:
                    message_id = _header(record, MESSAGE_ID_HEADER)
                    if message_id in self._ids:
                        self.seen[message_id].append(record)

    def close(self) -> None:
        self._consumer.close()


def _outbox_unsent(pipeline: Pipeline, ids: Sequence[uuid.UUID]) -> int:
    with pipeline.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM outbox"
                " WHERE message_id = ANY(CAST(:ids AS uuid[])) AND sent_at IS NULL"
            ),
            {"ids": [str(i) for i in ids]},
        ).scalar_one()


def _log(pipeline: Pipeline, **which: uuid.UUID) -> list[dict[str, Any]]:
    with pipeline.engine.connect() as conn:
        return delivery.delivery_log(conn, **which)


def test_the_table_the_topic_and_every_webhook_receiver_agree(
    pipeline: Pipeline, fire: Fire
) -> None:
    receivers = [Receiver(webhook.new_secret()), Receiver(webhook.new_secret())]
    alert_ids = [uuid.uuid4() for _ in range(3)]
    topic = TopicReader(pipeline, alert_ids)
    try:
        fired = fire([(r.url, r.secret) for r in receivers], alert_ids)
        expected = {str(i) for i in alert_ids}
        topic.read_until(lambda seen: set(seen) == expected)
        for receiver in receivers:
            _wait("the webhooks", lambda r=receiver: set(r.ids()) == expected, pipeline)
    finally:
        topic.close()
        for receiver in receivers:
            receiver.close()
    with pipeline.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT alert_id FROM alerts WHERE rule_id = :rule"), {"rule": fired.rule_id}
        ).scalars()
        assert {str(a) for a in stored} == expected
    for message_id, records in topic.seen.items():
        payload = json.loads(records[0].value)
        assert records[0].key == str(fired.rule_id).encode()
        assert payload["type"] == "alert.fired"
        assert payload["data"]["alert_id"] == message_id
        for receiver in receivers:
            [(_, _, received)] = [r for r in receiver.received if r[0] == message_id]
            assert received == payload
    for receiver in receivers:
        assert receiver.bad_signatures == 0
        assert sorted(receiver.ids()) == sorted(expected)  # each alert once
    for alert_id in alert_ids:
        _wait("the attempts' records", lambda a=alert_id: _all_delivered(pipeline, a), pipeline)
        log = _log(pipeline, alert_id=alert_id)
        assert {d["endpoint_id"] for d in log} == set(fired.endpoint_ids)
        for entry in log:
            assert (entry["status"], entry["attempts"]) == ("delivered", 1)
            [attempt] = entry["attempt_log"]
            assert attempt["status_code"] == 204 and attempt["error"] is None


def _all_delivered(pipeline: Pipeline, alert_id: uuid.UUID) -> bool:
    return all(d["status"] == "delivered" for d in _log(pipeline, alert_id=alert_id))


def test_a_receiver_failing_three_times_gets_one_delivery_after_retries(
    pipeline: Pipeline, fire: Fire, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = Receiver(webhook.new_secret(), answers=[500, 500, 500, 200])
    alert_id = uuid.uuid4()
    try:
        fired = fire([(receiver.url, receiver.secret)], [alert_id])
        _wait("the delivery", lambda: _all_delivered(pipeline, alert_id), pipeline)
        # the backoff is at most a second here: a further attempt would come within two
        time.sleep(2)
    finally:
        receiver.close()
    assert receiver.bad_signatures == 0
    assert [(i, code) for i, code, _ in receiver.received] == [
        (str(alert_id), code) for code in (500, 500, 500, 200)
    ]
    [entry] = _log(pipeline, alert_id=alert_id)
    assert (entry["status"], entry["attempts"]) == ("delivered", 4)
    assert [a["status_code"] for a in entry["attempt_log"]] == [500, 500, 500, 200]
    assert entry["finished_at"] is not None
    with pipeline.engine.connect() as conn:
        failures, disabled = conn.execute(
            sa.text("SELECT failures, disabled_at FROM webhook_endpoints WHERE endpoint_id = :id"),
            {"id": fired.endpoint_ids[0]},
        ).one()
    # failed attempts of a delivery that succeeded are no failed delivery
    assert (failures, disabled) == (0, None)
    # the delivery log as users read it: the API and the CLI show what the catalog holds
    with pipeline.engine.begin() as conn:
        token = tokens.create_token(conn, ["read"], name=f"log-{alert_id.hex[:6]}")
    try:
        answer = httpx.get(
            f"{pipeline.api_url()}/rules/{fired.rule_id}/deliveries",
            headers={"Authorization": f"Bearer {token.token}"},
            timeout=30,
        )
    finally:
        with pipeline.engine.begin() as conn:
            tokens.revoke_token(conn, str(token.record.token_id))
    assert answer.status_code == 200, answer.text
    [shown] = answer.json()["deliveries"]
    assert (shown["alert_id"], shown["status"], shown["attempts"]) == (
        str(alert_id),
        "delivered",
        4,
    )
    assert (shown["last_status_code"], shown["last_error"], shown["next_attempt_at"]) == (
        200,
        None,
        None,
    )
    assert [a["status_code"] for a in shown["attempt_log"]] == [500, 500, 500, 200]
    capsys.readouterr()
    code = skyeye_main(
        ["--home", str(pipeline.home), "alerts", "deliveries", "--rule", str(fired.rule_id)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    [row] = [line for line in out.splitlines() if receiver.url in line]
    assert "delivered" in row and "HTTP 200" in row and " 4 " in row


def test_a_target_the_policy_refuses_at_send_time_fails_at_once_with_its_reason(
    pipeline: Pipeline, fire: Fire
) -> None:
    """A URL that passed when its rule was made and is refused now (here: no http(s) scheme,
    written past the registry with SQL) is never retried for the retry window."""
    alert_id = uuid.uuid4()
    fire([("ftp://files.example.org/drop", webhook.new_secret())], [alert_id])
    _wait(
        "the delivery to fail",
        lambda: [d["status"] for d in _log(pipeline, alert_id=alert_id)] == ["failed"],
        pipeline,
    )
    [entry] = _log(pipeline, alert_id=alert_id)
    assert entry["attempts"] == 1 and entry["last_status_code"] is None
    assert "not sent" in entry["last_error"] and "not an http or https URL" in entry["last_error"]


def test_a_relay_killed_between_publish_and_mark_repeats_the_message_and_loses_nothing(
    pipeline: Pipeline, fire: Fire
) -> None:
    """The relay's test hook (fault file, stage ``relay``) makes it exit right after the broker
    acknowledged a batch holding the marked alert, before marking the batch sent."""
    marked, *others = alert_ids = [uuid.uuid4() for _ in range(3)]
    before = pipeline.stack.state().component("relay")
    assert before is not None
    saved = pipeline.fault_file.read_text() if pipeline.fault_file.exists() else None
    pipeline.fault_file.write_text(json.dumps({"relay": [str(marked)]}))
    topic = TopicReader(pipeline, alert_ids)
    try:
        fire([], alert_ids)

        def restarted() -> bool:
            now = pipeline.stack.state().component("relay")
            return now is not None and now.restarts > before.restarts

        _wait("the relay to die and be restarted", restarted, pipeline)
        if saved is None:
            pipeline.fault_file.unlink()
        else:
            pipeline.fault_file.write_text(saved)
        saved = None
        _wait("the outbox rows marked sent", lambda: _outbox_unsent(pipeline, alert_ids) == 0,
              pipeline)  # fmt: skip
        topic.read_until(lambda seen: len(seen[str(marked)]) >= 2 and len(seen) == 3)
    finally:
        topic.close()
        if saved is not None:
            pipeline.fault_file.write_text(saved)
    relay = pipeline.stack.state().component("relay")
    assert relay is not None and relay.last_exit == f"exited with code {FAULT_EXIT_CODE}"
    for message_id in map(str, [marked, *others]):
        copies = topic.seen[message_id]
        assert {(r.key, r.value) for r in copies} == {(copies[0].key, copies[0].value)}


def test_the_catalog_claims_one_delivery_per_endpoint_settles_it_and_disables_an_endpoint(
    pipeline: Pipeline,
) -> None:
    """The delivery SQL on the real database, in a transaction rolled back at the end, so the
    running deliverer never sees these rows."""
    with pipeline.engine.connect() as conn:
        transaction = conn.begin()
        try:
            _check_catalog(pipeline, conn)
        finally:
            transaction.rollback()


def _check_catalog(pipeline: Pipeline, conn: sa.Connection) -> None:
    closed = ("http://127.0.0.1:1/hook", webhook.new_secret())
    other = ("http://127.0.0.1:2/hook", webhook.new_secret())
    alert_ids = [uuid.uuid4(), uuid.uuid4()]
    fired = _fire(pipeline, [closed, other], alert_ids, conn)
    first, second = fired.endpoint_ids

    def mine(claimed: list[delivery.DueDelivery]) -> list[delivery.DueDelivery]:
        return [d for d in claimed if d.alert_id in alert_ids]

    # two endpoints with two due deliveries each: one per endpoint, none to a busy one
    claimed = mine(delivery.claim_deliveries(conn, 100, 60, busy=[second]))
    assert [(d.endpoint_id, d.url, d.attempts) for d in claimed] == [(first, closed[0], 0)]
    assert claimed[0].payload["data"]["alert_id"] == str(claimed[0].alert_id)
    # the claimed one is leased; the first endpoint's other delivery is due
    again = mine(delivery.claim_deliveries(conn, 100, 60))
    assert {d.endpoint_id for d in again} == {first, second}
    assert claimed[0].delivery_id not in {d.delivery_id for d in again}

    settle = dict(status_code=500, error=None, duration_ms=3.0, status="failed")
    assert delivery.record_attempt(conn, claimed[0].delivery_id, **settle, next_attempt_at=None)
    # settled already: the attempt is logged, the delivery stays failed
    assert not delivery.record_attempt(
        conn, claimed[0].delivery_id, **{**settle, "status": "pending"}, next_attempt_at=None
    )
    [entry] = [e for e in _log_in(conn, first) if e["delivery_id"] == claimed[0].delivery_id]
    assert (entry["status"], entry["attempts"], len(entry["attempt_log"])) == ("failed", 1, 2)

    assert [delivery.count_failure(conn, first) for _ in range(3)] == [1, 2, 3]
    delivery.reset_failures(conn, first)
    assert delivery.count_failure(conn, first) == 1
    assert delivery.disable_endpoint(conn, first, "it kept failing")
    assert not delivery.disable_endpoint(conn, first, "again")
    [error] = [
        e for e in catalog.errors(conn) if e["stage"] == "webhooks" and str(first) in e["source"]
    ]
    assert error["kind"] == "endpoint_disabled"
    assert closed[0] in error["message"] and "it kept failing" in error["message"]
    # a disabled endpoint's deliveries are never claimed, even when due
    conn.execute(
        sa.text("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = :id"),
        {"id": first},
    )
    assert {d.endpoint_id for d in mine(delivery.claim_deliveries(conn, 100, 60))} <= {second}


def _log_in(conn: sa.Connection, endpoint_id: uuid.UUID) -> list[dict[str, Any]]:
    return delivery.delivery_log(conn, endpoint_id=endpoint_id)
