"""A synthetic but realistic catalog, for the search plans test and the search benchmark.

:func:`synthesize` makes the rows, deterministically for a seed, as the pipeline would have
written them; :func:`generate_catalog` also loads them (through
:mod:`skyeye.catalog.synthetic`, which holds the SQL). What the rows look like:

- assets in ten regions of the world (ports, cities, a river delta, farmland, forest,
  mountains, desert, two across the antimeridian), spread over the year 2025: georeferenced
  scenes about 0.05 degrees wide, drone clips (most placed by a sidecar) and plain photos
  (never placed); mostly ``done``, a few registered, planned, finishing or failed;
- their work items as the planner cuts them: 448 px scene and photo tiles with 32 px overlap
  plus one overview per scene, one item per sampled clip frame plus the clip item;
- results of the pipeline's tasks: captions of every tile and frame, a detailed description of
  each scene's overview, a caption of each clip, grounding of one or two phrases per tile
  (``building``, ``ship``, ``road``...) and questions ("Is there any water in the image?", "How
  many ships are there?"), with answers drawn from a few thousand texts worded after the
  region's landscape, so that a text, place and time search together select what a user would
  expect;
- detections: the boxes of the grounding answers (the raw answer text holds them, as the model
  writes them), in pixels of the whole image and, on placed assets, on the ground inside their
  asset.

Embeddings: each distinct text is embedded once (by the caller's sentence model, or by
:func:`hashed_embeddings`, a model-free stand-in whose neighbours share words) and each row gets
its text's vector plus a small deterministic jitter, so no two rows share a vector, as no two
real answers would.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from skyeye.adapters import postgres
from skyeye.catalog.synthetic import load
from skyeye.contracts import Task, TaskKind, preview_key_for

__all__ = [
    "REGIONS",
    "Region",
    "SyntheticCatalog",
    "generate_catalog",
    "hashed_embeddings",
    "synthesize",
]

#: Texts -> (n, 384) unit vectors, one row per text, in order.
Embedder = Callable[[Sequence[str]], np.ndarray]

_DIMENSIONS = 384
_TILE = 448
_STRIDE = 448 - 32
_MODEL = "skyeye-tiny"
_BUCKET = "ingest"
_YEAR_START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
_YEAR_S = 365 * 86400.0
_NAMESPACE = uuid.UUID("5b1f0a6e-3f38-4f0e-9d7c-5ca7a1095e11")


@dataclass(frozen=True)
class Region:
    """A part of the world that assets show.

    A lon/lat box (west > east across the antimeridian) and the landscapes found there, with
    their weights; ``weight`` is the region's share of the assets.
    """

    name: str
    west: float
    south: float
    east: float
    north: float
    themes: dict[str, float]
    weight: float


REGIONS: tuple[Region, ...] = (
    Region("rotterdam", 3.95, 51.85, 4.55, 51.98, {"port": 5, "industrial": 3, "city": 2}, 15),
    Region("singapore", 103.6, 1.2, 104.05, 1.45, {"port": 5, "city": 3, "coast": 2}, 12),
    Region("nile-delta", 30.6, 30.4, 31.6, 31.3, {"farmland": 5, "river": 3, "city": 2}, 12),
    Region(
        "los-angeles",
        -118.5,
        33.7,
        -117.9,
        34.15,
        {"city": 5, "airport": 2, "coast": 2, "industrial": 2},
        15,
    ),
    Region("alps", 10.5, 47.4, 11.5, 47.7, {"mountain": 5, "forest": 3, "farmland": 2}, 8),
    Region("amazon", -60.4, -3.3, -59.6, -2.9, {"forest": 6, "river": 4}, 6),
    # across the antimeridian: Taveuni (Fiji) and the Bering Strait's Chukotka shore
    Region("fiji", 179.55, -17.1, -179.65, -16.6, {"coast": 5, "forest": 4, "city": 1}, 5),
    Region("chukotka", 179.3, 64.7, -178.9, 65.2, {"coast": 4, "mountain": 4, "port": 1}, 3),
    Region("sahara", 2.0, 26.0, 3.0, 26.6, {"desert": 8, "industrial": 1}, 4),
    Region("tokyo-bay", 139.7, 35.3, 140.1, 35.7, {"city": 5, "port": 3, "airport": 2}, 20),
)


@dataclass(frozen=True)
class _Thing:
    singular: str
    plural: str
    settings: tuple[str, ...]


@dataclass(frozen=True)
class _Theme:
    places: tuple[str, ...]
    things: tuple[_Thing, ...]
    phrases: tuple[str, ...]
    land_use: tuple[str, ...]
    water: float


def _t(singular: str, plural: str, *settings: str) -> _Thing:
    return _Thing(singular, plural, settings)


_THEMES: dict[str, _Theme] = {
    "port": _Theme(
        ("a harbour", "a container port", "a busy port", "a marina", "an oil terminal"),
        (
            _t("ship", "ships", "moored along the pier", "docked at the quay", "anchored offshore"),
            _t("container crane", "container cranes", "along the waterfront", "at the terminal"),
            _t("boat", "boats", "in the marina", "moored at a jetty", "sailing in the channel"),
            _t("storage tank", "storage tanks", "near the waterfront", "in an oil terminal"),
            _t("tugboat", "tugboats", "beside a cargo ship", "in the harbour basin"),
            _t("container", "containers", "stacked on the quay", "in a container yard"),
        ),
        ("ship", "boat", "storage tank", "crane", "harbour"),
        ("port", "industrial area", "water"),
        0.97,
    ),
    "city": _Theme(
        ("a dense urban area", "a residential neighbourhood", "a city centre", "a suburb"),
        (
            _t("building", "buildings", "along a wide street", "around a central square"),
            _t("car", "cars", "parked in a parking lot", "on a busy road", "at an intersection"),
            _t("house", "houses", "with red roofs", "with gardens", "along a quiet street"),
            _t("swimming pool", "swimming pools", "in the back gardens", "next to the houses"),
            _t("tennis court", "tennis courts", "in a park", "beside a school"),
            _t("tree", "trees", "lining the avenue", "in a small park"),
            _t("bus", "buses", "at a bus station", "on the main road"),
        ),
        ("building", "vehicle", "road", "swimming pool", "tennis court"),
        ("residential area", "commercial area", "urban area"),
        0.25,
    ),
    "farmland": _Theme(
        ("farmland", "a patchwork of fields", "a rural area", "irrigated farmland"),
        (
            _t("field", "fields", "of green crops", "divided by narrow tracks", "after harvest"),
            _t("farmhouse", "farmhouses", "among the fields", "beside a dirt road"),
            _t("tractor", "tractors", "working in a field", "on a farm track"),
            _t("irrigation canal", "irrigation canals", "between the fields", "along the road"),
            _t("greenhouse", "greenhouses", "next to a farm", "in long rows"),
        ),
        ("field", "building", "road", "canal"),
        ("farmland", "agriculture", "rural area"),
        0.45,
    ),
    "river": _Theme(
        ("a river", "a wide river", "a river delta", "a meandering river"),
        (
            _t("bridge", "bridges", "crossing the river", "over a canal"),
            _t("boat", "boats", "on the river", "moored on the river bank"),
            _t("sandbank", "sandbanks", "in the middle of the river", "along the bank"),
            _t("village", "villages", "on the river bank", "along the water"),
        ),
        ("river", "bridge", "boat", "building"),
        ("water", "wetland", "farmland"),
        0.99,
    ),
    "forest": _Theme(
        ("a dense forest", "a tropical rainforest", "a pine forest", "woodland"),
        (
            _t("tree", "trees", "covering the hills", "around a clearing", "along a river"),
            _t("clearing", "clearings", "in the forest", "next to a dirt road"),
            _t("logging road", "logging roads", "through the forest", "along the ridge"),
            _t("hut", "huts", "at the forest edge", "in a clearing"),
        ),
        ("tree", "road", "river", "building"),
        ("forest", "woodland"),
        0.3,
    ),
    "airport": _Theme(
        ("an airport", "an airfield", "an international airport"),
        (
            _t("airplane", "airplanes", "parked at the terminal", "on the apron", "on a runway"),
            _t("runway", "runways", "next to the terminal", "crossing each other"),
            _t("hangar", "hangars", "beside the apron", "at the edge of the airfield"),
            _t("vehicle", "vehicles", "on the apron", "in the airport car park"),
        ),
        ("airplane", "vehicle", "building", "runway"),
        ("airport", "transport"),
        0.1,
    ),
    "industrial": _Theme(
        ("an industrial area", "a refinery", "a factory complex", "a logistics park"),
        (
            _t("warehouse", "warehouses", "with flat roofs", "next to a railway line"),
            _t("storage tank", "storage tanks", "in a refinery", "behind a fence"),
            _t("truck", "trucks", "at loading docks", "parked in a yard"),
            _t("chimney", "chimneys", "of a power plant", "above a factory"),
        ),
        ("storage tank", "building", "vehicle", "road"),
        ("industrial area", "commercial area"),
        0.3,
    ),
    "coast": _Theme(
        ("a coastline", "a sandy beach", "a rocky shore", "a coral lagoon", "a bay"),
        (
            _t("wave", "waves", "breaking on the beach", "along the shore"),
            _t("boat", "boats", "near the shore", "pulled up on the beach"),
            _t("house", "houses", "along the coast", "behind the beach"),
            _t("reef", "reefs", "off the coast", "around a small island"),
        ),
        ("boat", "building", "ship", "beach"),
        ("beach", "water", "residential area"),
        0.98,
    ),
    "mountain": _Theme(
        ("mountains", "a mountain valley", "snowy peaks", "steep hills"),
        (
            _t("road", "roads", "winding up the valley", "along the ridge"),
            _t("lake", "lakes", "between the peaks", "in the valley"),
            _t("village", "villages", "in the valley", "on the slopes"),
            _t("glacier", "glaciers", "on the peaks", "above the valley"),
        ),
        ("road", "building", "lake", "tree"),
        ("mountain", "forest", "grassland"),
        0.5,
    ),
    "desert": _Theme(
        ("a desert", "sand dunes", "a rocky desert plain", "an oasis"),
        (
            _t("dune", "dunes", "stretching to the horizon", "beside a track"),
            _t("track", "tracks", "across the sand", "between the dunes"),
            _t("solar panel", "solar panels", "in long rows", "in a solar farm"),
            _t("palm tree", "palm trees", "around an oasis", "beside a well"),
        ),
        ("road", "building", "solar panel", "vehicle"),
        ("desert", "barren land"),
        0.05,
    ),
}

_QUANTITIES = ("a", "two", "three", "a few", "several", "many", "a row of", "dozens of")
_LEADS = ("", "an aerial view of ", "a satellite image of ")
_COLOURS = ("red", "grey", "white", "dark grey", "red and white", "brown")
_WATER_QUESTION = "Is there any water in the image?"
_LAND_QUESTION = "What is the main land use in this image?"
_AREA_QUESTION = "What type of area is this?"
_ROOF_QUESTION = "What color are the roofs?"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(quantity: str, thing: _Thing) -> str:
    if quantity == "a":
        return f"{_article(thing.singular)} {thing.singular}"
    return f"{quantity} {thing.plural}"


@dataclass
class _Texts:
    """The distinct answer texts of one theme, by task."""

    captions: list[str]
    descriptions: list[str]
    video: list[str]
    areas: list[str]


def _theme_texts(theme: _Theme, rng: np.random.Generator) -> _Texts:
    """Caption, description and clip texts worded after a landscape, sampled without repeats."""
    captions = []
    for thing in theme.things:
        for setting in thing.settings:
            for quantity in _QUANTITIES:
                captions.append(f"{_noun_phrase(quantity, thing)} {setting}")
                place = theme.places[len(captions) % len(theme.places)]
                captions.append(f"{place} with {_noun_phrase(quantity, thing)} {setting}")
    leads = rng.choice(len(_LEADS), size=len(captions))
    captions = sorted({_LEADS[i] + c for i, c in zip(leads, captions, strict=True)})
    chosen = rng.choice(len(captions), size=min(len(captions), 160), replace=False)
    captions = [captions[i] for i in sorted(chosen)]
    descriptions = []
    for _ in range(40):
        a, b = rng.choice(len(theme.things), size=2, replace=False)
        one, two = theme.things[a], theme.things[b]
        place = theme.places[int(rng.integers(len(theme.places)))]
        q1, q2 = rng.choice(_QUANTITIES[1:], size=2)
        descriptions.append(
            f"The image shows {place} with {_noun_phrase(str(q1), one)} "
            f"{one.settings[int(rng.integers(len(one.settings)))]}. There are also "
            f"{_noun_phrase(str(q2), two)} {two.settings[int(rng.integers(len(two.settings)))]}"
            f", seen from above in {'clear' if rng.random() < 0.7 else 'hazy'} weather."
        )
    video = [
        f"a drone flies over {theme.places[i % len(theme.places)]} with "
        f"{_noun_phrase(str(rng.choice(_QUANTITIES[1:])), thing)} {thing.settings[0]}"
        for i, thing in enumerate(theme.things * 3)
    ]
    return _Texts(captions, sorted(set(descriptions)), sorted(set(video)), list(theme.places))


def hashed_embeddings(texts: Sequence[str]) -> np.ndarray:
    """A model-free stand-in for sentence embeddings, for tests that need no model.

    The sum of one fixed random unit vector per word, normalised: texts that share words are
    neighbours; nothing more is claimed.

    Args:
        texts: the texts to embed.

    Returns:
        (len(texts), 384) float32 unit vectors.
    """
    out = np.zeros((len(texts), _DIMENSIONS), dtype=np.float32)
    cache: dict[str, np.ndarray] = {}
    for row, text in enumerate(texts):
        for word in text.lower().replace(",", " ").replace(".", " ").replace("?", " ").split():
            if word not in cache:
                digest = hashlib.sha256(word.encode()).digest()
                seed = int.from_bytes(digest[:8], "little")
                vec = np.random.default_rng(seed).standard_normal(_DIMENSIONS)
                cache[word] = (vec / np.linalg.norm(vec)).astype(np.float32)
            out[row] += cache[word]
        norm = float(np.linalg.norm(out[row]))
        if norm == 0:
            out[row, 0] = 1.0
        else:
            out[row] /= norm
    return out


@dataclass
class SyntheticCatalog:
    """The rows of a synthetic catalog, column by column, ready to be bound as arrays.

    Times are POSIX seconds. ``results["text_no"]`` indexes ``texts`` (None: no embedding) and
    ``results["task"]`` indexes ``tasks``; ``detections["result"]`` indexes the results.
    ``west``/``south``/``east``/``north`` are a lon/lat box (None when not placed).
    """

    seed: int
    texts: list[str]
    embeddings: np.ndarray
    tasks: list[tuple[str, str, str, str]]
    assets: dict[str, list[Any]] = field(default_factory=dict)
    work_items: dict[str, list[Any]] = field(default_factory=dict)
    results: dict[str, list[Any]] = field(default_factory=dict)
    detections: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.results["task"])


_ASSET_COLUMNS = [
    "asset_id",
    "object_key",
    "version",
    "size_bytes",
    "content_type",
    "media_format",
    "width",
    "height",
    "status",
    "tiles_planned",
    "event_time",
    "created_at",
    "updated_at",
    "crs",
    "west",
    "south",
    "east",
    "north",
    "duration_s",
    "fps",
    "frame_count",
    "video_codec",
    "start_time",
    "end_time",
    "preview_key",
]
_ITEM_COLUMNS = [
    "work_item_id",
    "asset_id",
    "kind",
    "tile_index",
    "px_x",
    "px_y",
    "px_width",
    "px_height",
    "status",
    "created_at",
    "completed_at",
    "frame_index",
]
_RESULT_COLUMNS = [
    "work_item_id",
    "asset_id",
    "task",
    "raw_text",
    "parsed",
    "answer",
    "created_at",
    "text_no",
]
_DETECTION_COLUMNS = [
    "result",
    "asset_id",
    "label",
    "ordinal",
    "x1",
    "y1",
    "x2",
    "y2",
    "west",
    "south",
    "east",
    "north",
    "centrality",
    "duplicate",
]


@dataclass
class _Asset:
    """One asset being made: what its work items and results need to know of it."""

    row: int
    asset_id: str
    kind: str
    theme: str
    width: int
    height: int
    bbox: tuple[float, float, float, float] | None
    time: float
    status: str


class _Builder:
    """Draws the rows; one instance per :func:`synthesize` call."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.texts: list[str] = []
        self.text_no: dict[str, int] = {}
        self.tasks: list[tuple[str, str, str, str]] = []
        self.task_no: dict[tuple[str, str], int] = {}
        self.vocab = {name: _theme_texts(t, self.rng) for name, t in _THEMES.items()}
        self.assets: dict[str, list[Any]] = {c: [] for c in _ASSET_COLUMNS}
        self.items: dict[str, list[Any]] = {c: [] for c in _ITEM_COLUMNS}
        self.results: dict[str, list[Any]] = {c: [] for c in _RESULT_COLUMNS}
        # per result: the grounding phrase, or None; boxes are drawn once counts are known
        self.phrases: list[str | None] = []
        self.result_item: list[int] = []
        self.item_asset: list[int] = []

    # ---- vocabulary -------------------------------------------------------------------------
    def _task(self, kind: TaskKind, text: str) -> int:
        found = self.task_no.get((kind.value, text))
        if found is not None:
            return found
        prompt = {
            TaskKind.CAPTION: f"[caption] {text}",
            TaskKind.VIDEO: f"[caption] {text}",
            TaskKind.DESCRIBE: text,
            TaskKind.GROUNDING: f"[detection] {text}",
        }.get(kind, f"[vqa] {text}")
        self.tasks.append((Task(kind=kind, text=text).key, kind.value, text, prompt))
        self.task_no[(kind.value, text)] = len(self.tasks) - 1
        return len(self.tasks) - 1

    def _embedded(self, text: str) -> int:
        if text not in self.text_no:
            self.texts.append(text)
            self.text_no[text] = len(self.texts) - 1
        return self.text_no[text]

    # ---- rows ---------------------------------------------------------------------------------
    def add_result(self, item: int, asset: _Asset, kind: TaskKind, text: str, answer: str) -> None:
        """One result of a work item; grounding answers get their boxes later."""
        r = self.results
        r["work_item_id"].append(self.items["work_item_id"][item])
        r["asset_id"].append(asset.asset_id)
        r["task"].append(self._task(kind, text))
        r["created_at"].append(self.items["completed_at"][item])
        if kind is TaskKind.GROUNDING:
            r["raw_text"].append(None)
            r["parsed"].append(True)
            r["answer"].append(None)
            r["text_no"].append(None)
            self.phrases.append(text)
        else:
            r["raw_text"].append(answer)
            r["parsed"].append(True)
            r["answer"].append(json.dumps({"text": answer}))
            # yes, no and numbers say nothing on their own: the pipeline embeds no such answer
            worth = not (answer.lower() in ("yes", "no") or answer.isdigit())
            r["text_no"].append(self._embedded(answer) if worth else None)
            self.phrases.append(None)
        self.result_item.append(item)

    def add_item(
        self, asset: _Asset, kind: str, index: int, window: tuple[int, int, int, int]
    ) -> int:
        """One work item; returns its row number."""
        i = self.items
        i["work_item_id"].append(
            str(uuid.uuid5(_NAMESPACE, f"{self.seed}/{asset.asset_id}/{kind}/{index}"))
        )
        i["asset_id"].append(asset.asset_id)
        self.item_asset.append(asset.row)
        i["kind"].append(kind)
        i["tile_index"].append(index)
        i["px_x"].append(window[0])
        i["px_y"].append(window[1])
        i["px_width"].append(window[2])
        i["px_height"].append(window[3])
        i["frame_index"].append(index if kind == "frame" else None)
        i["created_at"].append(asset.time + 2.0)
        # a queue of minutes to hours behind the upload
        done = asset.time + 5.0 + float(self.rng.exponential(300.0))
        ended = not (asset.status == "planned" and self.rng.random() < 0.5)
        failed = asset.status == "error" and self.rng.random() < 0.3
        i["status"].append("error" if failed else "done" if ended else "queued")
        i["completed_at"].append(done if ended else None)
        return len(i["kind"]) - 1

    def tile_tasks(self, item: int, asset: _Asset) -> None:
        """A tile's or photo's caption, one or two grounding phrases, one or two questions."""
        theme, texts = _THEMES[asset.theme], self.vocab[asset.theme]
        rng = self.rng
        self.add_result(
            item,
            asset,
            TaskKind.CAPTION,
            "briefly describe the image",
            texts.captions[int(rng.integers(len(texts.captions)))],
        )
        count = 2 if rng.random() < 0.3 else 1
        for phrase in rng.choice(theme.phrases, size=count, replace=False):
            self.add_result(item, asset, TaskKind.GROUNDING, str(phrase), "")
        questions = [_WATER_QUESTION] + (
            [self._extra_question(asset)] if rng.random() < 0.2 else []
        )
        for question in questions:
            self.add_result(item, asset, TaskKind.VQA, question, self._answer(question, asset))

    def _extra_question(self, asset: _Asset) -> str:
        options = [
            _LAND_QUESTION,
            _AREA_QUESTION,
            _ROOF_QUESTION,
            f"How many {_THEMES[asset.theme].things[0].plural} are there?",
        ]
        return options[int(self.rng.integers(len(options)))]

    def _answer(self, question: str, asset: _Asset) -> str:
        theme, rng = _THEMES[asset.theme], self.rng
        if question == _WATER_QUESTION:
            return "yes" if rng.random() < theme.water else "no"
        if question == _LAND_QUESTION:
            return str(rng.choice(theme.land_use))
        if question == _AREA_QUESTION:
            return str(rng.choice(self.vocab[asset.theme].areas))
        if question == _ROOF_QUESTION:
            return str(rng.choice(_COLOURS))
        return str(int(rng.poisson(4)))

    # ---- assets -------------------------------------------------------------------------------
    def add_asset(self, n: int, kind: str, region: Region, tiles: int) -> None:
        """One asset of ``kind`` in ``region`` with about ``tiles`` tiles (or frames)."""
        rng = self.rng
        asset_id = str(uuid.uuid5(_NAMESPACE, f"{self.seed}/asset/{n}"))
        themes = list(region.themes)
        weights = np.array([region.themes[t] for t in themes], dtype=float)
        theme = themes[int(rng.choice(len(themes), p=weights / weights.sum()))]
        status = str(
            rng.choice(
                ["done", "registered", "planned", "finishing", "error"],
                p=[0.9, 0.02, 0.04, 0.01, 0.03],
            )
        )
        time = _YEAR_START + float(rng.random()) * _YEAR_S
        bbox: tuple[float, float, float, float] | None = None
        if kind == "scene":
            cols = max(1, round(math.sqrt(tiles) * float(rng.uniform(0.7, 1.4))))
            rows = max(1, round(tiles / cols))
            width, height = (cols - 1) * _STRIDE + _TILE, (rows - 1) * _STRIDE + _TILE
            bbox = self._place(region, 0.03 + 0.05 * float(rng.random()), height / width)
        elif kind == "clip":
            width, height = 1280, 720
            placed = rng.random() < 0.6
            bbox = (
                self._place(region, 0.004 + 0.006 * float(rng.random()), 0.56) if placed else None
            )
        else:
            width, height = [(640, 480), (1024, 768), (4000, 3000)][int(rng.integers(3))]
        asset = _Asset(n, asset_id, kind, theme, width, height, bbox, time, status)
        self._asset_row(n, asset, region, tiles)
        if status != "registered":
            self._plan(asset, tiles)

    def _place(
        self, region: Region, width: float, aspect: float
    ) -> tuple[float, float, float, float]:
        """A box of ``width`` degrees of longitude somewhere in the region, as [w, s, e, n]."""
        east = region.east + 360 if region.west > region.east else region.east
        lat = float(self.rng.uniform(region.south, region.north))
        height = width * aspect * math.cos(math.radians(lat))
        lon = float(self.rng.uniform(region.west, east))
        west, east = lon - width / 2, lon + width / 2
        return (_wrap(west), lat - height / 2, _wrap(east), lat + height / 2)

    def _asset_row(self, n: int, asset: _Asset, region: Region, tiles: int) -> None:
        a, rng, kind = self.assets, self.rng, asset.kind
        month = datetime.fromtimestamp(asset.time, UTC).strftime("%Y/%m")
        ext = {"scene": "tif", "clip": "mp4", "image": "jpg"}[kind]
        folder = {"scene": "scenes", "clip": "drone", "image": "photos"}[kind]
        a["asset_id"].append(asset.asset_id)
        a["object_key"].append(f"{folder}/{region.name}/{month}/{kind}-{n:07d}.{ext}")
        a["version"].append(hashlib.md5(asset.asset_id.encode()).hexdigest())  # an eTag
        a["size_bytes"].append(int(asset.width * asset.height * float(rng.uniform(0.3, 3))))
        a["content_type"].append(
            {"scene": "image/tiff", "clip": "video/mp4", "image": "image/jpeg"}[kind]
        )
        a["media_format"].append({"scene": "geotiff", "clip": "mp4", "image": "jpeg"}[kind])
        a["width"].append(asset.width)
        a["height"].append(asset.height)
        a["status"].append(asset.status)
        a["tiles_planned"].append(None if asset.status == "registered" else tiles)
        a["event_time"].append(asset.time)
        a["created_at"].append(asset.time + 0.5)
        a["updated_at"].append(asset.time + 600.0)
        a["crs"].append(f"EPSG:{32600 + int(rng.integers(1, 60))}" if kind == "scene" else None)
        for name, value in zip(
            ("west", "south", "east", "north"), asset.bbox or (None,) * 4, strict=True
        ):
            a[name].append(value)
        clip = kind == "clip"
        duration = float(rng.uniform(10, 120)) if clip else None
        # filmed hours to days before the upload
        start = asset.time - float(rng.uniform(3600, 3 * 86400)) if clip else None
        a["duration_s"].append(duration)
        a["fps"].append(30.0 if clip else None)
        a["frame_count"].append(int(duration * 30) if duration else None)
        a["video_codec"].append("h264" if clip else None)
        a["start_time"].append(start)
        a["end_time"].append(start + duration if start is not None and duration else None)
        done = asset.status == "done"
        a["preview_key"].append(preview_key_for(uuid.UUID(asset.asset_id)) if done else None)

    def _plan(self, asset: _Asset, tiles: int) -> None:
        """The asset's work items and their results."""
        if asset.kind == "clip":
            for index in range(tiles):
                item = self.add_item(asset, "frame", index, (0, 0, asset.width, asset.height))
                if self.items["status"][item] == "done":
                    self._frame_tasks(item, asset)
            item = self.add_item(asset, "clip", 0, (0, 0, asset.width, asset.height))
            if self.items["status"][item] == "done":
                video = self.vocab[asset.theme].video
                self.add_result(
                    item,
                    asset,
                    TaskKind.VIDEO,
                    "briefly describe the video frame image",
                    video[int(self.rng.integers(len(video)))],
                )
            return
        cols = max(1, math.ceil((asset.width - _TILE) / _STRIDE) + 1)
        for index in range(tiles):
            col, row = index % cols, index // cols
            x, y = min(col * _STRIDE, max(asset.width - _TILE, 0)), row * _STRIDE
            window = (x, y, min(_TILE, asset.width), min(_TILE, max(asset.height - y, 1)))
            item = self.add_item(asset, "tile", index, window)
            if self.items["status"][item] == "done":
                self.tile_tasks(item, asset)
        if asset.kind == "scene":
            item = self.add_item(asset, "overview", 0, (0, 0, asset.width, asset.height))
            if self.items["status"][item] == "done":
                texts = self.vocab[asset.theme].descriptions
                self.add_result(
                    item,
                    asset,
                    TaskKind.DESCRIBE,
                    "Describe this image in detail.",
                    texts[int(self.rng.integers(len(texts)))],
                )

    def _frame_tasks(self, item: int, asset: _Asset) -> None:
        texts, theme = self.vocab[asset.theme], _THEMES[asset.theme]
        self.add_result(
            item,
            asset,
            TaskKind.CAPTION,
            "briefly describe the image",
            texts.captions[int(self.rng.integers(len(texts.captions)))],
        )
        phrase = theme.phrases[int(self.rng.integers(len(theme.phrases)))]
        self.add_result(item, asset, TaskKind.GROUNDING, phrase, "")


