import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort import CohortWriter, describe, load_cohort, split_patients
from rna2histo.cohort.format import FORMAT_VERSION
from rna2histo.errors import UserError
from rna2histo.training.loop import fit

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


def users_files(out):
    """A user's notes and a folder of other outputs, kept in a cohort folder."""
    (out / "notes.txt").write_text("precious")
    (out / "figures").mkdir()
    (out / "figures" / "umap.png").write_bytes(b"\x89PNG")


def test_a_rebuild_keeps_the_users_other_files(tmp_path):  # issue 23, defect 1
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    users_files(out)
    c = write_tiny_cohort(out, patients=5, seed=2)
    assert c.manifest["counts"]["patients"] == 5
    assert (out / "notes.txt").read_text() == "precious"
    assert (out / "figures" / "umap.png").read_bytes() == b"\x89PNG"
    assert sorted(c.manifest["files"]) == sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no temporary folder left


def test_a_rebuild_removes_the_old_cohorts_own_files_it_does_not_write_again(tmp_path):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    pd.DataFrame({"program_a": [1.0]}).to_parquet(out / "patients.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].append("patients.parquet")  # as a synthetic cohort's manifest lists it
    (out / "manifest.json").write_text(json.dumps(manifest))
    c = write_tiny_cohort(out, seed=2)
    assert not (out / "patients.parquet").exists() and c.patients_table is None


def test_a_rebuild_of_a_cohort_without_a_file_list_keeps_the_users_files(tmp_path):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]  # written before cohorts listed their files: the known names are theirs
    (out / "manifest.json").write_text(json.dumps(manifest))
    users_files(out)
    write_tiny_cohort(out, seed=2)
    assert (out / "notes.txt").read_text() == "precious" and (out / "figures" / "umap.png").exists()


def test_a_failed_swap_puts_the_users_files_back(tmp_path, monkeypatch):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    users_files(out)
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(src) == out:  # Ctrl-C just as the old cohort moves aside
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_tiny_cohort(out, seed=2)
    assert (out / "notes.txt").read_text() == "precious" and (out / "figures" / "umap.png").exists()
    assert load_cohort(out).manifest["params"] == {"seed": 1}  # the old cohort, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]


def test_a_users_file_named_like_a_new_cohort_file_is_refused_not_overwritten(tmp_path):
    out = tmp_path / "cohort"
    write_tiny_cohort(out, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].remove("splits.csv")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "splits.csv").write_text("mine")
    with pytest.raises(UserError, match="splits.csv: is not part of the old cohort"):
        write_tiny_cohort(out, seed=2)
    assert (out / "splits.csv").read_text() == "mine"


@pytest.mark.parametrize("patients", [1, 2])
def test_too_few_patients_for_the_split_is_one_line_where_the_cohort_is_read(tmp_path, patients):  # defect 8
    out = tmp_path / "cohort"
    write_tiny_cohort(out, patients=patients)
    with pytest.raises(UserError) as err:
        fit("cvae", out, tmp_path / "run", epochs=1, batch_size=2, device="cpu", progress=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(out))
    assert f"train {patients}, val 0, test 0" in message and "3 or more patients" in message
    assert not (tmp_path / "run").exists()
    assert "cannot be trained on" in describe(load_cohort(out, check_splits=False))
