"""The consumer services' process scaffolding: logging, settings, signals, a loop no message stops.

The consumer loop is the one place where a consumer's exceptions are caught:

- a **transient** failure (the database, the object store, Kafka or the model service
  unavailable or timing out; each adapter's ``transient_reason`` says which) is retried with
  backoff while the offset is held, so nothing is committed that was not handled;
- anything else, or a transient failure past ``settings.retry``, makes the loop take the batch
  apart and handle its messages one by one, so that only the message that fails is set aside:
  a copy goes to the dead-letter topic (original headers kept, the error in headers), an error
  row tells the user what failed, the offset moves on;
- a failure to record a dead letter (the database or Kafka is down) stops the process without
  committing: the supervisor restarts it and Kafka delivers the messages again.

Handlers are idempotent, so handling a message again (a retry, a redelivery, a replay) writes
nothing twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from skyeye import catalog, telemetry
from skyeye.adapters import kafka
from skyeye.adapters.kafka import Record
from skyeye.adapters.postgres import Engine
from skyeye.contracts import DeadLetterHeader, dead_letter_id_for
from skyeye.settings import Settings
from skyeye.stack import resolve
from skyeye.telemetry.metrics import ERRORS, ConsumerLag

from ._observability import Health, database_check
from ._observability import serve as serve_health

log = logging.getLogger("skyeye.consumer")

TransientReason = Callable[[BaseException], str | None]
# How long a poll waits for messages while a batch is in flight (which it must not hold up).
_IN_FLIGHT_POLL_MS = 20


@dataclass(frozen=True)
class Subject:
    """What a message is about, as far as it can be told without handling it.

    The error row and the dead letter name it.
    """

    what: str
    asset_id: uuid.UUID | None = None
    work_item_id: uuid.UUID | None = None


class Handler(Protocol):
    """A consumer's own logic; the loop owns polling, retries, dead letters and commits."""

    #: the stage its error rows carry ("planner", "worker")
    stage: str

    def handle_batch(self, records: Sequence[Record]) -> None:
        """Handle every record; raise to have the loop retry or set messages aside."""

    def subject(self, record: Record) -> Subject:
        """What ``record`` is about; must not raise, whatever the message holds."""

    def idle(self) -> None:
        """Periodic work between polls (e.g. finishing assets a crashed worker left)."""


@runtime_checkable
class PipelinedHandler(Handler, Protocol):
    """A handler whose batches wait on another service (the model), started before completed.

    The loop polls and starts the next batch while this one is still being answered, so that
    service never waits while this process stores, commits and polls.
    """

    def submit_batch(self, records: Sequence[Record]) -> Callable[[], None]:
        """Start handling every record; returns what completes the batch.

        ``handle_batch(records)`` must be the same as ``submit_batch(records)()``: the loop
        falls back to it when either step fails.
        """


@dataclass
class _InFlight:
    """A pipelined batch started and not yet completed."""

    records: list[Record]
    complete: Callable[[], None]


class InjectedFault(Exception):
    """Raised on purpose by the test hook (``settings.fault_file``): a bug's stand-in."""


def inject_fault(settings: Settings, stage: str, key: str) -> None:
    """Test hook: raise :class:`InjectedFault` when ``key`` holds a marker listed for ``stage``.

    The markers are substrings listed per stage in ``settings.fault_file``. It is read on every
    call, so a test can clear it (the bug "fixed") and replay the dead letter.
    """
    if settings.fault_file is None:
        return
    try:
        markers = json.loads(settings.fault_file.read_text()).get(stage, [])
    except (OSError, ValueError):
        return
    if any(marker in key for marker in markers):
        raise InjectedFault(f"fault injected into the {stage} for {key!r}")


