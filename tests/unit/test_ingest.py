"""What ``skyeye.ingest`` refuses before uploading, and how it reports services that fail."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from kafka.errors import KafkaTimeoutError

from skyeye import catalog
from skyeye.adapters import s3
from skyeye.cli import ingest as ingest_module
from skyeye.cli.ingest import (
    CatalogUnavailable,
    IngestFailed,
    InputRefused,
    WaitTimeout,
    check_inputs,
    ingest,
    printable,
    wait_for,
)
from skyeye.contracts import MAX_KEY_BYTES
from skyeye.settings import Settings


def _file(folder: Path, name: str | bytes, data: bytes = b"x") -> Path:
    path = folder / (os.fsdecode(name) if isinstance(name, bytes) else name)
    path.write_bytes(data)
    return path


def _refused(paths: list[Path], prefix: str = "uploads") -> InputRefused:
    with pytest.raises(InputRefused) as refused:
        check_inputs(paths, prefix)
    return refused.value


def test_good_files_pass_and_slashes_around_the_prefix_are_dropped(tmp_path: Path) -> None:
    image = _file(tmp_path, "scène 1.png")
    clip = _file(tmp_path, "clip.mp4")
    sidecar = _file(tmp_path, "clip.mp4.geo.json", b"{}")
    for prefix in ("uploads", "/a/b/", "", "/"):
        check_inputs([image, clip, sidecar, image], prefix)  # a file twice is one object


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: _file(d, "a.png") / "below", "no such file"),
        (lambda d: d, "is a folder, not a file"),
        (lambda d: Path("/dev/null"), "is not a regular file"),
        (lambda d: d / ("x" * 300), "cannot be read (file name too long)"),
        (lambda d: _file(d, b"caf\xe9.png"), "the file name is not valid UTF-8"),
        (lambda d: _file(d, "a\nb.png"), "the object key contains control characters"),
    ],
)
def test_each_bad_path_is_refused_with_its_reason(tmp_path: Path, make: Any, says: str) -> None:
    good = _file(tmp_path, "good.png")
    refused = _refused([good, make(tmp_path)])
    assert refused.problems[0] is None and says in (refused.problems[1] or "")
    [line] = refused.lines()
    assert "\n" not in line and says in line


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("../x", "'.' or '..' path segment"),
        ("a//b", "'.' or '..' path segment"),
        ("a/./b", "'.' or '..' path segment"),
        ("tab\there", "control characters"),
        (os.fsdecode(b"\xff"), "not valid UTF-8"),
        ("p" * (MAX_KEY_BYTES + 1), f"longer than {MAX_KEY_BYTES} bytes"),
    ],
)
def test_a_bad_prefix_is_one_line(tmp_path: Path, prefix: str, says: str) -> None:
    refused = _refused([_file(tmp_path, "a.png"), _file(tmp_path, "b.png")], prefix)
    assert says in (refused.prefix_problem or "")
    assert refused.problems == [None, None]
    [line] = refused.lines()
    assert line.startswith("--prefix '") and "\n" not in line and "\t" not in line


def test_a_key_over_the_limit_is_refused_and_shown_shortened(tmp_path: Path) -> None:
    image = _file(tmp_path, "a.png")
    prefix = "p" * (MAX_KEY_BYTES - len("/a.png"))
    check_inputs([image], prefix)  # exactly at the limit
    [line] = _refused([image], prefix + "p").lines()
    assert f"longer than {MAX_KEY_BYTES} bytes" in line and "…" in line
    assert len(line) < len(str(image)) + 150


def test_a_sidecar_travels_with_its_clip_so_its_key_counts(tmp_path: Path) -> None:
    clip = _file(tmp_path, "c.mp4")
    prefix = "p" * (MAX_KEY_BYTES - len("/c.mp4"))
    check_inputs([clip], prefix)
    _file(tmp_path, "c.mp4.geo.json", b"{}")
    [problem] = _refused([clip], prefix).problems
    assert problem is not None and problem.startswith("its sidecar c.mp4.geo.json: ")


def test_two_files_for_one_key_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = _file(tmp_path / "a", "x.png"), _file(tmp_path / "b", "x.png", b"y")
    refused = _refused([first, second])
    assert refused.problems[0] is None
    assert "same object key 'uploads/x.png'" in (refused.problems[1] or "")


def test_printable_escapes_what_a_terminal_would_garble() -> None:
    assert printable(os.fsdecode(b"caf\xe9\n.png")) == "caf\\xe9\\n.png"
    assert printable("scène 1.png") == "scène 1.png"


def test_ingest_refuses_before_it_connects(tmp_path: Path) -> None:
    """No endpoint is set: anything that reached for S3 or Kafka would raise ValueError."""
    settings = Settings(home=tmp_path, s3_endpoint=None, kafka_bootstrap=None)
    with pytest.raises(InputRefused):
        ingest(settings, [tmp_path / "missing.png"])


class _Producer:
    """Stands in for KafkaProducer: records what was published."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail, self.sent = fail, []

    def send(self, topic: str, key: bytes, value: bytes, headers: object) -> SimpleNamespace:
        def get(timeout: float) -> None:
            if self.fail:
                raise self.fail
            self.sent.append(key)

        return SimpleNamespace(get=get)

    def close(self, timeout: float | None = None) -> None:
        pass


