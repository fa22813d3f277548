"""Tile plans, windowed reads, lon/lat footprints and cross-tile merging on tiny scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from skyeye.contracts import Tile
from skyeye.imagery import geo, scenes
from skyeye.samples import write_geotiff

UTM33N = "EPSG:32633"
# 10 m pixels, north-up, the corner write_geotiff uses too
UTM_TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_300_000.0)


def _write(path: Path, data: np.ndarray, **profile: object) -> Path:
    count, height, width = data.shape
    base = {"driver": "GTiff", "width": width, "height": height, "count": count}
    base.update({"dtype": data.dtype.name, "crs": UTM33N, "transform": UTM_TRANSFORM})
    base.update(profile)
    descriptions = base.pop("descriptions", None)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return path


def _meta(width: int, height: int, **changes: object) -> geo.SceneMeta:
    fields: dict[str, object] = {
        "width": width,
        "height": height,
        "transform": UTM_TRANSFORM,
        "crs": rasterio.crs.CRS.from_string(UTM33N),
        "count": 3,
        "dtype": "uint8",
        "nodata": None,
        "descriptions": (None, None, None),
        "colorinterp": (),
        "overviews": (),
    }
    fields.update(changes)
    return geo.SceneMeta(**fields)  # type: ignore[arg-type]


@pytest.fixture
def multispectral(tmp_path: Path) -> Path:
    """4-band uint16, Sentinel-2 band order (blue, green, red, NIR); band b holds 1000 * b."""
    data = np.stack([np.full((64, 64), 1000 * b, dtype=np.uint16) for b in range(1, 5)])
    return _write(tmp_path / "s2.tif", data, descriptions=("B2", "B3", "B4", "B8"))


# --- tile plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "tile_size", "overlap"),
    [(1000, 700, 128, 16), (512, 512, 128, 0), (300, 90, 128, 32), (50, 40, 448, 0)],
)
def test_plan_covers_the_scene_exactly_with_the_configured_overlap(
    width: int, height: int, tile_size: int, overlap: int
) -> None:
    meta = _meta(width, height)
    tiles = list(geo.plan_tiles(meta, tile_size=tile_size, overlap=overlap))

    coverage = np.zeros((height, width), dtype=np.int32)
    for tile in tiles:
        assert tile.col_off >= 0 and tile.col_off + tile.width <= width
        assert tile.row_off >= 0 and tile.row_off + tile.height <= height
        coverage[
            tile.row_off : tile.row_off + tile.height, tile.col_off : tile.col_off + tile.width
        ] += 1
    assert coverage.min() >= 1  # union of windows = scene

    def per_axis(length: int) -> int:
        return 1 if length <= tile_size else 1 + -(-(length - tile_size) // (tile_size - overlap))

    assert len(tiles) == per_axis(width) * per_axis(height)
    assert geo.tile_count(meta, tile_size=tile_size, overlap=overlap) == len(tiles)
    assert [t.index for t in tiles] == list(range(len(tiles)))
    # neighbours overlap by `overlap` exactly, except the last one, shifted inside to the edge
    cols = sorted({t.col_off for t in tiles})
    steps = np.diff(cols)
    if len(cols) > 1:
        assert (steps[:-1] == tile_size - overlap).all()
        assert steps[-1] <= tile_size - overlap
        assert cols[-1] + tiles[0].width == width


def test_plan_is_lazy() -> None:
    plan = geo.plan_tiles(_meta(20_000, 20_000))
    assert next(plan).index == 0
    assert geo.tile_count(_meta(20_000, 20_000)) == 45 * 45


def test_a_scene_smaller_than_a_tile_is_one_unpadded_tile() -> None:
    [tile] = geo.plan_tiles(_meta(50, 40), tile_size=448)
    assert (tile.width, tile.height, tile.out_width, tile.out_height) == (50, 40, 50, 40)


def test_a_finer_scene_reads_a_larger_window_resampled_down() -> None:
    meta = _meta(2000, 2000, overviews=(2, 4, 8))
    tile = next(geo.plan_tiles(meta, tile_size=100, target_gsd=40))  # 10 m scene -> 4x
    assert (tile.width, tile.height, tile.out_width, tile.out_height) == (400, 400, 100, 100)
    assert tile.transform.a == pytest.approx(40) and tile.transform.e == pytest.approx(-40)
    assert meta.overviews[tile.overview_level or 0] == 4
    # 3x: the 2x overview is the coarsest that still holds the detail
    assert next(geo.plan_tiles(meta, tile_size=100, target_gsd=30)).overview_level == 0
    # overlap is counted in output pixels: 10 px at 40 m = 40 source pixels
    second = list(geo.plan_tiles(meta, tile_size=100, target_gsd=40, overlap=10))[1]
    assert second.col_off == 400 - 40


def test_a_coarser_scene_is_never_upsampled() -> None:
    tile = next(geo.plan_tiles(_meta(1000, 1000, overviews=(2,)), tile_size=100, target_gsd=5))
    assert (tile.width, tile.out_width, tile.overview_level) == (100, 100, None)


def test_gsd_of_a_geographic_scene_is_in_metres() -> None:
    meta = _meta(
        100, 100, crs=rasterio.crs.CRS.from_epsg(4326), transform=Affine(1e-4, 0, 0, 0, -1e-4, 0)
    )
    gx, gy = meta.gsd
    assert gx == pytest.approx(11.13, abs=0.01) and gy == pytest.approx(11.06, abs=0.01)


def test_bad_plan_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        next(geo.plan_tiles(_meta(100, 100), tile_size=64, overlap=64))
    with pytest.raises(ValueError, match="no CRS"):
        next(geo.plan_tiles(_meta(100, 100, crs=None), target_gsd=10))


def test_a_tile_is_rebuilt_from_its_index_alone() -> None:
    meta = _meta(1000, 700, overviews=(2, 4))
    plan = {"tile_size": 128, "target_gsd": 25.0, "overlap": 16}
    tiles = list(geo.plan_tiles(meta, **plan))
    assert [geo.tile_at(meta, t.index, **plan) for t in tiles] == tiles
    with pytest.raises(IndexError):
        geo.tile_at(meta, len(tiles), **plan)


def test_tile_becomes_the_pipeline_contract() -> None:
    tile = list(geo.plan_tiles(_meta(300, 300), tile_size=128))[4]
    assert tile.as_tile() == Tile(index=4, x=128, y=128, width=128, height=128)


# --- reading ------------------------------------------------------------------------------


def test_read_at_native_resolution_is_the_window(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=256)
    with rasterio.open(path) as ds:
        meta = geo.SceneMeta.of(ds)
        bands = geo.select_bands(meta)
        stretch = geo.default_stretch(ds, bands)
        tile = list(geo.plan_tiles(meta, tile_size=100, overlap=10))[4]
        image = geo.read_tile(ds, tile, bands, stretch)
        expected = ds.read(window=tile.window)
    assert bands == (1, 2, 3) and stretch == geo.Stretch.fixed(0, 255)
    assert image.shape == (100, 100, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.moveaxis(expected, 0, -1))


@pytest.fixture
def two_level_scene(tmp_path: Path) -> Path:
    """256 px, one band: overviews (2x, 4x) built from a constant 100, then the full-resolution
    pixels rewritten to 200, so a read shows whether an overview answered it."""
    path = _write(tmp_path / "ovr.tif", np.full((1, 256, 256), 100, dtype=np.uint8))
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
        ds.write(np.full((1, 256, 256), 200, dtype=np.uint8))
    return path


def test_reads_go_through_the_planned_overview(two_level_scene: Path) -> None:
    with rasterio.open(two_level_scene) as ds:
        meta = geo.SceneMeta.of(ds)
        assert meta.overviews == (2, 4)
        coarse = next(geo.plan_tiles(meta, tile_size=64, target_gsd=40))
        native = next(geo.plan_tiles(meta, tile_size=64))
        assert coarse.overview_level == 1 and native.overview_level is None
        bands, stretch = (1, 1, 1), geo.Stretch.fixed(0, 255)
        assert (geo.read_tile(ds, coarse, bands, stretch) == 100).all()
        assert (geo.read_tile(ds, native, bands, stretch) == 200).all()


# --- overview --------------------------------------------------------------------------------


def test_the_overview_is_the_whole_scene_at_the_tile_size_on_its_long_side() -> None:
    meta = _meta(1000, 700, overviews=(2, 4, 8))
    tile = geo.overview_tile(meta, 448)
    assert tile.window == Window(0, 0, 1000, 700)
    assert (tile.out_width, tile.out_height) == (448, 314)
    # 1000/448 = 2.23 source px per output px: the 2x overview is the coarsest fine enough
    assert meta.overviews[tile.overview_level or 0] == 2
    # the output grid spans exactly the scene's extent
    assert tile.transform @ (0, 0) == UTM_TRANSFORM @ (0, 0)
    assert tile.transform @ (448, 314) == pytest.approx(UTM_TRANSFORM @ (1000, 700))
    assert tile.to_scene_pixels(224, 157) == pytest.approx((500, 350))


def test_a_small_scene_overview_is_not_enlarged() -> None:
    tile = geo.overview_tile(_meta(300, 120, overviews=(2,)), 448)
    assert (tile.out_width, tile.out_height, tile.overview_level) == (300, 120, None)


def test_the_overview_is_averaged_down_from_the_whole_scene(tmp_path: Path) -> None:
    # 8 x 4 scene of 2 x 2 blocks, each block one value: the 4 x 2 overview is the blocks
    blocks = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], dtype=np.uint8)
    data = np.kron(blocks, np.ones((2, 2), dtype=np.uint8))[None]
    path = _write(tmp_path / "blocks.tif", data)
    with rasterio.open(path) as ds:
        tile = geo.overview_tile(geo.SceneMeta.of(ds), 4)
        image = geo.read_tile(ds, tile, (1, 1, 1), geo.Stretch.fixed(0, 255))
    assert image.shape == (2, 4, 3)
    np.testing.assert_array_equal(image[..., 0], blocks)


def test_the_overview_read_is_served_from_the_scene_overviews(two_level_scene: Path) -> None:
    with rasterio.open(two_level_scene) as ds:
        tile = geo.overview_tile(geo.SceneMeta.of(ds), 64)
        image = geo.read_tile(ds, tile, (1, 1, 1), geo.Stretch.fixed(0, 255))
    assert tile.overview_level == 1 and image.shape == (64, 64, 3)
    assert (image == 100).all()


def test_a_box_on_the_overview_maps_to_the_scene_bounds(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=300)
    with rasterio.open(path) as ds:
        tile = geo.overview_tile(geo.SceneMeta.of(ds), 100)
        west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    where = geo.footprint((0, 0, 100, 100), tile, UTM33N, densify=1)
    assert where.bbox == pytest.approx((west, south, east, north), abs=1e-9)


def test_all_nodata_tiles_are_skipped(tmp_path: Path) -> None:
    data = np.zeros((1, 128, 128), dtype=np.uint16)
    data[0, 40:88, 40:88] = 500  # valid centre, nodata border
    data[0, 2, 125] = 7  # one valid pixel in the top-right tile
    path = _write(tmp_path / "border.tif", data, nodata=0)
    with rasterio.open(path) as ds:
        tiles = list(geo.plan_tiles(geo.SceneMeta.of(ds), tile_size=32))
        kept = [t.index for t in tiles if geo.has_data(ds, t)]
        # the probe is averaged down, so even at 4 x 4 the lone valid pixel keeps its tile
        assert [t.index for t in tiles if geo.has_data(ds, t, probe=4)] == kept
        centre = next(t for t in tiles if t.col_off == 32 and t.row_off == 32)
        image = geo.read_tile(ds, centre, (1, 1, 1), geo.Stretch.fixed(0, 1000))
    # rows/cols 40..87 touch tiles 1 and 2 of each axis; the lone pixel is in tile (0, 3)
    assert kept == [3, 5, 6, 9, 10]
    assert (image[8:, 8:] == 128).all() and (image[:8, :] == 0).all()


def test_band_facts_name_the_bands_the_model_sees(multispectral: Path) -> None:
    with rasterio.open(multispectral) as ds:
        meta = geo.SceneMeta.of(ds)
        facts = scenes.band_facts(meta, geo.select_bands(meta))
    assert [(f["name"], f["common_name"], f["shown"]) for f in facts] == [
        ("B2", "blue", True),
        ("B3", "green", True),
        ("B4", "red", True),
        ("B8", "nir", False),
    ]
    assert {f["data_type"] for f in facts} == {"uint16"}


@pytest.mark.parametrize(
    ("description", "interp", "name"),
    [
        (None, ColorInterp.red, "red"),
        ("B04", ColorInterp.gray, "red"),
        ("b8A", ColorInterp.undefined, "nir08"),
        ("B12", ColorInterp.undefined, "swir22"),
        ("elevation", ColorInterp.gray, None),
        (None, ColorInterp.gray, None),
    ],
)
def test_common_names(description: str | None, interp: ColorInterp, name: str | None) -> None:
    assert geo.common_name(description, interp) == name


def test_a_scene_without_nodata_needs_no_probe(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=64)
    with rasterio.open(path) as ds:
        assert all(geo.has_data(ds, t) for t in geo.plan_tiles(geo.SceneMeta.of(ds), tile_size=32))


def test_bands_are_selected_by_description(multispectral: Path) -> None:
    with rasterio.open(multispectral) as ds:
        meta = geo.SceneMeta.of(ds)
        # default: red, green, blue found by their Sentinel-2 names, not the first three
        assert geo.select_bands(meta) == (3, 2, 1)
        assert geo.select_bands(meta, ["B04", "b3", "B2"]) == (3, 2, 1)
        assert geo.select_bands(meta, ["B8", "B4", "B3"]) == (4, 3, 2)  # false colour
        assert geo.select_bands(meta, [4]) == (4, 4, 4)
        with pytest.raises(ValueError, match="B11"):
            geo.select_bands(meta, ["B11", "B4", "B3"])
        with pytest.raises(ValueError, match=r"1\.\.4"):
            geo.select_bands(meta, [5, 1, 2])
        tile = next(geo.plan_tiles(meta, tile_size=64))
        image = geo.read_tile(ds, tile, geo.select_bands(meta), geo.Stretch.fixed(0, 3000))
    # red holds 3000 -> 255, green 2000 -> 170, blue 1000 -> 85
    assert image.shape == (64, 64, 3)
    assert image[0, 0].tolist() == [255, 170, 85]


def test_default_band_choice_without_names() -> None:
    assert geo.select_bands(_meta(8, 8, count=4, descriptions=(None,) * 4)) == (1, 2, 3)
    assert geo.select_bands(_meta(8, 8, count=1, descriptions=(None,))) == (1, 1, 1)


def test_fixed_stretch_maps_known_values() -> None:
    values = np.array([0, 600, 1500, 3000, 4000, 65535], dtype=np.uint16)
    out = geo.Stretch.fixed(0, 3000).apply(np.stack([values[None, :]] * 3))
    # 600 * 255 / 3000 = 51; 1500 -> 127.5, rounded half to even; above the range clips
    assert out[0, :, 0].tolist() == [0, 51, 128, 255, 255, 255]


def test_percentile_stretch_is_per_band_over_valid_pixels(tmp_path: Path) -> None:
    ramp = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)
    data = np.stack([ramp, ramp * 10, ramp * 100])
    data[:, 0, 0] = 0  # nodata: left out of the percentiles
    path = _write(tmp_path / "ramp.tif", data, nodata=0)
    with rasterio.open(path) as ds:
        stretch = geo.default_stretch(ds, (1, 2, 3))
    valid = ramp.ravel()[1:].astype(float)
    low, high = np.percentile(valid, [2, 98])
    assert stretch.low == pytest.approx((low, low * 10, low * 100))
    assert stretch.high == pytest.approx((high, high * 10, high * 100))


# --- georeferencing -----------------------------------------------------------------------


def _ring(fp: geo.Footprint) -> np.ndarray:
    return np.asarray(fp.polygon["coordinates"][0])


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:-1, 0], ring[:-1, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_a_box_maps_to_its_known_lon_lat(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "scene.tif", size=512)
    with rasterio.open(path) as ds:
        meta = geo.SceneMeta.of(ds)
        crs = ds.crs
    tiles = list(geo.plan_tiles(meta, tile_size=128, target_gsd=20))  # 256 source px a tile
    tile = tiles[3]  # second row, second column
    assert (tile.col_off, tile.row_off, tile.width) == (256, 256, 256)
    fp = geo.footprint((25, 50, 75, 100), tile, crs, densify=4)

    # independently: 0-100 of a 128 px tile at 20 m -> scene pixels -> UTM metres -> lon/lat
    cols = 256 + np.array([32, 96, 96, 32]) * 2
    rows = 256 + np.array([64, 64, 128, 128]) * 2
    lons, lats = warp_transform(crs, "EPSG:4326", 500_000 + 10.0 * cols, 5_300_000 - 10.0 * rows)
    expected = {(round(x, 9), round(y, 9)) for x, y in zip(lons, lats, strict=True)}
    ring = _ring(fp)
    corners = {(round(x, 9), round(y, 9)) for x, y in ring[[0, 4, 8, 12]]}
    # within one tile pixel (20 m) in degrees at this latitude; in fact they agree far closer
    pixel_deg = 20 / 111_320 / np.cos(np.radians(47.8))
    for ex, ey in expected:
        assert min(abs(ex - x) + abs(ey - y) for x, y in corners) < pixel_deg / 1000
    assert fp.bbox == pytest.approx((min(lons), min(lats), max(lons), max(lats)), abs=pixel_deg)
    assert len(ring) == 4 * 4 + 1


@pytest.mark.parametrize(
    "transform",
    [
        UTM_TRANSFORM,
        Affine(10.0, 0.0, 500_000.0, 0.0, 10.0, 5_290_000.0),  # south-up: rows go north
        UTM_TRANSFORM @ Affine.rotation(30),
        UTM_TRANSFORM @ Affine.shear(15, 5),
    ],
    ids=["north-up", "south-up", "rotated", "skewed"],
)
def test_rings_are_closed_and_counter_clockwise(transform: Affine) -> None:
    meta = _meta(400, 400, transform=transform)
    tile = list(geo.plan_tiles(meta, tile_size=200))[3]
    fp = geo.footprint((10, 20, 60, 90), tile, UTM33N, densify=3)
    ring = _ring(fp)
    assert fp.polygon["type"] == "Polygon"
    assert ring[0].tolist() == ring[-1].tolist()
    assert _signed_area(ring) > 0

    # all four corners go through the affine: a rotated box is not the envelope of two corners
    cols = tile.col_off + np.array([20, 120, 120, 20])
    rows = tile.row_off + np.array([40, 40, 180, 180])
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    lons, lats = warp_transform(UTM33N, "EPSG:4326", xs.tolist(), ys.tolist())
    for lon, lat in zip(lons, lats, strict=True):
        assert np.abs(ring - [lon, lat]).sum(axis=1).min() < 1e-9
    assert fp.bbox == pytest.approx((min(lons), min(lats), max(lons), max(lats)), abs=1e-7)


# --- merging across tiles ---------------------------------------------------------------


def test_duplicates_across_overlapping_tiles_merge_and_distinct_boxes_stay() -> None:
    meta = _meta(400, 200)
    left, right = list(geo.plan_tiles(meta, tile_size=200, overlap=100))[:2]
    assert (left.col_off, right.col_off) == (0, 100)
    # a roof at scene px 150..170 x 90..110: near the right edge of `left`, central in `right`
    in_left = geo.scene_detection("roof", (75, 45, 85, 55), left)
    in_right = geo.scene_detection("Roof", (25, 45, 35, 55), right)
    assert in_left.box == pytest.approx(in_right.box) == (150, 90, 170, 110)
    other = geo.scene_detection("roof", (80, 80, 90, 90), right)
    tank = geo.scene_detection("tank", (25, 45, 35, 55), right)

    merged = geo.merge_detections([in_left, in_right, other, tank])
    # no scores: the copy most central in its tile wins
    assert merged == [in_right, other, tank]


def test_the_higher_score_wins() -> None:
    left, right = list(geo.plan_tiles(_meta(400, 200), tile_size=200, overlap=100))[:2]
    a = geo.scene_detection("ship", (75, 45, 85, 55), left, score=0.9)
    b = geo.scene_detection("ship", (26, 46, 36, 56), right, score=0.4)  # IoU ~0.68
    assert geo.merge_detections([b, a]) == [a]
    assert geo.merge_detections([b, a], iou_threshold=0.9) == [a, b]


# --- places that are not on the globe, and the antimeridian ---------------------------------

LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'


def _scene(crs: str, transform: Affine, size: int = 10) -> geo.SceneMeta:
    return _meta(size, size, crs=rasterio.crs.CRS.from_user_input(crs), transform=transform)


def _exteriors(fp: geo.Footprint) -> list[np.ndarray]:
    if fp.polygon["type"] == "Polygon":
        return [np.asarray(fp.polygon["coordinates"][0])]
    assert fp.polygon["type"] == "MultiPolygon"
    return [np.asarray(polygon[0]) for polygon in fp.polygon["coordinates"]]


def _assert_valid_geojson(fp: geo.Footprint) -> None:
    """Every ring closed and counter-clockwise, every coordinate in range (RFC 7946)."""
    for ring in _exteriors(fp):
        assert ring[0].tolist() == ring[-1].tolist()
        assert _signed_area(ring) > 0
        assert (np.abs(ring[:, 0]) <= 180).all() and (np.abs(ring[:, 1]) <= 90).all()
    west, south, east, north = fp.bbox
    assert all(-180 <= v <= 180 for v in (west, east)) and -90 <= south <= north <= 90


@pytest.mark.parametrize(
    ("crs", "transform", "message"),
    [
        (
            LOCAL_CS,
            Affine(1, 0, 0, 0, -1, 100),
            r'\(LOCAL_CS\["site grid"\]\) cannot be transformed',
        ),
        # 100,000 km east of UTM 33N's false origin: PROJ refuses the point
        (UTM33N, Affine(10, 0, 1e8, 0, -10, 5e6), "outside the valid area .*EPSG:32633"),
        # Web Mercator x = 1e9 m: PROJ wraps it to lon -16.8, which maps back elsewhere
        ("EPSG:3857", Affine(10, 0, 1e9, 0, -10, 5e6), "wrap around the globe"),
        ("EPSG:4326", Affine(0.1, 0, 1000, 0, -0.1, 10), "longitude 1001, beyond"),
        ("EPSG:4326", Affine(0.1, 0, 10, 0, -0.1, 95), "latitude 95, beyond"),
        ("EPSG:4326", Affine(0, 0, 10, 0, -0.1, 10), "no area"),
    ],
    ids=["local-cs", "utm-out-of-domain", "mercator-wrapped", "lon-1000", "lat-95", "degenerate"],
)
def test_a_scene_that_is_no_place_on_the_globe_is_refused(
    crs: str, transform: Affine, message: str
) -> None:
    with pytest.raises(geo.InvalidGeoreference, match=f"^the scene.*{message}"):
        geo.scene_footprint(_scene(crs, transform))


def test_non_finite_coordinates_are_refused() -> None:
    with pytest.raises(geo.InvalidGeoreference, match="non-finite"):
        geo.lon_lat_footprint(np.array([0.0, 1.0, np.nan]), np.array([0.0, 0.0, 1.0]), UTM33N)


def test_a_scene_without_crs_has_no_footprint() -> None:
    with pytest.raises(geo.InvalidGeoreference, match="no coordinate reference system"):
        geo.scene_footprint(_meta(10, 10, crs=None))


def test_a_geographic_scene_across_the_antimeridian_is_split() -> None:
    # lon 179.5..180.5, as a geographic scene across the antimeridian is written
    fp = geo.scene_footprint(_scene("EPSG:4326", Affine(0.1, 0, 179.5, 0, -0.1, 11)))
    assert fp.bbox == (179.5, 10.0, -179.5, 11.0)
    assert fp.polygon["type"] == "MultiPolygon"
    _assert_valid_geojson(fp)
    east_half, west_half = sorted(_exteriors(fp), key=lambda r: -r[:, 0].max())
    assert (east_half[:, 0].min(), east_half[:, 0].max()) == pytest.approx((179.5, 180))
    assert (west_half[:, 0].min(), west_half[:, 0].max()) == pytest.approx((-180, -179.5))
    # the same scene written -180.5..-179.5 is the same place
    other = geo.scene_footprint(_scene("EPSG:4326", Affine(0.1, 0, -180.5, 0, -0.1, 11)))
    assert other.bbox == pytest.approx(fp.bbox)


@pytest.mark.parametrize(
    ("crs", "x0"),
    [("EPSG:32660", 780_000.0), ("EPSG:32601", 100_000.0)],
    ids=["utm-60", "utm-1"],
)
def test_a_utm_scene_straddling_the_antimeridian_is_split(crs: str, x0: float) -> None:
    transform = Affine(20_000, 0, x0, 0, -20_000, 1_000_000)
    fp = geo.scene_footprint(_scene(crs, transform))
    _assert_valid_geojson(fp)
    assert fp.polygon["type"] == "MultiPolygon" and len(fp.polygon["coordinates"]) == 2
    # independently: the corners, the west ones east of 179 E, the east ones west of 179 W
    xs = [x0, x0 + 200_000, x0 + 200_000, x0]
    ys = [1_000_000, 1_000_000, 800_000, 800_000]
    lons, lats = warp_transform(crs, "EPSG:4326", xs, ys)
    west, south, east, north = fp.bbox
    assert west > east
    assert west == pytest.approx(min(lons[0], lons[3]), abs=1e-9)
    assert east == pytest.approx(max(lons[1], lons[2]), abs=1e-9)
    assert south == pytest.approx(min(lats), abs=1e-3) and north == pytest.approx(
        max(lats), abs=1e-3
    )
    assert west > 179 and east < -178


def test_a_detection_across_the_antimeridian_is_split_and_keeps_its_area() -> None:
    meta = _scene("EPSG:32660", Affine(1_000, 0, 820_000, 0, -1_000, 1_000_000), size=100)
    [tile] = geo.plan_tiles(meta, tile_size=100)
    fp = geo.footprint((10, 10, 60, 60), tile, "EPSG:32660")
    _assert_valid_geojson(fp)
    assert fp.polygon["type"] == "MultiPolygon" and fp.bbox[0] > fp.bbox[2]
    # both halves together cover what the box covers, measured with longitudes unwrapped
    halves = sum(_signed_area(np.column_stack([r[:, 0] % 360, r[:, 1]])) for r in _exteriors(fp))
    col, row = geo.box_outline(10, 10, 60, 60, densify=4)  # 0-100 of a 100 px tile: pixels
    lons, lats = warp_transform(
        "EPSG:32660", "EPSG:4326", (820_000 + 1_000 * col).tolist(), (1e6 - 1_000 * row).tolist()
    )
    ring = np.column_stack([np.asarray(lons) % 360, lats])
    whole = -_signed_area(np.vstack([ring, ring[:1]]))  # box_outline runs clockwise on the map
    # (the library rounds the crossing latitudes to 1e-7 degrees)
    assert halves == pytest.approx(whole, rel=1e-6)


def test_a_scene_around_a_pole_reaches_it() -> None:
    # NSIDC polar stereographic north, 2,000 km a side centred on the pole
    for transform in (
        Affine(200_000, 0, -1e6, 0, -200_000, 1e6),
        Affine(200_000, 0, -1e6, 0, 200_000, -1e6),  # south-up: the ring runs the other way
    ):
        fp = geo.scene_footprint(_scene("EPSG:3413", transform))
        _assert_valid_geojson(fp)
        west, south, east, north = fp.bbox
        assert (west, east, north) == (-180, 180, 90) and 76 < south < 78
    south_pole = geo.scene_footprint(_scene("EPSG:3031", Affine(2e5, 0, -1e6, 0, -2e5, 1e6)))
    _assert_valid_geojson(south_pole)
    assert south_pole.bbox[1] == -90 and -78 < south_pole.bbox[3] < -76


@pytest.mark.parametrize("x0", [-180.0, 0.0], ids=["-180..180", "0..360"])
def test_a_world_scene_spans_every_longitude(x0: float) -> None:
    fp = geo.scene_footprint(_scene("EPSG:4326", Affine(36, 0, x0, 0, -18, 90)))
    _assert_valid_geojson(fp)
    assert fp.bbox == (-180, -90, 180, 90) and fp.polygon["type"] == "Polygon"


def test_a_scene_locates_like_transform_bounds() -> None:
    meta = _meta(500, 300, transform=UTM_TRANSFORM)
    fp = geo.scene_footprint(meta)
    west, south, east, north = transform_bounds(
        UTM33N, "EPSG:4326", 500_000, 5_297_000, 505_000, 5_300_000
    )
    assert fp.bbox == pytest.approx((west, south, east, north), abs=1e-9)
    assert fp.polygon["type"] == "Polygon"


@pytest.mark.parametrize(
    ("boxes", "union"),
    [
        ([], None),
        ([(10, 0, 20, 1), (30, -1, 40, 2)], (10, -1, 40, 2)),
        # either side of the antimeridian: the short way across it, not round the globe
        ([(-170, 0, -160, 1), (160, 0, 170, 1)], (160, 0, -160, 1)),
        ([(179, 0, -179, 1), (170, 0, 175, 1)], (170, 0, -179, 1)),
        ([(179, 0, -179, 1), (-178, 0, -170, 1)], (179, 0, -170, 1)),
        ([(-180, 0, 180, 1), (5, 0, 6, 1)], (-180, 0, 180, 1)),
        # the widest gap (100..120) is left out, across the antimeridian
        ([(0, 0, 100, 1), (120, 0, 240 - 360, 1), (250, 0, 350 - 360, 1)], (120, 0, 100, 1)),
        ([(-180, 0, 0, 1), (0, 0, 180, 1)], (-180, 0, 180, 1)),
    ],
)
def test_union_of_bboxes(boxes: list, union: tuple | None) -> None:
    assert geo.union_bbox(boxes) == union