def _command_line(service: str) -> None:
    """The service command's ``--help``; it takes no other argument (nor does it need one).

    Without this, ``python -m skyeye.services.planner --help`` would start the service.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    doc = (getattr(main, "__doc__", None) or "").strip()
    argparse.ArgumentParser(
        prog=f"python -m {spec.name.removesuffix('.__main__')}" if spec else service,
        description=doc.split("\n\n")[0] or None,
        epilog=(
            "It takes no arguments: its settings are SKYEYE_* environment variables (README, "
            "Settings), endpoints from the embedded stack's state when they are unset. It "
            "serves /healthz, /readyz and /metrics on SKYEYE_OBSERVABILITY__PORT when that is "
            "set (the API: on its own port). SIGTERM or Ctrl-C stops it."
        ),
    ).parse_args()


def service_settings(service: str) -> Settings:
    """Logging (JSON lines with trace ids unless told otherwise), telemetry, and the settings.

    A service's ``main`` calls this first, so ``--help`` (or an unknown argument) is answered
    before anything starts.
    """
    _command_line(service)
    settings = resolve(Settings())
    if settings.observability.json_logs:
        telemetry.logs.configure(service)
    else:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    telemetry.setup(service, settings.home)
    return settings


def observe(settings: Settings, engine: Engine) -> Health:
    """The service's health (its database checked on every readiness probe), served over HTTP.

    See :mod:`._observability`: ``/healthz``, ``/readyz`` and ``/metrics`` on
    ``settings.observability.port`` when it is set.
    """
    health = Health(settings.observability.liveness_s)
    health.check("database", database_check(engine))
    serve_health(health, settings)
    return health


def transient(exc: BaseException, reasons: Sequence[TransientReason]) -> str | None:
    """Why ``exc`` (or an exception it was raised from) is a transient outage, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for reason in reasons:
            if (why := reason(current)) is not None:
                return why
        current = current.__cause__ or current.__context__
    return None


class _Stopping(Exception):
    """The process was asked to stop while a message waited for a retry."""


class _GaveUp(Exception):
    """A transient failure outlasted the retry budget."""

    def __init__(self, reason: str, tries: int, waited_s: float) -> None:
        super().__init__(reason)
        self.reason, self.tries, self.waited_s = reason, tries, waited_s


