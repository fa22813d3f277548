"""A procedural aerial world with exact ground truth, for training and evaluating skyeye-tiny.

:func:`render_scene` draws a top-down scene (land cover, water, roads, runways, piers and objects of
:data:`OBJECT_CLASSES`) and records what it drew: every object's pixel box and mask, the water mask
and the scene class. :func:`make_samples` turns that ground truth into SkyEyeGPT instructions and
answers (caption, ``[refer]``, ``[detection]``, ``[vqa]`` presence, counting and scene class).

``difficulty`` is the curriculum knob: 0 is a close-up view with a few large objects, 1 a wide
view with many small ones (the zoom and the object counts move together).

Seeds: a scene is a pure function of its seed (``numpy.random.default_rng(seed)``) and its
arguments. Training draws seeds from ``range(TRAINING_SEED_LIMIT)`` (below 10**9); the held-out
scenes of :func:`held_out_scenes` use seeds from ``EVAL_SEED_BASE`` (10**9) up, so no evaluation
scene is ever a training scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from skyeye.model import prompts
from skyeye.model.answers import SCALE, Box

__all__ = [
    "EVAL_SEEDS_PER_RUN",
    "EVAL_SEED_BASE",
    "MAX_DETECTION_BOXES",
    "OBJECT_CLASSES",
    "OBJECT_COLOURS",
    "SCENE_CLASSES",
    "TRAINING_SEED_LIMIT",
    "Sample",
    "Scene",
    "SceneObject",
    "caption",
    "held_out_scene_seeds",
    "held_out_scenes",
    "make_samples",
    "refer_expressions",
    "render_scene",
]

OBJECT_CLASSES = ("building", "vehicle", "ship", "aircraft", "storage tank")
SCENE_CLASSES = ("farmland", "forest", "lake", "river", "airport", "harbour", "residential")

TRAINING_SEED_LIMIT = 10**9
EVAL_SEED_BASE = 10**9
# Held-out scene i of evaluation seed s is EVAL_SEED_BASE + s * EVAL_SEEDS_PER_RUN + i, so two
# evaluation seeds never share a scene either.
EVAL_SEEDS_PER_RUN = 10**6

# A detection answer costs about 7 tokens a box; classes with more objects than this are not asked
# about, so that every answer fits the evaluator's generation budget.
MAX_DETECTION_BOXES = 10

_PLURALS = {
    "building": "buildings",
    "vehicle": "vehicles",
    "ship": "ships",
    "aircraft": "aircraft",
    "storage tank": "storage tanks",
}
_NUMBER_WORDS = {
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
}

# Objects per scene class: (fewest, most at difficulty 1).
_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    "farmland": {"building": (0, 5), "vehicle": (0, 4)},
    "forest": {"building": (0, 2), "vehicle": (0, 3)},
    "lake": {"ship": (1, 6), "building": (0, 6), "vehicle": (0, 3), "storage tank": (0, 2)},
    "river": {"ship": (0, 5), "building": (0, 6), "vehicle": (0, 5), "storage tank": (0, 3)},
    "airport": {"aircraft": (1, 10), "building": (0, 4), "vehicle": (0, 4), "storage tank": (0, 4)},
    "harbour": {"ship": (1, 12), "storage tank": (0, 10), "building": (0, 6), "vehicle": (0, 4)},
    "residential": {"building": (3, 30), "vehicle": (0, 12)},
}

_GRASS, _FOREST, _BARE, _FIELDS = 0, 1, 2, 3
_COVER_NAMES = {_GRASS: "grassland", _FOREST: "forest", _BARE: "bare land", _FIELDS: "farmland"}
# Row 3 of the land-cover colour table is the hedge between fields; parcels follow it.
_HEDGE = 3
_COVER_RGB = np.array(
    [[92, 132, 62], [38, 68, 36], [168, 146, 116], [58, 78, 44]], dtype=np.float32
)
_CROPS = np.array(
    [[104, 142, 58], [148, 162, 72], [192, 172, 104], [142, 112, 78], [120, 152, 84]],
    dtype=np.float32,
)
_WATER_DEEP = np.array([28, 58, 84], dtype=np.float32)
_WATER_SHALLOW = np.array([58, 98, 108], dtype=np.float32)
_SAND = np.array([196, 182, 146], dtype=np.float32)
_ASPHALT = np.array([112, 112, 110], dtype=np.float32)
_RUNWAY = np.array([92, 92, 94], dtype=np.float32)
_CONCRETE = np.array([170, 168, 160], dtype=np.float32)
_MARKING = np.array([235, 235, 230], dtype=np.float32)
_GLASS = np.array([34, 40, 50], dtype=np.float32)

_ROOFS = {
    "red": (178, 72, 52),
    "brown": (132, 96, 68),
    "orange": (204, 122, 60),
    "gray": (136, 136, 140),
    "white": (222, 222, 216),
    "blue": (72, 94, 134),
}
_GABLED = frozenset({"red", "brown", "orange"})
_CARS = {
    "white": (228, 228, 228),
    "black": (34, 34, 38),
    "red": (188, 36, 36),
    "blue": (40, 70, 170),
    "gray": (140, 142, 146),
    "yellow": (222, 196, 40),
}
_HULLS = {
    "white": (232, 232, 228),
    "gray": (132, 134, 138),
    "red": (168, 48, 44),
    "blue": (52, 72, 128),
}
_AIRFRAMES = {"white": (236, 236, 236), "gray": (168, 170, 174)}
_TANKS = {"white": (226, 226, 222), "gray": (160, 160, 158)}
# Every colour an object can have, as referring expressions name it.
OBJECT_COLOURS = tuple(sorted({*_ROOFS, *_CARS, *_HULLS, *_AIRFRAMES, *_TANKS}))

Layer = tuple[np.ndarray, np.ndarray]
Shape = Callable[[np.ndarray, np.ndarray], list[Layer]]


@dataclass(frozen=True)
class SceneObject:
    """One drawn object's ground truth: its class, pixel box, named colour and mask area."""

    kind: str
    # Pixels: x1, y1 inclusive, x2, y2 exclusive (the extent of the object's mask).
    box: tuple[int, int, int, int]
    colour: str
    rgb: tuple[int, int, int]
    area: int

    @property
    def centre(self) -> tuple[float, float]:
        """The middle of the pixel box (x, y), which positional expressions compare."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def model_box(self, width: int, height: int) -> Box:
        """The pixel box on the model's 0-100 scale, truncated as the answers state it."""
        return Box.from_pixels(*self.box, width, height)


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene and everything drawn in it, the ground truth its samples are made from."""

    image: np.ndarray  # (H, W, 3) uint8
    scene_class: str
    land_cover: str  # the dominant cover of the land: farmland, grassland, forest or bare land
    water_body: str | None  # lake, river, sea or None
    water: np.ndarray  # (H, W) bool, open water (piers and bridges excluded)
    instances: np.ndarray  # (H, W) int16: 0 nothing, k the mask of objects[k - 1]
    objects: tuple[SceneObject, ...]
    difficulty: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]

    def of_kind(self, kind: str) -> list[SceneObject]:
        """The objects of one class, in drawing order."""
        return [o for o in self.objects if o.kind == kind]

    def class_map(self) -> np.ndarray:
        """(H, W) uint8: 0 background, 1 + OBJECT_CLASSES.index(kind) on each object."""
        lookup = np.array(
            [0, *(1 + OBJECT_CLASSES.index(o.kind) for o in self.objects)], dtype=np.uint8
        )
        return lookup[self.instances]


@dataclass(frozen=True, eq=False)
class Sample:
    """One instruction about a scene's image and the true answer, as training and scoring use it."""

    image: np.ndarray
    instruction: str
    answer: str
    kind: str  # caption, refer, detection, presence, count or scene


