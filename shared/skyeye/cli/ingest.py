"""Upload files to the bucket and announce each with a MinIO-format object-created event.

In production MinIO's notify_kafka publishes the event; locally nanio cannot, so ingest does.
Either way the planner sees the same message. A clip's ``.geo.json`` sidecar next to it on disk
is uploaded before the clip (the planner reads it when it plans the clip) and is not an asset.
"""

from __future__ import annotations

import logging
import stat
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from skyeye import catalog, telemetry
from skyeye.adapters import kafka, postgres, s3
from skyeye.adapters.postgres import Engine
from skyeye.adapters.s3 import ObjectStore
from skyeye.contracts import asset_id_for, object_key_problem
from skyeye.imagery import clips
from skyeye.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    """A file uploaded and announced: its object key and the asset id the planner gives it."""

    path: Path
    key: str
    asset_id: uuid.UUID


class InputRefused(ValueError):
    """Some inputs of an ingest cannot become objects; nothing was uploaded.

    ``prefix_problem`` says what is wrong with the prefix (None: nothing); ``problems`` holds
    one entry per input path, in input order (None: that path is fine).
    """

    def __init__(
        self,
        prefix: str,
        prefix_problem: str | None,
        paths: Sequence[Path],
        problems: list[str | None],
    ) -> None:
        self.prefix = prefix
        self.prefix_problem = prefix_problem
        self.paths = list(paths)
        self.problems = problems
        super().__init__("; ".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per refused input, for people: ``--prefix P: why`` or ``PATH: why``."""
        lines = []
        if self.prefix_problem is not None:
            lines.append(f"--prefix {_quoted(self.prefix)}: {self.prefix_problem}")
        for path, problem in zip(self.paths, self.problems, strict=True):
            if problem is not None:
                lines.append(f"{printable(str(path))}: {problem}")
        return lines


class IngestFailed(RuntimeError):
    """A service did not take an upload or an announcement.

    ``done`` lists the files ingested before it, in input order; none after them was.
    """

    def __init__(self, message: str, done: list[Ingested]) -> None:
        super().__init__(message)
        self.done = done


class WaitTimeout(TimeoutError):
    """Some assets did not finish in time; ``states`` holds the last states seen."""

    def __init__(self, message: str, states: dict[uuid.UUID, str]) -> None:
        super().__init__(message)
        self.states = states


class CatalogUnavailable(RuntimeError):
    """The catalog database stayed unreachable; ``states`` holds the last states seen."""

    def __init__(self, message: str, states: dict[uuid.UUID, str]) -> None:
        super().__init__(message)
        self.states = states


def printable(text: str) -> str:
    r"""``text`` (a path or key) as one printable line, control characters escaped.

    Bytes that are not UTF-8 (a file name's surrogate escapes) are shown as ``\xNN``.
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _quoted(text: str, width: int = 80) -> str:
    """``text`` printable and quoted, its middle cut out when it is longer than ``width``."""
    text = printable(text)
    if len(text) > width:
        text = f"{text[: width // 2 - 1]}…{text[-(width // 2) :]}"
    return f"'{text}'"


def object_key(path: Path, prefix: str) -> str:
    """The key ``path`` is uploaded under: its file name below ``prefix`` (slashes dropped)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{path.name}" if prefix else path.name


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def prefix_problem(prefix: str) -> str | None:
    """Why no object key can start with ``prefix``, or None.

    The slashes around it are dropped, so ``/uploads/`` is ``uploads``.
    """
    if _not_utf8(prefix):
        return "the prefix is not valid UTF-8"
    stripped = prefix.strip("/")
    return object_key_problem(stripped) if stripped else None


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            return "is a folder, not a file"
        if not stat.S_ISREG(mode):
            return "is not a regular file"
        with path.open("rb"):
            pass
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    except OSError as exc:  # permission denied, a name too long, ...
        return f"cannot be read ({(exc.strerror or str(exc)).lower()})"
    return None


def _key_problem(path: Path, key: str) -> str | None:
    if _not_utf8(path.name):
        return "the file name is not valid UTF-8, so it cannot be an object key; rename the file"
    problem = object_key_problem(key)
    return None if problem is None else f"{problem}: {_quoted(key)}"


def check_inputs(paths: Sequence[Path], prefix: str) -> None:
    """Raise InputRefused unless every path is a readable file whose key the pipeline accepts.

    The object key (and its clip sidecar's, when one lies beside it) must be one the object
    store can hold and the planner accepts.

    Checks only the local files, so a mistake is reported before anything is uploaded, and
    also without a running stack. Two different files that would get one key are refused too:
    the second upload would replace the first.
    """
    bad_prefix = prefix_problem(prefix)
    problems: list[str | None] = []
    owners: dict[str, Path] = {}
    for path in paths:
        problem = _file_problem(path)
        if problem is None and not clips.is_sidecar(path.name) and bad_prefix is None:
            key = object_key(path, prefix)
            problem = _key_problem(path, key) or _sidecar_problem(path, key)
            first = owners.setdefault(key, path) if problem is None else path
            if first != path and not first.samefile(path):
                problem = (
                    f"gets the same object key {_quoted(key)} as {printable(str(first))}, "
                    "whose upload it would replace; ingest them with different --prefix values"
                )
        problems.append(problem)
    if bad_prefix is not None or any(p is not None for p in problems):
        raise InputRefused(prefix, bad_prefix, paths, problems)


def _sidecar_problem(clip: Path, clip_key: str) -> str | None:
    """What is wrong with the sidecar beside ``clip``, which travels with it, or None."""
    sidecar = clip.with_name(clip.name + clips.SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    problem = _file_problem(sidecar) or _key_problem(sidecar, clips.sidecar_key(clip_key))
    return None if problem is None else f"its sidecar {printable(sidecar.name)}: {problem}"


def ingest(
    settings: Settings,
    paths: Sequence[Path],
    *,
    prefix: str = "uploads",
    metadata: dict[str, str] | None = None,
) -> list[Ingested]:
    """Upload and announce every path but sidecars, in order; returns what was ingested.

    Raises InputRefused (see :func:`check_inputs`) before uploading anything, IngestFailed
    when the object store or the broker does not take a file.
    """
    check_inputs(paths, prefix)
    store = ObjectStore(settings)
    done: list[Ingested] = []
    try:
        producer = kafka.producer(settings)
    except Exception as exc:
        _raise_failure(exc, settings, "connecting to the broker", done)
    tracer = telemetry.tracer(__name__)
    try:
        for path in paths:
            if clips.is_sidecar(path.name):
                continue  # it travels with its clip
            key = object_key(path, prefix)
            with tracer.start_as_current_span("ingest") as span:
                done.append(_ingest_one(store, producer, settings, path, key, metadata, done))
                span.set_attributes({"s3.key": key, "skyeye.asset_id": str(done[-1].asset_id)})
    finally:
        # bounded: after a failed publish the record may still wait for a broker that is gone
        producer.close(timeout=10)
    return done


def _ingest_one(
    store: ObjectStore,
    producer: kafka.Producer,
    settings: Settings,
    path: Path,
    key: str,
    metadata: dict[str, str] | None,
    done: list[Ingested],
) -> Ingested:
    sidecar = path.with_name(path.name + clips.SIDECAR_SUFFIX)
    try:
        if sidecar.is_file():
            store.put_file(sidecar, settings.bucket, clips.sidecar_key(key))
        stored = store.put_file(path, settings.bucket, key, metadata)
    except Exception as exc:
        _raise_failure(exc, settings, f"uploading {printable(str(path))}", done)
    event = stored.created_event()
    try:
        kafka.publish_json(producer, settings.topic_events, f"{stored.bucket}/{key}", event)
    except Exception as exc:
        what = f"announcing {printable(str(path))} (uploaded as {_quoted(key)})"
        _raise_failure(exc, settings, what, done)
    version = stored.version_id or stored.etag
    return Ingested(path, key, asset_id_for(stored.bucket, key, version))


def _raise_failure(
    exc: Exception, settings: Settings, doing: str, done: list[Ingested]
) -> NoReturn:
    """Raise ``exc`` as an IngestFailed with one line for people, or as it is when a bug.

    The line says what failed when a service or the file caused it (details go to the log); any
    other exception is a bug.
    """
    if (reason := s3.transient_reason(exc)) is not None:
        where = f" at {settings.s3_endpoint}"
    elif (reason := kafka.transient_reason(exc)) is not None:
        where = f" at {settings.kafka_bootstrap}"
    elif isinstance(exc, s3.ObjectStoreRefused):
        reason, where = f"the object store refused it ({exc.code}: {exc.message})", ""
    elif isinstance(exc, OSError):
        reason, where = f"the file could not be read ({exc.strerror or exc})", ""
    else:
        raise exc
    log.info("ingest failed while %s", doing, exc_info=exc)
    raise IngestFailed(f"{reason}{where}, while {doing}", list(done)) from exc


def wait_for(
    engine: Engine,
    asset_ids: Sequence[uuid.UUID],
    *,
    timeout_s: float,
    progress: Callable[[dict[uuid.UUID, str]], None] | None = None,
    poll_s: float = 0.5,
    outage_s: float = 60.0,
    notice: Callable[[str], None] | None = None,
) -> dict[uuid.UUID, str]:
    """Poll the catalog until every asset is done or errored; returns the final states.

    Raises WaitTimeout after ``timeout_s``. A database that does not answer (PostgreSQL
    restarting) is polled on for up to ``outage_s`` (``notice`` hears of it once); then, or at
    the deadline, CatalogUnavailable.
    """
    deadline = time.monotonic() + timeout_s
    last: dict[uuid.UUID, str] = {}
    down_since: float | None = None
    while True:
        try:
            with postgres.connection(engine) as conn:
                states = catalog.asset_states(conn, asset_ids)
        except postgres.DatabaseError as exc:
            reason = exc.reason
            if reason is None:
                raise
            now = time.monotonic()
            if down_since is None:
                down_since = now
                log.info("catalog database unreachable; retrying", exc_info=exc)
                if notice:
                    notice(f"{reason}; retrying for up to {outage_s:g} s")
            if now - down_since >= outage_s or now > deadline:
                raise CatalogUnavailable(
                    f"{reason} ({_where(engine)}) for {now - down_since:.0f} s; gave up waiting",
                    last,
                ) from exc
            time.sleep(poll_s)
            continue
        if down_since is not None and notice:
            notice("the database answers again")
        down_since = None
        if states != last and progress:
            progress(states)
        last = states
        if all(states.get(a) in catalog.TERMINAL_ASSET_STATES for a in asset_ids):
            return states
        if time.monotonic() > deadline:
            missing = [
                str(a) for a in asset_ids if states.get(a) not in catalog.TERMINAL_ASSET_STATES
            ]
            raise WaitTimeout(
                f"{len(missing)} asset(s) not finished after {timeout_s:.0f} s: "
                + ", ".join(missing),
                states,
            )
        time.sleep(poll_s)


def _where(engine: Engine) -> str:
    url = engine.url
    if url.host:
        return f"PostgreSQL at {url.host}:{url.port or 5432}"
    return f"PostgreSQL on the socket in {url.query.get('host', 'its default folder')}"
