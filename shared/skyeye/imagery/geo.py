"""Georeferenced scenes: tile plans over large rasters, windowed tile reads, lon/lat footprints.

A scene is any raster GDAL opens (GeoTIFF, COG; any size, dtype and band count). It is cut into
model-sized tiles at a target ground sample distance, each tile read on its own through a
rasterio window so memory stays per tile, and every box the model draws on a tile is mapped back
to scene pixels (to merge duplicates across overlapping tiles) and to an EPSG:4326 polygon.
Memory stays per tile only if GDAL's block cache is bounded too (``GDAL_CACHEMAX``, 5 % of RAM
by default, would otherwise keep every decoded block of a scene): a couple of block rows, e.g.
64 MB for a 20,000 px wide scene in 512 px blocks, keeps reads from decoding a block twice.

Decisions, documented once here:

- **Edge tiles are shifted inside**, never padded: along each axis the last window ends on the
  scene's edge, so it overlaps its neighbour by more than ``overlap``. Every tile is full of
  scene pixels and has the same output size; the extra overlap costs some duplicate detections,
  which :func:`merge_detections` removes. A scene smaller than one tile along an axis gives a
  single tile spanning that axis, with a proportionally smaller output size (not padded).
- **Resolution**: a scene finer than ``target_gsd`` is read through a larger source window
  resampled down (average); a scene coarser than it is read at its native resolution, never
  upsampled. The plan names the coarsest overview that still holds at least the target detail.
  The read itself leaves the choice to GDAL (a read of fewer pixels than its window is served
  from an overview), which agrees with the plan except within a few percent below an overview's
  factor, where GDAL 3.10 with average resampling already takes that slightly coarser overview.
- **Overview**: the whole scene as one tile (:func:`overview_tile`), read straight into at most
  the tile size on its long side, aspect kept, so it is never held at full resolution; GDAL
  serves the read from an overview where the scene has them. It is not letterboxed: the model's
  preprocessing squashes every image to a square (MiniGPT-v2's eval transform, no padding), as
  it does a non-square tile or photo, and padding would show it borders it was never trained on.
- **Stretch default** (:func:`default_stretch`): 8-bit scenes are used as they are (0-255);
  anything else gets a per-band 2-98 percentile stretch computed once per scene from a coarse
  read (an overview where there is one). ``Stretch.fixed(0, 3000)`` is the fixed alternative for
  Sentinel-2 L2A reflectance (``Stretch.fixed(1000, 4000)`` for processing baseline 04.00 and
  later, whose digital numbers carry a +1000 offset).
- **Footprints on the globe** (:func:`lon_lat_footprint`): a place is refused as
  :class:`InvalidGeoreference` when PROJ cannot transform its CRS to lon/lat, when a point comes
  out non-finite or does not transform back to itself (outside the projection's domain, where
  PROJ would wrap it silently), or when a latitude lies beyond +/-90 or a longitude beyond
  +/-360 (longitudes past 180 are how a geographic scene across the antimeridian is written, e.g.
  179.5..180.5; anything farther is not a place). A footprint across the antimeridian is split
  into a MultiPolygon there (RFC 7946 section 3.1.9, by the ``antimeridian`` package) and its
  bbox has west > east; one around a pole keeps one polygon reaching the pole, its bbox spanning
  -180..180.
- **Duplicate rule** (:func:`merge_detections`): per label, greedy non-maximum suppression on
  IoU in scene pixels; the highest score wins, and boxes without a score rank below scored ones
  and among themselves by how central they sit in their tile (a box near a tile edge is more
  likely cut by it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import antimeridian
import numpy as np
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError, CPLE_NotSupportedError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.io import DatasetReaderBase
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from skyeye.contracts import Tile
from skyeye.imagery.images import fit_size

__all__ = [
    "DEFAULT_TILE_SIZE",
    "Footprint",
    "GeoTile",
    "InvalidGeoreference",
    "SceneDetection",
    "SceneMeta",
    "Stretch",
    "box_outline",
    "default_stretch",
    "footprint",
    "has_data",
    "lon_lat_footprint",
    "merge_detections",
    "overview_tile",
    "percentile_stretch",
    "plan_tiles",
    "read_tile",
    "scene_detection",
    "scene_footprint",
    "select_bands",
    "tile_at",
    "tile_count",
    "union_bbox",
]

DEFAULT_TILE_SIZE = 448
WGS84 = CRS.from_epsg(4326)
# The model's box scale (skyeye.model.answers.SCALE), repeated so this module stays free of torch.
_BOX_SCALE = 100
# Length of one degree of latitude, and of longitude at the equator, on the WGS84 ellipsoid:
# close enough to turn a geographic scene's pixel size into metres for choosing a resolution.
_METRES_PER_DEGREE_LAT = 110_574.0
_METRES_PER_DEGREE_LON = 111_320.0
# Names under which multispectral products label their red, green and blue bands (Sentinel-2 and
# Landsat 8/9 band numbers after normalisation, see _band_name).
_RGB_NAMES = (("red", "b4"), ("green", "b3"), ("blue", "b2"))
# Latitudes PROJ gives a hair past a pole are the pole.
_LAT_TOLERANCE = 1e-9
# How far a point may land from itself after a round trip through lon/lat, as a fraction of its
# largest coordinate: 1 ppm is 5 m in UTM, where a projection that wraps is off by thousands of km.
_ROUND_TRIP_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SceneMeta:
    """What planning needs of a raster, taken from its header: no pixels are read."""

    width: int
    height: int
    transform: Affine
    crs: CRS | None
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    colorinterp: tuple[ColorInterp, ...]
    # decimation factors of band 1's overviews, ascending (2 = half resolution)
    overviews: tuple[int, ...]

    @classmethod
    def of(cls, dataset: DatasetReaderBase) -> SceneMeta:
        """The open raster's header facts (its data type and overviews are band 1's)."""
        return cls(
            width=dataset.width,
            height=dataset.height,
            transform=dataset.transform,
            crs=dataset.crs,
            count=dataset.count,
            dtype=dataset.dtypes[0],
            nodata=dataset.nodata,
            descriptions=tuple(dataset.descriptions),
            colorinterp=tuple(dataset.colorinterp),
            overviews=tuple(sorted(dataset.overviews(1))),
        )

    @property
    def gsd(self) -> tuple[float, float]:
        """Ground size of one pixel in metres along its columns and its rows.

        Taken from the affine's column vectors, so rotated and skewed transforms count right.
        """
        if self.crs is None:
            raise ValueError("the scene has no CRS, so its ground sample distance is unknown")
        t = self.transform
        if self.crs.is_geographic:
            lat = t.d * self.width / 2 + t.e * self.height / 2 + t.f
            cos_lat = max(math.cos(math.radians(lat)), 1e-6)
            # a pixel's x and y extents mix degrees of lon and lat only when it is rotated
            return (
                math.hypot(t.a * _METRES_PER_DEGREE_LON * cos_lat, t.d * _METRES_PER_DEGREE_LAT),
                math.hypot(t.b * _METRES_PER_DEGREE_LON * cos_lat, t.e * _METRES_PER_DEGREE_LAT),
            )
        factor = self.crs.linear_units_factor[1]  # metres per CRS unit (US survey feet...)
        return math.hypot(t.a, t.d) * factor, math.hypot(t.b, t.e) * factor


@dataclass(frozen=True)
class GeoTile:
    """One tile of a scene: a source window in full-resolution pixels read into an output grid."""

    index: int
    col_off: int
    row_off: int
    width: int
    height: int
    out_width: int
    out_height: int
    # output pixel (col, row) -> scene CRS coordinates
    transform: Affine
    # index into SceneMeta.overviews of the overview a read is served from; None: full resolution
    overview_level: int | None

    @property
    def window(self) -> Window:
        """The tile's source window in full-resolution pixels, as rasterio reads it."""
        return Window(self.col_off, self.row_off, self.width, self.height)

    def to_scene_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Output pixel of this tile -> full-resolution pixel of the scene."""
        return (
            self.col_off + x * self.width / self.out_width,
            self.row_off + y * self.height / self.out_height,
        )

    def as_tile(self) -> Tile:
        """The source window as the pipeline's tile contract."""
        return Tile(
            index=self.index, x=self.col_off, y=self.row_off, width=self.width, height=self.height
        )


