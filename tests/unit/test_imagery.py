import io

import numpy as np
import pytest
from PIL import Image

from skyeye import imagery
from skyeye.contracts import Tile


def _png(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_probe_reads_format_and_size() -> None:
    info = imagery.probe(io.BytesIO(_png(40, 30)), max_pixels=10_000)
    assert info == imagery.ImageInfo("png", 40, 30)


def test_probe_refuses_huge_dimensions_from_the_header() -> None:
    with pytest.raises(imagery.UnreadableImage, match="exceeds the limit"):
        imagery.probe(io.BytesIO(_png(40, 30)), max_pixels=1_000)


def test_not_an_image() -> None:
    with pytest.raises(imagery.UnreadableImage, match="not an image in a format") as caught:
        imagery.probe(io.BytesIO(b"%PDF-1.4 definitely not pixels"), max_pixels=10_000)
    assert "<_io" not in str(caught.value)  # no Python repr of the stream


def test_an_empty_file_says_so() -> None:
    with pytest.raises(imagery.UnreadableImage, match="the file is empty"):
        imagery.probe(io.BytesIO(b""), max_pixels=10_000)


def test_truncated_image_is_caught_when_decoding() -> None:
    data = _png(64, 64)
    with pytest.raises(imagery.UnreadableImage, match="corrupt"):
        imagery.read_tile(
            data[: len(data) // 2], Tile(index=0, x=0, y=0, width=64, height=64), max_pixels=10_000
        )


def test_read_tile_crops_the_window() -> None:
    data = _png(40, 30)
    full = np.asarray(Image.open(io.BytesIO(data)))
    tile = imagery.read_tile(data, Tile(index=1, x=5, y=7, width=10, height=8), max_pixels=10_000)
    assert tile.shape == (8, 10, 3) and tile.dtype == np.uint8
    assert np.array_equal(tile, full[7:15, 5:15])


def test_tile_outside_the_image_is_refused() -> None:
    with pytest.raises(imagery.UnreadableImage, match="outside"):
        imagery.read_tile(
            _png(10, 10), Tile(index=0, x=5, y=0, width=10, height=10), max_pixels=10_000
        )


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [
        ((1000, 1000), 448, (448, 448)),
        ((2000, 1000), 1024, (1024, 512)),
        ((1000, 700), 448, (448, 314)),
        ((700, 1000), 448, (314, 448)),
        ((300, 200), 1024, (300, 200)),  # never enlarged
        ((20_000, 3), 448, (448, 1)),  # at least one pixel
    ],
)
def test_fit_size_bounds_the_long_side_and_keeps_the_aspect(
    size: tuple[int, int], long_side: int, expected: tuple[int, int]
) -> None:
    assert imagery.fit_size(*size, long_side) == expected


def test_fit_size_needs_a_positive_side() -> None:
    with pytest.raises(ValueError, match="long_side"):
        imagery.fit_size(10, 10, 0)
