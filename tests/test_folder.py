"""The bring-your-own-data source: tiling, background, scale, TCGA names, bad input, skips."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rna2histo.cohort import folder as folder_source
from rna2histo.cohort import load_cohort as _load_cohort
from rna2histo.cohort.folder import build_folder, tissue_fraction
from rna2histo.errors import UserError

from .conftest import write_tiny_cohort

T = 32  # tile size in these tests
S = 16  # image size

# These cohorts are read to be inspected; most hold too few patients to train on.
load_cohort = partial(_load_cohort, check_splits=False)


def he_image(layout, t=T, seed=0) -> np.ndarray:
    """(H, W, 3) uint8: pink tissue with purple nuclei where `layout` is 1, glass where 0."""
    rng = np.random.default_rng(seed)
    cells = np.kron(np.asarray(layout), np.ones((t, t), dtype=int)).astype(bool)
    h, w = cells.shape
    tissue = np.array([215, 140, 190]) + rng.integers(-20, 20, (h, w, 3))
    nuclei = rng.random((h, w)) < 0.15
    tissue[nuclei] = np.array([95, 55, 140]) + rng.integers(-15, 15, (int(nuclei.sum()), 3))
    glass = np.array([242, 240, 244]) + rng.integers(-6, 6, (h, w, 3))
    return np.clip(np.where(cells[..., None], tissue, glass), 0, 255).astype(np.uint8)


def save(path, layout, t=T, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(he_image(layout, t)).save(path, **kw)
    return path


def write_rna(path, ids, genes=("CD3E", "MKI67", "EPCAM", "ACTB")):
    values = np.random.default_rng(1).normal(6, 2, (len(ids), len(genes)))
    table = pd.DataFrame(values, index=pd.Index(ids, name="id"), columns=list(genes))
    table.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    return path


@pytest.fixture
def byod(tmp_path):
    """RNA for P1-P4 (P4 has no images); images for P1-P3 and P9 (no RNA); 8 tissue tiles."""
    images = tmp_path / "images"
    save(images / "P1" / "a.png", [[1, 1, 0], [0, 1, 1]])  # 4 tissue, 2 glass
    save(images / "P1" / "b.jpg", [[1]], quality=95)
    save(images / "P2" / "a.tif", [[1, 0], [0, 0]])
    p3 = np.pad(he_image([[1, 1]]), ((0, 10), (0, 10), (0, 0)), constant_values=245)
    (images / "P3").mkdir()
    Image.fromarray(p3).save(images / "P3" / "a.png")  # the 10-pixel margins are not a tile
    save(images / "P9" / "a.png", [[1]])
    rna = write_rna(tmp_path / "rna.csv", ["P1", "P2", "P3", "P4"])
    return rna, images, tmp_path / "cohort"


def build(byod, **kw):
    rna, images, out = byod
    return build_folder(rna, images, out, **{"tile_size": T, "image_size": S, **kw})


def test_happy_path(byod):
    c = load_cohort(build(byod))
    assert c.manifest["source"] == "folder" and c.manifest["mpp"] is None
    assert c.manifest["counts"] == {"patients": 3, "tiles": 8, "genes": 4}
    assert c.tiles.shape == (8, S, S, 3)
    assert list(c.tiles_table.columns) == ["patient_id", "origin", "x", "y", "tissue_fraction"]
    assert c.tiles_table.patient_id.value_counts().to_dict() == {"P1": 5, "P2": 1, "P3": 2}
    p1a = c.tiles_table[c.tiles_table.origin == "P1/a.png"]
    assert list(zip(p1a.x, p1a.y)) == [(0, 0), (T, 0), (T, T), (2 * T, T)]  # row-major
    assert (c.tiles_table.tissue_fraction >= 0.5).all()
    assert sorted(c.splits.patient_id) == sorted(c.patients()) == ["P1", "P2", "P3"]
    assert set(c.splits.split) == {"train", "val", "test"}
    report = c.manifest["report"]
    assert report["rna_without_images"] == {"count": 1, "items": ["P4"]}
    assert report["images_without_rna"] == {"count": 1, "items": ["P9"]}
    assert report["tiles"] == {"cut": 6 + 1 + 4 + 2, "background": 5, "kept": 8}
    params = c.manifest["params"]
    assert params["tile_size"] == T and params["image_size"] == S and params["scale"] == 1.0
    assert params["rna"].endswith("rna.csv") and params["images"].endswith("images")


def test_tiles_are_the_resized_crops(tmp_path):
    images, rna = tmp_path / "images", write_rna(tmp_path / "rna.csv", ["P1"])
    save(images / "P1" / "a.png", [[1]])
    c = load_cohort(build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=T))
    np.testing.assert_array_equal(c.tiles[0], he_image([[1]]))


def test_scale_resamples_before_tiling(tmp_path):
    images, rna = tmp_path / "images", write_rna(tmp_path / "rna.csv", ["P1"])
    save(images / "P1" / "a.png", [[1, 0], [1, 1]], t=2 * T)  # 40x: tiles of 2T
    c = load_cohort(build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S, scale=0.5))
    table = c.tiles_table
    assert sorted(zip(table.x, table.y)) == [(0, 0), (0, T), (T, T)]  # in the scaled image
    assert c.manifest["params"]["scale"] == 0.5


def test_tcga_barcodes_in_rows_and_folders(tmp_path):
    images = tmp_path / "images"
    save(images / "TCGA-AA-0001-01Z-00-DX1" / "a.png", [[1, 1]])
    save(images / "TCGA-AA-0001-01Z-00-DX2" / "a.png", [[1]])
    save(images / "TCGA-AA-0002-01Z-00-DX1" / "a.png", [[1]])
    rna = write_rna(tmp_path / "rna.tsv", ["TCGA-AA-0001-01A-11R-A001-07", "TCGA-AA-0002-01A"])
    out = build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S, progress=True)
    c = load_cohort(out)
    assert c.patients() == ["TCGA-AA-0001", "TCGA-AA-0002"]
    counts = c.tiles_table.patient_id.value_counts().to_dict()
    assert counts == {"TCGA-AA-0001": 3, "TCGA-AA-0002": 1}
    assert "TCGA-AA-0001-01Z-00-DX2/a.png" in set(c.tiles_table.origin)
    merged = c.manifest["report"]["merged_folders"]
    assert merged == {
        "count": 1,
        "items": {"TCGA-AA-0001": ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2"]},
    }


def test_transparent_parts_are_glass(tmp_path):
    images, rna = tmp_path / "images", write_rna(tmp_path / "rna.csv", ["P1"])
    rgba = np.dstack([he_image([[1, 1]]), np.full((T, 2 * T), 255, np.uint8)])
    rgba[:, T:] = (0, 0, 0, 0)  # transparent black: must read as white glass, not as dark tissue
    (images / "P1").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(images / "P1" / "a.png")
    c = load_cohort(build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S))
    assert list(c.tiles_table.x) == [0]


def test_tissue_fraction():
    white = np.full((8, 8, 3), 245, np.uint8)
    assert tissue_fraction(white) == 0.0
    assert tissue_fraction(he_image([[1]])) > 0.95
    assert tissue_fraction(np.full((8, 8, 3), (128, 128, 128), np.uint8)) == 0.0  # grey
    assert tissue_fraction(np.zeros((8, 8, 3), np.uint8)) == 0.0  # black pen, padding
    assert tissue_fraction(np.full((8, 8, 3), (240, 200, 220), np.uint8)) == 1.0  # pale pink
    half = he_image([[1, 0]])
    assert 0.45 < tissue_fraction(half) < 0.55


# --- skipped, counted and listed in the report ----------------------------------------------


def test_skipped_images_and_patients_are_reported(byod):
    rna, images, _ = byod
    (images / "P1" / "notes.txt").write_text("not an image")
    truncated = Image.fromarray(he_image([[1]]))
    truncated.save(images / "P2" / "broken.png")
    data = (images / "P2" / "broken.png").read_bytes()
    (images / "P2" / "broken.png").write_bytes(data[: len(data) // 2])
    save(images / "P2" / "small.png", [[1]], t=T - 1)
    save(images / "P3" / "b.png", [[0, 0]])
    save(images / "P5" / "glass.png", [[0, 0], [0, 0]])  # a patient with only background
    (images / "P6").mkdir()
    (images / "P6" / "scan.png").write_bytes(b"garbage")  # a patient with only a broken image
    write_rna(rna, ["P1", "P2", "P3", "P4", "P5", "P6"])
    (images / "readme.md").write_text("loose file")
    c = load_cohort(build(byod))
    assert c.patients() == ["P1", "P2", "P3"] and c.manifest["counts"]["tiles"] == 8
    report = c.manifest["report"]
    undecodable = report["undecodable_images"]
    assert set(undecodable["items"]) == {"P1/notes.txt", "P2/broken.png", "P6/scan.png"}
    assert undecodable["count"] == 3
    small = {"P2/small.png": "31 x 31 after scaling"}
    assert report["images_smaller_than_tile"] == {"count": 1, "items": small}
    assert set(report["images_without_tissue"]["items"]) == {"P3/b.png", "P5/glass.png"}
    assert report["patients_without_tiles"] == {"count": 2, "items": ["P5", "P6"]}
    assert report["files_outside_patient_folders"] == {"count": 1, "items": ["readme.md"]}


def test_too_large_images_are_skipped(byod, monkeypatch):
    monkeypatch.setattr(folder_source, "MAX_PIXELS", 3 * T * T)
    report = load_cohort(build(byod)).manifest["report"]
    assert "more than" in report["undecodable_images"]["items"]["P1/a.png"]


def test_rna_problems_are_reported(tmp_path):
    images = tmp_path / "images"
    save(images / "P1" / "a.png", [[1]])
    save(images / "P2" / "a.png", [[1]])
    rna = tmp_path / "rna.csv"
    rna.write_text("id,A,B,C\nP1,1,,inf\nP2,2,,-inf\nP3,NA,,1\n")
    c = load_cohort(build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S))
    assert c.manifest["report"]["rna"] == {
        "infinite_values": 2,
        "genes_all_missing": {"count": 1, "items": ["B"]},
        "missing_values": 3,
    }
    assert list(c.rna.columns) == ["A", "C"] and list(c.rna.index) == ["P1", "P2"]
    assert c.rna["C"].isna().all()  # left for the normaliser to impute


# --- bad input: one line naming the file and the problem, nothing written -------------------


def fails(byod, *fragments, **kw):
    with pytest.raises(UserError) as err:
        build(byod, **kw)
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no cohort, no temporary folder


def test_duplicate_patient_ids(byod, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    byod[0].write_text("id,A\nP1,1\nP2,2\nP1,3\n")
    fails(byod, "rna.csv", "duplicate patient ids", "'P1'")
    assert_nothing_written(tmp_path, before)


def test_non_numeric_value(byod, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    byod[0].write_text("id,A,B\nP1,1,2\nP2,2,x7\n")
    fails(byod, "rna.csv", "non-numeric expression value 'x7'", "row 'P2'", "column 'B'")
    assert_nothing_written(tmp_path, before)


def test_no_patient_in_common(byod, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    write_rna(byod[0], ["X1", "X2"])
    fails(
        byod, "rna.csv", "images", "no patient in both", "2 patients (e.g. 'X1')", "4 (e.g. 'P1')"
    )
    assert_nothing_written(tmp_path, before)


def test_images_folder_missing(byod, tmp_path):
    rna, _, out = byod
    fails((rna, tmp_path / "nowhere", out), "nowhere", "images folder not found")
    assert not out.exists()


def test_images_folder_without_patient_folders(tmp_path):
    (tmp_path / "images").mkdir()
    save(tmp_path / "images" / "a.png", [[1]]).rename(tmp_path / "images" / "P1.png")
    rna = write_rna(tmp_path / "rna.csv", ["P1"])
    fails((rna, tmp_path / "images", tmp_path / "c"), "images", "no patient subfolders")


def test_output_that_is_not_a_cohort_is_refused_first(byod):
    rna, _, out = byod
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    rna.unlink()  # the output is checked before the RNA table is even read
    fails(byod, "cohort", "is not a cohort")
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


def test_no_tile_left_is_fatal(byod, tmp_path):
    out = byod[2]
    fails(byod, "no tile kept", "4 were smaller than the tile", tile_size=4 * T)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_parameters(byod):
    fails(byod, "--tile-size", tile_size=0)
    fails(byod, "--image-size", image_size=2.5)
    fails(byod, "--scale", scale=-1.0)


# --- rebuilding into the same folder --------------------------------------------------------


def test_rebuild_replaces_the_cohort(byod, tmp_path):
    first = load_cohort(build(byod))
    second = load_cohort(build(byod, image_size=8, seed=3))
    assert first.root == second.root and second.tiles.shape == (8, 8, 8, 3)
    assert second.manifest["params"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "images", "rna.csv"]


def test_failed_rebuild_keeps_the_old_cohort(byod):
    rna, _, out = byod
    write_tiny_cohort(out)
    before = (out / "tiles.npy").read_bytes()
    rna.write_text("id,A\nP1,oops\n")
    fails(byod, "'oops'")
    assert (out / "tiles.npy").read_bytes() == before
    load_cohort(out)
