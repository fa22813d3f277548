"""Preview JPEGs: boxes and labels drawn where the detections are, size bounded.

JPEG is lossy: a pixel is its colour when it is within a few levels of it (:func:`_is`).
"""

import io

import numpy as np
import pytest
from PIL import Image

from skyeye.catalog import Detection
from skyeye.imagery import previews

GRAY = (90, 90, 90)


# JPEG's error on a 2 px saturated line next to gray, at the quality previews are written with
TOLERANCE = 40


def _decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image)


def _is(pixels: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Where ``pixels`` (..., 3) show ``color``, give or take JPEG's error."""
    return np.abs(pixels.astype(int) - np.array(color)).max(axis=-1) <= TOLERANCE


def _gray(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), GRAY, dtype=np.uint8)


def test_a_box_is_drawn_in_its_label_colour_scaled_from_asset_pixels() -> None:
    # the image is the asset at half resolution: boxes in asset pixels land at half the numbers
    jpeg = previews.render(
        _gray(200, 100), (400, 200), [Detection("building", 40, 80, 200, 160)], max_side=1024
    )
    out = _decode(jpeg)
    color = previews.label_color("building")
    assert out.shape == (100, 200, 3)
    # outline on every edge of (20, 40)-(100, 80), inside and outside untouched
    for x, y in [(20, 60), (100, 60), (60, 40), (60, 80)]:
        assert _is(out[y, x], color), (x, y, out[y, x])
    assert _is(out[60, 60], GRAY) and _is(out[90, 150], GRAY)
    assert not _is(out[60, 60], color)
    # the label sits on a filled patch of the same colour just above the box, with dark text
    label = out[40 - 16 : 40, 20:80]
    assert _is(label, color).sum() > label.shape[0] * label.shape[1] // 3
    assert (label.max(axis=-1) < 60).any()


def test_the_long_side_is_bounded_and_never_enlarged() -> None:
    big = previews.render(_gray(3000, 1500), (3000, 1500), [], max_side=1024)
    small = previews.render(_gray(300, 200), (300, 200), [], max_side=1024)
    assert _decode(big).shape == (512, 1024, 3)
    out = _decode(small)
    assert out.shape == (200, 300, 3) and _is(out, GRAY).all()


def test_boxes_scale_with_the_downscaled_image() -> None:
    det = Detection("ship", 1000, 500, 2000, 1000)
    out = _decode(previews.render(_gray(3000, 1500), (3000, 1500), [det], max_side=300))
    color = previews.label_color("ship")
    assert out.shape == (150, 300, 3)
    assert _is(out[75, 100], color) and _is(out[75, 200], color)
    assert _is(out[75, 150], GRAY)


@pytest.mark.parametrize(
    "det",
    [
        Detection("roof at the very top", 0, 0, 50, 10),
        Detection("x" * 200, 180, 90, 200, 100),
        Detection("partly outside", -20, -20, 400, 300),
        Detection("a point", 30, 30, 30, 30),
    ],
)
def test_labels_and_boxes_at_edges_stay_on_the_canvas(det: Detection) -> None:
    out = _decode(previews.render(_gray(200, 100), (200, 100), [det], max_side=1024))
    assert out.shape == (100, 200, 3)
    assert _is(out, previews.label_color(det.label)).any()


def test_label_colours_are_stable_and_ignore_case() -> None:
    assert previews.label_color("Building ") == previews.label_color("building")
    assert previews.label_color("vehicle") in previews.PALETTE


def test_a_box_reaching_the_image_edge_shows_its_far_sides() -> None:
    out = _decode(
        previews.render(_gray(200, 100), (200, 100), [Detection("field", 0, 0, 200, 100)], 1024)
    )
    color = previews.label_color("field")
    assert _is(out[50, 199], color) and _is(out[99, 100], color)


def test_a_label_with_template_remnants_is_not_drawn_but_its_box_is() -> None:
    junk, clean = Detection("<p>ship", 40, 80, 200, 160), Detection("ship", 40, 80, 200, 160)
    for det, captioned in ((junk, False), (clean, True)):
        out = _decode(previews.render(_gray(200, 100), (400, 200), [det], max_side=1024))
        assert _is(out[60, 20], previews.label_color(det.label))
        # the caption patch just above the box is there for a clean label only
        above = out[40 - 16 : 40 - 2, 22:80]
        assert _is(above, previews.label_color(det.label)).any() == captioned