@dataclass(frozen=True)
class _Road:
    x: float  # a point on the centre line
    y: float
    angle: float  # direction of travel, radians, image coordinates (x right, y down)
    half_width: float


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in about [0, 1] with features ``size / cells`` pixels wide."""
    grid = rng.random((max(cells, 2), max(cells, 2)), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) * rng.uniform(0.92, 1.08), 0, 255)


def _roof(length: float, width: float, rgb: np.ndarray, gabled: bool) -> Shape:
    def shape(u: np.ndarray, v: np.ndarray) -> list[Layer]:
        body = (np.abs(u) < length / 2) & (np.abs(v) < width / 2)
        if gabled:
            # The half turned away from the sun, split at the ridge along the long side.
            return [(body, rgb), (body & (v < 0), rgb * 0.8)]
        plant = (np.abs(u + length * 0.2) < length * 0.12) & (np.abs(v) < width * 0.22)
        return [(body, rgb), (body & plant, rgb * 0.7)]

    return shape


def _car(length: float, width: float, rgb: np.ndarray) -> Shape:
    def shape(u: np.ndarray, v: np.ndarray) -> list[Layer]:
        body = (np.abs(u) < length / 2) & (np.abs(v) < width / 2)
        glass = (np.abs(v) < width * 0.38) & (
            (np.abs(u - length * 0.16) < length * 0.08) | (np.abs(u + length * 0.3) < length * 0.05)
        )
        return [(body, rgb), (body & glass, _GLASS)]

    return shape


def _ship(length: float, width: float, rgb: np.ndarray) -> Shape:
    bow = length * 0.22

    def shape(u: np.ndarray, v: np.ndarray) -> list[Layer]:
        taper = np.minimum(1.0, (length / 2 - u) / bow)
        body = (u > -length / 2) & (np.abs(v) < width / 2 * taper)
        house = (np.abs(u + length * 0.22) < length * 0.12) & (np.abs(v) < width * 0.28)
        # The deck house contrasts with the hull: darker on a light hull, lighter on a dark one.
        tone = rgb * 0.75 if rgb.mean() > 128 else np.minimum(rgb * 1.6 + 40, 255)
        return [(body, rgb), (body & house, tone)]

    return shape


def _aircraft(length: float, span: float, rgb: np.ndarray) -> Shape:
    fuselage_half = length * 0.065
    chord = length * 0.2
    sweep = 0.45  # the wing's leading edge runs back 0.45 px per pixel of half-span

    def shape(u: np.ndarray, v: np.ndarray) -> list[Layer]:
        av = np.abs(v)
        nose = np.minimum(1.0, (length / 2 - u) / (2 * fuselage_half))
        fuselage = (u > -length / 2) & (av < fuselage_half * nose)
        wing_u = u - length * 0.05 + sweep * av
        wings = (av < span / 2) & (np.abs(wing_u) < chord / 2)
        tail_u = u + length * 0.4 + sweep * av
        tail = (av < span * 0.18) & (np.abs(tail_u) < chord * 0.3)
        body = fuselage | wings | tail
        return [(body, rgb * 0.93), (fuselage, rgb)]

    return shape


def _tank(radius: float, rgb: np.ndarray) -> Shape:
    def shape(u: np.ndarray, v: np.ndarray) -> list[Layer]:
        r2 = u * u + v * v
        body = r2 < radius * radius
        rim = body & (r2 > (radius * 0.82) ** 2)
        hatch = r2 < (radius * 0.15) ** 2
        return [(body, rgb), (rim, rgb * 0.8), (hatch, rgb * 0.72)]

    return shape


class _Canvas:
    """The scene being drawn: a float image plus the masks that decide where objects may go."""

    def __init__(self, rng: np.random.Generator, size: int, zoom: float) -> None:
        self.rng = rng
        self.size = size
        self.zoom = zoom
        self.axis = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
        self.image = np.zeros((size, size, 3), dtype=np.float32)
        self.cover = np.zeros((size, size), dtype=np.int8)
        self.water = np.zeros((size, size), dtype=bool)
        self.sand = np.zeros((size, size), dtype=bool)
        self.roads: list[_Road] = []
        self.road = np.zeros((size, size), dtype=bool)
        self.paved = np.zeros((size, size), dtype=bool)  # runway, taxiway, apron
        self.apron = np.zeros((size, size), dtype=bool)
        self.occupied = np.zeros((size, size), dtype=bool)
        self.instances = np.zeros((size, size), dtype=np.int16)
        self.objects: list[SceneObject] = []
        self.ship_heading: Callable[[float, float], float] | None = None
        self.fine = rng.random((size, size), dtype=np.float32)

    # -- land cover ---------------------------------------------------------------------------

    def land_cover(self, shares: dict[int, float], trees: bool = False) -> None:
        """Covers in about the given shares of the image; the first one is the ground."""
        rng, size, zoom = self.rng, self.size, self.zoom
        covers = iter(shares.items())
        self.cover = np.full((size, size), next(covers)[0], dtype=np.int8)
        # One noise field per cover makes patches; thresholding a single field would draw every
        # middle cover as a thin band around the others.
        for cover, share in covers:
            blob = _smooth_noise(rng, size, 4)
            # Quantile of a subsample: a full-image sort would cost more than the whole render.
            self.cover[blob > np.quantile(blob[::8, ::8], 1 - share)] = cover
        crowns = _smooth_noise(rng, size, round(size / (5 * zoom)))
        if trees:
            self.cover[(self.cover == _GRASS) & (crowns > 0.8)] = _FOREST

        # Fields: a patchwork of parcels, each with its crop colour and furrow direction.
        cols, col_cuts = self._parcels()
        rows, row_cuts = self._parcels()
        n_parcels = (len(col_cuts) + 1) * (len(row_cuts) + 1)
        hedge_half = 0.8 * zoom
        hedge = (np.abs(self.axis[:, None] - row_cuts[None, :]) < hedge_half).any(axis=1)[
            :, None
        ] | (np.abs(self.axis[:, None] - col_cuts[None, :]) < hedge_half).any(axis=1)[None, :]
        parcel = rows[:, None] * (len(col_cuts) + 1) + cols[None, :]
        fields = self.cover == _FIELDS
        ids = np.where(fields, np.where(hedge, _HEDGE, 4 + parcel), self.cover).astype(np.int16)

        n = 4 + n_parcels
        colours = np.empty((n, 3), dtype=np.float32)
        colours[:4] = _COVER_RGB * rng.uniform(0.9, 1.1, (4, 1))
        colours[4:] = _CROPS[rng.integers(0, len(_CROPS), n_parcels)] * rng.uniform(
            0.9, 1.1, (n_parcels, 1)
        )
        fine_amp = np.array([22, 12, 26, 10, *[10] * n_parcels], dtype=np.float32)
        crown_amp = np.array([14, 80, 10, 20, *[0] * n_parcels], dtype=np.float32)
        stripe_amp = np.zeros(n, dtype=np.float32)
        stripe_amp[4:] = rng.uniform(0, 14, n_parcels)
        stripe_freq = np.ones(n, dtype=np.float32)
        stripe_freq[4:] = 2 * np.pi / (rng.uniform(3, 6, n_parcels) * zoom)
        across = rng.random(n) < 0.5

        gain = 1 + 0.16 * (_smooth_noise(rng, size, 6) - 0.5)
        luminance = fine_amp[ids] * (self.fine - 0.5) + crown_amp[ids] * (crowns - 0.5)
        if fields.any():
            coordinate = np.where(across[ids], self.axis[:, None], self.axis[None, :])
            luminance += stripe_amp[ids] * np.sin(coordinate * stripe_freq[ids])
        # np.take is several times faster than fancy indexing for a row lookup.
        self.image = np.take(colours, ids, axis=0)
        self.image *= gain[:, :, None]
        self.image += luminance[:, :, None]

    def _parcels(self) -> tuple[np.ndarray, np.ndarray]:
        """Parcel index of every column (or row) and the cut positions between parcels."""
        count = max(2, round(self.size / (self.rng.uniform(70, 140) * self.zoom)))
        widths = self.rng.uniform(0.6, 1.4, count)
        cuts = (np.cumsum(widths)[:-1] / widths.sum() * self.size).astype(np.float32)
        return np.searchsorted(cuts, self.axis), cuts

    def dominant_cover(self) -> str:
        land = ~(self.water | self.road | self.paved)[::4, ::4]
        counts = np.bincount(self.cover[::4, ::4][land], minlength=4)
        return _COVER_NAMES[int(counts.argmax())]

    # -- water --------------------------------------------------------------------------------

    def lake(self) -> None:
        rng, size = self.rng, self.size
        cx, cy = size * rng.uniform(0.44, 0.56, 2)
        rx, ry = size * rng.uniform(0.16, 0.26, 2)
        angle = rng.uniform(0, np.pi)
        dx = self.axis[None, :] - cx
        dy = self.axis[:, None] - cy
        c, s = math.cos(angle), math.sin(angle)
        # Radius 1 at the shore, wobbled by low-frequency noise; the bounds keep it off the edges.
        rho = np.sqrt(((dx * c + dy * s) / rx) ** 2 + ((dy * c - dx * s) / ry) ** 2)
        level = rho - 1 + 0.4 * (_smooth_noise(rng, size, 5) - 0.5)
        self._water(level * min(rx, ry), sand=3 * self.zoom)
        self.ship_heading = lambda x, y: rng.uniform(0, 2 * np.pi)

    def river(self) -> None:
        rng, size, zoom = self.rng, self.size, self.zoom
        t = self.axis
        wavenumber = 2 * np.pi / (size * rng.uniform(0.8, 2.0))
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = size * rng.uniform(0.03, 0.12)
        centre = size * rng.uniform(0.35, 0.65) + amplitude * np.sin(wavenumber * t + phase)
        half = zoom * rng.uniform(10, 22) * (1 + 0.15 * np.sin(2 * np.pi * t / (size * 0.7)))
        vertical = bool(rng.random() < 0.5)
        if vertical:  # x = centre(y)
            level = np.abs(self.axis[None, :] - centre[:, None]) - half[:, None]
        else:  # y = centre(x)
            level = np.abs(self.axis[:, None] - centre[None, :]) - half[None, :]
        self._water(level, sand=2 * zoom)

        def heading(x: float, y: float) -> float:
            along = y if vertical else x
            slope = amplitude * wavenumber * math.cos(wavenumber * along + phase)
            forward = math.atan2(1, slope) if vertical else math.atan2(slope, 1)
            return forward + np.pi * float(rng.random() < 0.5)

        self.ship_heading = heading
        # A bridge: a road across the river.
        self.add_road(size * rng.uniform(0.25, 0.75), 0.0 if vertical else np.pi / 2)

    def sea(self) -> tuple[float, int]:
        """Sea along one side; returns where the coast is (pixels from that side) and the side."""
        rng, size, zoom = self.rng, self.size, self.zoom
        side = int(rng.integers(0, 4))  # sea on the left, right, top, bottom
        inland = self.axis if side in (0, 2) else size - self.axis
        coast = size * rng.uniform(0.3, 0.5)
        level = (inland - coast).astype(np.float32)
        grid = level[None, :] if side < 2 else level[:, None]
        self._water(np.broadcast_to(grid, (size, size)), sand=0)
        # Piers run from the coast into the sea.
        along = self.axis
        for _ in range(int(rng.integers(1, 4))):
            at = size * rng.uniform(0.1, 0.9)
            reach = coast * rng.uniform(0.3, 0.7)
            run = np.abs(along - at) < 3.5 * zoom
            out = (inland > coast - reach) & (inland < coast + 1)
            pier = run[:, None] & out[None, :] if side < 2 else out[:, None] & run[None, :]
            self.paved |= pier
            self.water &= ~pier
            self.image[pier] = _CONCRETE
        normal = 0.0 if side < 2 else np.pi / 2
        self.ship_heading = lambda x, y: (
            normal + np.pi * float(rng.random() < 0.5)
            if rng.random() < 0.5
            else rng.uniform(0, 2 * np.pi)
        )
        return coast, side

    def _water(self, level: np.ndarray, sand: float) -> None:
        """Water where ``level < 0`` (level is about the distance to the shore in pixels)."""
        self.water = level < 0
        shore = (level >= 0) & (level < sand)
        self.sand = shore
        depth = np.clip(-level[self.water] / (12 * self.zoom), 0, 1)[:, None]
        ripple = (self.fine[self.water] - 0.5)[:, None] * 6
        self.image[self.water] = _WATER_SHALLOW + (_WATER_DEEP - _WATER_SHALLOW) * depth + ripple
        self.image[shore] = _SAND + (self.fine[shore] - 0.5)[:, None] * 16

    # -- roads and airfields ------------------------------------------------------------------

    def add_road(self, offset: float, angle: float) -> None:
        """A straight road across the image; ``offset`` is where it crosses the middle line."""
        half = 6 * self.zoom
        mid = self.size / 2
        # Horizontal roads are placed by their y, vertical ones by their x.
        x, y = (mid, offset) if abs(math.cos(angle)) > 0.5 else (offset, mid)
        road = _Road(x, y, angle, half)
        across = -(self.axis[None, :] - x) * math.sin(angle) + (self.axis[:, None] - y) * math.cos(
            angle
        )
        mask = np.abs(across) < half
        self.roads.append(road)
        self.road |= mask
        # Roads cross rivers on bridges, so ships stay off them.
        self.water &= ~mask
        self.image[mask] = _ASPHALT + (self.fine[mask] - 0.5)[:, None] * 10

    def airfield(self) -> None:
        rng, size, zoom = self.rng, self.size, self.zoom
        vertical = bool(rng.random() < 0.5)
        half = 14 * zoom
        low_side = bool(rng.random() < 0.5)
        centre = size * (rng.uniform(0.18, 0.3) if low_side else rng.uniform(0.7, 0.82))
        across, along = self.axis, self.axis
        runway = np.abs(across - centre) < half
        # The apron lies beside the runway, towards the middle of the image.
        sign = 1 if low_side else -1
        near = centre + sign * (half + 10 * zoom)
        depth = size * rng.uniform(0.28, 0.4)
        lo, hi = sorted((near, near + sign * depth))
        apron_across = (across > lo) & (across < hi)
        start = size * rng.uniform(0.05, 0.3)
        apron_along = (along > start) & (along < start + size * rng.uniform(0.5, 0.65))
        taxi_at = start + size * 0.1
        taxi_across = (across - centre) * sign > 0
        taxi_across &= (across - centre) * sign < half + 10 * zoom + 1
        taxi_along = np.abs(along - taxi_at) < 6 * zoom
        dash = (along / (24 * zoom)) % 1 < 0.5
        centreline = np.abs(across - centre) < 0.8 * zoom
        edges = np.abs(np.abs(across - centre) - (half - 2 * zoom)) < 0.7 * zoom

        def grid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            # a varies across the runway, b along it
            return b[:, None] & a[None, :] if vertical else a[:, None] & b[None, :]

        everywhere = np.ones(size, dtype=bool)
        runway_mask = grid(runway, everywhere)
        apron = grid(apron_across, apron_along)
        taxiway = grid(taxi_across, taxi_along)
        markings = grid(centreline, dash) | grid(edges, everywhere)
        self.image[runway_mask | taxiway] = _RUNWAY
        self.image[apron] = _CONCRETE * 0.95 + (self.fine[apron] - 0.5)[:, None] * 8
        self.image[markings] = _MARKING
        self.paved |= runway_mask | taxiway | apron
        self.apron = apron
        # A service road beyond the apron.
        far = hi + 14 * zoom if sign > 0 else lo - 14 * zoom
        if 12 * zoom < far < size - 12 * zoom:
            self.add_road(far, np.pi / 2 if vertical else 0.0)

    # -- objects ------------------------------------------------------------------------------

    def _frame(
        self, cx: float, cy: float, angle: float, half: float
    ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
        """The window around a centre and local coordinates: u along ``angle``, v across it."""
        x0, y0 = math.floor(cx - half), math.floor(cy - half)
        x1, y1 = math.ceil(cx + half) + 1, math.ceil(cy + half) + 1
        # Objects are wholly inside the image, so no box is cut by the border.
        if x0 < 0 or y0 < 0 or x1 > self.size or y1 > self.size:
            return None
        dx = self.axis[x0:x1] - cx
        dy = self.axis[y0:y1] - cy
        c, s = math.cos(angle), math.sin(angle)
        u = dx[None, :] * c + dy[:, None] * s
        v = dy[:, None] * c - dx[None, :] * s
        return slice(y0, y1), slice(x0, x1), u, v

    def place(
        self,
        kind: str,
        colour: str,
        rgb: np.ndarray,
        shape: Shape,
        centre: tuple[float, float],
        angle: float,
        half: float,
        allowed: np.ndarray,
        shadow: float = 0.0,
    ) -> bool:
        """Draw the object if it fits: inside the image, on allowed ground, clear of others."""
        frame = self._frame(*centre, angle, half + shadow)
        if frame is None:
            return False
        ys, xs, u, v = frame
        layers = shape(u, v)
        body = layers[0][0]
        rows = np.flatnonzero(body.any(axis=1))
        cols = np.flatnonzero(body.any(axis=0))
        # At least 1/100 of the image a side, or the box on the 0-100 scale could collapse to a
        # line and not even the true answer would overlap it.
        smallest = math.ceil(self.size / SCALE)
        if rows.size < smallest or cols.size < smallest:
            return False
        # A body touching the window's edge may have been cut by it: never draw half an object.
        if 0 in (rows[0], cols[0]) or rows[-1] == u.shape[0] - 1 or cols[-1] == u.shape[1] - 1:
            return False
        x1, x2 = xs.start + int(cols[0]), xs.start + int(cols[-1]) + 1
        y1, y2 = ys.start + int(rows[0]), ys.start + int(rows[-1]) + 1
        gap = max(2, round(2 * self.zoom))
        if self.occupied[max(0, y1 - gap) : y2 + gap, max(0, x1 - gap) : x2 + gap].any():
            return False
        if not allowed[ys, xs][body].all():
            return False
        image = self.image[ys, xs]
        if shadow:
            # Sun from the top left: the shadow falls to the bottom right.
            c, s = math.cos(angle), math.sin(angle)
            du, dv = shadow * (c + s), shadow * (c - s)
            cast = shape(u - du, v - dv)[0][0] & ~body & ~self.occupied[ys, xs]
            image[cast] *= 0.55
        for mask, tone in layers:
            image[mask] = tone
        self.occupied[ys, xs] |= body
        self.instances[ys, xs][body] = len(self.objects) + 1
        self.objects.append(
            SceneObject(
                kind=kind,
                box=(x1, y1, x2, y2),
                colour=colour,
                rgb=(int(rgb[0]), int(rgb[1]), int(rgb[2])),
                area=int(body.sum()),
            )
        )
        return True

    def _spots(self, allowed: np.ndarray) -> np.ndarray:
        return np.flatnonzero(allowed[::2, ::2])

    def _random_spot(self, spots: np.ndarray) -> tuple[float, float]:
        index = int(spots[self.rng.integers(0, spots.size)])
        half = (self.size + 1) // 2
        row, col = divmod(index, half)
        return 2 * col + self.rng.uniform(0, 2), 2 * row + self.rng.uniform(0, 2)

    def land(self) -> np.ndarray:
        return ~(self.water | self.sand | self.road | self.paved)

    def _fill(self, count: int, attempt: Callable[[], bool]) -> None:
        """Calls ``attempt`` until ``count`` objects stand, giving up after 12 tries an object."""
        placed = 0
        for _ in range(12 * count):
            if placed == count:
                return
            placed += attempt()

    def buildings(self, count: int) -> None:
        allowed = self.land()
        spots = self._spots(allowed)
        if not spots.size:
            return

        def attempt() -> bool:
            colour = str(self.rng.choice(list(_ROOFS)))
            length = self.rng.uniform(14, 30) * self.zoom
            width = self.rng.uniform(0.55, 0.85) * length
            angle = float(self.rng.integers(0, 2)) * np.pi / 2
            rgb = _jitter(self.rng, _ROOFS[colour])
            shape = _roof(length, width, rgb, colour in _GABLED)
            half = 0.5 * math.hypot(length, width) + 1
            centre = self._random_spot(spots)
            return self.place(
                "building", colour, rgb, shape, centre, angle, half, allowed, shadow=0.18 * width
            )

        self._fill(count, attempt)

    def storage_tanks(self, count: int) -> None:
        allowed = self.land()
        spots = self._spots(allowed)
        if not spots.size:
            return
        # Tanks stand in a tank farm: a cluster around one spot.
        cx, cy = self._random_spot(spots)

        def attempt() -> bool:
            colour = str(self.rng.choice(list(_TANKS)))
            radius = self.rng.uniform(6, 12) * self.zoom
            spread = self.rng.uniform(2, 5) * radius
            centre = (cx + self.rng.normal(0, spread), cy + self.rng.normal(0, spread))
            rgb = _jitter(self.rng, _TANKS[colour])
            shape = _tank(radius, rgb)
            return self.place(
                "storage tank",
                colour,
                rgb,
                shape,
                centre,
                0.0,
                radius + 1,
                allowed,
                shadow=0.3 * radius,
            )

        self._fill(count, attempt)

    def vehicles(self, count: int) -> None:
        if not self.roads:
            return

        def attempt() -> bool:
            road = self.roads[int(self.rng.integers(0, len(self.roads)))]
            colour = str(self.rng.choice(list(_CARS)))
            length = self.rng.uniform(10, 13) * self.zoom
            width = self.rng.uniform(0.48, 0.55) * length
            # Drive on the right: the lane decides the heading.
            lane = 1 if self.rng.random() < 0.5 else -1
            angle = road.angle + (0 if lane > 0 else np.pi)
            t = self.rng.uniform(-0.75, 0.75) * self.size
            offset = lane * road.half_width / 2
            c, s = math.cos(road.angle), math.sin(road.angle)
            centre = (road.x + t * c - offset * s, road.y + t * s + offset * c)
            rgb = _jitter(self.rng, _CARS[colour])
            half = 0.5 * math.hypot(length, width) + 1
            return self.place(
                "vehicle",
                colour,
                rgb,
                _car(length, width, rgb),
                centre,
                angle,
                half,
                self.road,
                shadow=0.8 * self.zoom,
            )

        self._fill(count, attempt)

    def ships(self, count: int) -> None:
        spots = self._spots(self.water)
        heading = self.ship_heading
        if heading is None or not spots.size:
            return

        def attempt() -> bool:
            colour = str(self.rng.choice(list(_HULLS)))
            length = self.rng.uniform(18, 36) * self.zoom
            width = self.rng.uniform(0.22, 0.3) * length
            centre = self._random_spot(spots)
            rgb = _jitter(self.rng, _HULLS[colour])
            half = 0.5 * math.hypot(length, width) + 1
            shape = _ship(length, width, rgb)
            # No shadow: a hull sits too low in the water to cast one worth drawing.
            return self.place(
                "ship", colour, rgb, shape, centre, heading(*centre), half, self.water
            )

        self._fill(count, attempt)

    def aircraft(self, count: int) -> None:
        spots = self._spots(self.apron)
        if not spots.size:
            return

        def attempt() -> bool:
            colour = str(self.rng.choice(list(_AIRFRAMES)))
            length = self.rng.uniform(26, 42) * self.zoom
            span = self.rng.uniform(0.85, 1.05) * length
            rgb = _jitter(self.rng, _AIRFRAMES[colour])
            # Swept wing tips and tailplane reach 0.57 of the larger of length and span.
            half = 0.6 * max(length, span) + 1
            angle = self.rng.uniform(0, 2 * np.pi)
            return self.place(
                "aircraft",
                colour,
                rgb,
                _aircraft(length, span, rgb),
                self._random_spot(spots),
                angle,
                half,
                self.paved,
                shadow=1.5 * self.zoom,
            )

        self._fill(count, attempt)


def render_scene(
    rng: np.random.Generator | int,
    size: int = 448,
    difficulty: float = 0.5,
    scene_class: str | None = None,
) -> Scene:
    """One scene; ``scene_class`` None draws it uniformly from :data:`SCENE_CLASSES`."""
    if not 0 <= difficulty <= 1:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if scene_class is not None and scene_class not in SCENE_CLASSES:
        raise ValueError(f"unknown scene class {scene_class!r}; one of {SCENE_CLASSES}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if scene_class is None:
        scene_class = SCENE_CLASSES[int(rng.integers(0, len(SCENE_CLASSES)))]
    # Sizes below are in pixels of a 448 px view at zoom 1; zoom 2.5 is the close-up.
    zoom = (1 + 1.5 * (1 - difficulty)) * size / 448
    canvas = _Canvas(rng, size, zoom)
    water_body = _draw_layout(canvas, scene_class)

    share = 0.2 + 0.8 * difficulty
    counts = {
        kind: int(rng.integers(low, max(low, round(high * share)) + 1))
        for kind, (low, high) in _COUNTS[scene_class].items()
    }
    # Bulky, picky objects first, so that cars and buildings do not take their only places.
    canvas.aircraft(counts.get("aircraft", 0))
    canvas.ships(counts.get("ship", 0))
    canvas.storage_tanks(counts.get("storage tank", 0))
    canvas.buildings(counts.get("building", 0))
    canvas.vehicles(counts.get("vehicle", 0))

    image = canvas.image + (canvas.fine.T[:, :, None] - 0.5) * 6
    return Scene(
        image=np.clip(image, 0, 255).astype(np.uint8),
        scene_class=scene_class,
        land_cover=canvas.dominant_cover(),
        water_body=water_body,
        water=canvas.water,
        instances=canvas.instances,
        objects=tuple(canvas.objects),
        difficulty=float(difficulty),
    )


def _draw_layout(canvas: _Canvas, scene_class: str) -> str | None:
    """Land cover, water and infrastructure of the scene class; returns the water body."""
    rng, size = canvas.rng, canvas.size
    if scene_class == "farmland":
        share = rng.uniform(0.8, 1.0)
        canvas.land_cover({_FIELDS: share, _FOREST: 1 - share})
        if rng.random() < 0.7:
            canvas.add_road(size * rng.uniform(0.2, 0.8), float(rng.integers(0, 2)) * np.pi / 2)
        return None
    if scene_class == "forest":
        share = rng.uniform(0.78, 0.95)
        canvas.land_cover({_FOREST: share, _GRASS: 1 - share})
        if rng.random() < 0.6:
            canvas.add_road(size * rng.uniform(0.2, 0.8), float(rng.integers(0, 2)) * np.pi / 2)
        return None
    if scene_class == "residential":
        canvas.land_cover({_GRASS: 1.0}, trees=True)
        spacing = size * rng.uniform(0.25, 0.45)
        for angle in (0.0, np.pi / 2):
            offset = rng.uniform(0.1, 0.6) * spacing
            while offset < size:
                canvas.add_road(offset, angle)
                offset += spacing * rng.uniform(0.85, 1.15)
        return None
    if scene_class == "airport":
        share = rng.uniform(0.6, 0.9)
        canvas.land_cover({_GRASS: share, _BARE: 1 - share})
        canvas.airfield()
        return None
    if scene_class == "harbour":
        share = rng.uniform(0.7, 0.95)
        canvas.land_cover({_BARE: share, _GRASS: 1 - share})
        coast, side = canvas.sea()
        road_at = coast + rng.uniform(20, 40) * canvas.zoom
        if road_at < size - 10 * canvas.zoom:
            # Parallel to the coast, on land.
            offset = road_at if side in (0, 2) else size - road_at
            canvas.add_road(offset, np.pi / 2 if side < 2 else 0.0)
        return "sea"
    # Lake and river: a mix of covers around the water.
    covers = [_FIELDS, _GRASS, _FOREST]
    dominant = covers.pop(int(rng.integers(0, 3)))
    share = rng.uniform(0.6, 0.85)
    rest = rng.uniform(0.2, 0.8)
    canvas.land_cover(
        {dominant: share, covers[0]: (1 - share) * rest, covers[1]: (1 - share) * (1 - rest)}
    )
    if scene_class == "lake":
        canvas.lake()
        return "lake"
    canvas.river()
    return "river"


# -- questions and answers --------------------------------------------------------------------


def _count_phrase(kind: str, n: int) -> str:
    if n == 1:
        return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
    word = _NUMBER_WORDS.get(n, "many")
    return f"{word} {_PLURALS[kind]}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


_HEADS = {
    "farmland": "farmland",
    "forest": "a dense forest",
    "residential": "a residential area",
    "airport": "an airport",
    "harbour": "a harbour",
}


def caption(scene: Scene) -> str:
    """The templated caption: "an aerial image of farmland with a river and three buildings"."""
    head = _HEADS.get(scene.scene_class, scene.land_cover)
    extras = [f"a {scene.water_body}"] if scene.scene_class in ("lake", "river") else []
    extras += [_count_phrase(kind, n) for kind in OBJECT_CLASSES if (n := len(scene.of_kind(kind)))]
    text = f"an aerial image of {head}"
    return f"{text} with {_join(extras)}" if extras else text


def refer_expressions(scene: Scene) -> list[tuple[str, SceneObject]]:
    """Expressions that pick out exactly one object, each with that object.

    An extreme (size or position) counts only with a clear margin over the runner-up, so that a
    human looking at the image would agree on the object.
    """
    width, height = scene.size
    found: list[tuple[str, SceneObject]] = []
    for kind in OBJECT_CLASSES:
        group = scene.of_kind(kind)
        if not group:
            continue
        if len(group) == 1:
            found.append((f"the {kind}", group[0]))
        else:
            by_area = sorted(group, key=lambda o: o.area)
            if by_area[-1].area >= 1.5 * by_area[-2].area:
                found.append((f"the largest {kind}", by_area[-1]))
            if by_area[1].area >= 1.5 * by_area[0].area:
                found.append((f"the smallest {kind}", by_area[0]))
            far = "far " if len(group) > 2 else ""
            for axis, extent, low, high in (
                (0, width, f"on the {far}left", f"on the {far}right"),
                (1, height, "at the top", "at the bottom"),
            ):
                ordered = sorted(group, key=lambda o: o.centre[axis])
                margin = 0.1 * extent
                if ordered[1].centre[axis] - ordered[0].centre[axis] >= margin:
                    found.append((f"the {kind} {low}", ordered[0]))
                if ordered[-1].centre[axis] - ordered[-2].centre[axis] >= margin:
                    found.append((f"the {kind} {high}", ordered[-1]))
        colours = [o.colour for o in group]
        found += [(f"the {o.colour} {kind}", o) for o in group if colours.count(o.colour) == 1]
    return found


def _reading_order(objects: list[SceneObject]) -> list[SceneObject]:
    return sorted(objects, key=lambda o: (o.box[1], o.box[0]))


def make_samples(scene: Scene) -> list[Sample]:
    """Every question the ground truth answers, in a fixed order (see the module docstring)."""
    width, height = scene.size
    image = scene.image
    samples = [Sample(image, prompts.caption(), caption(scene), "caption")]
    samples += [
        Sample(image, prompts.refer(text), str(obj.model_box(width, height)), "refer")
        for text, obj in refer_expressions(scene)
    ]
    for kind in OBJECT_CLASSES:
        group = scene.of_kind(kind)
        if 0 < len(group) <= MAX_DETECTION_BOXES:
            boxes = "<delim>".join(str(o.model_box(width, height)) for o in _reading_order(group))
            samples.append(
                Sample(image, prompts.detection(kind), f"<p>{kind}</p> {boxes}", "detection")
            )
    for kind in OBJECT_CLASSES:
        article = "an" if kind[0] in "aeiou" else "a"
        present = "yes" if scene.of_kind(kind) else "no"
        samples.append(
            Sample(
                image, prompts.vqa(f"Is there {article} {kind} in the image?"), present, "presence"
            )
        )
    samples.append(
        Sample(
            image,
            prompts.vqa("Is there any water in the image?"),
            "yes" if scene.water_body else "no",
            "presence",
        )
    )
    for kind in OBJECT_CLASSES:
        if n := len(scene.of_kind(kind)):
            question = prompts.vqa(f"How many {_PLURALS[kind]} are there?")
            samples.append(Sample(image, question, str(n), "count"))
    samples.append(Sample(image, prompts.classify(SCENE_CLASSES), scene.scene_class, "scene"))
    return samples


def held_out_scene_seeds(n: int, seed: int) -> list[int]:
    """Seeds of the held-out scenes: all at or above EVAL_SEED_BASE, never a training seed."""
    if not 0 <= n <= EVAL_SEEDS_PER_RUN:
        raise ValueError(f"n must be in [0, {EVAL_SEEDS_PER_RUN}], got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [EVAL_SEED_BASE + seed * EVAL_SEEDS_PER_RUN + i for i in range(n)]


def held_out_scenes(
    n: int, seed: int, size: int = 448, difficulty: float | None = None
) -> Iterator[Scene]:
    """Evaluation scenes, rendered one at a time as they are consumed.

    ``difficulty`` None spreads them evenly over [0, 1], from easy to hard.
    """
    for i, scene_seed in enumerate(held_out_scene_seeds(n, seed)):
        spread = i / (n - 1) if n > 1 else 0.5
        yield render_scene(
            scene_seed, size=size, difficulty=spread if difficulty is None else difficulty
        )
