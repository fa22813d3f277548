"""A work item's pixels and the placing of its answers: what the worker and an ask both do.

The worker reads a work item's tile (an image's window, a scene tile or overview, a clip's
frames) to send it to the model, then places the boxes of its answers on the ground; a question
asked later about a stored asset (``POST /assets/{id}/ask``) rebuilds the same work item from
the catalog and reads and places it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skyeye.adapters.s3 import ObjectStore
from skyeye.catalog import TaskOutcome
from skyeye.contracts import Tile, WorkItem
from skyeye.imagery import clips, geo, scenes
from skyeye.imagery.images import read_tile
from skyeye.settings import Settings

__all__ = ["georef_of", "locate", "read_image", "read_work_item"]


def read_image(
    store: ObjectStore, settings: Settings, bucket: str, key: str, tile: Tile
) -> np.ndarray:
    """An image object's ``tile``, within the object and pixel limits of ``settings``."""
    data = store.read(bucket, key, max_bytes=settings.max_object_bytes)
    return read_tile(data, tile, max_pixels=settings.max_image_pixels)


def read_work_item(
    store: ObjectStore, settings: Settings, item: WorkItem
) -> tuple[list[np.ndarray], geo.GeoTile | None]:
    """The images the model is shown for ``item``, and the scene tile's georeference if any.

    A clip item's frames come in time order; any other item is one image.
    """
    if item.frames:
        return [read_image(store, settings, f.bucket, f.key, item.tile) for f in item.frames], None
    if item.scene is not None:
        with scenes.open_scene(store, settings, item.bucket, item.key) as dataset:
            image, georef = scenes.read(dataset, item)
            return [image], georef
    return [read_image(store, settings, item.bucket, item.key, item.tile)], None


def georef_of(store: ObjectStore, settings: Settings, item: WorkItem) -> geo.GeoTile | None:
    """A scene item's georeference from the raster's header alone, without reading its pixels.

    For answers decoded from cached embeddings; None for an item that is no scene tile.
    """
    if item.scene is None:
        return None
    with scenes.open_scene(store, settings, item.bucket, item.key) as dataset:
        return scenes.planned_tile(dataset, item)


def locate(
    outcomes: Sequence[TaskOutcome], item: WorkItem, georef: geo.GeoTile | None
) -> list[TaskOutcome]:
    """The outcomes with their detections placed on the ground, where the item says where.

    A scene tile is placed by its georeference, a clip frame by its own; anything else is
    returned as it is.
    """
    placed = list(outcomes)
    if georef is not None and item.scene is not None:
        placed = [scenes.locate(o, georef, item.scene.crs) for o in placed]
    if len(item.frames) == 1 and (frame_georef := item.frames[0].georef):
        placed = [clips.locate(o, frame_georef) for o in placed]
    return placed