def _stub_services(
    monkeypatch: pytest.MonkeyPatch, producer: _Producer, put_fails_on: str | None
) -> None:
    def put_file(self: object, path: Path, bucket: str, key: str, metadata: Any = None) -> Any:
        if path.name == put_fails_on:
            raise s3.ObjectStoreUnavailable("the object store did not answer")
        return s3.StoredObject(
            bucket=bucket,
            key=key,
            etag="e",
            version_id=None,
            size=1,
            content_type="image/png",
            metadata={},
        )

    monkeypatch.setattr(ingest_module.kafka, "producer", lambda settings: producer)
    monkeypatch.setattr(ingest_module.ObjectStore, "put_file", put_file)


def test_an_object_store_that_does_not_answer_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stubs the broker and the object store's upload (the second file fails as the adapter
    reports a refused connection); the rest is the real ingest."""
    producer = _Producer()
    _stub_services(monkeypatch, producer, put_fails_on="b.png")
    paths = [_file(tmp_path, n) for n in ("a.png", "b.png", "c.png")]
    settings = Settings(home=tmp_path, s3_endpoint="127.0.0.1:1", kafka_bootstrap="127.0.0.1:2")
    with pytest.raises(IngestFailed) as failed:
        ingest(settings, paths)
    assert str(failed.value) == (
        "the object store did not answer at 127.0.0.1:1, while uploading " + str(paths[1])
    )
    assert [d.path for d in failed.value.done] == [paths[0]]
    assert producer.sent == [f"{settings.bucket}/uploads/a.png".encode()]


def test_a_broker_that_does_not_answer_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stubs the object store's upload and a producer whose publish times out."""
    _stub_services(monkeypatch, _Producer(fail=KafkaTimeoutError("no ack")), put_fails_on=None)
    paths = [_file(tmp_path, "a.png")]
    settings = Settings(home=tmp_path, s3_endpoint="127.0.0.1:1", kafka_bootstrap="127.0.0.1:2")
    with pytest.raises(IngestFailed) as failed:
        ingest(settings, paths)
    message = str(failed.value)
    assert message.startswith("the Kafka broker is unavailable") and "127.0.0.1:2" in message
    assert "uploaded as 'uploads/a.png'" in message and failed.value.done == []


def _unreachable_database() -> sa.Engine:
    # a socket folder that does not exist: every connect fails at once, as with a stopped server
    return sa.create_engine("postgresql+psycopg2://postgres@/postgres?host=/nonexistent-skyeye")


def test_a_database_that_stays_down_ends_the_wait_in_one_line() -> None:
    asset = uuid.uuid4()
    with pytest.raises(CatalogUnavailable) as gone:
        wait_for(_unreachable_database(), [asset], timeout_s=60, poll_s=0, outage_s=0)
    assert str(gone.value).startswith(
        "the database is unavailable (PostgreSQL on the socket in /nonexistent-skyeye) for "
    )
    assert "\n" not in str(gone.value) and gone.value.states == {}


class _Conn:
    """Stands in for a connection: the catalog read it would serve is stubbed too."""

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_database_that_comes_back_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stubs the engine and the catalog read: connecting fails twice as with a restarting
    PostgreSQL (the real OperationalError of an unreachable server), then works."""
    asset = uuid.uuid4()
    engine = _unreachable_database()
    with pytest.raises(sa.exc.OperationalError) as refused:
        engine.connect()
    failures = [refused.value, refused.value]

    def connect() -> _Conn:
        if failures:
            raise failures.pop(0)
        return _Conn()

    monkeypatch.setattr(catalog, "asset_states", lambda conn, ids: {asset: "done"})
    notices: list[str] = []
    stub = SimpleNamespace(connect=connect, url=engine.url)
    states = wait_for(stub, [asset], timeout_s=60, poll_s=0, notice=notices.append)  # type: ignore[arg-type]
    assert states == {asset: "done"} and not failures
    assert notices == [
        "the database is unavailable; retrying for up to 60 s",
        "the database answers again",
    ]


def test_a_timeout_keeps_the_states_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stubs the engine and the catalog read: the asset stays planned."""
    asset = uuid.uuid4()
    monkeypatch.setattr(catalog, "asset_states", lambda conn, ids: {asset: "planned"})
    with pytest.raises(WaitTimeout) as late:
        wait_for(SimpleNamespace(connect=_Conn), [asset], timeout_s=0, poll_s=0)  # type: ignore[arg-type]
    assert late.value.states == {asset: "planned"} and isinstance(late.value, TimeoutError)