def _wrap(lon: float) -> float:
    return lon - 360 if lon > 180 else lon + 360 if lon < -180 else lon


# Box sides on the tile's 0-100 scale by phrase, (low, high) of a log-uniform draw; long thin
# things (roads, rivers, runways) get one long side.
_SIDES: dict[str, tuple[float, float]] = {
    "vehicle": (1.5, 4.0),
    "boat": (1.5, 6.0),
    "ship": (3.0, 20.0),
    "building": (3.0, 15.0),
    "storage tank": (2.0, 7.0),
    "swimming pool": (1.5, 4.0),
    "tennis court": (3.0, 6.0),
    "airplane": (4.0, 12.0),
    "tree": (2.0, 8.0),
    "crane": (3.0, 10.0),
    "solar panel": (5.0, 30.0),
    "field": (15.0, 50.0),
    "lake": (10.0, 60.0),
    "harbour": (30.0, 90.0),
    "beach": (20.0, 80.0),
}
_LONG = {"road", "river", "runway", "canal", "bridge"}


def _mean_tiles(kind: str, mean_results: float) -> float:
    """Poisson mean of a kind's extra tiles (or frames) for ``mean_results`` results per asset.

    A tile or photo has 3.5 results on average (a caption, 1.3 phrases, 1.2 questions); a scene
    adds its overview's description, a clip has 2 per frame plus its own caption.
    """
    if kind == "clip":
        return max(0.0, (mean_results - 1) / 2 - 1)
    if kind == "scene":
        return max(0.0, (mean_results - 1) / 3.5 - 1)
    return max(0.0, mean_results / 3.5 - 1)


