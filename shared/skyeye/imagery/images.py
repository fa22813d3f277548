"""Image headers and pixels: what the planner and the worker need of an image file."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from skyeye.contracts import Tile

# Pixel limits are enforced by probe() with a message naming the size; PIL's own bomb check
# would fire first with a less useful one.
Image.MAX_IMAGE_PIXELS = None


class UnreadableImage(ValueError):
    """Not an image, a truncated or corrupt one, or one over the configured limits."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: its format (lower case, as Pillow names it) and size."""

    media_format: str
    width: int
    height: int


# What Pillow raises on damaged files besides OSError: plugins parse headers with struct and
# index arithmetic. An object store failure (urllib3, minio) is none of these, so it still
# reaches the caller as an outage.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, struct.error, IndexError, EOFError)


def probe(stream: BinaryIO, *, max_pixels: int) -> ImageInfo:
    """Read only the header: format and size, refusing images over ``max_pixels``."""
    try:
        image = Image.open(stream)
    except UnidentifiedImageError as exc:
        stream.seek(0)
        if not stream.read(1):
            raise UnreadableImage("the file is empty") from exc
        raise UnreadableImage(
            "not an image in a format the pipeline reads (PNG, JPEG, TIFF, WebP, GIF, BMP, ...)"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise UnreadableImage(f"the image's header cannot be read: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnreadableImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise UnreadableImage(
            f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} pixels"
        )
    return ImageInfo(media_format=(image.format or "unknown").lower(), width=width, height=height)


def fit_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longer side is at most ``long_side``.

    The aspect is kept, the size never enlarged, and each side is at least one pixel.
    """
    if long_side < 1:
        raise ValueError(f"long_side must be at least 1, got {long_side}")
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def whole_image_tiles(info: ImageInfo) -> list[Tile]:
    """The one tile a plain image is processed as: the whole image, at full resolution."""
    return [Tile(index=0, x=0, y=0, width=info.width, height=info.height)]


def read_tile(data: bytes, tile: Tile, *, max_pixels: int) -> np.ndarray:
    """Decode fully (so truncation is caught here, not in the model) and cut out ``tile``.

    Returns an H x W x 3 uint8 array.
    """
    info = probe(io.BytesIO(data), max_pixels=max_pixels)
    if tile.x + tile.width > info.width or tile.y + tile.height > info.height:
        raise UnreadableImage(f"tile {tile} lies outside the {info.width}x{info.height} image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise UnreadableImage(f"the image's pixel data is corrupt: {exc}") from exc
    box = (tile.x, tile.y, tile.x + tile.width, tile.y + tile.height)
    return np.asarray(rgb.crop(box), dtype=np.uint8)


def to_png(image: np.ndarray) -> bytes:
    """An H x W x 3 uint8 array as PNG (fast compression: these are working copies)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
