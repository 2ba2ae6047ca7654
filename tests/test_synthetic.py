"""The simulated cohort: format, determinism, programs driving RNA and tiles, stain, calibration."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2hed
from skimage.measure import label, regionprops

from rna2histo import paths
from rna2histo.cohort import load_cohort, tissue
from rna2histo.cohort.synthetic import MARKERS, PROGRAMS, build_synthetic, draw_patient
from rna2histo.errors import UserError

MONUSEG = Path(paths.ROOT).parent / "shared" / "data" / "monuseg-sample"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "small"
    build_synthetic(out, patients=6, tiles_per_patient=3, image_size=48, seed=1, genes=300)
    return load_cohort(out)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Enough patients to see the programs in the RNA and in the tiles."""
    out = tmp_path_factory.mktemp("synthetic") / "wide"
    build_synthetic(out, patients=36, tiles_per_patient=4, image_size=32, seed=2, genes=300)
    return load_cohort(out)


def test_shapes_types_and_ranges(small):
    assert small.tiles.shape == (18, 48, 48, 3) and small.tiles.dtype == np.uint8
    rna = small.rna
    assert rna.shape == (6, 300) and (rna.dtypes == np.float32).all()
    assert rna.index.name == "patient_id" and list(rna.index[:2]) == ["SIM-0001", "SIM-0002"]
    markers = {g for genes in MARKERS.values() for g in genes}
    assert markers <= set(rna.columns) and {"PTPRC", "COL1A1", "EPCAM", "MKI67"} <= markers
    neutral = set(rna.columns) - markers
    assert len(neutral) == 300 - len(markers)
    assert all(re.fullmatch(r"GENE\d{5}", g) for g in neutral)
    values = rna.to_numpy()
    assert values.min() == 0 and 0 < (values == 0).mean() < 0.3 and 12 < values.max() <= 20
    table = small.tiles_table
    assert len(table) == 18 and (table["origin"] == "synthetic").all()
    for column in ("x", "y", "gt_tumour_nuclei", "gt_lymphocytes", "gt_fibroblasts", "gt_mitoses"):
        assert (table[column] >= 0).all()
    fractions = table[["gt_stroma_fraction", "gt_lumen_fraction", "gt_epithelium_fraction"]]
    assert np.allclose(fractions.sum(axis=1), 1)
    programs = small.patients_table[[f"program_{k}" for k in PROGRAMS]]
    assert list(small.patients_table.index) == list(rna.index)
    assert programs.stack().between(0, 1).all()
    assert small.manifest["mpp"] == 64 / 48 and small.manifest["report"]["marker_genes"] == MARKERS


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    def build(name, **kw):
        args = dict(patients=4, tiles_per_patient=2, image_size=32, seed=5, genes=100) | kw
        return load_cohort(build_synthetic(tmp_path / name, **args))

    a, b, c = build("a"), build("b"), build("c", seed=6)
    assert (a.root / "tiles.npy").read_bytes() == (b.root / "tiles.npy").read_bytes()
    pd.testing.assert_frame_equal(a.rna, b.rna)
    pd.testing.assert_frame_equal(a.tiles_table, b.tiles_table)
    pd.testing.assert_frame_equal(a.patients_table, b.patients_table)
    assert not np.array_equal(a.tiles, c.tiles) and not a.rna.equals(c.rna)
    # a patient's tiles do not depend on how many patients are built
    d = build("d", patients=3)
    assert np.array_equal(d.tiles[:6], a.tiles[:6])


def _by_patient(cohort, column):
    return cohort.tiles_table.groupby("patient_id")[column].mean().reindex(cohort.rna.index)


def test_programs_drive_the_rna(wide):
    z = (wide.rna - wide.rna.mean()) / wide.rna.std()
    for program in PROGRAMS:
        score = z[MARKERS[program]].mean(axis=1)
        r = score.corr(wide.patients_table[f"program_{program}"], method="spearman")
        assert r > 0.7, (program, r)


@pytest.mark.parametrize(
    "column, program, least",
    [
        ("gt_lymphocytes", "immune", 0.5),
        ("gt_stroma_fraction", "stroma", 0.6),
        ("gt_epithelium_fraction", "epithelial", 0.6),
        ("gt_lumen_fraction", "lumen", 0.6),
        ("gt_mitoses", "proliferation", 0.3),
    ],
)
def test_programs_drive_the_tiles(wide, column, program, least):
    r = _by_patient(wide, column).corr(wide.patients_table[f"program_{program}"], method="spearman")
    assert r > least, r