def _factors(meta: SceneMeta, target_gsd: float | None) -> tuple[float, float]:
    """Source pixels per output pixel along x and y; never below 1 (no upsampling)."""
    if target_gsd is None:
        return 1.0, 1.0
    if target_gsd <= 0:
        raise ValueError(f"target_gsd must be positive, got {target_gsd}")
    gx, gy = meta.gsd
    return max(target_gsd / gx, 1.0), max(target_gsd / gy, 1.0)


def _overview_level(overviews: Sequence[int], factor: float) -> int | None:
    # The coarsest overview still at least as fine as the output: reading it only downsamples.
    usable = [i for i, f in enumerate(overviews) if f <= factor * (1 + 1e-9)]
    return usable[-1] if usable else None


def _axis(length: int, tile_size: int, factor: float, overlap: int) -> tuple[int, list[int], int]:
    """(source window size, window offsets, output size) along one axis."""
    window = round(tile_size * factor)
    if window >= length:
        return length, [0], max(1, round(length / factor))
    stride = max(1, round((tile_size - overlap) * factor))
    count = 1 + math.ceil((length - window) / stride)
    # the last window is shifted inside so it ends on the edge
    return window, [min(i * stride, length - window) for i in range(count)], tile_size


@dataclass(frozen=True)
class _Grid:
    cols: list[int]
    rows: list[int]
    width: int
    height: int
    out_width: int
    out_height: int
    overview_level: int | None


