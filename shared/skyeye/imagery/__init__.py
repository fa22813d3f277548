"""Imagery: image files, georeferenced scenes, UAV clips, footprints and previews.

The image-file reading every service needs (:mod:`skyeye.imagery.images`) is re-exported here;
:mod:`~skyeye.imagery.scenes`, :mod:`~skyeye.imagery.geo`, :mod:`~skyeye.imagery.clips` and
:mod:`~skyeye.imagery.previews` are imported by name.
"""

from skyeye.imagery.images import (
    ImageInfo,
    UnreadableImage,
    fit_size,
    probe,
    read_tile,
    to_png,
    whole_image_tiles,
)

__all__ = [
    "ImageInfo",
    "UnreadableImage",
    "fit_size",
    "probe",
    "read_tile",
    "to_png",
    "whole_image_tiles",
]
