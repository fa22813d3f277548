"""The consumer loop: retries, taking a failed batch apart, dead letters, commits, stopping.

Kafka, the database and the handler are stubbed here (in-memory fakes named below); the real
dead-letter path on the real broker and database is tested in
tests/integration/test_reliability.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy.exc
from kafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError

from skyeye.adapters import kafka, postgres
from skyeye.contracts import DeadLetterHeader, dead_letter_id_for
from skyeye.services import _runtime
from skyeye.services._runtime import ConsumerLoop, InjectedFault, Subject, inject_fault, transient
from skyeye.settings import RetrySettings, Settings

REASONS = [postgres.transient_reason, kafka.transient_reason]


def _record(offset: int, value: bytes = b"{}", partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        topic="events",
        partition=partition,
        offset=offset,
        key=b"k%d" % offset,
        value=value,
        headers=[("traceparent", b"00-abc")],
    )


def _outage() -> Exception:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


class _Consumer:
    """Stands in for KafkaConsumer: hands out the given polls, then stops the loop."""

    def __init__(self, polls: list[list[SimpleNamespace]], stop: threading.Event) -> None:
        self._polls = list(polls)
        self._stop = stop
        self.commits = 0
        self.committed: list[dict[int, int]] = []
        self.commit_error: Exception | None = None

    def poll(self, timeout_ms: int) -> dict[str, list[SimpleNamespace]]:
        if not self._polls:
            self._stop.set()
            return {}
        return {"tp": self._polls.pop(0)}

    def commit(self, offsets: dict[Any, Any] | None = None) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.commits += 1
        # partition -> the next offset to read, as committed
        self.committed.append({tp.partition: o.offset for tp, o in (offsets or {}).items()})


class _Handler:
    """A handler whose failures are scripted per offset: what each call that includes that
    offset raises (None: nothing), the last entry repeating."""

    stage = "worker"

    def __init__(self, failures: dict[int, list[Exception | None]] | None = None) -> None:
        self.failures = failures or {}
        self.calls: list[list[int]] = []
        self.handled: list[int] = []
        self.idles = 0

    def handle_batch(self, records: Sequence[Any]) -> None:
        offsets = [r.offset for r in records]
        self.calls.append(offsets)
        for offset in offsets:
            script = self.failures.get(offset)
            if script:
                failure = script.pop(0) if len(script) > 1 else script[0]
                if failure is not None:
                    raise failure
        self.handled += offsets

    def subject(self, record: Any) -> Subject:
        return Subject(f"work item {record.offset}", asset_id=uuid.UUID(int=record.offset))

    def idle(self) -> None:
        self.idles += 1


def _loop(
    handler: _Handler, polls: list[list[SimpleNamespace]], attempts: int = 3
) -> tuple[ConsumerLoop, _Consumer, list[tuple[int, str]]]:
    stop = threading.Event()
    consumer = _Consumer(polls, stop)
    settings = Settings(
        retry=RetrySettings(attempts=attempts, initial_backoff_s=0.001, max_backoff_s=0.001)
    )
    loop = ConsumerLoop(handler, settings, consumer, None, None, REASONS, stop)  # type: ignore[arg-type]
    letters: list[tuple[int, str]] = []

    def dead_letter(record: Any, exc: BaseException) -> None:
        letters.append((record.offset, type(exc).__name__))

    loop._dead_letter = dead_letter  # type: ignore[method-assign]
    return loop, consumer, letters


def test_a_transient_failure_is_retried_and_nothing_is_dead_lettered() -> None:
    handler = _Handler({1: [_outage(), _outage(), None]})
    loop, consumer, letters = _loop(handler, [[_record(0), _record(1)]])
    loop.run()
    assert handler.calls == [[0, 1], [0, 1], [0, 1]]
    assert handler.handled == [0, 1] and letters == [] and consumer.commits == 1


def test_a_poison_message_is_set_aside_and_the_rest_of_its_batch_handled() -> None:
    handler = _Handler({1: [ZeroDivisionError("bug")]})
    loop, consumer, letters = _loop(handler, [[_record(0), _record(1), _record(2)], [_record(3)]])
    loop.run()
    # the batch fails, then each message alone: only offset 1 fails again
    assert handler.calls == [[0, 1, 2], [0], [1], [2], [3]]
    assert letters == [(1, "ZeroDivisionError")]
    assert handler.handled == [0, 2, 3] and consumer.commits == 2


def test_a_transient_failure_past_the_budget_is_dead_lettered() -> None:
    handler = _Handler({0: [_outage()]})
    loop, consumer, letters = _loop(handler, [[_record(0)]], attempts=3)
    loop.run()
    assert handler.calls == [[0], [0], [0]]
    assert letters == [(0, "_GaveUp")] and consumer.commits == 1


def test_past_the_budget_a_batch_gets_one_more_try_per_message() -> None:
    handler = _Handler({0: [_outage()], 1: [_outage()]})
    loop, _, letters = _loop(handler, [[_record(0), _record(1)]], attempts=3)
    loop.run()
    assert handler.calls == [[0, 1]] * 3 + [[0], [1]]
    assert letters == [(0, "_GaveUp"), (1, "_GaveUp")]


def test_stopping_during_a_backoff_commits_nothing() -> None:
    handler = _Handler({0: [_outage()]})
    loop, consumer, letters = _loop(handler, [[_record(0)]], attempts=5)
    loop._stop.set()  # as SIGTERM would, before the first backoff ends
    records = [_record(0)]
    with pytest.raises(_runtime._Stopping):
        loop._handle(records, 5)  # type: ignore[arg-type]
    assert consumer.commits == 0 and letters == []


def test_a_failed_commit_does_not_stop_the_loop() -> None:
    handler = _Handler()
    loop, consumer, _ = _loop(handler, [[_record(0)], [_record(1)]])
    consumer.commit_error = CommitFailedError()
    loop.run()
    assert handler.handled == [0, 1]


def test_a_failing_periodic_step_does_not_stop_the_loop() -> None:
    handler = _Handler()

    def broken_idle() -> None:
        handler.idles += 1
        raise RuntimeError("bug in the sweep")

    handler.idle = broken_idle  # type: ignore[method-assign]
    loop, _, _ = _loop(handler, [[_record(0)], [], [_record(1)]])
    loop._settings = loop._settings.model_copy(update={"finish_sweep_s": 0.0})
    loop.run()
    assert handler.handled == [0, 1] and handler.idles >= 2


def test_transient_follows_the_exception_chain() -> None:
    try:
        try:
            raise KafkaTimeoutError()
        except KafkaTimeoutError as exc:
            raise ValueError("wrapped") from exc
    except ValueError as wrapped:
        assert transient(wrapped, REASONS) is not None
    assert transient(ValueError("plain"), REASONS) is None
    assert "database" in (transient(_outage(), REASONS) or "")


def test_the_fault_hook_reads_its_file_on_every_message(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    settings = Settings(fault_file=faults)
    inject_fault(settings, "worker", "uploads/poison.png")  # no file yet: nothing happens
    faults.write_text(json.dumps({"worker": ["poison"]}))
    with pytest.raises(InjectedFault):
        inject_fault(settings, "worker", "uploads/poison.png")
    inject_fault(settings, "planner", "uploads/poison.png")  # another stage's list
    faults.write_text(json.dumps({"worker": []}))
    inject_fault(settings, "worker", "uploads/poison.png")


class _Sent:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition, self.offset = partition, offset

    def get(self, timeout: float) -> _Sent:
        return self


class _Producer:
    """Stands in for KafkaProducer: keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **kwargs: Any) -> _Sent:
        self.sent.append({"topic": topic, **kwargs})
        return _Sent(1, 41)