def _build(assets: int, mean_results: float, seed: int) -> _Builder:
    builder = _Builder(seed)
    rng = builder.rng
    weights = np.array([r.weight for r in REGIONS], dtype=float)
    for n in range(assets):
        region = REGIONS[int(rng.choice(len(REGIONS), p=weights / weights.sum()))]
        kind = str(rng.choice(["scene", "image", "clip"], p=[0.45, 0.4, 0.15]))
        tiles = 1 + int(rng.poisson(_mean_tiles(kind, mean_results)))
        builder.add_asset(n, kind, region, tiles)
    return builder


def _keep(columns: dict[str, list[Any]], keep: np.ndarray) -> None:
    for name, values in columns.items():
        columns[name] = [values[i] for i in keep]


def synthesize(
    assets: int,
    results_per_asset: float,
    detections_per_result: float,
    seed: int = 0,
    embed: Embedder | None = None,
) -> SyntheticCatalog:
    """The rows of a synthetic catalog, deterministic for a seed.

    Exactly ``round(assets * results_per_asset)`` results and ``round(results *
    detections_per_result)`` detections.

    Args:
        assets: how many assets.
        results_per_asset: results per asset, on average.
        detections_per_result: detections per result, on average (all of them belong to
            grounding results, about a third of all).
        seed: the same seed gives the same rows.
        embed: the sentence model (texts -> unit vectors); default :func:`hashed_embeddings`.

    Returns:
        The rows, by table and column.
    """
    target = round(assets * results_per_asset)
    scale = 1.06  # a little over, then trimmed: statuses and the draws vary the count
    builder = _build(assets, results_per_asset * scale, seed)
    while len(builder.result_item) < target:
        scale *= 1.1
        builder = _build(assets, results_per_asset * scale, seed)
    drop_rng = np.random.default_rng([seed, 1])
    keep = np.sort(drop_rng.choice(len(builder.result_item), size=target, replace=False))
    _keep(builder.results, keep)
    builder.phrases = [builder.phrases[i] for i in keep]
    builder.result_item = [builder.result_item[i] for i in keep]
    detections = _detections(builder, round(target * detections_per_result), drop_rng)
    texts = builder.texts
    vectors = (embed or hashed_embeddings)(texts) if texts else np.zeros((0, _DIMENSIONS))
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(texts), _DIMENSIONS):
        raise ValueError(f"embed gave {vectors.shape}, expected ({len(texts)}, {_DIMENSIONS})")
    return SyntheticCatalog(
        seed=seed,
        texts=texts,
        embeddings=vectors,
        tasks=builder.tasks,
        assets=builder.assets,
        work_items=builder.items,
        results=builder.results,
        detections=detections,
    )


