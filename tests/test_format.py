import json

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort import CohortWriter, load_cohort, split_patients
from rna2histo.cohort.format import FORMAT_VERSION
from rna2histo.errors import UserError

from .conftest import write_tiny_cohort


def test_round_trip(tiny_cohort):
    c = tiny_cohort
    assert c.tiles.shape == (30, 16, 16, 3) and c.tiles.dtype == np.uint8
    assert isinstance(c.tiles, np.memmap)
    assert c.rna.index.name == "patient_id" and c.rna.shape == (10, 20)
    assert len(c.tiles_table) == 30
    assert sorted(c.patients("train") + c.patients("val") + c.patients("test")) == sorted(c.patients())
    for split in ("train", "val", "test"):
        ids = set(c.tiles_table.patient_id.iloc[c.tile_indices(split)])
        assert ids == set(c.patients(split))
    assert c.manifest["counts"] == {"patients": 10, "tiles": 30, "genes": 20}


def test_patient_tiles_are_each_patients_first_tiles_in_order(tiny_cohort):
    c = tiny_cohort
    ids = c.patients()[:3][::-1]
    got = c.patient_tiles(ids, 2)
    assert list(got) == ids
    for p in ids:
        rows = np.flatnonzero(c.tiles_table.patient_id.to_numpy() == p)
        np.testing.assert_array_equal(got[p], c.tiles[rows[:2]])
    assert all(len(v) == 3 for v in c.patient_tiles(ids, 99).values())  # 3 tiles each: all of them


def test_interrupted_build_leaves_nothing_that_loads(tmp_path):
    out = tmp_path / "cohort"
    with pytest.raises(RuntimeError):
        with CohortWriter(out, 8) as writer:
            writer.add_tiles(np.zeros((2, 8, 8, 3), np.uint8))
            raise RuntimeError("killed")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder went too


def test_failed_rebuild_keeps_the_old_cohort(tmp_path):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    before = (out / "tiles.npy").read_bytes()
    with pytest.raises(RuntimeError):
        with CohortWriter(out, 16) as writer:
            writer.add_tiles(np.zeros((1, 16, 16, 3), np.uint8))
            raise RuntimeError("killed")
    assert (out / "tiles.npy").read_bytes() == before
    load_cohort(out)


def test_rebuild_replaces_a_cohort(tmp_path):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    c = write_tiny_cohort(out, patients=5, seed=2)
    assert c.manifest["counts"]["patients"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(UserError, match="exists and is not a cohort"):
        CohortWriter(out, 8)
    assert (out / "thesis.docx").read_text() == "precious"


def test_newer_format_version_is_refused(tiny_cohort):
    path = tiny_cohort.root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=rf"manifest.json: cohort format version {FORMAT_VERSION + 1} is newer"):
        load_cohort(tiny_cohort.root)


def test_missing_cohort_names_the_folder(tmp_path):
    with pytest.raises(UserError, match="not a cohort"):
        load_cohort(tmp_path / "nowhere")


def test_writer_rejects_wrong_tiles(tmp_path):
    with CohortWriter(tmp_path / "c", 8) as writer, pytest.raises(ValueError):
        writer.add_tiles(np.zeros((1, 9, 9, 3), np.uint8))


def test_split_is_seeded_disjoint_and_study_sized():
    ids = [f"P{i}" for i in range(50)]
    a = split_patients(ids, seed=3)
    b = split_patients(list(reversed(ids)), seed=3)
    pd.testing.assert_frame_equal(a, b)  # independent of input order
    assert a.split.value_counts().to_dict() == {"train": 34, "val": 8, "test": 8}
    assert a.patient_id.is_unique
    assert not split_patients(ids, seed=4).equals(a)
