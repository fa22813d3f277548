"""The worker's last step on an asset: its preview JPEG, drawn from the stored detections.

The model is stubbed with fixed answers so the boxes are known; S3 and PostgreSQL are the real
ones of the session's pipeline.
"""

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from skyeye import catalog
from skyeye.adapters.s3 import ObjectStore
from skyeye.adapters.serve import Answers
from skyeye.contracts import Task, TaskKind, Tile, WorkItem, asset_id_for, work_item_id_for
from skyeye.imagery import previews
from skyeye.services.worker import Worker

from .conftest import Pipeline, plan_forged

TASKS = [
    Task(kind=TaskKind.CAPTION, text="briefly describe the image"),
    Task(kind=TaskKind.GROUNDING, text="building"),
]
# the building at 10-50 % across and 20-60 % down a 200 x 100 image: (20, 20)-(100, 60) px
ANSWERS = ["a gray field", "<p>building</p> {<10><20><50><60>}"]


class _Response:
    def __init__(self, answers: list[str]) -> None:
        self._answers = answers

    def result(self, timeout_s: float) -> Answers:
        return Answers(self._answers, [None] * len(self._answers))


class _Model:
    """Stands in for the Serve app handle: ``infer.remote(images, instructions, cache_key=,
    trace=)``."""

    def __init__(self, answers: list[str]) -> None:
        self.infer = SimpleNamespace(
            remote=lambda images, instructions, cache_key=None, trace=None: _Response(answers)
        )


class _UnwritableStore(ObjectStore):
    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str) -> None:
        raise OSError("the preview bucket refuses writes")


def _planned_image(pipeline: Pipeline, tmp_path: Path, name: str) -> WorkItem:
    """A 200 x 100 gray PNG in S3, registered and planned as one work item, not yet sent."""
    s = pipeline.settings
    path = tmp_path / f"{name}.png"
    Image.fromarray(np.full((100, 200, 3), 90, dtype=np.uint8)).save(path)
    key = f"it/preview/{name}.png"
    stored = ObjectStore(s).put_file(path, s.bucket, key)
    asset_id = asset_id_for(s.bucket, key, stored.etag)
    item = WorkItem(
        work_item_id=work_item_id_for(asset_id, 0),
        asset_id=asset_id,
        bucket=s.bucket,
        key=key,
        image_width=200,
        image_height=100,
        tile=Tile(index=0, x=0, y=0, width=200, height=100),
        tasks=TASKS,
    )
    with pipeline.engine.begin() as conn:
        plan_forged(conn, [item], "png", version=stored.etag)
    return item


def _finish(
    pipeline: Pipeline, tmp_path: Path, name: str, store: ObjectStore
) -> tuple[WorkItem, dict, list[dict]]:
    """A worker with the stubbed model handles one forged work item: the asset, then its errors."""
    item = _planned_image(pipeline, tmp_path, name)
    worker = Worker(pipeline.settings, pipeline.engine, store, _Model(ANSWERS))  # type: ignore[arg-type]
    record = SimpleNamespace(
        topic="test", partition=0, offset=0, value=item.model_dump_json().encode(), headers=[]
    )
    worker.handle_batch([record])  # type: ignore[list-item]
    with pipeline.engine.connect() as conn:
        [asset] = catalog.assets(conn, item.asset_id)
        return item, asset, catalog.errors(conn, item.asset_id)


def test_the_finished_asset_gets_a_preview_with_its_boxes(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    s = pipeline.settings
    item, asset, errors = _finish(pipeline, tmp_path, "drawn", ObjectStore(s))
    assert asset["status"] == "done" and errors == []
    assert asset["preview_key"] == f"previews/{item.asset_id}.jpg"
    data = ObjectStore(s).read(s.derived_bucket, asset["preview_key"], max_bytes=1024**2)
    image = np.asarray(Image.open(io.BytesIO(data)))
    color = previews.label_color("building")
    assert image.shape == (100, 200, 3)

    # JPEG is lossy: within a few levels of each colour
    def near(pixel: np.ndarray, rgb: tuple[int, int, int]) -> bool:
        return int(np.abs(pixel.astype(int) - np.array(rgb)).max()) <= 40

    assert near(image[40, 20], color) and near(image[40, 100], color)
    assert near(image[40, 60], (90, 90, 90)) and not near(image[40, 60], color)


def test_a_failed_preview_is_an_error_row_and_the_asset_stays_done(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    store = _UnwritableStore(pipeline.settings)
    item, asset, errors = _finish(pipeline, tmp_path, "unwritable", store)
    assert asset["status"] == "done" and asset["preview_key"] is None
    [error] = errors
    assert (error["stage"], error["kind"]) == ("worker", "preview_failed")
    assert error["source"] == f"preview:{item.asset_id}" and "refuses writes" in error["message"]
    with pipeline.engine.connect() as conn:
        assert len(catalog.results(conn, item.asset_id)) == len(TASKS)