class _Engine:
    """Stands in for the SQLAlchemy engine: the catalog calls are stubbed below."""

    @contextlib.contextmanager
    def begin(self) -> Iterator[None]:
        yield None


def test_a_dead_letter_keeps_the_message_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    rows: dict[str, Any] = {}
    monkeypatch.setattr(_runtime.catalog, "existing", lambda conn, a, w: (a, None))
    monkeypatch.setattr(
        _runtime.catalog, "record_dead_letter", lambda conn, letter: rows.update(letter=letter)
    )
    monkeypatch.setattr(
        _runtime.catalog, "record_error", lambda conn, **kwargs: rows.update(error=kwargs)
    )
    producer = _Producer()
    stop = threading.Event()
    loop = ConsumerLoop(
        _Handler(),
        Settings(),
        _Consumer([], stop),
        producer,
        _Engine(),
        REASONS,
        stop,  # type: ignore[arg-type]
    )
    record = _record(7, b'{"poison": true}')
    loop._dead_letter(record, InjectedFault("boom"))  # type: ignore[arg-type]

    [sent] = producer.sent
    letter_id = dead_letter_id_for("events", 0, 7)
    assert sent["topic"] == "skyeye.dead-letter"
    assert (sent["key"], sent["value"]) == (b"k7", b'{"poison": true}')
    headers = dict(sent["headers"])
    assert sent["headers"][0] == ("traceparent", b"00-abc")  # the original headers come first
    assert headers[DeadLetterHeader.ID] == str(letter_id).encode()
    assert headers[DeadLetterHeader.KIND] == b"internal_error"
    assert headers[DeadLetterHeader.TOPIC] == b"events"
    assert headers[DeadLetterHeader.OFFSET] == b"7"
    letter = rows["letter"]
    assert letter.dead_letter_id == letter_id and (letter.dlq_partition, letter.dlq_offset) == (
        1,
        41,
    )
    assert letter.payload == b'{"poison": true}' and letter.asset_id == uuid.UUID(int=7)
    error = rows["error"]
    assert error["kind"] == "internal_error" and error["stage"] == "worker"
    assert error["source"] == "kafka:events/0/7"
    assert (
        "InjectedFault" in error["message"]
        and f"skyeye dlq replay {str(letter_id)[:8]}" in (error["message"])
    )
    assert "not of the input" in error["message"]