class ConsumerLoop:
    """Poll, handle, commit; no message can stop it (see the module docstring)."""

    def __init__(
        self,
        handler: Handler,
        settings: Settings,
        consumer: kafka.Consumer,
        producer: kafka.Producer,
        engine: Engine,
        reasons: Sequence[TransientReason],
        stop: threading.Event,
        health: Health | None = None,
        lag: ConsumerLag | None = None,
    ) -> None:
        self._handler = handler
        # the handler as the loop pipelines it, when it can start a batch and complete it later
        self._pipelined = handler if isinstance(handler, PipelinedHandler) else None
        self._health = health
        self._lag = lag
        self._settings = settings
        self._consumer = consumer
        self._producer = producer
        self._engine = engine
        self._reasons = reasons
        self._stop = stop
        self._last_idle = 0.0

    def run(self, poll_timeout_ms: int = 500) -> None:
        """Until ``stop`` is set; the batch in hand is finished and committed first.

        A :class:`PipelinedHandler`'s batch is started as soon as it is polled and completed
        after the next poll has been started, each batch committed once it is complete, in
        order; the other handlers' batches are handled one after the other.
        """
        in_flight: _InFlight | None = None
        try:
            while not self._stop.is_set():
                if self._health is not None:
                    self._health.beat()
                # with a batch in flight, take only what is already fetched: it must not wait
                records = self._poll(_IN_FLIGHT_POLL_MS if in_flight else poll_timeout_ms)
                started = self._start(records) if records else None
                if in_flight is not None:
                    self._complete(in_flight)
                in_flight = started
                if records and started is None:
                    self._handle(records, self._settings.retry.attempts)
                    self._commit(records)
                if time.monotonic() - self._last_idle >= self._settings.finish_sweep_s:
                    self._idle()
            if in_flight is not None:
                self._complete(in_flight)
        except _Stopping:
            return  # the batches in hand are not committed: they are delivered again

    def _start(self, records: list[Record]) -> _InFlight | None:
        """Start a pipelined batch; None to handle it one step at a time instead."""
        if self._pipelined is None:
            return None
        try:
            self._reopen_replays(records)
            return _InFlight(records, self._pipelined.submit_batch(records))
        except Exception as exc:
            log.info("starting %d message(s) failed (%s); handling them again, one step at a "
                     "time", len(records), _describe(exc))  # fmt: skip
            return None

    def _complete(self, batch: _InFlight) -> None:
        """Complete a started batch and commit it; what failed is handled the safe way again."""
        try:
            batch.complete()
        except Exception as exc:
            # retried, taken apart, dead-lettered as any batch; what was stored is not again
            log.info("completing %d message(s) failed (%s); handling them again",
                     len(batch.records), _describe(exc))  # fmt: skip
            self._handle(batch.records, self._settings.retry.attempts)
        self._commit(batch.records)

    # --- polling and committing -----------------------------------------------------------

    def _poll(self, timeout_ms: int) -> list[Record]:
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        except Exception as exc:
            why = transient(exc, [kafka.transient_reason])
            if why is None:
                raise
            log.warning("poll failed (%s); trying again", why)
            self._report("kafka", f"polling fails: {why}")
            self._stop.wait(self._settings.retry.initial_backoff_s)
            return []
        self._report("kafka", None)
        records = [r for batch in polled.values() for r in batch]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    def _commit(self, records: list[Record]) -> None:
        """Commit through ``records``: a later batch may be in flight, and is not yet done."""
        try:
            kafka.commit(self._consumer, records)
        except kafka.CommitFailed as exc:
            # the group rebalanced meanwhile: the new owner gets these messages again, and
            # handling them again writes nothing twice
            log.warning("offsets not committed (%s); they will be delivered again", exc)
            self._report("consumer group", f"not in its group: commits fail ({exc})")
        except Exception as exc:
            why = transient(exc, [kafka.transient_reason])
            if why is None:
                raise
            log.warning("offsets not committed (%s); they will be delivered again", why)
            self._report("consumer group", f"commits fail: {why}")
        else:
            self._report("consumer group", None)

    def _report(self, name: str, problem: str | None) -> None:
        if self._health is not None:
            self._health.report(name, problem)

    def _idle(self) -> None:
        self._last_idle = time.monotonic()
        if self._lag is not None:
            self._lag.set(kafka.partition_lag(self._consumer))
        try:
            self._handler.idle()
        except Exception as exc:
            why = transient(exc, self._reasons)
            if why is not None:
                log.warning("periodic work put off: %s", why)
            else:
                log.exception("periodic work failed; it runs again in %.0f s",
                              self._settings.finish_sweep_s)  # fmt: skip

    # --- handling -------------------------------------------------------------------------

    def _handle(self, records: list[Record], attempts: int) -> None:
        try:
            self._with_retries(records, attempts)
        except _Stopping:
            raise
        except Exception as exc:
            if len(records) == 1:
                self._dead_letter(records[0], exc)
                return
            log.warning(
                "a batch of %d message(s) failed (%s); handling them one by one",
                len(records),
                _describe(exc),
            )
            # Past a transient budget the outage has already been waited out once: each
            # message gets one more try rather than the whole budget again.
            each = 1 if isinstance(exc, _GaveUp) else self._settings.retry.attempts
            for record in records:
                self._handle([record], each)

    def _with_retries(self, records: list[Record], attempts: int) -> None:
        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self._reopen_replays(records)
                self._handler.handle_batch(records)
                return
            except Exception as exc:
                why = transient(exc, self._reasons)
                if why is None:
                    raise
                if attempt == attempts:
                    raise _GaveUp(why, attempt, time.monotonic() - began) from exc
                wait = self._settings.retry.backoff_s(attempt)
                log.warning(
                    "%d message(s) not handled (%s); retry %d/%d in %.1f s",
                    len(records), why, attempt, attempts - 1, wait,
                )  # fmt: skip
                if self._stop.wait(wait):
                    raise _Stopping() from exc

    def _reopen_replays(self, records: list[Record]) -> None:
        """A replayed message reopens what its dead letter ended, in order with its handling."""
        for record in records:
            replay_of = _header(record, DeadLetterHeader.REPLAY_OF)
            if replay_of is None:
                continue
            with self._engine.begin() as conn:
                letter = catalog.dead_letter(conn, uuid.UUID(replay_of))
                if letter is not None:
                    catalog.reopen(conn, letter.asset_id, letter.work_item_id)

    def _dead_letter(self, record: Record, exc: BaseException) -> None:
        """Set ``record`` aside: a copy on the dead-letter topic, a dead letter and an error row."""
        letter_id = dead_letter_id_for(record.topic, record.partition, record.offset)
        subject = self._subject(record)
        kind, message = self._failure(record, exc, subject)
        short = str(letter_id)[:8]
        message += f"; kept as dead letter {short}: `skyeye dlq replay {short}` runs it again"
        headers = self._dead_letter_headers(record, letter_id, kind, message)
        copy = self._copy_to_dead_letter_topic(record, headers)
        self._record_dead_letter(record, letter_id, subject, kind, message, copy)

    def _subject(self, record: Record) -> Subject:
        """What the handler says ``record`` is about; a plain "message" if even that fails."""
        try:
            return self._handler.subject(record)
        except Exception:
            log.exception("could not tell what the message is about")
            return Subject("message")

    def _failure(self, record: Record, exc: BaseException, subject: Subject) -> tuple[str, str]:
        """The dead letter's kind and the user's message for ``exc``; the details go to the log."""
        stage = self._handler.stage
        if isinstance(exc, _GaveUp):
            message = (
                f"the {stage} gave up on this {subject.what} after {exc.tries} tries over "
                f"{exc.waited_s:.0f} s: {exc.reason}"
            )
            log.error("%s: %s", _source(record), message, exc_info=exc.__cause__)
            return "retries_exhausted", message
        message = (
            f"the {stage} failed on this {subject.what} with an internal error "
            f"({type(exc).__name__}), a fault of the pipeline, not of the input"
        )
        log.error("%s: %s", _source(record), message, exc_info=exc)
        return "internal_error", message

    def _dead_letter_headers(
        self, record: Record, letter_id: uuid.UUID, kind: str, message: str
    ) -> list[tuple[str, bytes]]:
        """The copy's headers: the original ones first, then what failed, where and when."""
        return [
            *(record.headers or []),
            (DeadLetterHeader.ID.value, str(letter_id).encode()),
            (DeadLetterHeader.STAGE.value, self._handler.stage.encode()),
            (DeadLetterHeader.KIND.value, kind.encode()),
            (DeadLetterHeader.MESSAGE.value, message.encode()),
            (DeadLetterHeader.TOPIC.value, record.topic.encode()),
            (DeadLetterHeader.PARTITION.value, str(record.partition).encode()),
            (DeadLetterHeader.OFFSET.value, str(record.offset).encode()),
            (DeadLetterHeader.FAILED_AT.value, datetime.now(UTC).isoformat().encode()),
        ]

    def _record_dead_letter(
        self,
        record: Record,
        letter_id: uuid.UUID,
        subject: Subject,
        kind: str,
        message: str,
        copy: kafka.Delivery | None,
    ) -> None:
        """Index the dead letter in the catalog and tell the user in an error row."""
        stage = self._handler.stage
        with self._engine.begin() as conn:
            asset_id, work_item_id = catalog.existing(conn, subject.asset_id, subject.work_item_id)
            catalog.record_dead_letter(
                conn,
                catalog.DeadLetterRecord(
                    dead_letter_id=letter_id,
                    stage=stage,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                    payload=record.value,
                    headers=list(record.headers or []),
                    kind=kind,
                    message=message,
                    # the object's id even without an asset row: the reconciler must not
                    # announce an object whose event was dead-lettered
                    asset_id=subject.asset_id,
                    work_item_id=subject.work_item_id,
                    dlq_partition=copy.partition if copy else None,
                    dlq_offset=copy.offset if copy else None,
                ),
            )
            ERRORS.add(1, {"stage": stage, "kind": kind})
            catalog.record_error(
                conn,
                source=_source(record),
                stage=stage,
                kind=kind,
                message=message,
                asset_id=asset_id,
                work_item_id=work_item_id,
                detail={"dead_letter_id": str(letter_id)},
            )

    def _copy_to_dead_letter_topic(
        self, record: Record, headers: list[tuple[str, bytes]]
    ) -> kafka.Delivery | None:
        """Where the copy landed; None when the broker refuses it for good.

        A message at the size limit plus our headers is refused: the catalog row keeps the
        payload, so the dead letter can still be listed and replayed, and the consumer is not
        stopped by its own copy.
        """
        try:
            return kafka.publish(
                self._producer,
                self._settings.topic_dead_letter,
                key=record.key,
                value=record.value,
                headers=headers,
            )
        except Exception as exc:
            if transient(exc, [kafka.transient_reason]) is not None:
                raise  # the process restarts and the message is delivered again
            log.error("%s: no copy on the dead-letter topic: %s", _source(record), exc)
            return None


def _source(record: Record) -> str:
    return f"kafka:{record.topic}/{record.partition}/{record.offset}"


def _header(record: Record, name: str) -> str | None:
    for key, value in record.headers or []:
        if key == name:
            return value.decode(errors="replace")
    return None


def _describe(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, _GaveUp) else type(exc).__name__


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: a service's loop ends its work in hand, then stops."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_consumer(
    handler: Handler,
    settings: Settings,
    engine: Engine,
    reasons: Sequence[TransientReason],
    topic: str,
    group: str,
    max_poll_records: int,
) -> None:
    """Consume until SIGTERM/SIGINT, finishing (and committing) the batch in hand first."""
    stop = stop_on_signals()
    health = observe(settings, engine)
    consumer = kafka.consumer(settings, topic, group, max_poll_records)
    producer = kafka.producer(settings)
    try:
        ConsumerLoop(
            handler, settings, consumer, producer, engine, reasons, stop, health, ConsumerLag(group)
        ).run()
    finally:
        consumer.close()
        producer.close()
