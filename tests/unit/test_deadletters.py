"""Finding and replaying dead letters.

The catalog and Kafka are stubbed (in-memory rows and a recording producer); the real round
trip, a poison message dead-lettered and replayed through the CLI, is in
tests/integration/test_reliability.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from skyeye import catalog
from skyeye.cli import dlq
from skyeye.cli.main import build_parser
from skyeye.contracts import DeadLetterHeader

IDS = [
    uuid.UUID("0c5e2f7a-0000-4000-8000-000000000001"),
    uuid.UUID("0c5e2f7a-0000-4000-8000-000000000002"),
    uuid.UUID("9a1b2c3d-0000-4000-8000-000000000003"),
]


class _Engine:
    """Stands in for the SQLAlchemy engine: the catalog functions are stubbed."""

    @contextlib.contextmanager
    def connect(self) -> Iterator[None]:
        yield None

    begin = connect


@pytest.fixture
def rows(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    listed = [{"dead_letter_id": i, "replays": n} for i, n in zip(IDS, (0, 1, 0), strict=True)]
    monkeypatch.setattr(catalog, "dead_letters", lambda conn: listed)
    return listed


def test_a_dead_letter_is_found_by_its_id_or_a_unique_prefix(rows: list) -> None:
    engine = _Engine()
    assert dlq.find(engine, [str(IDS[2])]) == [IDS[2]]  # type: ignore[arg-type]
    assert dlq.find(engine, ["9A1B2C3D", "9a1b2c3d-0"]) == [IDS[2]]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "why"),
    [("0c5e", "at least 8"), ("0c5e2f7a", "2 dead letters"), ("ffffffff", "no dead letter")],
)
def test_a_short_ambiguous_or_unknown_id_is_refused(rows: list, selector: str, why: str) -> None:
    with pytest.raises(dlq.DeadLetterNotFound, match=why):
        dlq.find(_Engine(), [selector])  # type: ignore[arg-type]


def test_pending_skips_the_replayed(rows: list) -> None:
    assert dlq.pending(_Engine()) == [IDS[0], IDS[2]]  # type: ignore[arg-type]


class _Sent:
    partition, offset = 1, 99

    def get(self, timeout: float) -> _Sent:
        return self


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, topic: str, **kwargs: Any) -> _Sent:
        self.sent.append((topic, kwargs))
        return _Sent()


def test_a_replay_sends_the_original_message_marked_as_a_replay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter = catalog.DeadLetterRecord(
        dead_letter_id=IDS[0],
        stage="worker",
        topic="skyeye.work-items",
        partition=0,
        offset=12,
        key=b"asset",
        payload=b'{"work": 1}',
        # an earlier replay's mark, which this replay replaces
        headers=[("traceparent", b"00-1"), (DeadLetterHeader.REPLAY_OF.value, b"old")],
        kind="internal_error",
        message="boom",
    )
    replayed: list[uuid.UUID] = []
    monkeypatch.setattr(catalog, "dead_letter", lambda conn, i: letter if i == IDS[0] else None)
    monkeypatch.setattr(catalog, "mark_replayed", lambda conn, i: replayed.append(i))
    producer = _Producer()
    [done] = dlq.replay(_Engine(), producer, [IDS[0]])  # type: ignore[arg-type]
    [(topic, sent)] = producer.sent
    assert topic == "skyeye.work-items"
    assert (sent["key"], sent["value"]) == (b"asset", b'{"work": 1}')
    assert sent["headers"] == [
        ("traceparent", b"00-1"),
        (DeadLetterHeader.REPLAY_OF.value, str(IDS[0]).encode()),
    ]
    assert replayed == [IDS[0]] and (done.partition, done.offset) == (1, 99)
    with pytest.raises(dlq.DeadLetterNotFound):
        dlq.replay(_Engine(), producer, [IDS[1]])  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [["dlq", "replay"], ["dlq", "replay", "abcdefgh", "--all"]])
def test_replay_needs_ids_or_all_but_not_both(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