class _RefusingProducer(_Producer):
    """Stands in for a broker that refuses the copy for good (the message is too large)."""

    def send(self, topic: str, **kwargs: Any) -> _Sent:
        raise MessageSizeTooLargeError("the message is 1048600 bytes")


def test_a_copy_the_broker_refuses_still_leaves_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows: dict[str, Any] = {}
    monkeypatch.setattr(_runtime.catalog, "existing", lambda conn, a, w: (a, None))
    monkeypatch.setattr(
        _runtime.catalog, "record_dead_letter", lambda conn, letter: rows.update(letter=letter)
    )
    monkeypatch.setattr(
        _runtime.catalog, "record_error", lambda conn, **kwargs: rows.update(error=kwargs)
    )
    stop = threading.Event()
    loop = ConsumerLoop(
        _Handler(),
        Settings(),
        _Consumer([], stop),
        _RefusingProducer(),
        _Engine(),
        REASONS,
        stop,  # type: ignore[arg-type]
    )
    loop._dead_letter(_record(3, b"x" * 100), InjectedFault("boom"))  # type: ignore[arg-type]
    letter = rows["letter"]
    assert letter.payload == b"x" * 100 and (letter.dlq_partition, letter.dlq_offset) == (
        None,
        None,
    )
    assert rows["error"]["kind"] == "internal_error"


class _PipelinedHandler(_Handler):
    """A handler the loop pipelines; ``events`` logs each batch's start and completion.

    Its completion is ``handle_batch`` (scripted failures included); ``start_failures`` are
    offsets whose batch fails to start, once.
    """

    def __init__(
        self,
        failures: dict[int, list[Exception | None]] | None = None,
        start_failures: set[int] | None = None,
    ) -> None:
        super().__init__(failures)
        self.events: list[tuple[str, list[int]]] = []
        self.start_failures = set(start_failures or ())

    def submit_batch(self, records: Sequence[Any]) -> Callable[[], None]:
        offsets = [r.offset for r in records]
        if self.start_failures & set(offsets):
            self.start_failures -= set(offsets)
            raise _outage()
        self.events.append(("start", offsets))

        def complete() -> None:
            self.events.append(("complete", offsets))
            self.handle_batch(records)

        return complete


def test_a_pipelined_batch_starts_before_the_previous_one_completes() -> None:
    handler = _PipelinedHandler()
    loop, consumer, letters = _loop(handler, [[_record(0), _record(1)], [_record(2)], [_record(3)]])
    loop.run()
    assert handler.events == [
        ("start", [0, 1]),
        ("start", [2]),
        ("complete", [0, 1]),
        ("start", [3]),
        ("complete", [2]),
        # the loop stops once the polls run out: the batch in flight is completed first
        ("complete", [3]),
    ]
    # each batch committed once complete, through its own last message only, in order
    assert consumer.committed == [{0: 2}, {0: 3}, {0: 4}]
    assert handler.handled == [0, 1, 2, 3] and letters == []


def test_a_pipelined_batch_that_fails_to_complete_is_handled_again_the_safe_way() -> None:
    handler = _PipelinedHandler({1: [ZeroDivisionError("bug")]})
    loop, consumer, letters = _loop(handler, [[_record(0), _record(1)], [_record(2)]])
    loop.run()
    # completing fails, the batch fails again as a whole, then message by message
    assert handler.calls == [[0, 1], [0, 1], [0], [1], [2]]
    assert letters == [(1, "ZeroDivisionError")]
    assert handler.handled == [0, 2]
    assert consumer.committed == [{0: 2}, {0: 3}]


def test_a_batch_that_fails_to_start_is_handled_after_the_one_in_flight() -> None:
    handler = _PipelinedHandler(start_failures={2})
    loop, consumer, letters = _loop(handler, [[_record(0)], [_record(2)], [_record(3)]])
    loop.run()
    assert handler.events == [
        ("start", [0]),
        ("complete", [0]),
        ("start", [3]),
        ("complete", [3]),
    ]
    # offset 2 was handled in order, one step at a time, between the two pipelined batches
    assert handler.handled == [0, 2, 3] and letters == []
    assert consumer.committed == [{0: 1}, {0: 3}, {0: 4}]
