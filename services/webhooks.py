"""Webhook deliverer: sends each alert to its rule's webhook endpoints, signed, with retries.

Every ``settings.alerts.poll_s`` it claims due deliveries with a lease
(:func:`skyeye.catalog.delivery.claim_deliveries`: at most one per endpoint, none to an
endpoint it is already sending to) and sends them on a small thread pool, outside any
transaction. So a slow or failing receiver holds one thread at a time, never the others; and
it never touches the pipeline, which only wrote the pending delivery. Each attempt:

- vets the URL again (:func:`skyeye.alerts.webhooks.check_webhook_url`: a host's addresses
  can change after the rule was made), then POSTs the alert signed per Standard Webhooks
  (:class:`skyeye.adapters.webhook.Sender`; ``webhook-id`` is the alert id); a URL the
  policy now refuses (e.g. its host moved to a private address) fails the delivery at once,
  one whose host does not resolve is retried;
- is logged (``webhook_attempts``) with its status code or error and duration, and settles the
  delivery (:func:`skyeye.alerts.webhooks.decide`): delivered on a 2xx, else retried with
  exponential backoff and full jitter until ``retry_for_s`` after the alert, then failed;
- a delivered one ends the endpoint's run of failures; a failed one adds to it, and an
  endpoint with ``disable_after`` failed deliveries in a row is disabled, with an error row
  (stage ``webhooks``) that says which and why.

A deliverer that dies mid-attempt leaves its claims to run out: those deliveries are due again
after the lease, so a receiver may get a repeat (same ``webhook-id``), never nothing. SIGTERM
and SIGINT stop the claiming; attempts under way finish first.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import uuid
from datetime import UTC, datetime

from skyeye import telemetry
from skyeye.adapters import postgres, webhook
from skyeye.adapters.postgres import Engine
from skyeye.alerts.webhooks import (
    DeliveryStatus,
    UnresolvedHost,
    check_webhook_url,
    decide,
    disable_reason,
)
from skyeye.catalog import delivery
from skyeye.catalog.delivery import DueDelivery
from skyeye.settings import Settings

from ._observability import Health
from ._runtime import observe, service_settings, stop_on_signals, transient

log = logging.getLogger("skyeye.webhooks")

# Attempts in flight at once (each to another endpoint).
WORKERS = 8


def lease_s(settings: Settings) -> float:
    """How long a claim lasts.

    An attempt's connect, send and wait for the answer, each up to the timeout, and time to
    record it.
    """
    return 3 * settings.alerts.webhook_timeout_s + 30


class Deliverer:
    """Claims due deliveries and sends them on a thread pool (the module docstring)."""

    def __init__(
        self, settings: Settings, engine: Engine, sender: webhook.Sender, workers: int = WORKERS
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._sender = sender
        self._workers = workers
        # the endpoint of each attempt in flight
        self._in_flight: dict[concurrent.futures.Future[None], uuid.UUID] = {}

    def run(self, stop: threading.Event, health: Health | None = None) -> None:
        """Deliver until ``stop`` is set, then let the attempts under way finish.

        ``health`` is told of each round and of claims that fail.

        It claims again as soon as an attempt ends (its endpoint may have more due), else
        every ``poll_s``; after a database failure, after a wait that grows as
        ``settings.retry`` says.
        """
        poll_s = self._settings.alerts.poll_s
        failures = 0
        with concurrent.futures.ThreadPoolExecutor(self._workers, "webhook") as pool:
            while not stop.is_set():
                if health is not None:
                    health.beat()
                self._in_flight = {f: e for f, e in self._in_flight.items() if not f.done()}
                free = self._workers - len(self._in_flight)
                claimed = self._claim(free) if free else []
                if health is not None:
                    failing = "claiming deliveries fails" if claimed is None else None
                    health.report("deliveries", failing)
                if claimed is None:
                    failures += 1
                    stop.wait(self._settings.retry.backoff_s(failures))
                    continue
                failures = 0
                for due in claimed:
                    self._in_flight[pool.submit(self.deliver, due)] = due.endpoint_id
                if self._in_flight:
                    concurrent.futures.wait(
                        self._in_flight, poll_s, concurrent.futures.FIRST_COMPLETED
                    )
                else:
                    stop.wait(poll_s)

    def _claim(self, limit: int) -> list[DueDelivery] | None:
        """Up to ``limit`` due deliveries; None when the database failed (logged)."""
        try:
            with self._engine.begin() as conn:
                return delivery.claim_deliveries(
                    conn, limit, lease_s(self._settings), busy=set(self._in_flight.values())
                )
        except Exception as exc:
            why = transient(exc, [postgres.transient_reason])
            if why is None:
                log.exception("claiming deliveries failed")
            else:
                log.warning("claiming deliveries put off: %s", why)
            return None

    def deliver(self, due: DueDelivery) -> None:
        """Make one attempt and record it; a failure to record leaves the claim to run out."""
        try:
            attempt, refused = self._attempt(due)
            self._record(due, attempt, refused)
        except Exception as exc:
            why = transient(exc, [postgres.transient_reason])
            log.log(
                logging.WARNING if why else logging.ERROR,
                "delivery %s: attempt not recorded (%s); due again when its claim runs out",
                due.delivery_id,
                why or type(exc).__name__,
                exc_info=why is None,
            )

    def _attempt(self, due: DueDelivery) -> tuple[webhook.Attempt, bool]:
        """The attempt, and whether the policy refused its target (then nothing was sent)."""
        alerts = self._settings.alerts
        try:
            url = check_webhook_url(
                due.url, allow_private=alerts.allow_private_webhooks, api_base_url=None
            )
        except UnresolvedHost as exc:
            return webhook.Attempt(None, f"not sent: {exc}", 0.0), False
        except ValueError as exc:
            return webhook.Attempt(None, f"not sent: {exc}", 0.0), True
        body = webhook.encode(due.payload)
        return self._sender.post(url, due.secret, str(due.alert_id), body), False

    def _record(self, due: DueDelivery, attempt: webhook.Attempt, refused: bool) -> None:
        alerts = self._settings.alerts
        decision = decide(
            delivered=attempt.delivered,
            attempts=due.attempts + 1,
            created_at=due.created_at,
            now=datetime.now(UTC),
            settings=alerts,
            refused=refused,
        )
        with self._engine.begin() as conn:
            settled = delivery.record_attempt(
                conn,
                due.delivery_id,
                status_code=attempt.status_code,
                error=attempt.error,
                duration_ms=attempt.duration_ms,
                status=decision.status.value,
                next_attempt_at=decision.next_attempt_at,
            )
            if not settled:
                return
            if decision.status is DeliveryStatus.DELIVERED:
                delivery.reset_failures(conn, due.endpoint_id)
            elif decision.status is DeliveryStatus.FAILED:
                failures = delivery.count_failure(conn, due.endpoint_id)
                why = disable_reason(failures, alerts, attempt.describe())
                if why is not None and delivery.disable_endpoint(conn, due.endpoint_id, why):
                    log.error("endpoint %s disabled: %s", due.endpoint_id, why)
        then = decision.next_attempt_at
        log.info(
            "alert %s to endpoint %s: attempt %d, %s -> %s%s",
            due.alert_id, due.endpoint_id, due.attempts + 1, attempt.describe(),
            decision.status.value, f" (next at {then:%H:%M:%S})" if then else "",
        )  # fmt: skip


def main() -> None:
    """Run the webhook deliverer until SIGTERM or SIGINT."""
    settings = service_settings("skyeye-webhooks")
    # each attempt is logged once, by this service and by endpoint id: a URL may hold a token
    logging.getLogger("httpx").setLevel(logging.WARNING)
    assert settings.database_url is not None  # resolve() fills every endpoint
    stop = stop_on_signals()
    engine = postgres.create_engine(settings.database_url)
    health = observe(settings, engine)
    sender = webhook.Sender(settings.alerts.webhook_timeout_s, max_connections=WORKERS)
    try:
        Deliverer(settings, engine, sender).run(stop, health)
    finally:
        sender.close()
        engine.dispose()
        telemetry.flush()


if __name__ == "__main__":
    main()
