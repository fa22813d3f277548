"""Preview JPEGs for dashboards: an asset's image, bounded in size, with its detections drawn.

Pure drawing: the worker hands in pixels (a plain image, or a scene read decimated by
  :func:`skyeye.imagery.scenes.read_preview`) and the detections to draw; storing the JPEG is its
business.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from skyeye.catalog import Detection
from skyeye.imagery.images import fit_size
from skyeye.model.answers import has_template_remnants

# Distinct, saturated colours that stay visible on fields, water and roofs alike.
PALETTE = (
    (255, 59, 48),
    (255, 204, 0),
    (52, 199, 89),
    (0, 199, 190),
    (0, 122, 255),
    (175, 82, 222),
    (255, 45, 85),
    (255, 149, 0),
)
LINE_WIDTH = 2
FONT_SIZE = 12
# A model may answer with a whole sentence as its phrase; the box matters more than the text.
MAX_LABEL_CHARS = 32
JPEG_QUALITY = 90


def label_color(label: str) -> tuple[int, int, int]:
    """One colour per label, the same in every process (``hash()`` is salted per process)."""
    return PALETTE[zlib.crc32(label.strip().casefold().encode()) % len(PALETTE)]


def render(
    image: np.ndarray,
    source_size: tuple[int, int],
    detections: Iterable[Detection],
    max_side: int,
) -> bytes:
    """The image with each detection's box and label drawn, as JPEG bytes.

    ``image``: H x W x 3 uint8 of the whole asset at any resolution (downscaled here to at most
    ``max_side`` on its long side); ``source_size``: the asset's (width, height) in the pixels
    the detections are given in.
    """
    canvas = Image.fromarray(image).convert("RGB")
    size = fit_size(canvas.width, canvas.height, max_side)
    if size != canvas.size:
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
    sx, sy = canvas.width / source_size[0], canvas.height / source_size[1]
    right, bottom = canvas.width - 1, canvas.height - 1
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(FONT_SIZE)
    for det in detections:
        color = label_color(det.label)
        # a box reaching the image's edge (x2 = width) would put that side one pixel off the canvas
        box = (
            min(max(det.x1 * sx, 0), right),
            min(max(det.y1 * sy, 0), bottom),
            min(max(det.x2 * sx, 0), right),
            min(max(det.y2 * sy, 0), bottom),
        )
        draw.rectangle(box, outline=color, width=LINE_WIDTH)
        _draw_label(draw, font, det.label, box, color, canvas.size)
    out = io.BytesIO()
    # full-resolution colour (no 4:2:0 subsampling) keeps the thin coloured box lines crisp
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def _draw_label(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    label: str,
    box: tuple[float, float, float, float],
    color: tuple[int, int, int],
    canvas_size: tuple[int, int],
) -> None:
    if has_template_remnants(label):
        # the box is worth showing; prompt syntax is not a caption (labels stored before they
        # were cleaned may hold it)
        return
    text = label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 2
    # above the box where there is room, else just inside its top edge; never off the canvas
    x = min(box[0], max(canvas_size[0] - width, 0))
    y = box[1] - height if box[1] >= height else min(box[1], max(canvas_size[1] - height, 0))
    draw.rectangle((x, y, x + width, y + height), fill=color)
    draw.text((x + 2 - left, y + 1 - top), text, fill=(0, 0, 0), font=font)
