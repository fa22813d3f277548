"""The results API's search, against the real stack's API process over HTTP.

Every filter alone and combined, text, semantic and hybrid ranking, keyset pages while new
results arrive, 400s that name the parameter, and `skyeye search` finding what the API finds.

The tiny model's captions are not predictable, so a few results with known texts are written
beside the real ones (marked model 'test-forged'), embedded in this process by the model the
Serve app's TextEmbedder runs (``SentenceEncoder``; ``test_ask`` checks the two agree). The
session's catalog also holds the other modules' assets: the scene here lies where no other test
puts one, and assertions about "only these" are scoped to its place or to the forged texts.
"""

import functools
import itertools
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from skyeye import samples
from skyeye.catalog.queries import vector_literal
from skyeye.cli.ingest import ingest, wait_for
from skyeye.model.sentences import SentenceEncoder

from .conftest import Pipeline

WAIT_S = 300
HARBOUR = "a harbour with three ships moored along a long concrete pier"
ORCHARD = "rows of fruit trees in an orchard beside a farm track"


@pytest.fixture(scope="module")
def api(pipeline: Pipeline) -> Iterator[httpx.Client]:
    with pipeline.client("read", name="search-tests") as client:
        yield client


@pytest.fixture(scope="module")
def catalog_(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A georeferenced scene and a plain photo, done, each with one forged caption."""
    # in UTM 33N near 12.8 E 36.1 N, in the sea south of Sicily: no other test's scene is there
    scene = samples.write_geotiff(
        tmp_path_factory.mktemp("search") / "harbour.tif", size=500, origin=(300_000, 4_000_000)
    )
    photo = samples.aerial_photos()[0]
    done = ingest(pipeline.settings, [scene, photo], prefix="it/search")
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    scene_id, photo_id = (d.asset_id for d in done)
    _forge(pipeline, scene_id, HARBOUR)
    _forge(pipeline, photo_id, ORCHARD)
    with pipeline.engine.connect() as conn:
        bounds = conn.execute(
            sa.text("SELECT bbox FROM assets WHERE asset_id = :id"), {"id": scene_id}
        ).scalar_one()
    return {"scene": scene_id, "photo": photo_id, "bounds": bounds}


@functools.cache
def _encoder() -> SentenceEncoder:
    return SentenceEncoder()


def _forge(pipeline: Pipeline, asset_id: uuid.UUID, text: str, kind: str = "caption") -> int:
    """A result with a known text on the asset's first work item, embedded as the worker does."""
    [vector] = _encoder().encode([text])
    with pipeline.engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO results (work_item_id, asset_id, task_key, task_kind, task_text,"
                " prompt, raw_text, parsed, model, embedding)"
                " SELECT work_item_id, asset_id, :key, :kind, 'forged', 'forged', :text, true,"
                " 'test-forged', CAST(:vector AS vector) FROM work_items"
                " WHERE asset_id = :id ORDER BY kind, tile_index LIMIT 1 RETURNING result_id"
            ),
            {
                "key": f"forged:{uuid.uuid4()}",
                "kind": kind,
                "text": text,
                "vector": vector_literal(vector),
                "id": asset_id,
            },
        ).scalar_one()


