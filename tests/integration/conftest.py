"""One real pipeline per test session: nanio, tansu, embedded PostgreSQL, Ray Serve, consumers,
supervised as `skyeye up` supervises them (dead processes are restarted)."""

import contextlib
import io
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import sqlalchemy as sa
from PIL import Image

from skyeye import catalog, telemetry
from skyeye.adapters import postgres
from skyeye.adapters.s3 import ObjectStore
from skyeye.contracts import WorkItem
from skyeye.settings import AlertSettings, DecodingSettings, ReconcilerSettings, Settings
from skyeye.stack import Stack, resolve
from skyeye.stack.launcher import launch


@dataclass
class Pipeline:
    stack: Stack
    settings: Settings
    engine: sa.Engine
    home: Path
    _watch_stop: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _watch_error: list[BaseException] = field(default_factory=list)

    @property
    def fault_file(self) -> Path:
        """The consumers' fault-injection file (``settings.fault_file``)."""
        assert self.settings.fault_file is not None
        return self.settings.fault_file

    def api_url(self, timeout_s: float = 60) -> str:
        """The API component's base URL, once it answers (it may be starting or restarting)."""
        component = self.stack.state().component("api")
        assert component is not None and component.endpoint, self.stack.state()
        url = component.endpoint.rstrip("/")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{url}/conformance", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the API at {url} does not answer"
            time.sleep(0.5)

    def supervise(self) -> None:
        """Watch the stack in a thread, restarting what dies, as `skyeye up` does."""
        self._watch_stop = threading.Event()

        def watch() -> None:
            try:
                self.stack.watch(self._watch_stop, poll_s=0.2)
            except BaseException as exc:
                self._watch_error.append(exc)

        self._watcher = threading.Thread(target=watch, name="supervisor", daemon=True)
        self._watcher.start()

    def check_supervisor(self) -> None:
        """Fail if the supervisor gave up on the stack."""
        assert not self._watch_error, self._watch_error

    @contextlib.contextmanager
    def token(self, *scopes: str, name: str) -> Iterator[str]:
        """A new API token with ``scopes`` (a unique name from ``name``), revoked after."""
        with self.engine.begin() as conn:
            new = catalog.create_token(conn, list(scopes), name=f"{name}-{uuid.uuid4().hex[:6]}")
        yield new.token
        with self.engine.begin() as conn:
            catalog.revoke_token(conn, str(new.record.token_id))

    @contextlib.contextmanager
    def client(
        self, *scopes: str, name: str, timeout: float | httpx.Timeout = 60, **headers: str
    ) -> Iterator[httpx.Client]:
        """A client of the API with a new token of ``scopes`` (revoked after) and ``headers``."""
        with (
            self.token(*scopes, name=name) as token,
            httpx.Client(
                base_url=self.api_url(),
                headers={"Authorization": f"Bearer {token}", **headers},
                timeout=timeout,
            ) as client,
        ):
            yield client

    @contextlib.contextmanager
    def unsupervised(self) -> Iterator[None]:
        """Nothing is restarted inside the block (to keep a component down on purpose)."""
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        try:
            yield
        finally:
            self.supervise()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    home = tmp_path_factory.mktemp("skyeye-home")
    settings = Settings(
        home=home,
        grounding_phrases=["building", "river"],
        vqa_questions=["Is there any water in the image?"],
        decoding=DecodingSettings(max_new_tokens=12),
        # below the 640 px photos and the 1000 px scene, so previews are downscaled
        preview_max_side=512,
        fault_file=home / "faults.json",
        # below Kafka's 1 MB message limit, so the corpus can send an oversized event
        max_event_bytes=256 * 1024,
        finish_sweep_s=1.0,
        reconciler=ReconcilerSettings(interval_s=2, min_age_s=1),
        # the tests' webhook receivers listen on 127.0.0.1, and retry within seconds
        alerts=AlertSettings(allow_private_webhooks=True, initial_backoff_s=0.2, max_backoff_s=1),
    )
    telemetry.setup("skyeye-tests", home)
    stack = launch(settings, progress=lambda msg: print(f"[pipeline] {msg}"))
    try:
        resolved = resolve(settings)
        assert resolved.database_url is not None
        engine = postgres.create_engine(resolved.database_url)
        running = Pipeline(stack, resolved, engine, home)
        running.supervise()
        yield running
        running._watch_stop.set()
        engine.dispose()
    finally:
        stack.stop()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started, and wait until they are gone."""
    root = psutil.Process(pid)
    family = [root, *root.children(recursive=True)]
    for proc in family:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(family, timeout=30)


def plan_forged(
    conn: sa.Connection, items: Sequence[WorkItem], media_format: str, version: str = "v1"
) -> None:
    """Register an asset and record its work items as the planner would, without publishing
    them: the test sends them, or stores their results, itself. ``version``: the object's
    eTag when the object is really in the bucket, so the reconciler knows it as this asset."""
    first = items[0]
    catalog.register_asset(
        conn,
        catalog.AssetRecord(
            asset_id=first.asset_id,
            bucket=first.bucket,
            object_key=first.key,
            version=version,
            size_bytes=None,
            content_type=None,
            user_metadata={},
            event_name="s3:ObjectCreated:Put",
            event_time=None,
        ),
    )
    catalog.describe_asset(
        conn, first.asset_id, media_format, first.image_width, first.image_height, len(items)
    )
    catalog.add_work_items(conn, first.asset_id, items)
    catalog.mark_planned(conn, first.asset_id)


def preview(pipeline: Pipeline, asset_id: uuid.UUID) -> Image.Image:
    """The asset's preview JPEG from S3, once the worker that finished the asset has written it."""
    deadline = time.monotonic() + 60
    while True:
        with pipeline.engine.connect() as conn:
            [asset] = catalog.assets(conn, asset_id)
            failures = [e for e in catalog.errors(conn, asset_id) if e["kind"] == "preview_failed"]
        assert not failures, failures
        if asset["preview_key"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert asset["preview_key"] == f"previews/{asset_id}.jpg"
    store = ObjectStore(pipeline.settings)
    derived = pipeline.settings.derived_bucket
    assert store.content_type(derived, asset["preview_key"]) == "image/jpeg"
    data = store.read(derived, asset["preview_key"], max_bytes=16 * 1024**2)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG"
    return image