def _grid(meta: SceneMeta, tile_size: int, target_gsd: float | None, overlap: int) -> _Grid:
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for {tile_size}")
    fx, fy = _factors(meta, target_gsd)
    width, cols, out_width = _axis(meta.width, tile_size, fx, overlap)
    height, rows, out_height = _axis(meta.height, tile_size, fy, overlap)
    level = _overview_level(meta.overviews, min(fx, fy))
    return _Grid(cols, rows, width, height, out_width, out_height, level)


def _tile(meta: SceneMeta, grid: _Grid, index: int) -> GeoTile:
    row, col = divmod(index, len(grid.cols))
    col_off, row_off = grid.cols[col], grid.rows[row]
    pixel = Affine.scale(grid.width / grid.out_width, grid.height / grid.out_height)
    return GeoTile(
        index=index,
        col_off=col_off,
        row_off=row_off,
        width=grid.width,
        height=grid.height,
        out_width=grid.out_width,
        out_height=grid.out_height,
        transform=meta.transform @ Affine.translation(col_off, row_off) @ pixel,
        overview_level=grid.overview_level,
    )


def tile_count(
    meta: SceneMeta,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    target_gsd: float | None = None,
    overlap: int = 0,
) -> int:
    """How many tiles :func:`plan_tiles` yields, without planning them.

    Per axis: 1 when the scene fits one window, else ``1 + ceil((length - window) / stride)``
    with ``window = round(tile_size * f)``, ``stride = round((tile_size - overlap) * f)`` and ``f``
    the source pixels per output pixel.
    """
    grid = _grid(meta, tile_size, target_gsd, overlap)
    return len(grid.cols) * len(grid.rows)


def plan_tiles(
    meta: SceneMeta,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    target_gsd: float | None = None,
    overlap: int = 0,
) -> Iterator[GeoTile]:
    """Tiles covering the scene, row by row, lazily (a 20,000 px scene is ~2,000 tiles).

    ``tile_size`` and ``overlap`` are output pixels at ``target_gsd`` (metres per pixel; None:
    the scene's own resolution). See the module docstring for edge tiles and resampling.
    """
    grid = _grid(meta, tile_size, target_gsd, overlap)
    return (_tile(meta, grid, i) for i in range(len(grid.cols) * len(grid.rows)))


def tile_at(
    meta: SceneMeta,
    index: int,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    target_gsd: float | None = None,
    overlap: int = 0,
) -> GeoTile:
    """Tile ``index`` of the plan, without planning the tiles before it.

    The plan is a pure function of the header and these arguments, so a worker handed an index
    rebuilds exactly the tile the planner sent.
    """
    grid = _grid(meta, tile_size, target_gsd, overlap)
    if not 0 <= index < len(grid.cols) * len(grid.rows):
        raise IndexError(f"tile {index} is not in a plan of {len(grid.cols) * len(grid.rows)}")
    return _tile(meta, grid, index)