def _box_counts(grounding: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Boxes per grounding answer, summing to ``total``.

    At least one each when there are enough, heavy-tailed (a town tile has dozens of buildings).
    """
    if grounding == 0:
        return np.zeros(0, dtype=np.int64)
    if total < grounding:
        counts = np.zeros(grounding, dtype=np.int64)
        counts[rng.choice(grounding, size=total, replace=False)] = 1
        return counts
    weights = rng.lognormal(0.0, 0.8, size=grounding)
    return 1 + rng.multinomial(total - grounding, weights / weights.sum())


def _detections(builder: _Builder, total: int, rng: np.random.Generator) -> dict[str, list[Any]]:
    """The boxes of every grounding result, and the raw answer text and answer that hold them."""
    grounding = np.array([i for i, p in enumerate(builder.phrases) if p is not None], dtype=int)
    counts = _box_counts(len(grounding), total, rng)
    owner = np.repeat(grounding, counts)  # result row of each detection
    n = len(owner)
    ordinal = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    phrases = [builder.phrases[i] for i in owner]
    labels = [
        str(p).capitalize() if flip else str(p)
        for p, flip in zip(phrases, rng.random(n) < 0.05, strict=True)
    ]
    low = np.array([_SIDES.get(str(p), (3.0, 15.0))[0] for p in phrases])
    high = np.array([_SIDES.get(str(p), (3.0, 15.0))[1] for p in phrases])
    side_a = np.exp(rng.uniform(np.log(low), np.log(high)))
    side_b = side_a * rng.uniform(0.6, 1.4, size=n)
    long = np.array([p in _LONG for p in phrases])
    side_a[long] = rng.uniform(40, 100, size=int(long.sum()))
    side_b[long] = rng.uniform(2, 8, size=int(long.sum()))
    swap = rng.random(n) < 0.5
    w, h = np.where(swap, side_b, side_a), np.where(swap, side_a, side_b)
    cx, cy = rng.uniform(0, 100, size=n), rng.uniform(0, 100, size=n)
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    b = np.clip(np.rint(b), 0, 100).astype(int)
    b[:, 2] = np.maximum(b[:, 2], b[:, 0] + 1)
    b[:, 3] = np.maximum(b[:, 3], b[:, 1] + 1)
    b = np.clip(b, 0, 100)
    _fill_answers(builder, grounding, counts, labels, b)
    return _placed(builder, owner, ordinal, labels, b, rng)


def _fill_answers(
    builder: _Builder, grounding: np.ndarray, counts: np.ndarray, labels: list[str], b: np.ndarray
) -> None:
    """Each grounding result's raw text, as the model writes it, and its parsed answer."""
    r = builder.results
    start = 0
    for row, count in zip(grounding.tolist(), counts.tolist(), strict=True):
        phrase = builder.phrases[row]
        boxes = b[start : start + count].tolist()
        mine = labels[start : start + count]
        start += count
        if not boxes:
            r["raw_text"][row] = f"<p>{phrase}</p>"
            r["parsed"][row] = False
            continue
        r["raw_text"][row] = f"<p>{phrase}</p> " + "<delim>".join(
            "{" + "".join(f"<{v}>" for v in box) + "}" for box in boxes
        )
        r["answer"][row] = json.dumps(
            {
                "boxes": [
                    {"label": lb, "box_0_100": box} for lb, box in zip(mine, boxes, strict=True)
                ]
            }
        )


def _placed(
    builder: _Builder,
    owner: np.ndarray,
    ordinal: np.ndarray,
    labels: list[str],
    b: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, list[Any]]:
    """Detections in pixels of the whole image, and on the ground where the asset is placed."""
    items, assets = builder.items, builder.assets
    item = np.array(builder.result_item, dtype=int)[owner]
    arow = np.array(builder.item_asset, dtype=int)[item]
    tx, ty = np.array(items["px_x"])[item], np.array(items["px_y"])[item]
    tw, th = np.array(items["px_width"])[item], np.array(items["px_height"])[item]
    x1, y1 = tx + b[:, 0] * tw / 100, ty + b[:, 1] * th / 100
    x2, y2 = tx + b[:, 2] * tw / 100, ty + b[:, 3] * th / 100
    width = np.array(assets["width"], dtype=float)[arow]
    height = np.array(assets["height"], dtype=float)[arow]
    box = (
        np.array(
            [
                [np.nan if v is None else v for v in assets[c]]
                for c in ("west", "south", "east", "north")
            ]
        ).T[arow]
        if len(arow)
        else np.zeros((0, 4))
    )
    span = np.mod(box[:, 2] - box[:, 0], 360)
    west = _wrap_all(box[:, 0] + x1 / width * span)
    east = _wrap_all(box[:, 0] + x2 / width * span)
    north = box[:, 3] - y1 / height * (box[:, 3] - box[:, 1])
    south = box[:, 3] - y2 / height * (box[:, 3] - box[:, 1])
    centre_x, centre_y = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    centrality = 1 - np.maximum(abs(centre_x - 50), abs(centre_y - 50)) / 50
    scene = np.array([assets["media_format"][a] == "geotiff" for a in arow], dtype=bool)

    def column(values: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else round(v, 7) for v in values.tolist()]

    return {
        "result": owner.tolist(),
        "asset_id": [assets["asset_id"][a] for a in arow.tolist()],
        "label": labels,
        "ordinal": ordinal.tolist(),
        "x1": x1.tolist(),
        "y1": y1.tolist(),
        "x2": x2.tolist(),
        "y2": y2.tolist(),
        "west": column(west),
        "south": column(south),
        "east": column(east),
        "north": column(north),
        "centrality": np.round(centrality, 4).tolist(),
        # overlapping scene tiles see an object twice; suppression flags the copy
        "duplicate": (scene & (rng.random(len(owner)) < 0.03)).tolist(),
    }


def _wrap_all(lon: np.ndarray) -> np.ndarray:
    return np.where(lon > 180, lon - 360, lon)


def generate_catalog(
    engine_or_conn: postgres.Engine | postgres.Connection,
    assets: int,
    results_per_asset: float = 10.0,
    detections_per_result: float = 3.0,
    seed: int = 0,
    embed: Embedder | None = None,
    jitter: float = 0.01,
) -> SyntheticCatalog:
    """Make a synthetic catalog (:func:`synthesize`) and load it into the database.

    Args:
        engine_or_conn: an engine (the load is one transaction of its own) or a connection
            (the load joins its transaction; the caller commits).
        assets: how many assets.
        results_per_asset: results per asset, on average.
        detections_per_result: detections per result, on average.
        seed: the same seed gives the same rows.
        embed: the sentence model (texts -> unit vectors); default :func:`hashed_embeddings`.
        jitter: each row's embedding is its text's plus up to this much per component, then
            normalised (0: rows of one text share its vector).

    Returns:
        The rows loaded; ``results["result_id"]`` holds the ids they were given.
    """
    data = synthesize(assets, results_per_asset, detections_per_result, seed, embed)
    if isinstance(engine_or_conn, postgres.Engine):
        with engine_or_conn.begin() as conn:
            load(conn, data, jitter=jitter)
    else:
        load(engine_or_conn, data, jitter=jitter)
    return data
