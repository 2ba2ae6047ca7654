"""Whole-slide tiling: level choice, tissue, blur and contrast filters, sampling, broken files."""

import re
from types import SimpleNamespace

import numpy as np
import openslide
import pytest
from PIL import Image

from rna2histo.cohort import folder, slides
from rna2histo.cohort.slides import SlideError, pick_level, slide_mpp, tile_slide, tissue_mask
from rna2histo.errors import UserError

from .slide_factory import render, write_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """The factory's default: 2048 px at 0.25 um/px, levels /1 and /2, a 4 x 4 grid of 20x tiles."""
    path = tmp_path_factory.mktemp("slides") / "TCGA-05-4244-01Z-00-DX1.svs"
    return path, write_slide(path, np.random.default_rng(0))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same layout at 1024 px: 4 x 4 tiles of tile_size 128 (64 um)."""
    path = tmp_path_factory.mktemp("slides") / "small.tif"
    return path, write_slide(path, np.random.default_rng(1), size=1024)


def stand_in(properties, downsamples=(1.0,)):
    """What `slide_mpp` and `pick_level` need of an OpenSlide object."""
    return SimpleNamespace(properties=properties, level_downsamples=downsamples)


def inside(region, x, y, step):
    x0, y0, x1, y1 = region
    return x0 <= x and x + step <= x1 and y0 <= y and y + step <= y1


def test_factory_slides_read_by_openslide(slide, tmp_path):
    path, _ = slide
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_dimensions == ((2048, 2048), (1024, 1024))
        assert slide_mpp(s) == (0.25, "mpp")
    aperio = tmp_path / "a.svs"
    rng = np.random.default_rng(0)
    write_slide(aperio, rng, mpp=None, size=512, objective_power=20, vendor="aperio")
    with openslide.OpenSlide(aperio) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert "openslide.mpp-x" not in s.properties
        assert slide_mpp(s) == (0.5, "objective-power")


def test_slide_mpp_from_properties():
    props = {"openslide.mpp-x": "0.2527", "openslide.mpp-y": "0.2527"}
    assert slide_mpp(stand_in(props)) == (0.2527, "mpp")
    assert slide_mpp(stand_in({"openslide.objective-power": "40"})) == (0.25, "objective-power")
    # an empty or zero mpp is no resolution: fall back to the objective power
    props = {"openslide.mpp-x": "0", "openslide.objective-power": "20"}
    assert slide_mpp(stand_in(props)) == (0.5, "objective-power")
    with pytest.raises(SlideError, match=r"^x\.svs: resolution unknown"):
        slide_mpp(stand_in({"openslide.objective-power": "nan"}), path="x.svs")


def test_picks_the_level_nearest_20x_without_enlarging(slide):
    with openslide.OpenSlide(slide[0]) as s:
        assert pick_level(s) == (1, 1.0)  # 0.25 um/px and a /2 level: level 1 is 20x
    x40 = {"openslide.mpp-x": "0.25"}
    assert pick_level(stand_in(x40, (1.0, 4.0, 16.0))) == (0, 2.0)  # TCGA 40x: shrink level 0
    assert pick_level(stand_in({"openslide.mpp-x": "0.5"}, (1.0, 4.0))) == (0, 1.0)
    level, down = pick_level(stand_in({"openslide.mpp-x": "0.2527"}, (1.0, 2.0, 8.0)))
    assert level == 1 and down == pytest.approx(0.5 / 0.5054)  # 1% coarser still counts as 20x
    assert pick_level(stand_in({"openslide.mpp-x": "1.0"}, (1.0, 4.0))) == (0, 0.5)  # a 10x scan
    # 0.9 um/px is nearer 0.5 than 0.25 is (x1.8 vs x2), but would have to be enlarged
    assert pick_level(stand_in(x40, (1.0, 3.6))) == (0, 2.0)


def test_tissue_mask_finds_tissue_not_glass(slide):
    path, regions = slide
    with openslide.OpenSlide(path) as s:
        mask, scale = tissue_mask(s, max_side=256)
    assert mask.shape == (256, 256) and mask.dtype == bool and scale == 256 / 2048
    assert not mask[128:, 128:].any()  # glass
    assert mask[:128].all() and mask[128:, :128].all()  # sharp, blurred and flat tissue


def test_tissue_mask_leaves_out_tinted_glass(tmp_path):
    path = tmp_path / "tinted.tif"
    tint = (215, 205, 228)  # saturation 0.10, darkest channel 205: tissue to the fixed test
    write_slide(path, np.random.default_rng(8), size=512, glass=tint)
    with openslide.OpenSlide(path) as s:
        mask, _ = tissue_mask(s)
        assert folder.tissue_mask(slides.thumbnail(s))[256:, 256:].mean() > 0.9
    assert mask[256:, 256:].mean() < 0.01 and mask[:256].mean() > 0.99  # Otsu's threshold


def test_tiles_only_from_sharp_tissue(slide):
    path, regions = slide
    tiles, record = tile_slide(path, tile_size=256, image_size=128, tiles_per_patient=64)
    assert tiles.shape == (8, 128, 128, 3) and tiles.dtype == np.uint8
    step = 512  # 256 px at 0.5 um/px = 512 level-0 px at 0.25
    counts = {k: record[k] for k in ("candidates", "tissue", "checked", "sampled")}
    assert counts == {"candidates": 16, "tissue": 12, "checked": 12, "sampled": 8}
    assert record["blurred"] == 2 and record["low_contrast"] == 2
    assert record["level"] == 1 and record["mpp"] == 0.25 and record["mpp_source"] == "mpp"
    assert record["level_mpp"] == 0.5 and record["dimensions"] == [2048, 2048]
    xy = list(zip(record["tiles"]["x"], record["tiles"]["y"]))
    assert all(inside(regions["tissue"], x, y, step) for x, y in xy)
    assert xy == sorted(xy, key=lambda p: (p[1], p[0]))  # grid order
    assert min(record["tiles"]["tissue_fraction"]) >= 0.5
    # the tiles are the slide's tissue: pink and purple, no glass
    assert tiles.reshape(-1, 3).mean(0)[1] < 200 and tiles.std() > 20


def test_sampling_is_seeded_and_capped(small):
    path, regions = small
    a, ra = tile_slide(path, tile_size=128, image_size=32, tiles_per_patient=3, seed=7)
    b, rb = tile_slide(path, tile_size=128, image_size=32, tiles_per_patient=3, seed=7)
    assert a.shape == (3, 32, 32, 3) and ra["sampled"] == 3
    assert np.array_equal(a, b) and ra["tiles"] == rb["tiles"]
    assert ra["checked"] < ra["tissue"]  # it stops once enough tiles are kept
    picks = {tuple(tile_slide(path, 128, 32, 3, seed=s)[1]["tiles"]["x"]) for s in range(6)}
    assert len(picks) > 1  # another seed, another sample
    assert all(inside(regions["tissue"], x, 0, 256) for x in ra["tiles"]["x"])


def test_level_not_at_20x_reads_a_larger_region(small, tmp_path):
    path, _ = small
    base_only = tmp_path / "one_level.tif"
    write_slide(base_only, np.random.default_rng(1), size=1024, levels=1)  # same content
    tiles, record = tile_slide(base_only, tile_size=128, image_size=64)
    assert record["level"] == 0 and record["downsample_to_target"] == 2.0
    reference, expected = tile_slide(path, tile_size=128, image_size=64)
    assert record["tiles"] == expected["tiles"]  # the same 64 um tiles
    assert np.abs(tiles.astype(int) - reference).mean() < 3  # read at 40x, shrunk: alike


def test_objective_power_fallback_tiles(tmp_path):
    path = tmp_path / "x20.svs"
    rng = np.random.default_rng(2)
    write_slide(path, rng, mpp=None, size=512, objective_power=20, vendor="aperio")
    tiles, record = tile_slide(path, tile_size=64, image_size=32)
    assert record["mpp_source"] == "objective-power" and record["mpp"] == 0.5
    assert record["level"] == 0 and record["candidates"] == 64 and len(tiles) == 32


def test_glass_only_slide_gives_no_tiles(tmp_path):
    path = tmp_path / "glass.tif"
    write_slide(path, np.random.default_rng(3), size=512, layout={})
    tiles, record = tile_slide(path, tile_size=64, image_size=16)
    assert tiles.shape == (0, 16, 16, 3) and record["tissue"] == 0 and record["sampled"] == 0


def test_tile_defect_thresholds():
    rng = np.random.default_rng(4)
    size = 256  # 128 um at 0.5 um/px
    sharp = render(size, {"tissue": (0, 0, size, size)}, rng, 0.5)
    blurred = render(size, {"blurred": (0, 0, size, size)}, rng, 0.5)
    flat = render(size, {"flat": (0, 0, size, size)}, rng, 0.5)
    assert slides.tile_defect(sharp) is None
    assert slides.tile_defect(blurred) == "blurred"
    assert slides.tile_defect(flat) == "low_contrast"


@pytest.mark.parametrize("kind", ["random", "truncated", "missing", "png"])
def test_unreadable_slide_is_a_one_line_slide_error(kind, small, tmp_path):
    path = tmp_path / f"TCGA-XX-{kind}.svs"
    if kind == "random":
        path.write_bytes(np.random.default_rng(5).bytes(10_000))
    elif kind == "truncated":
        data = small[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "png":
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path, format="PNG")
    with pytest.raises(SlideError) as caught:
        tile_slide(path)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert message.startswith(str(path)) and "\n" not in message


def test_no_resolution_is_a_slide_error(tmp_path):
    path = tmp_path / "bare.tif"
    write_slide(path, np.random.default_rng(6), mpp=None, size=256)
    with pytest.raises(SlideError, match=f"^{re.escape(str(path))}: resolution unknown"):
        tile_slide(path, tile_size=64)


def test_read_failure_while_tiling_is_a_slide_error(small, monkeypatch):
    def broken(self, location, level, size):
        raise openslide.OpenSlideError("TIFFReadEncodedTile failed")

    monkeypatch.setattr(openslide.OpenSlide, "read_region", broken)
    with pytest.raises(SlideError, match="cannot read it"):
        tile_slide(small[0], tile_size=128)


@pytest.mark.parametrize(
    "kw", [{"tile_size": 0}, {"image_size": 2.5}, {"tiles_per_patient": True}, {"min_tissue": 0}]
)
def test_bad_parameters(kw, small):
    with pytest.raises(UserError):
        tile_slide(small[0], **kw)

