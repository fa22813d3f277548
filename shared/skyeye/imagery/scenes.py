"""Georeferenced scenes in the pipeline: plan, read, locate and preview.

An object is planned into tiles and an overview; a worker reads one of them and locates the boxes
found in it; the worker finishing the asset reads a decimated preview.

The raster is read straight from S3 through HTTP range requests (the S3 adapter's opener), so a
cloud-optimised GeoTIFF costs only the blocks a tile touches, and GDAL's block cache is bounded
so memory stays per tile whatever the scene's size.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypedDict

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.io import DatasetReader

from skyeye import catalog
from skyeye.adapters.postgres import Connection
from skyeye.adapters.s3 import ObjectStore
from skyeye.catalog import TaskOutcome
from skyeye.contracts import ScenePlan, WorkItem, WorkItemKind
from skyeye.imagery import geo
from skyeye.imagery.images import UnreadableImage
from skyeye.settings import Settings

log = logging.getLogger("skyeye.scenes")

# Formats GDAL reads with a georeference; anything else goes the plain-image path.
SCENE_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Plan:
    """What the planner makes of a scene: the work items' tiles and what its catalog row says."""

    scene: ScenePlan
    tiles: list[geo.GeoTile]
    # the whole scene at the tile size, for scene-level tasks; None when one tile already is
    overview: geo.GeoTile | None
    width: int
    height: int
    # west, south, east, north of the scene's outline; west > east when it crosses the antimeridian
    lon_lat_bbox: tuple[float, float, float, float]
    # the full-resolution raster's affine (a, b, c, d, e, f) and its bands, for STAC
    transform: tuple[float, float, float, float, float, float]
    bands: list[dict[str, object]]


class NoData(ValueError):
    """A scene whose every pixel is nodata: there is nothing to show the model."""


class _Grid(TypedDict):
    """How a scene is cut, given both to the tiling and to the plan the worker re-tiles from."""

    tile_size: int
    target_gsd: float | None
    overlap: int


def is_scene_candidate(key: str, content_type: str | None) -> bool:
    """Whether an object goes the scene path: a GeoTIFF suffix or an ``image/tiff`` content type.

    A candidate without a CRS still becomes a plain image (see :func:`plan`).
    """
    return key.lower().endswith(SCENE_SUFFIXES) or (content_type or "").startswith("image/tiff")


@contextmanager
def open_scene(
    store: ObjectStore, settings: Settings, bucket: str, key: str
) -> Iterator[DatasetReader]:
    """The object as a rasterio dataset read by range requests, GDAL's block cache bounded.

    An unreadable raster is an UnreadableImage, unless the object store failed under it: then
    the store's error is raised.
    """
    # GDAL would otherwise list the "directory" looking for sidecar files on every open.
    opener = store.opener(bucket, key)
    with rasterio.Env(
        GDAL_CACHEMAX=settings.gdal_cache_bytes, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"
    ):
        try:
            dataset = rasterio.open(key, opener=opener)
        except RasterioIOError as exc:
            # an object store outage reads as a corrupt file to GDAL: raise the outage
            opener.raise_failure()
            raise UnreadableImage(f"not a raster GDAL can read: {gdal_message(exc)}") from exc
        with dataset:
            try:
                yield dataset
            except (RasterioError, UnreadableImage):
                opener.raise_failure()
                raise


def gdal_message(exc: BaseException) -> str:
    """GDAL's complaint without the virtual file name rasterio opened the object under."""
    text = str(exc.__cause__ or exc) if "previous exception" in str(exc) else str(exc)
    text = re.sub(r"'?/vsi[^\s']*'?", "the file", text)
    return text.strip() or type(exc).__name__


def plan(dataset: DatasetReader, settings: Settings) -> Plan | None:
    """The tiles of a georeferenced scene, skipping all-nodata ones; None without a CRS.

    Raises :class:`skyeye.imagery.geo.InvalidGeoreference` when the scene is no place on the
    globe (a CRS PROJ cannot transform, outside its projection's domain, lon/lat out of range),
    before any pixel is read, and :class:`NoData` when no tile holds a valid pixel.
    """
    if dataset.crs is None:
        return None
    meta = geo.SceneMeta.of(dataset)
    if meta.width * meta.height > settings.max_scene_pixels:
        raise UnreadableImage(
            f"scene of {meta.width}x{meta.height} pixels exceeds max_scene_pixels="
            f"{settings.max_scene_pixels}"
        )
    ground = geo.scene_footprint(meta)
    try:
        bands = geo.select_bands(meta, settings.rgb_bands)
    except ValueError as exc:
        raise UnreadableImage(str(exc)) from exc
    grid: _Grid = {
        "tile_size": settings.tile_size,
        "target_gsd": settings.target_gsd,
        "overlap": settings.tile_overlap,
    }
    tiles = [t for t in geo.plan_tiles(meta, **grid) if geo.has_data(dataset, t)]
    if not tiles:
        raise NoData("every pixel of the scene is nodata (masked): there is nothing to analyse")
    try:
        stretch = geo.default_stretch(dataset, bands)
    except ValueError as exc:
        raise NoData(f"too few valid pixels to show the scene: {exc}") from exc
    whole = geo.overview_tile(meta, settings.tile_size)
    overview = None if len(tiles) == 1 and tiles[0].window == whole.window else whole
    scene = ScenePlan(
        crs=dataset.crs.to_string(),
        bands=bands,
        stretch_low=stretch.low,
        stretch_high=stretch.high,
        **grid,
    )
    return Plan(
        scene,
        tiles,
        overview,
        meta.width,
        meta.height,
        ground.bbox,
        tuple(meta.transform)[:6],
        band_facts(meta, bands),
    )


