"""Relay: publishes the transactional outbox to Kafka, at least once and in order.

What announces something (an alert) is written with its outbox row in one transaction; this
service makes the row a Kafka message. Every ``settings.alerts.poll_s`` it claims a batch of
unsent rows in id order (:func:`skyeye.catalog.delivery.claim_outbox`, locked for its
transaction), publishes each to its topic (key: the row's ``message_key``, header
``message-id``: its ``message_id``), waits for every ack, marks the batch sent and commits.

A crash after the publish and before the commit leaves the rows unsent: they are published
again, with the same message id, so a consumer that keeps the ids it has seen drops the repeat.
Nothing is ever marked sent that the broker did not acknowledge, so nothing is lost.

An outage (PostgreSQL or Kafka) is a log line and a wait of one poll, never the end of the
process; SIGTERM and SIGINT stop it between batches.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from skyeye import telemetry
from skyeye.adapters import kafka, postgres
from skyeye.adapters.postgres import Engine
from skyeye.catalog import delivery
from skyeye.settings import Settings

from ._observability import Health
from ._runtime import (
    InjectedFault,
    inject_fault,
    observe,
    service_settings,
    stop_on_signals,
    transient,
)

log = logging.getLogger("skyeye.relay")

#: The Kafka header that carries an outbox message's id (an alert's: the alert id).
MESSAGE_ID_HEADER = "message-id"
#: The exit code of the test hook's crash (:meth:`Relay._crash_if_asked`).
FAULT_EXIT_CODE = 3
# Rows published per transaction: one round trip of acks for the lot.
BATCH = 100
TRANSIENT_REASONS = (postgres.transient_reason, kafka.transient_reason)


class Relay:
    """Publishes the outbox's unsent rows, then marks them sent (the module docstring)."""

    def __init__(self, settings: Settings, engine: Engine, producer: kafka.Producer) -> None:
        self._settings = settings
        self._engine = engine
        self._producer = producer

    def run(self, stop: threading.Event, health: Health | None = None) -> None:
        """Relay until ``stop`` is set, beating ``health`` each round and reporting failures.

        A full batch is followed by the next at once, a failure by a wait that grows as
        ``settings.retry`` says.
        """
        failures = 0
        while not stop.is_set():
            if health is not None:
                health.beat()
            try:
                relayed = self.relay_once()
                failures = 0
                if health is not None:
                    health.report("relay", None)
            except Exception as exc:
                failures += 1
                wait = self._settings.retry.backoff_s(failures)
                why = transient(exc, TRANSIENT_REASONS)
                if health is not None:
                    health.report("relay", f"relaying fails: {why or type(exc).__name__}")
                if why is None:
                    log.exception("relaying failed; trying again in %.1f s", wait)
                else:
                    log.warning("relaying put off (%s); trying again in %.1f s", why, wait)
                stop.wait(wait)
                continue
            if relayed < BATCH:
                stop.wait(self._settings.alerts.poll_s)

    def relay_once(self) -> int:
        """Publish one batch and mark it sent; the rows relayed."""
        with self._engine.begin() as conn:
            messages = delivery.claim_outbox(conn, BATCH)
            if not messages:
                return 0
            sending = [
                kafka.send(
                    self._producer,
                    m.topic,
                    key=m.message_key.encode(),
                    value=json.dumps(m.payload).encode(),
                    headers=[(MESSAGE_ID_HEADER, str(m.message_id).encode()), *telemetry.inject()],
                )
                for m in messages
            ]
            for sent in sending:
                sent.get(timeout=30)
            self._crash_if_asked([str(m.message_id) for m in messages])
            delivery.mark_sent(conn, [m.outbox_id for m in messages])
        log.info("relayed %d message(s)", len(messages))
        return len(messages)

    def _crash_if_asked(self, message_ids: list[str]) -> None:
        """Test hook: die between publish and mark, as a crash would.

        Only when ``settings.fault_file`` lists one of these message ids for stage ``relay``.
        """
        for message_id in message_ids:
            try:
                inject_fault(self._settings, "relay", message_id)
            except InjectedFault as exc:
                log.error("%s: exiting before marking the batch sent", exc)
                logging.shutdown()
                os._exit(FAULT_EXIT_CODE)


def main() -> None:
    """Run the relay until SIGTERM or SIGINT."""
    settings = service_settings("skyeye-relay")
    assert settings.database_url is not None  # resolve() fills every endpoint
    stop = stop_on_signals()
    engine = postgres.create_engine(settings.database_url)
    health = observe(settings, engine)
    producer = kafka.producer(settings)
    try:
        Relay(settings, engine, producer).run(stop, health)
    finally:
        producer.close()
        engine.dispose()
        telemetry.flush()


if __name__ == "__main__":
    main()
