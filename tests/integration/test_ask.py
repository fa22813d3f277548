"""Semantic embeddings of stored answers, the embedding cache, and ``POST /assets/{id}/ask``.

On the real stack: the pipeline stores each answer with its sentence embedding and keeps each
tile's image embeddings in the derived bucket; an ask without a cache entry reads and encodes
the tile (and caches it again), an ask with one skips the encoder, and both give the same
answer (greedy decoding) and store it as a result of origin ``ask``.
"""

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from skyeye import catalog, samples
from skyeye.adapters.s3 import ObjectStore
from skyeye.cli.ingest import Ingested, ingest, wait_for
from skyeye.contracts import Task, TaskKind, Tile, WorkItem, work_item_id_for
from skyeye.model import prompts
from skyeye.model.sentences import SentenceEncoder
from skyeye.services.api import create_app

from .conftest import Pipeline, plan_forged

WAIT_S = 300


@pytest.fixture(scope="module")
def photo_and_scene(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> list[Ingested]:
    scene = samples.write_geotiff(tmp_path_factory.mktemp("ask") / "scene.tif", size=256)
    done = ingest(pipeline.settings, [samples.aerial_photos()[0], scene], prefix="it/ask")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    return done


@pytest.fixture(scope="module")
def client(pipeline: Pipeline) -> Iterator[TestClient]:
    with TestClient(create_app(pipeline.settings)) as c:
        yield c


@pytest.fixture(scope="module")
def ask_token(pipeline: Pipeline) -> str:
    with pipeline.engine.begin() as conn:
        return catalog.create_token(conn, ["ask"], name="it-ask").token


def _cache_key(pipeline: Pipeline, work_item_id: uuid.UUID) -> str:
    return f"{pipeline.settings.embedding_cache.prefix}{work_item_id}.safetensors"


def _tile_item(pipeline: Pipeline, asset_id: uuid.UUID) -> uuid.UUID:
    with pipeline.engine.connect() as conn:
        items = [i for i in catalog.work_items_of(conn, asset_id) if i["kind"] == "tile"]
    assert items
    return items[0]["work_item_id"]


def _wait_cached(pipeline: Pipeline, work_item_id: uuid.UUID) -> None:
    """The encoder writes the cache in the background: wait until the entry is there."""
    store, s = ObjectStore(pipeline.settings), pipeline.settings
    deadline = time.monotonic() + 60
    while store.stat(s.derived_bucket, _cache_key(pipeline, work_item_id)) is None:
        assert time.monotonic() < deadline, f"no cache entry for work item {work_item_id}"
        time.sleep(0.2)


def test_stored_answers_carry_their_sentence_embedding(
    pipeline: Pipeline, photo_and_scene: list[Ingested]
) -> None:
    photo = photo_and_scene[0]
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT prompt, raw_text, embedding::text AS embedding FROM results"
                " WHERE asset_id = :id"
            ),
            {"id": photo.asset_id},
        ).all()
    assert rows
    # each answer is embedded by what search matches it by: a box answer by its phrases
    searched = [prompts.search_text(r.prompt, r.raw_text) for r in rows]
    assert any(text != r.raw_text for text, r in zip(searched, rows, strict=True))
    for row, text in zip(rows, searched, strict=True):
        assert (row.embedding is None) == (not text.strip()), row
    worded = [(r, t) for r, t in zip(rows, searched, strict=True) if r.embedding is not None]
    stored = np.array([[float(v) for v in r.embedding.strip("[]").split(",")] for r, _ in worded])
    expected = SentenceEncoder().encode([text for _, text in worded])
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def test_the_pipeline_caches_each_tiles_image_embeddings(
    pipeline: Pipeline, photo_and_scene: list[Ingested]
) -> None:
    for done in photo_and_scene:
        _wait_cached(pipeline, _tile_item(pipeline, done.asset_id))