def overview_tile(meta: SceneMeta, long_side: int = DEFAULT_TILE_SIZE) -> GeoTile:
    """The whole scene as one tile of at most ``long_side`` output pixels on its longer side.

    Aspect is kept and the scene is never upsampled (see the module docstring); the tile's
    affine maps its output pixels onto the scene, so boxes drawn on it locate like any tile's.
    """
    out_width, out_height = fit_size(meta.width, meta.height, long_side)
    fx, fy = meta.width / out_width, meta.height / out_height
    return GeoTile(
        index=0,
        col_off=0,
        row_off=0,
        width=meta.width,
        height=meta.height,
        out_width=out_width,
        out_height=out_height,
        transform=meta.transform @ Affine.scale(fx, fy),
        overview_level=_overview_level(meta.overviews, min(fx, fy)),
    )


# Band names of STAC's eo extension, by Sentinel-2 band (see :func:`common_name`).
_SENTINEL2_COMMON_NAMES = {
    "b1": "coastal",
    "b2": "blue",
    "b3": "green",
    "b4": "red",
    "b5": "rededge071",
    "b6": "rededge075",
    "b7": "rededge078",
    "b8": "nir",
    "b8a": "nir08",
    "b9": "nir09",
    "b11": "swir16",
    "b12": "swir22",
}


def common_name(description: str | None, colorinterp: ColorInterp) -> str | None:
    """The band's eo common name (``red``, ``nir``...), or None when nothing names it.

    The name comes from the band's colour interpretation, else from its Sentinel-2 name.
    """
    if colorinterp in (ColorInterp.red, ColorInterp.green, ColorInterp.blue):
        return colorinterp.name
    return _SENTINEL2_COMMON_NAMES.get(_band_name(description)) if description else None


def _band_name(name: str) -> str:
    # "B04" and "b4" name the same Sentinel-2 band; "B8A" stays distinct from "B8".
    return re.sub(r"^b0(\d)", r"b\1", name.strip().casefold())


def _band_index(meta: SceneMeta, band: int | str) -> int:
    if isinstance(band, str):
        names = [_band_name(d) if d else None for d in meta.descriptions]
        try:
            return names.index(_band_name(band)) + 1
        except ValueError:
            raise ValueError(
                f"no band described as {band!r}; the scene's bands are {list(meta.descriptions)}"
            ) from None
    # int() also takes numpy integers, which are not int instances
    if not 1 <= int(band) <= meta.count:
        raise ValueError(f"band {band} is not in 1..{meta.count}")
    return int(band)


def select_bands(meta: SceneMeta, bands: Sequence[int | str] | None = None) -> tuple[int, ...]:
    """The 1-based band indexes read as red, green and blue.

    ``bands``: three band indexes or descriptions (e.g. Sentinel-2 ``("B4", "B3", "B2")``), or one
    for a gray image. Default: bands whose colour interpretation is red, green and blue; else
    bands described as red/green/blue or B4/B3/B2; else the first three; else band 1 as gray.
    """
    if bands is not None:
        if len(bands) not in (1, 3):
            raise ValueError(f"give one band (gray) or three (red, green, blue), got {bands!r}")
        chosen = tuple(_band_index(meta, b) for b in bands)
        return chosen * 3 if len(chosen) == 1 else chosen
    by_interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(c in meta.colorinterp for c in by_interp):
        return tuple(meta.colorinterp.index(c) + 1 for c in by_interp)
    names = [_band_name(d) if d else None for d in meta.descriptions]
    found = [next((i + 1 for i, n in enumerate(names) if n in alias), 0) for alias in _RGB_NAMES]
    if all(found):
        return tuple(found)
    return (1, 2, 3) if meta.count >= 3 else (1, 1, 1)