def _results(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    response = api.get("/results", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _assets_of(rows: list[dict[str, Any]]) -> set[str]:
    return {r["asset_id"] for r in rows}


def _bbox_around(bounds: list[float], margin: float = 0.001) -> str:
    w, s, e, n = bounds
    return f"{w - margin},{s - margin},{e + margin},{n + margin}"


def test_the_landing_page_links_everything_and_status_shows_the_api(
    pipeline: Pipeline, api: httpx.Client
) -> None:
    landing = api.get("/", headers={"Accept": "application/json"}).json()
    rels = {link["rel"] for link in landing["links"]}
    assert {"self", "conformance", "data", "search", "service-desc"} <= rels
    service_desc = next(x for x in landing["links"] if x["rel"] == "service-desc")
    document = httpx.get(service_desc["href"]).json()
    assert document["openapi"].startswith("3.1")
    assert {"/search", "/results", "/collections/{collection_id}/items"} <= set(document["paths"])
    status = subprocess.run(
        [sys.executable, "-m", "skyeye.cli", "--home", str(pipeline.home), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    [component] = [c for c in json.loads(status.stdout)["components"] if c["name"] == "api"]
    assert component["endpoint"] == pipeline.api_url()


def test_reads_need_a_token_that_is_known(api: httpx.Client) -> None:
    anonymous = httpx.get(f"{api.base_url}/results")
    assert anonymous.status_code == 401
    assert "token" in anonymous.json()["description"]
    wrong = httpx.get(f"{api.base_url}/results", headers={"Authorization": "Bearer skyeye_nope"})
    assert wrong.status_code == 401


def test_full_text_search_finds_the_words_and_ranks(
    api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    found = _results(api, q="ships pier")
    assert found and found[0]["raw_text"] == HARBOUR
    assert found[0]["asset_id"] == str(catalog_["scene"])
    for moment in (found[0]["created_at"], found[0]["datetime"]):  # RFC 3339, in UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", moment), moment
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(found))
    assert _results(api, q='"fruit trees" -harbour')[0]["raw_text"] == ORCHARD
    assert _results(api, q="zeppelin") == []


def test_each_filter_narrows_to_what_it_names(api: httpx.Client, catalog_: dict[str, Any]) -> None:
    scene, photo = str(catalog_["scene"]), str(catalog_["photo"])
    around = _bbox_around(catalog_["bounds"])
    assert _assets_of(_results(api, bbox=around)) == {scene}
    assert _results(api, bbox="-10,-10,-9,-9") == []
    # a query box across the antimeridian that does not reach the scene
    assert scene not in _assets_of(_results(api, bbox="170,-10,-170,10"))
    now = datetime.now(UTC)
    recent = f"{(now - timedelta(hours=2)).isoformat()}/.."
    forged = '"concrete pier" OR "fruit trees"'
    assert _assets_of(_results(api, q=forged, datetime=recent)) == {scene, photo}
    assert _results(api, datetime="../2000-01-01T00:00:00Z") == []
    assert _assets_of(_results(api, asset_kind="scene", q=forged)) == {scene}
    assert _assets_of(_results(api, asset_kind="image", q=forged)) == {photo}
    assert _assets_of(_results(api, asset_kind="clip", q=forged)) == set()
    captions = _results(api, task_kind="caption", bbox=around)
    assert captions and {r["task_kind"] for r in captions} == {"caption"}
    assert _results(api, task_kind="vqa", q=forged) == []
    assert _results(api, status="error", bbox=around) == []
    combined = _results(api, q="concrete pier", bbox=around, datetime=recent, status="done")
    assert [r["raw_text"] for r in combined] == [HARBOUR]
    assert _results(api, q="ships", bbox="-10,-10,-9,-9", datetime=recent) == []


def test_a_label_filter_finds_assets_with_that_detection(
    pipeline: Pipeline, api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    with pipeline.engine.begin() as conn:
        result_id = conn.execute(
            sa.text("SELECT max(result_id) FROM results WHERE asset_id = :id"),
            {"id": catalog_["scene"]},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO detections (result_id, asset_id, label, ordinal, x1, y1, x2, y2)"
                " VALUES (:r, :a, 'Jetty', 99, 1, 1, 5, 5)"
            ),
            {"r": result_id, "a": catalog_["scene"]},
        )
    rows = _results(api, label="jetty")
    assert rows and _assets_of(rows) == {str(catalog_["scene"])}
    listed = api.get("/collections/detections/items", params={"label": "JETTY"}).json()
    assert [f["properties"]["label"] for f in listed["features"]] == ["Jetty"]
    assets = api.get("/collections/assets/items", params={"label": "jetty"}).json()
    assert [f["id"] for f in assets["features"]] == [str(catalog_["scene"])]


def test_semantic_and_hybrid_search_rank_by_meaning(
    api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    around = _bbox_around(catalog_["bounds"])
    # no word in common with the harbour caption but "a"
    semantic = _results(api, q="boats docked at a port", mode="semantic", bbox=around, limit=5)
    assert semantic[0]["raw_text"] == HARBOUR
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(semantic))
    assert _results(api, q="boats docked at a port", mode="text", bbox=around) == []
    # among the scene's own results (the model's answers there also say "ships")
    hybrid = _results(api, q="ships in a port", mode="hybrid", bbox=around, limit=5)
    assert hybrid[0]["raw_text"] == HARBOUR
    orchard = _results(api, q="apple trees on a farm", mode="semantic", bbox="-10,-10,-9,-9")
    assert orchard == []


def _walk(api: httpx.Client, params: dict[str, Any], between: Any = None) -> list[int]:
    """Every result id, following next links one page of 2 at a time (keep it to a few dozen
    results: each page is one request of the token's per-minute budget)."""
    seen: list[int] = []
    response = api.get("/results", params={**params, "limit": 2})
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [r["result_id"] for r in body["results"]]
        following = [x["href"] for x in body["links"] if x["rel"] == "next"]
        if not following:
            return seen
        if between is not None:
            between()
        response = api.get(following[0])


def test_pages_neither_skip_nor_repeat_while_results_arrive(
    pipeline: Pipeline, api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    here = {"bbox": _bbox_around(catalog_["bounds"])}
    everything = [r["result_id"] for r in _results(api, **here)]
    assert len(everything) >= 5
    added: list[int] = []
    walked = _walk(api, here, lambda: added.append(_forge(pipeline, catalog_["scene"], "new")))
    assert len(walked) == len(set(walked))
    # newest first: what arrived after the first page was asked for is not in later pages
    assert walked == everything
    assert added and not set(added) & set(walked)
    ranked = [r["result_id"] for r in _results(api, q="ships OR pier OR new", **here)]
    assert len(ranked) > 2
    assert _walk(api, {"q": "ships OR pier OR new", **here}) == ranked
    meaning = [r["result_id"] for r in _results(api, q="harbour", mode="semantic", **here)]
    assert len(meaning) > 2
    assert _walk(api, {"q": "harbour", "mode": "semantic", **here}) == meaning


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"bbox": "1,2,3"}, "bbox"),
        ({"bbox": "0,95,1,96"}, "bbox"),
        ({"datetime": "2026-01-01"}, "datetime"),
        ({"datetime": "2026-02-01T00:00:00Z/2026-01-01T00:00:00Z"}, "datetime"),
        ({"limit": "0"}, "limit"),
        ({"lable": "ship"}, "lable"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
        ({"mode": "semantic"}, "q"),
        ({"mode": "psychic", "q": "x"}, "mode"),
        ({"status": "lost"}, "status"),
        ({"asset_kind": "map"}, "asset_kind"),
    ],
)
def test_a_bad_parameter_is_a_400_that_names_it(
    api: httpx.Client, params: dict[str, str], named: str
) -> None:
    response = api.get("/results", params=params)
    assert response.status_code == 400, response.text
    assert named in response.json()["description"]


def test_a_limit_over_the_maximum_is_served_at_the_maximum(
    api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    """OGC API - Features /req/core/fc-limit-response-1: no error, the maximum instead."""
    for path in ("/collections/assets/items", "/search"):
        response = api.get(path, params={"limit": 10**9})
        assert response.status_code == 200, (path, response.text)
    served = [r["result_id"] for r in _results(api, limit=10**9)]
    assert served == [r["result_id"] for r in _results(api)]  # _results asks for 1,000, the max


def test_the_cli_finds_what_the_api_finds(
    pipeline: Pipeline, api: httpx.Client, catalog_: dict[str, Any]
) -> None:
    around = _bbox_around(catalog_["bounds"])
    for args, params in [
        (["ships", "--bbox", around], {"q": "ships", "bbox": around}),
        (["--bbox", around, "--task-kind", "caption"], {"bbox": around, "task_kind": "caption"}),
        (["boats at a port", "--mode", "semantic"], {"q": "boats at a port", "mode": "semantic"}),
    ]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "skyeye.cli",
                "--home",
                str(pipeline.home),
                "search",
                *args,
                "--limit",
                "50",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        cli_ids = [r["result_id"] for r in json.loads(out.stdout)["results"]]
        api_ids = [r["result_id"] for r in _results(api, **params, limit=50)]
        assert cli_ids == api_ids and cli_ids, args
