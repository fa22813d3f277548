"""The results API against OGC API - Features Part 1 and STAC API, on the real stack's API process.

What validates what, all offline:

* STAC objects (the landing page as a Catalog, each Collection, every Item) against the STAC
  1.1.0 core JSON schemas vendored under tests/schemas (from the pystac wheels; see its README),
  through :mod:`tests.stac_validation`, which fails if a schema is fetched over the network;
* FeatureCollections (ItemCollections, the detections collection, label GeoJSON) against the
  vendored GeoJSON FeatureCollection schema;
* the STAC API / OGC API response shapes (landing page, conformance, collections, ItemCollection,
  Item), whose schemas are published only as OpenAPI fragments that no package ships, with
  stac-pydantic's ``stac_pydantic.api`` models, and detections with geojson-pydantic; error
  bodies against the OGC API exception shape (``code`` required, ``description``);
* STAC API Item Search semantics (bbox, datetime, ids, collections, intersects, paging, 400 for
  malformed parameters) by their results on assets this module ingests at places no other test
  uses, and the Items against what ``skyeye stac`` prints.
"""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import geojson_pydantic
import httpx
import jsonschema
import pytest
import rasterio
from rasterio.transform import Affine
from stac_pydantic.api.collection import Collection as ApiCollection
from stac_pydantic.api.collections import Collections as ApiCollections
from stac_pydantic.api.conformance import Conformance as ApiConformance
from stac_pydantic.api.item import Item as ApiItem
from stac_pydantic.api.item_collection import ItemCollection as ApiItemCollection
from stac_pydantic.api.landing import LandingPage as ApiLandingPage

from skyeye import catalog, samples
from skyeye.catalog import search
from skyeye.cli.ingest import Ingested, ingest, wait_for
from skyeye.cli.main import main as skyeye_main
from skyeye.contracts import Task, TaskKind, WorkItem, work_item_id_for
from skyeye.imagery import geo, scenes
from tests.stac_validation import validate_feature_collection, validate_item

from .conftest import Pipeline, preview

WAIT_S = 300
PREFIX = "it/api-standards"
GEOJSON = "application/geo+json"

# The OGC API - Features exception shape (openapi/schemas/exception.yaml of OGC 17-069r4), which
# the STAC API reuses for its errors.
EXCEPTION_SCHEMA = {
    "type": "object",
    "required": ["code"],
    "properties": {"code": {"type": "string"}, "description": {"type": "string"}},
}

OGC_CORE = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"
OGC_GEOJSON = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"
OGC_OAS30 = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30"
STAC_CLASSES = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
]


# --- the corpus: two georeferenced scenes at places no other test uses, and a plain photo ------


def _scene_at(path: Path, crs: str, west: float, north: float, seed: int) -> Path:
    """A 448 px scene (one tile) of the sample GeoTIFF's pixels, moved to ``crs`` at ``west``,
    ``north`` (10 m pixels)."""
    samples.write_geotiff(path, size=448, seed=seed)
    with rasterio.open(path) as ds:
        pixels, profile = ds.read(), ds.profile
    profile.update(crs=crs, transform=Affine(10.0, 0.0, west, 0.0, -10.0, north))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def _add_a_detection(pipeline: Pipeline, scene: Path, done: Ingested) -> None:
    """What the worker stores when the model finds a ship on the scene's one tile: the tiny test
    model seldom draws a box, and the detections collection needs one to check."""
    s = pipeline.settings
    with rasterio.open(scene) as ds:
        meta, crs = geo.SceneMeta.of(ds), ds.crs.to_string()
    tile = geo.tile_at(
        meta, 0, tile_size=s.tile_size, target_gsd=s.target_gsd, overlap=s.tile_overlap
    )
    task = Task(kind=TaskKind.GROUNDING, text="ship")
    item = WorkItem(
        work_item_id=work_item_id_for(done.asset_id, 0),
        asset_id=done.asset_id,
        bucket=s.bucket,
        key=done.key,
        image_width=meta.width,
        image_height=meta.height,
        tile=tile.as_tile(),
        tasks=[task],
    )
    x1, y1, x2, y2 = geo.scene_detection("ship", (40, 40, 50, 50), tile).box
    found = catalog.Detection("ship", x1, y1, x2, y2, box_0_100=(40, 40, 50, 50))
    outcome = catalog.TaskOutcome(task, "[grounding] ship", "raw", True, {}, [found])
    with pipeline.engine.begin() as conn:
        catalog.store_results(conn, item, [scenes.locate(outcome, tile, crs)], "test-ships")