@dataclass(frozen=True)
class Stretch:
    """A linear map of each band's ``[low, high]`` onto 0-255, clipped outside, rounded.

    ``low`` maps to 0, ``high`` to 255, and a value v in between to ``round((v - low) * 255 /
    (high - low))`` (round half to even).
    """

    low: tuple[float, float, float]
    high: tuple[float, float, float]

    @classmethod
    def fixed(cls, low: float, high: float) -> Stretch:
        """The same range for every band, e.g. ``Stretch.fixed(0, 3000)`` for Sentinel-2 L2A."""
        return cls((low,) * 3, (high,) * 3)

    def apply(self, bands: np.ndarray) -> np.ndarray:
        """``3 x H x W`` values of any dtype -> ``H x W x 3`` uint8."""
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        # a constant band would divide by zero; it maps to 0 instead
        span = np.maximum(np.asarray(self.high, dtype=np.float32) - low[:, 0, 0], 1e-6)
        scaled = (bands.astype(np.float32) - low) * (255.0 / span)[:, None, None]
        out = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _read(
    dataset: DatasetReaderBase,
    bands: Sequence[int],
    window: Window | None,
    shape: tuple[int, int],
    resampling: Resampling,
) -> np.ma.MaskedArray:
    # Read each distinct band once, however often it is selected (gray replicates band 1).
    unique = sorted(set(bands))
    data = dataset.read(
        unique, window=window, out_shape=(len(unique), *shape), resampling=resampling, masked=True
    )
    return data[[unique.index(b) for b in bands]]


def percentile_stretch(
    dataset: DatasetReaderBase,
    bands: Sequence[int],
    *,
    low_pct: float = 2.0,
    high_pct: float = 98.0,
    sample_size: int = 1024,
) -> Stretch:
    """Per-band ``low_pct``-``high_pct`` percentiles of the valid pixels of the whole scene.

    Computed once per scene from a read of at most ``sample_size`` pixels on the longer side,
    which GDAL serves from an overview when the scene has them (nearest, so values are real
    ones, not averages that would narrow the range).
    """
    scale = max(dataset.width, dataset.height) / sample_size
    shape = (
        max(1, round(dataset.height / max(scale, 1))),
        max(1, round(dataset.width / max(scale, 1))),
    )
    data = _read(dataset, bands, None, shape, Resampling.nearest)
    lows, highs = [], []
    for band in data:
        valid = band.compressed()
        if valid.size == 0:
            raise ValueError("the scene holds no valid pixels to compute a stretch from")
        low, high = np.percentile(valid, [low_pct, high_pct])
        lows.append(float(low))
        highs.append(float(high))
    return Stretch((lows[0], lows[1], lows[2]), (highs[0], highs[1], highs[2]))


def default_stretch(dataset: DatasetReaderBase, bands: Sequence[int]) -> Stretch:
    """8-bit scenes as they are; any other dtype by :func:`percentile_stretch` (2-98 %)."""
    if all(dataset.dtypes[b - 1] == "uint8" for b in bands):
        return Stretch.fixed(0, 255)
    return percentile_stretch(dataset, bands)


def has_data(dataset: DatasetReaderBase, tile: GeoTile, *, probe: int = 32) -> bool:
    """Whether any pixel of the tile is valid, from a read of at most ``probe`` px a side.

    The mask is averaged down, so a probe cell keeps the tile when about 1/510 of the source
    pixels under it are valid (the average of 0s and 255s rounds to 0 below that): slivers of
    data thinner than that may be dropped. GDAL serves the probe from an overview where there
    is one, which makes this cheap next to reading the tile; without overviews it costs a read.
    """
    if all(MaskFlags.all_valid in flags for flags in dataset.mask_flag_enums):
        return True
    scale = max(tile.out_width, tile.out_height, probe) / probe
    shape = (max(1, round(tile.out_height / scale)), max(1, round(tile.out_width / scale)))
    mask = dataset.dataset_mask(window=tile.window, out_shape=shape, resampling=Resampling.average)
    return bool(mask.any())


def read_tile(
    dataset: DatasetReaderBase,
    tile: GeoTile,
    bands: Sequence[int],
    stretch: Stretch,
    *,
    resampling: Resampling = Resampling.average,
) -> np.ndarray:
    """The tile as ``out_height x out_width x 3`` uint8, invalid (nodata) pixels black.

    ``bands`` from :func:`select_bands`, ``stretch`` computed once per scene (e.g. by
    :func:`default_stretch`). Only the tile's window is read, straight into the output size.
    """
    data = _read(dataset, bands, tile.window, (tile.out_height, tile.out_width), resampling)
    image = stretch.apply(data.data)
    image[np.ma.getmaskarray(data).any(axis=0)] = 0
    return image


class InvalidGeoreference(ValueError):
    """A georeference that puts the data nowhere on the globe.

    That is a CRS that PROJ cannot transform to lon/lat, a place outside its projection's domain,
    or lon/lat out of range.
    """