def test_more_nuclei_more_hematoxylin(wide):
    table = wide.tiles_table
    nuclei = table[["gt_tumour_nuclei", "gt_lymphocytes", "gt_fibroblasts", "gt_mitoses"]]
    nuclei = nuclei.sum(axis=1)
    hematoxylin = rgb2hed(np.asarray(wide.tiles))[..., 0].mean((1, 2))
    assert np.corrcoef(nuclei, hematoxylin)[0, 1] > 0.5


def _tiles(n, size=64, seed=0, **levels):
    """Tiles of simulated patients (own programs and stains), some program levels fixed."""
    tiles = []
    for seq in np.random.SeedSequence(seed).spawn(n):
        patient = draw_patient(seq, 1)
        rng = np.random.default_rng(patient.tile_seeds[0])
        q = patient.slide.local(0.0, 0.0, rng) | levels
        tiles.append(tissue.render_tile(q, patient.stain, rng, size, labels=True))
    return tiles


def test_stain_colours_pink_purple_tissue_white_lumen():
    tiles = _tiles(8, lumen=0.9)
    pixels = np.concatenate([t.image.reshape(-1, 3) for t in tiles]).astype(float)
    regions = np.concatenate([t.regions.ravel() for t in tiles])
    tissue_rgb, lumen_rgb = pixels[regions < 2].mean(0), pixels[regions == 2].mean(0)
    # pink eosin and purple hematoxylin both absorb green most
    assert tissue_rgb[0] > tissue_rgb[1] and tissue_rgb[2] > tissue_rgb[1]
    assert (lumen_rgb > 215).all() and (lumen_rgb > tissue_rgb + 30).all()
    nuclei = np.concatenate([t.labels.ravel() > 0 for t in tiles])
    assert pixels[nuclei].mean() < pixels[(regions < 2) & ~nuclei].mean() - 20  # nuclei are darker


def test_nucleus_sizes_are_physical():
    nuclei = pd.concat([t.nuclei for t in _tiles(6, size=64)])
    diameter = np.sqrt(4 * nuclei.groupby("kind")["area_um2"].median() / np.pi)
    assert 6 <= diameter["lymphocyte"] <= 8 and 9 <= diameter["tumour"] <= 15
    assert 4 <= diameter["fibroblast"] <= 9  # a 15 x 3 um spindle has the area of a 6.7 um disc


@pytest.mark.parametrize(
    "kw",
    [
        {"patients": 2},
        {"genes": 10},
        {"genes": 20_001},
        {"image_size": 16},
        {"tiles_per_patient": 0},
        {"seed": -1},
        {"patients": 4.5},
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kw):
    with pytest.raises(UserError):
        build_synthetic(tmp_path / "c", **(dict(patients=3, tiles_per_patient=1, genes=100) | kw))
    assert not (tmp_path / "c").exists()


def _real_statistics():
    """Colour and nucleus-area statistics of the MoNuSeg sample at 20x (0.5 um/px)."""
    from PIL import Image

    crops, areas = [], []
    for image_path in sorted((MONUSEG / "images").glob("*.tif")):
        image = Image.open(image_path).convert("RGB")
        half = np.asarray(image.resize((image.width // 2, image.height // 2), Image.BILINEAR))
        crops += [half[y : y + 128, x : x + 128] for y in (0, 186, 372) for x in (0, 186, 372)]
        mask = np.asarray(Image.open(MONUSEG / "masks" / f"{image_path.stem}.png")) > 0
        areas.append(_mean_area(mask, 0.25))  # masks are at 40x
    return np.stack(crops), float(np.median(areas))


def _mean_area(mask: np.ndarray, mpp: float) -> float:
    """Mean area (um^2) of the connected components of a nuclei mask, without specks < 3 um^2."""
    area = np.array([r.area for r in regionprops(label(mask))]) * mpp**2
    return float(area[area >= 3].mean())


@pytest.mark.skipif(not MONUSEG.is_dir(), reason="needs ../shared/data/monuseg-sample")
def test_calibrated_against_real_he():
    real, real_area = _real_statistics()
    tiles = _tiles(24, size=128, seed=3)
    synthetic = np.stack([t.image for t in tiles])
    synthetic_area = np.median([_mean_area(t.labels > 0, 0.5) for t in tiles])
    # the same connected-component measure on both sides: touching nuclei merge in either
    assert 0.5 < synthetic_area / real_area < 2, (synthetic_area, real_area)
    assert np.allclose(synthetic.mean((0, 1, 2)), real.mean((0, 1, 2)), atol=15)
    # mean hematoxylin and eosin (Ruifrok deconvolution) within a factor 1.5
    ratio = rgb2hed(synthetic)[..., :2].mean((0, 1, 2)) / rgb2hed(real)[..., :2].mean((0, 1, 2))
    assert np.all((ratio > 2 / 3) & (ratio < 1.5)), ratio