def band_facts(meta: geo.SceneMeta, shown: tuple[int, ...]) -> list[dict[str, object]]:
    """What a STAC Item says of the raster's bands.

    That is each band's description, common name, type and nodata, and whether the model sees it.
    """
    return [
        {
            "name": meta.descriptions[i - 1],
            "common_name": geo.common_name(meta.descriptions[i - 1], meta.colorinterp[i - 1]),
            "data_type": meta.dtype,
            "nodata": meta.nodata,
            "shown": i in shown,
        }
        for i in range(1, meta.count + 1)
    ]


def read(dataset: DatasetReader, item: WorkItem) -> tuple[np.ndarray, geo.GeoTile]:
    """The work item's tile (or overview) as H x W x 3 uint8, and its georeference.

    The pixels are resampled to the planned output size; the georeference is for :func:`locate`.
    """
    assert item.scene is not None
    tile = planned_tile(dataset, item)
    return _read(dataset, tile, item.scene), tile


def planned_tile(dataset: DatasetReader, item: WorkItem) -> geo.GeoTile:
    """The work item's tile (or overview) of the scene, from its header: no pixels are read."""
    assert item.scene is not None
    meta = geo.SceneMeta.of(dataset)
    if item.kind is WorkItemKind.OVERVIEW:
        tile = geo.overview_tile(meta, item.scene.tile_size)
    else:
        tile = geo.tile_at(
            meta,
            item.tile.index,
            tile_size=item.scene.tile_size,
            target_gsd=item.scene.target_gsd,
            overlap=item.scene.overlap,
        )
    if tile.as_tile() != item.tile:
        raise UnreadableImage(f"the scene no longer matches its plan at {item.kind} {tile.index}")
    return tile


def read_preview(dataset: DatasetReader, scene: ScenePlan, max_side: int) -> np.ndarray:
    """The whole scene at most ``max_side`` px on its long side, shown as its tiles are.

    It has the same bands and stretch, and is read decimated so it is never held at full
    resolution.
    """
    return _read(dataset, geo.overview_tile(geo.SceneMeta.of(dataset), max_side), scene)


def _read(dataset: DatasetReader, tile: geo.GeoTile, scene: ScenePlan) -> np.ndarray:
    stretch = geo.Stretch(scene.stretch_low, scene.stretch_high)
    try:
        return geo.read_tile(dataset, tile, scene.bands, stretch)
    except RasterioError as exc:
        window = tile.window
        raise UnreadableImage(
            f"the scene's pixel data is corrupt in the {window.width} x {window.height} px "
            f"block at column {window.col_off}, row {window.row_off}: {gdal_message(exc)}"
        ) from exc


def locate(outcome: TaskOutcome, tile: geo.GeoTile, crs: str) -> TaskOutcome:
    """The outcome with a lon/lat footprint on each of its detections.

    One that is no place on the globe keeps none (the planner refuses such scenes, so this is a
    detection at worst).
    """
    located = []
    for det in outcome.detections:
        centrality = geo.scene_detection(det.label, det.box_0_100, tile).centrality
        try:
            where = geo.footprint(det.box_0_100, tile, crs)
        except geo.InvalidGeoreference as exc:
            log.warning("detection %r has no footprint: %s", det.label, exc)
            located.append(replace(det, centrality=centrality))
            continue
        located.append(
            replace(det, footprint=where.polygon, lon_lat_bbox=where.bbox, centrality=centrality)
        )
    return replace(outcome, detections=located)


def merge_duplicates(conn: Connection, asset_id: uuid.UUID) -> int:
    """Flag the copies of one object that overlapping tiles found; returns how many were flagged.

    Copies are found by NMS in scene pixels.
    """
    rows = catalog.located_detections(conn, asset_id)
    detections = [
        geo.SceneDetection(
            row["label"],
            (row["x1"], row["y1"], row["x2"], row["y2"]),
            None,
            row["centrality"] or 0.0,
            row["tile_index"],
        )
        for row in rows
    ]
    ids = {id(d): row["detection_id"] for d, row in zip(detections, rows, strict=True)}
    keep = [ids[id(d)] for d in geo.merge_detections(detections)]
    return catalog.flag_duplicates(conn, asset_id, keep)