@dataclass(frozen=True)
class Footprint:
    """A place on the ground: a GeoJSON Polygon or MultiPolygon in lon/lat and its bounding box."""

    # {"type": "Polygon", "coordinates": [ring]}, or split at the antimeridian {"type":
    # "MultiPolygon", "coordinates": [[ring], [ring]]}; RFC 7946: exterior rings counter-clockwise,
    # every ring closed
    polygon: dict[str, Any]
    # west, south, east, north; west > east when the footprint crosses the antimeridian
    bbox: tuple[float, float, float, float]


def _tile_pixels(box: Sequence[float], tile: GeoTile) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    sx, sy = tile.out_width / _BOX_SCALE, tile.out_height / _BOX_SCALE
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy


def box_outline(
    x1: float, y1: float, x2: float, y2: float, *, densify: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Columns and rows along a pixel box's edges, clockwise from its top-left corner, not closed.

    Each edge is split into ``densify`` segments (corners at multiples of ``densify``).
    """
    if densify < 1:
        raise ValueError(f"densify must be at least 1, got {densify}")
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    steps = np.arange(densify) / densify
    cols: list[float] = []
    rows: list[float] = []
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True):
        cols.extend(ax + (bx - ax) * steps)
        rows.extend(ay + (by - ay) * steps)
    return np.asarray(cols), np.asarray(rows)


def _crs_name(crs: CRS) -> str:
    """A CRS as a message names it: its code, else the kind and name its WKT opens with."""
    text = crs.to_string()
    named = re.match(r'\s*(\w+)\s*\[\s*"([^"]*)"', text)
    return f'{named.group(1)}["{named.group(2)}"]' if named else text


def _to_lon_lat(
    xs: np.ndarray, ys: np.ndarray, crs: CRS | str, subject: str
) -> tuple[np.ndarray, np.ndarray]:
    """CRS points as lon, lat, refused unless they name places (see the module docstring)."""
    try:
        crs = CRS.from_user_input(crs)
    except CRSError as exc:
        raise InvalidGeoreference(f"{subject} has an unknown coordinate reference system") from exc
    name = _crs_name(crs)

    def outside(why: str) -> InvalidGeoreference:
        return InvalidGeoreference(
            f"{subject} lies outside the valid area of its projection ({name}): {why}"
        )

    try:
        lons, lats = warp_transform(crs, WGS84, xs.tolist(), ys.tolist())
    # rasterio raises PROJ's failures as GDAL error classes, exported from rasterio._err only
    except CPLE_NotSupportedError as exc:
        raise InvalidGeoreference(
            f"{subject} cannot be placed on the globe: its coordinate reference system ({name})"
            " cannot be transformed to longitude/latitude"
        ) from exc
    except (CPLE_BaseError, RasterioError) as exc:
        raise outside("its corners do not transform to longitude/latitude") from exc
    lon, lat = np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise outside("its corners transform to non-finite coordinates")
    if (np.abs(lat) > 90 + _LAT_TOLERANCE).any():
        raise InvalidGeoreference(
            f"{subject} reaches latitude {lat[np.argmax(np.abs(lat))]:g}, beyond +/-90"
        )
    if (np.abs(lon) > 360).any():
        raise InvalidGeoreference(
            f"{subject} reaches longitude {lon[np.argmax(np.abs(lon))]:g}, beyond +/-180"
            " (or +/-360 for a range written across the antimeridian)"
        )
    lat = np.clip(lat, -90.0, 90.0)
    try:
        back_x, back_y = warp_transform(WGS84, crs, lon.tolist(), lat.tolist())
    except (CPLE_BaseError, RasterioError) as exc:
        raise outside("its corners do not transform back from longitude/latitude") from exc
    dx, dy = np.asarray(back_x) - xs, np.asarray(back_y) - ys
    if crs.is_geographic:
        dx = (dx + 180) % 360 - 180
    scale = max(1.0, float(np.abs(xs).max()), float(np.abs(ys).max()))
    if not (np.abs(np.concatenate([dx, dy])) <= _ROUND_TRIP_TOLERANCE * scale).all():
        raise outside("its corners wrap around the globe and land elsewhere")
    return lon, lat


def _wrap(lon: np.ndarray) -> np.ndarray:
    """Longitudes, or steps between them, as their equal in [-180, 180)."""
    return (lon + 180) % 360 - 180


def _rings(polygon: shapely.Polygon) -> list[list[list[float]]]:
    rings = [polygon.exterior, *polygon.interiors]
    return [[[float(x), float(y)] for x, y in ring.coords] for ring in rings]


def _split(lon: np.ndarray, lat: np.ndarray, subject: str) -> Footprint:
    """A counter-clockwise ring across the antimeridian (or around a pole), split there."""
    try:
        fixed = antimeridian.fix_polygon(
            shapely.Polygon(np.column_stack([lon, lat])), fix_winding=False, great_circle=False
        )
    except (ValueError, shapely.errors.ShapelyError) as exc:
        raise InvalidGeoreference(
            f"{subject} crosses the antimeridian in a shape that cannot be split there"
        ) from exc
    parts = list(shapely.get_parts(shapely.orient_polygons(fixed)))
    if len(parts) == 1:
        polygon = {"type": "Polygon", "coordinates": _rings(parts[0])}
    else:
        polygon = {"type": "MultiPolygon", "coordinates": [_rings(p) for p in parts]}
    west, south, east, north = antimeridian.bbox(shapely.MultiPolygon(parts))
    return Footprint(polygon, (west, south, east, north))


def lon_lat_footprint(
    xs: np.ndarray, ys: np.ndarray, crs: CRS | str, *, subject: str = "the footprint"
) -> Footprint:
    """The polygon through CRS points (an open ring, as :func:`box_outline` gives) in lon/lat.

    Raises :class:`InvalidGeoreference`, whose message speaks of ``subject``, when the points
    are not places on the globe; a ring across the antimeridian comes back split there (see the
    module docstring).
    """
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    lon, lat = _to_lon_lat(xs, ys, crs, subject)
    lon = np.where(np.abs(lon) > 180, _wrap(lon), lon)
    steps = _wrap(np.diff(lon, append=lon[:1]))
    # the ring with no jump of 360 between neighbours; it closes unless it goes round a pole
    unwrapped = lon[0] + np.concatenate([[0.0], np.cumsum(steps[:-1])])
    turns = round(float(steps.sum()) / 360)
    if turns == 0 and np.ptp(unwrapped) >= 360:
        # the whole globe's width, e.g. a world grid written 0..360
        south, north = float(lat.min()), float(lat.max())
        ring = [[-180.0, south], [180.0, south], [180.0, north], [-180.0, north], [-180.0, south]]
        return Footprint({"type": "Polygon", "coordinates": [ring]}, (-180.0, south, 180.0, north))
    if turns == 0:
        # shoelace: positive area is counter-clockwise with lon east and lat north
        clockwise = np.sum(unwrapped * np.roll(lat, -1) - np.roll(unwrapped, -1) * lat) < 0
    else:
        # around the north pole counter-clockwise is eastward, around the south pole westward
        clockwise = (turns > 0) != (lat.mean() > 0)
    if clockwise:
        # reversed from its first point, so corners stay at multiples of `densify`
        order = np.concatenate([[0], np.arange(len(lon) - 1, 0, -1)])
        lon, lat = lon[order], lat[order]
    if turns != 0 or (np.abs(np.diff(lon, append=lon[:1])) > 180).any():
        return _split(lon, lat, subject)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    return Footprint(
        polygon={"type": "Polygon", "coordinates": [ring]},
        bbox=(float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())),
    )


def _outline(transform: Affine, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel columns and rows through an affine."""
    t = transform
    return t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f


def footprint(
    box: Sequence[float], tile: GeoTile, crs: CRS | str, *, densify: int = 4
) -> Footprint:
    """A box on the model's 0-100 scale of ``tile`` as a lon/lat polygon.

    Each edge is split into ``densify`` segments before reprojection, so the polygon follows the
    box's true (slightly curved) shape in lon/lat; every point goes through the tile's affine,
    so rotated and skewed scenes give the rotated box, not the envelope of two corners. Raises
    :class:`InvalidGeoreference` where the box is no place on the globe.
    """
    col, row = box_outline(*_tile_pixels(box, tile), densify=densify)
    return lon_lat_footprint(*_outline(tile.transform, col, row), crs)


def scene_footprint(meta: SceneMeta, *, densify: int = 20) -> Footprint:
    """The whole scene's outline on the ground, each edge split into ``densify`` segments.

    Raises :class:`InvalidGeoreference` when the scene has no CRS, a geotransform of zero or
    non-finite area, or an outline that is no place on the globe.
    """
    if meta.crs is None:
        raise InvalidGeoreference("the scene has no coordinate reference system")
    t = meta.transform
    determinant = t.a * t.e - t.b * t.d
    if not (np.isfinite(tuple(t)).all() and determinant != 0):
        raise InvalidGeoreference(
            "the scene's geotransform gives its pixels no area on the ground (zero or undefined"
            " pixel size)"
        )
    col, row = box_outline(0, 0, meta.width, meta.height, densify=densify)
    return lon_lat_footprint(*_outline(t, col, row), meta.crs, subject="the scene")


def union_bbox(
    boxes: Iterable[tuple[float, float, float, float]],
) -> tuple[float, float, float, float] | None:
    """The smallest (west, south, east, north) holding every box, None for none.

    Longitudes are arcs on a circle: boxes either side of the antimeridian give a bbox across it
    (west > east), not one spanning the globe the other way.
    """
    boxes = list(boxes)
    if not boxes:
        return None
    south, north = min(b[1] for b in boxes), max(b[3] for b in boxes)
    # each box as an eastward arc (start, length); the best union starts where one of them does
    arcs = [(w, e - w if w <= e else e - w + 360) for w, _, e, _ in boxes]
    if max(length for _, length in arcs) >= 360:
        return (-180.0, south, 180.0, north)
    west, extent = min(
        ((start, max((s - start) % 360 + length for s, length in arcs)) for start, _ in arcs),
        key=lambda c: c[1],
    )
    if extent >= 360:
        return (-180.0, south, 180.0, north)
    east = west + extent
    return (west, south, east - 360 if east > 180 else east, north)


@dataclass(frozen=True)
class SceneDetection:
    """A box found in one tile, placed in full-resolution scene pixels."""

    label: str
    # x1, y1, x2, y2 in scene pixels
    box: tuple[float, float, float, float]
    score: float | None
    # 1 when the box is centred in its tile, 0 when its centre is on the tile's edge
    centrality: float
    tile_index: int


def scene_detection(
    label: str, box: Sequence[float], tile: GeoTile, score: float | None = None
) -> SceneDetection:
    """A box on the model's 0-100 scale of ``tile`` -> scene pixels, with its centrality."""
    tx1, ty1, tx2, ty2 = _tile_pixels(box, tile)
    x1, y1 = tile.to_scene_pixels(tx1, ty1)
    x2, y2 = tile.to_scene_pixels(tx2, ty2)
    half = _BOX_SCALE / 2
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    centrality = 1 - max(abs(cx - half), abs(cy - half)) / half
    return SceneDetection(label, (x1, y1, x2, y2), score, centrality, tile.index)


def _rank(detection: SceneDetection) -> tuple[bool, float, float]:
    return (detection.score is not None, detection.score or 0.0, detection.centrality)


def _suppress(group: list[SceneDetection], iou_threshold: float) -> list[SceneDetection]:
    ranked = sorted(group, key=_rank, reverse=True)
    boxes = np.array([d.box for d in ranked], dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(ranked), dtype=bool)
    kept = []
    for i in range(len(ranked)):
        if not alive[i]:
            continue
        kept.append(ranked[i])
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        width = np.minimum(boxes[rest, 2], boxes[i, 2]) - np.maximum(boxes[rest, 0], boxes[i, 0])
        height = np.minimum(boxes[rest, 3], boxes[i, 3]) - np.maximum(boxes[rest, 1], boxes[i, 1])
        inter = np.clip(width, 0, None) * np.clip(height, 0, None)
        union = areas[rest] + areas[i] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        alive[rest[iou >= iou_threshold]] = False
    return kept


def merge_detections(
    detections: Iterable[SceneDetection], *, iou_threshold: float = 0.5
) -> list[SceneDetection]:
    """Drop duplicates of one object found in overlapping tiles (rule: module docstring).

    Labels compare case-insensitively; boxes of different labels never suppress each other.
    Result: per label (first-seen order), the kept boxes best first.
    """
    groups: dict[str, list[SceneDetection]] = {}
    for detection in detections:
        groups.setdefault(detection.label.strip().casefold(), []).append(detection)
    return [kept for group in groups.values() for kept in _suppress(group, iou_threshold)]