def _ask(client: TestClient, token: str, asset_id: uuid.UUID, **body: object) -> dict:
    response = client.post(
        f"/assets/{asset_id}/ask", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("which", "body"),
    [
        (0, {"task": "vqa", "text": "What is in the image?"}),
        (1, {"task": "detection", "text": "building"}),
    ],
    ids=["photo-vqa", "scene-detection"],
)
def test_an_ask_without_and_with_cached_embeddings_gives_the_same_answer(
    pipeline: Pipeline,
    photo_and_scene: list[Ingested],
    client: TestClient,
    ask_token: str,
    which: int,
    body: dict,
) -> None:
    asset_id = photo_and_scene[which].asset_id
    work_item_id = _tile_item(pipeline, asset_id)
    _wait_cached(pipeline, work_item_id)
    ObjectStore(pipeline.settings).remove(
        pipeline.settings.derived_bucket, _cache_key(pipeline, work_item_id)
    )

    first = _ask(client, ask_token, asset_id, **body)
    assert first["cached"] is False and [a["cached"] for a in first["answers"]] == [False]
    _wait_cached(pipeline, work_item_id)  # the uncached ask cached the tile again
    second = _ask(client, ask_token, asset_id, **body)
    assert second["cached"] is True and [a["cached"] for a in second["answers"]] == [True]

    assert first["ask_id"] != second["ask_id"]
    [a1], [a2] = first["answers"], second["answers"]
    assert a1["raw_text"] == a2["raw_text"] and a1["raw_text"].strip()
    assert a1["answer"] == a2["answer"] and a1["detections"] == a2["detections"]
    if which == 1:  # a scene's boxes are placed on the ground both ways
        assert all(d["footprint"] is not None for d in a1["detections"])
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT result_id, origin, task_key, task_kind, raw_text,"
                " embedding IS NOT NULL AS embedded FROM results WHERE result_id = ANY(:ids)"
                " ORDER BY result_id"
            ),
            {"ids": [a1["result_id"], a2["result_id"]]},
        ).all()
    assert [r.origin for r in rows] == ["ask", "ask"]
    assert [r.task_key for r in rows] == [
        f"ask:{first['ask_id']}:0",
        f"ask:{second['ask_id']}:0",
    ]
    assert all(r.embedded and r.raw_text == a1["raw_text"] for r in rows)
    assert "detection" not in {r.task_kind for r in rows}  # stored as the pipeline's kind names


def test_an_ask_is_refused_with_a_message_naming_what_is_wrong(
    pipeline: Pipeline,
    photo_and_scene: list[Ingested],
    client: TestClient,
    ask_token: str,
) -> None:
    asset_id = photo_and_scene[0].asset_id
    auth = {"Authorization": f"Bearer {ask_token}"}

    def post(target: object, body: dict, headers: dict | None = None) -> tuple[int, str]:
        r = client.post(
            f"/assets/{target}/ask", json=body, headers=auth if headers is None else headers
        )
        return r.status_code, r.json()["description"]

    unknown = uuid.uuid4()
    assert post(unknown, {"task": "vqa", "text": "why?"}) == (
        404,
        f"no asset {unknown} in the catalog",
    )
    planned = WorkItem(
        work_item_id=work_item_id_for(unknown, 0),
        asset_id=unknown,
        bucket=pipeline.settings.bucket,
        key="it/ask/not-yet.png",
        image_width=64,
        image_height=64,
        tile=Tile(index=0, x=0, y=0, width=64, height=64),
        tasks=[Task(kind=TaskKind.CAPTION, text="describe")],
    )
    with pipeline.engine.begin() as conn:
        plan_forged(conn, [planned], "png")
    status, says = post(unknown, {"task": "vqa", "text": "why?"})
    assert (status, says) == (
        409,
        f"asset {unknown} is planned: questions can be asked once it is done",
    )
    status, says = post(asset_id, {"task": "vqa", "text": "x" * 10_000})
    assert status == 422 and "'text'" in says and "max_question_chars" in says
    status, says = post(asset_id, {"task": "vqa", "text": "  "})
    assert status == 422 and "'text'" in says
    status, says = post(asset_id, {"task": "vqa", "text": "why\u0000?"})
    assert status == 422 and "'text'" in says and "NUL" in says
    status, says = post(asset_id, {"task": "identify", "text": "a box"})
    assert status == 422 and "'text'" in says and "x1,y1,x2,y2" in says
    status, says = post(asset_id, {"task": "identify", "text": "5000,5000,5100,5100"})
    assert status == 422 and "does not overlap" in says
    status, says = post(asset_id, {"task": "vqa", "text": "why?", "tile": 7})
    assert status == 422 and "'tile'" in says and "7" in says
    status, says = post(asset_id, {"task": "summarise", "text": "why?"})
    assert status == 400 and "'task'" in says
    status, says = post(asset_id, {"task": "vqa", "text": "why?"}, headers={})
    assert status == 401
    with pipeline.engine.begin() as conn:
        reader = catalog.create_token(conn, ["read"], name="it-ask-reader").token
    status, says = post(
        asset_id, {"task": "vqa", "text": "why?"}, {"Authorization": f"Bearer {reader}"}
    )
    assert status == 403 and "'ask'" in says