class Corpus:
    """The module's assets: ``south`` and ``north`` scenes and a ``photo``, oldest first in
    ``by_time`` with their catalog times."""

    def __init__(self, south: uuid.UUID, north: uuid.UUID, photo: uuid.UUID) -> None:
        self.south, self.north, self.photo = south, north, photo
        self.by_time: list[tuple[uuid.UUID, datetime]] = []

    @property
    def ids(self) -> set[str]:
        return {str(self.south), str(self.north), str(self.photo)}


@pytest.fixture(scope="module")
def corpus(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("api-standards")
    south = _scene_at(folder / "south.tif", "EPSG:32733", 500_000.0, 7_000_000.0, seed=3)
    north = _scene_at(folder / "north.tif", "EPSG:32650", 500_000.0, 3_000_000.0, seed=4)
    photo = samples.aerial_photos()[1]
    done = ingest(pipeline.settings, [south, north, photo], prefix=PREFIX)
    states = wait_for(pipeline.engine, [d.asset_id for d in done], timeout_s=WAIT_S)
    assert set(states.values()) == {"done"}, states
    for d in done:
        preview(pipeline, d.asset_id)  # written just after the asset is done
    _add_a_detection(pipeline, south, done[0])
    out = Corpus(*(d.asset_id for d in done))
    with pipeline.engine.connect() as conn:
        page = search.search_assets(
            conn, search.Filters(ids=tuple(d.asset_id for d in done), limit=10)
        )
    out.by_time = sorted(((r["asset_id"], r["seen_at"]) for r in page.rows), key=lambda p: p[1])
    times = [t for _, t in out.by_time]
    assert len(times) == 3 and len(set(times)) == 3, times  # uploaded one after the other
    return out


# --- the API process and a client with a read token -----------------------------------------


@pytest.fixture(scope="module")
def base_url(pipeline: Pipeline) -> str:
    return pipeline.api_url()


@pytest.fixture(scope="module")
def api(pipeline: Pipeline) -> Iterator[httpx.Client]:
    with pipeline.client("read", name="api-standards", Accept="application/json") as client:
        yield client


def _ok(response: httpx.Response, media_type: str = "application/json") -> Any:
    assert response.status_code == 200, (response.request.url, response.text)
    assert response.headers["content-type"].split(";")[0] == media_type, response.headers
    return response.json()


def _refused(response: httpx.Response, status: int, names: str) -> dict[str, Any]:
    """The error body of ``response``: ``status``, the exception shape, naming ``names``."""
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    jsonschema.validate(body, EXCEPTION_SCHEMA)
    assert set(body) == {"code", "description"}, body
    assert names in body["description"], body
    return body


def _rels(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for link in body["links"]:
        out.setdefault(link["rel"], []).append(link)
    return out


def _item_collection(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Check a STAC ItemCollection every way we can; returns its features."""
    validate_feature_collection(body)
    ApiItemCollection.model_validate(body)
    for feature in body["features"]:
        validate_item(feature)
        ApiItem.model_validate(feature)
    assert body["numberReturned"] == len(body["features"])
    features: list[dict[str, Any]] = body["features"]
    return features


def _ids(body: dict[str, Any]) -> list[str]:
    return [f["id"] for f in _item_collection(body)]


def _search_get(api: httpx.Client, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = _ok(api.get("/search", params=params), GEOJSON)
    return body


def _search_post(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _ok(api.post("/search", json=body), GEOJSON)
    return out


def _bbox_of(api: httpx.Client, asset_id: uuid.UUID) -> list[float]:
    item = _ok(api.get(f"/collections/assets/items/{asset_id}"), GEOJSON)
    bbox: list[float] = item["bbox"]
    return bbox


def _around(bbox: list[float], margin: float = 0.01) -> list[float]:
    west, south, east, north = bbox
    return [west - margin, south - margin, east + margin, north + margin]


def _csv(values: list[float]) -> str:
    return ",".join(repr(v) for v in values)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- the capabilities: landing page, conformance, collections -------------------------------


def test_landing_page_is_a_stac_catalog_linking_every_part(
    api: httpx.Client, base_url: str
) -> None:
    page = _ok(api.get("/"))
    assert any(s.endswith("catalog.json") for s in validate_item(page)), "not a STAC Catalog"
    ApiLandingPage.model_validate(page)
    rels = _rels(page)
    for rel in ("self", "root", "conformance", "data", "search", "service-desc"):
        assert rel in rels, (rel, page["links"])
    assert {link.get("method") for link in rels["search"]} == {"GET", "POST"}
    assert rels["self"][0]["href"].rstrip("/") == base_url
    assert {*STAC_CLASSES, OGC_CORE, OGC_GEOJSON} <= set(page["conformsTo"])

    [desc] = rels["service-desc"]
    assert desc["href"] == f"{base_url}/api"
    openapi = api.get(desc["href"])
    assert openapi.status_code == 200
    assert openapi.json()["openapi"].startswith("3.1")
    conformance = _ok(api.get(rels["conformance"][0]["href"]))
    assert _ok(api.get(rels["data"][0]["href"]))["collections"]
    assert conformance["conformsTo"] == page["conformsTo"]


def test_conformance_lists_the_ogc_and_stac_classes(api: httpx.Client) -> None:
    body = _ok(api.get("/conformance"))
    ApiConformance.model_validate(body)
    assert set(body) == {"conformsTo"}
    assert {*STAC_CLASSES, OGC_CORE, OGC_GEOJSON, OGC_OAS30} <= set(body["conformsTo"])
    assert len(body["conformsTo"]) == len(set(body["conformsTo"]))


def test_collections_are_stac_collections_with_item_links(api: httpx.Client, base_url: str) -> None:
    body = _ok(api.get("/collections"))
    ApiCollections.model_validate(body)
    assert "self" in _rels(body)
    listed = {c["id"]: c for c in body["collections"]}
    assert set(listed) == {"assets", "detections"}
    for collection_id, listed_one in listed.items():
        one = _ok(api.get(f"/collections/{collection_id}"))
        assert one == listed_one
        assert any(s.endswith("collection.json") for s in validate_item(one)), "not a Collection"
        ApiCollection.model_validate(one)
        rels = _rels(one)
        [items] = rels["items"]
        assert items["href"] == f"{base_url}/collections/{collection_id}/items"
        assert items["type"] == GEOJSON
        assert rels["self"][0]["href"] == f"{base_url}/collections/{collection_id}"
        # OGC API Features: the spatial extent is a lon/lat bbox, the temporal one an interval
        [[west, south, east, north]] = one["extent"]["spatial"]["bbox"]
        assert -180 <= west <= 180 and -90 <= south <= north <= 90 and -180 <= east <= 180
        assert len(one["extent"]["temporal"]["interval"][0]) == 2

    _refused(api.get("/collections/nope"), 404, "nope")
    _refused(api.get("/collections/nope/items"), 404, "nope")


# --- items: OGC API Features and STAC Items ---------------------------------------------------


def test_assets_items_and_item_validate(api: httpx.Client, corpus: Corpus, base_url: str) -> None:
    box = _around(_bbox_of(api, corpus.south))
    body = _ok(api.get("/collections/assets/items", params={"bbox": _csv(box)}), GEOJSON)
    assert _ids(body) == [str(corpus.south)]
    rels = _rels(body)
    assert rels["self"][0]["type"] == GEOJSON and "next" not in rels
    assert body["timeStamp"].endswith("Z")
    datetime.fromisoformat(body["timeStamp"])

    for asset_id in (corpus.south, corpus.photo):
        item = _ok(api.get(f"/collections/assets/items/{asset_id}"), GEOJSON)
        validate_item(item)
        ApiItem.model_validate(item)
        assert item["id"] == str(asset_id) and item["collection"] == "assets"
        links = _rels(item)
        assert links["self"][0]["href"] == f"{base_url}/collections/assets/items/{asset_id}"
        assert links["collection"][0]["href"] == f"{base_url}/collections/assets"
        # the label asset and the preview are served by the API itself
        labels = _ok(api.get(item["assets"]["labels"]["href"]), GEOJSON)
        validate_feature_collection(labels)
        picture = api.get(item["assets"]["preview"]["href"])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
        assert picture.content.startswith(b"\xff\xd8\xff")  # a JPEG's start of image
        assert item["assets"]["preview"]["type"] == "image/jpeg"

    _refused(api.get(f"/collections/assets/items/{uuid.uuid4()}"), 404, "no asset")
    _refused(api.get("/collections/assets/items/not-a-uuid"), 404, "not-a-uuid")


def test_detections_are_geojson_features(api: httpx.Client, corpus: Corpus) -> None:
    box = _around(_bbox_of(api, corpus.south))
    body = _ok(api.get("/collections/detections/items", params={"bbox": _csv(box)}), GEOJSON)
    validate_feature_collection(body)
    geojson_pydantic.FeatureCollection.model_validate(body)
    assert body["numberReturned"] == len(body["features"])
    ships = [f for f in body["features"] if f["properties"]["model"] == "test-ships"]
    assert len(ships) == 1, body
    [ship] = ships
    assert ship["properties"]["asset_id"] == str(corpus.south)
    assert ship["geometry"]["type"] == "Polygon"
    one = _ok(api.get(f"/collections/detections/items/{ship['id']}"), GEOJSON)
    geojson_pydantic.Feature.model_validate(one)
    assert one == ship
    _refused(api.get("/collections/detections/items/999999999"), 404, "999999999")


# --- STAC API Item Search ---------------------------------------------------------------------


def test_search_get_and_post_return_valid_item_collections(
    api: httpx.Client, corpus: Corpus
) -> None:
    ids = sorted(corpus.ids)
    got = _search_get(api, ids=",".join(ids))
    posted = _search_post(api, {"ids": ids})
    assert sorted(_ids(got)) == ids
    assert _ids(posted) == _ids(got)
    newest_first = [str(a) for a, _ in reversed(corpus.by_time)]
    assert _ids(got) == newest_first
    for body in (got, posted):
        assert {f["collection"] for f in body["features"]} == {"assets"}
        assert "root" in _rels(body)


def test_search_by_bbox_and_intersects(api: httpx.Client, corpus: Corpus) -> None:
    south, north = _bbox_of(api, corpus.south), _bbox_of(api, corpus.north)
    mine = corpus.ids

    def found(body: dict[str, Any]) -> set[str]:
        return set(_ids(body)) & mine

    for box, expected in ((south, corpus.south), (north, corpus.north)):
        assert found(_search_get(api, bbox=_csv(_around(box)), limit=1000)) == {str(expected)}
        assert found(_search_post(api, {"bbox": _around(box), "limit": 1000})) == {str(expected)}
    # one box over both scenes; the photo has no place, so no box finds it
    both = [min(south[0], north[0]) - 1, south[1] - 1, max(south[2], north[2]) + 1, north[3] + 1]
    assert found(_search_get(api, bbox=_csv(both), limit=1000)) == {
        str(corpus.south),
        str(corpus.north),
    }
    # a 3-D box (STAC allows six numbers) keeps its horizontal extent
    west, s, east, n = _around(south)
    body = _search_get(api, bbox=_csv([west, s, -100.0, east, n, 100.0]), limit=1000)
    assert found(body) == {str(corpus.south)}

    # intersects: a point inside a scene, as JSON in a GET and in a POST body
    centre = [(north[0] + north[2]) / 2, (north[1] + north[3]) / 2]
    point = {"type": "Point", "coordinates": centre}
    assert found(_search_get(api, intersects=json.dumps(point), limit=1000)) == {str(corpus.north)}
    assert found(_search_post(api, {"intersects": point, "limit": 1000})) == {str(corpus.north)}
    # an L around the south scene: its bounding box covers the scene, the shape itself does not
    w, s, e, n = south
    ell = {
        "type": "Polygon",
        "coordinates": [
            [
                [w - 0.1, s - 0.1],
                [w - 0.05, s - 0.1],
                [w - 0.05, n + 0.05],
                [e + 0.1, n + 0.05],
                [e + 0.1, n + 0.1],
                [w - 0.1, n + 0.1],
                [w - 0.1, s - 0.1],
            ]
        ],
    }
    assert found(_search_post(api, {"intersects": ell, "limit": 1000})) == set()
    assert found(_search_get(api, intersects=json.dumps(ell), limit=1000)) == set()
    square = {
        "type": "Polygon",
        "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
    }
    assert found(_search_post(api, {"intersects": square, "limit": 1000})) == {str(corpus.south)}


def test_search_by_datetime(api: httpx.Client, corpus: Corpus) -> None:
    (first, t1), (second, t2), (third, t3) = corpus.by_time
    ids = ",".join(sorted(corpus.ids))

    def found(when: str) -> set[str]:
        get = set(_ids(_search_get(api, ids=ids, datetime=when)))
        post = set(_ids(_search_post(api, {"ids": sorted(corpus.ids), "datetime": when})))
        assert get == post, when
        return get

    assert found(_rfc3339(t2)) == {str(second)}  # an instant
    assert found(f"{_rfc3339(t1)}/{_rfc3339(t2)}") == {str(first), str(second)}  # closed
    assert found(f"../{_rfc3339(t2)}") == {str(first), str(second)}  # open start
    assert found(f"{_rfc3339(t2)}/..") == {str(second), str(third)}  # open end
    assert found(f"/{_rfc3339(t1)}") == {str(first)}  # an empty open end, as STAC allows
    assert found(f"{_rfc3339(t3)}/") == {str(third)}
    # another zone, the same instant
    plus_two = t2.astimezone(timezone(timedelta(hours=2)))
    assert found(plus_two.isoformat(timespec="microseconds")) == {str(second)}
    later = t3 + timedelta(days=1)
    assert found(f"{_rfc3339(later)}/..") == set()
    # each Item's datetime lies in the interval asked for (milliseconds, as Items give them)
    body = _search_get(api, datetime=f"{_rfc3339(t1)}/{_rfc3339(t3)}", limit=1000)
    for feature in body["features"]:
        shown = feature["properties"]["datetime"] or feature["properties"]["start_datetime"]
        moment = datetime.fromisoformat(shown)
        assert t1 - timedelta(milliseconds=1) <= moment <= t3, feature["id"]


def test_search_by_ids_and_collections(api: httpx.Client, corpus: Corpus) -> None:
    two = [str(corpus.south), str(corpus.photo)]
    assert set(_ids(_search_get(api, ids=",".join(two)))) == set(two)
    assert set(_ids(_search_post(api, {"ids": two}))) == set(two)
    # an id that names no asset (or is no UUID) matches nothing
    assert _ids(_search_get(api, ids=f"{uuid.uuid4()},not-an-asset")) == []
    assert _ids(_search_post(api, {"ids": ["not-an-asset"]})) == []

    ids = ",".join(sorted(corpus.ids))
    assert set(_ids(_search_get(api, ids=ids, collections="assets"))) == corpus.ids
    body = {"ids": sorted(corpus.ids), "collections": ["assets"]}
    assert set(_ids(_search_post(api, body))) == corpus.ids
    # detections are GeoJSON features, not STAC Items: Item Search never returns them
    for unknown in ("nope", "detections"):
        assert _ids(_search_get(api, ids=ids, collections=unknown)) == []
        assert _ids(_search_post(api, {"ids": sorted(corpus.ids), "collections": [unknown]})) == []


def _follow_get(api: httpx.Client, url: str, params: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    response = api.get(url, params=params)
    for _ in range(1000):
        body = _ok(response, GEOJSON)
        seen += _ids(body)
        nexts = _rels(body).get("next")
        if not nexts:
            return seen
        [link] = nexts
        assert link["type"] == GEOJSON and link.get("method", "GET") == "GET"
        response = api.get(link["href"])
    raise AssertionError("more than 1000 pages")


def test_paging_get_follows_next_links_without_repeats_or_skips(
    api: httpx.Client, corpus: Corpus
) -> None:
    everything = _ids(_search_get(api, limit=1000))
    assert corpus.ids <= set(everything)
    paged = _follow_get(api, "/search", {"limit": 2})
    assert paged == everything  # same order, nothing repeated, nothing skipped
    items = _follow_get(api, "/collections/assets/items", {"limit": 2})
    assert items == everything
    # with filters, the next link keeps them
    ids = ",".join(sorted(corpus.ids))
    newest_first = [str(a) for a, _ in reversed(corpus.by_time)]
    assert _follow_get(api, "/search", {"ids": ids, "limit": 1}) == newest_first
    assert _follow_get(api, "/search", {"ids": ids, "collections": "assets", "limit": 1}) == (
        newest_first
    )
    # a page size at the limit is fine
    assert len(_ids(_search_get(api, ids=ids, limit=1))) == 1


def test_paging_post_follows_next_links_with_their_bodies(
    api: httpx.Client, corpus: Corpus, base_url: str
) -> None:
    request = {"ids": sorted(corpus.ids), "limit": 1}
    seen: list[str] = []
    body = _search_post(api, request)
    for _ in range(10):
        seen += _ids(body)
        nexts = _rels(body).get("next")
        if not nexts:
            break
        [link] = nexts
        assert link["method"] == "POST" and link["href"] == f"{base_url}/search"
        assert link["type"] == GEOJSON
        # the next body repeats the search and adds the cursor
        assert {k: v for k, v in link["body"].items() if k != "cursor"} == request
        body = _ok(api.post(link["href"], json=link["body"]), GEOJSON)
    assert seen == [str(a) for a, _ in reversed(corpus.by_time)]
    everything = _ids(_search_post(api, {"limit": 1000}))
    seen = []
    body = _search_post(api, {"limit": 3})
    while True:
        seen += _ids(body)
        nexts = _rels(body).get("next")
        if not nexts:
            break
        body = _ok(api.post(nexts[0]["href"], json=nexts[0]["body"]), GEOJSON)
    assert seen == everything


# --- malformed parameters: 400, naming the parameter ------------------------------------------

MALFORMED_GET = [
    ("/search", {"bbox": "1,2,3"}, "bbox"),
    ("/search", {"bbox": "0,91,1,92"}, "bbox"),
    ("/search", {"bbox": "0,10,1,5"}, "bbox"),
    ("/search", {"bbox": "a,b,c,d"}, "bbox"),
    ("/search", {"datetime": "2024-01-01T00:00:00"}, "datetime"),
    ("/search", {"datetime": "yesterday"}, "datetime"),
    ("/search", {"datetime": "2024-02-01T00:00:00Z/2024-01-01T00:00:00Z"}, "datetime"),
    ("/search", {"datetime": "../.."}, "datetime"),
    ("/search", {"limit": "0"}, "limit"),
    ("/search", {"limit": "ten"}, "limit"),
    ("/search", {"intersects": "{not json"}, "intersects"),
    ("/search", {"intersects": '{"type": "Point"}'}, "intersects"),
    ("/search", {"cursor": "not-a-cursor"}, "cursor"),
    ("/collections/assets/items", {"bbox": "1,2,3"}, "bbox"),
    ("/collections/assets/items", {"datetime": "2024-01-01"}, "datetime"),
    ("/collections/assets/items", {"limit": "0"}, "limit"),
    ("/collections/assets/items", {"cursor": "not-a-cursor"}, "cursor"),
    ("/collections/detections/items", {"bbox": "0,-91,1,0"}, "bbox"),
    ("/results", {"limit": "0"}, "limit"),
    ("/results", {"datetime": "2024-01-01T00:00:00"}, "datetime"),
]


@pytest.mark.parametrize(
    ("path", "params", "name"), MALFORMED_GET, ids=[f"{p}-{n}" for p, _, n in MALFORMED_GET]
)
def test_a_malformed_query_parameter_is_a_400_naming_it(
    api: httpx.Client, path: str, params: dict[str, str], name: str
) -> None:
    _refused(api.get(path, params=params), 400, name)


MALFORMED_POST = [
    ({"bbox": [1, 2, 3]}, "bbox"),
    ({"bbox": [0, 91, 1, 92]}, "bbox"),
    ({"datetime": "2024-01-01T00:00:00"}, "datetime"),
    ({"limit": 0}, "limit"),
    ({"limit": "many"}, "limit"),
    ({"ids": "not-a-list"}, "ids"),
    ({"collections": 3}, "collections"),
    ({"intersects": {"type": "Point"}}, "intersects"),
    ({"intersects": {"type": "Point", "coordinates": [0, 0]}, "bbox": [0, 0, 1, 1]}, "bbox"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"colections": ["assets"]}, "colections"),
]


@pytest.mark.parametrize(
    "path", ["/collections", "/collections/assets", "/collections/assets/items", "/conformance"]
)
def test_an_unknown_query_parameter_is_a_400_naming_it(api: httpx.Client, path: str) -> None:
    """OGC API - Features Part 1 Core, Requirement 8 (/req/core/query-param-unknown): "The
    server SHALL respond with a response with the status code 400, if the request URI includes a
    query parameter that is not specified in the API definition"."""
    _refused(api.get(path, params={"colour": "red"}), 400, "colour")


def test_a_limit_over_the_maximum_is_served_as_the_maximum(
    api: httpx.Client, pipeline: Pipeline
) -> None:
    """STAC API (item-search and ogcapi-features, the ``limit`` parameter): "If the limit
    parameter value is greater than advertised limit maximum, the server must return the maximum
    possible number of items, rather than responding with an error." """
    most = pipeline.settings.api.max_limit
    for response in (
        api.get("/search", params={"limit": 1_000_000}),
        api.post("/search", json={"limit": 1_000_000}),
        api.get("/collections/assets/items", params={"limit": 1_000_000}),
        api.get("/collections/detections/items", params={"limit": 1_000_000}),
    ):
        body = _ok(response, GEOJSON)
        validate_feature_collection(body)
        assert body["numberReturned"] == len(body["features"]) <= most


@pytest.mark.parametrize(
    ("body", "name"), MALFORMED_POST, ids=[f"{n}-{i}" for i, (_, n) in enumerate(MALFORMED_POST)]
)
def test_a_malformed_search_body_is_a_400_naming_the_field(
    api: httpx.Client, body: dict[str, Any], name: str
) -> None:
    _refused(api.post("/search", json=body), 400, name)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"null", b'"bbox"', b"5"])
def test_a_search_body_that_is_no_json_object_is_a_400(api: httpx.Client, content: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    _refused(api.post("/search", content=content, headers=headers), 400, "body")


NOT_ON_EARTH = [
    '{"type": "Point", "coordinates": [NaN, 0]}',  # Python's JSON parser takes NaN
    '{"type": "Point", "coordinates": [Infinity, 0]}',
    '{"type": "Point", "coordinates": [1e308, 0]}',
    '{"type": "Point", "coordinates": [0, 95]}',
]


@pytest.mark.parametrize("geometry", NOT_ON_EARTH)
def test_an_intersects_geometry_off_the_globe_is_a_400_naming_intersects(
    api: httpx.Client, geometry: str
) -> None:
    _refused(api.get("/search", params={"intersects": geometry}), 400, "intersects")
    content = f'{{"intersects": {geometry}}}'.encode()
    headers = {"Content-Type": "application/json"}
    _refused(api.post("/search", content=content, headers=headers), 400, "intersects")


# --- one code path: the Items are what `skyeye stac` prints -----------------------------------


def test_search_items_are_what_skyeye_stac_prints(
    api: httpx.Client,
    pipeline: Pipeline,
    corpus: Corpus,
    base_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = _search_get(api, ids=",".join(sorted(corpus.ids)))
    assert len(body["features"]) == 3
    for served in body["features"]:
        asset_id = served["id"]
        capsys.readouterr()
        assert skyeye_main(["--home", str(pipeline.home), "stac", asset_id]) == 0
        printed = json.loads(capsys.readouterr().out)
        # what the API points at itself: its links, the collection, the label and preview hrefs
        assert served.pop("collection") == "assets"
        assert printed.pop("collection", None) is None
        served.pop("links")
        assert printed.pop("links") == []
        assert served["assets"]["labels"].pop("href") == f"{base_url}/assets/{asset_id}/detections"
        assert printed["assets"]["labels"].pop("href") == f"./{asset_id}-detections.geojson"
        assert served["assets"]["preview"].pop("href") == f"{base_url}/assets/{asset_id}/preview"
        assert printed["assets"]["preview"].pop("href").startswith("s3://")
        assert served == printed, asset_id
        # and the item endpoint serves the same Item
        one = _ok(api.get(f"/collections/assets/items/{asset_id}"), GEOJSON)
        one.pop("collection"), one.pop("links")
        one["assets"]["labels"].pop("href"), one["assets"]["preview"].pop("href")
        assert one == served
