"""`cohort tcga` end to end against a loopback GDC and Xena: selection, resume, faults, safety."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pandas as pd
import pytest

from rna2histo.__main__ import main
from rna2histo.cohort import load_cohort as _load_cohort
from rna2histo.cohort.tcga import build_tcga
from tests.fake_gdc import FakeGDC, xena_matrix
from tests.slide_factory import write_slide

PATIENTS = [f"TCGA-AA-{i:04d}" for i in range(1, 6)]  # five patients with RNA and a slide
# A capped selection can leave a split empty; these cohorts are read to be inspected.
load_cohort = partial(_load_cohort, check_splits=False)
KW = {"tiles_per_patient": 3, "tile_size": 64, "image_size": 32, "workers": 1, "seed": 0}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Slide bytes: five small readable slides (512 px at 0.25 um/px, 2 levels)."""
    root = tmp_path_factory.mktemp("slides")
    out = {}
    for k, patient in enumerate(PATIENTS):
        path = root / f"{patient}.tif"
        write_slide(path, np.random.default_rng(k), size=512, tile=64)
        out[patient] = path.read_bytes()
    return out


@pytest.fixture
def gdc(slides):
    """The five patients (one with a hostile file name), a slide without RNA, an unreadable one."""
    with FakeGDC() as fake:
        samples = [f"{p}-01A" for p in PATIENTS] + [f"{PATIENTS[0]}-11A", "TCGA-BB-0001-01A"]
        fake.set_matrix(xena_matrix(genes=8, samples=samples))
        for k, patient in enumerate(PATIENTS):
            name = "../../escape.svs" if k == 4 else f"{patient}-01Z-00-DX1.svs"
            fake.add_slide(f"uuid-{k}", name, patient, slides[patient])
        fake.add_slide("uuid-norna", "TCGA-CC-0001-01Z-00-DX1.svs", "TCGA-CC-0001", slides[PATIENTS[0]])
        fake.add_slide("uuid-bad", "TCGA-BB-0001-01Z-00-DX1.svs", "TCGA-BB-0001", b"not a slide" * 100)
        yield fake


def build(gdc, root, name="cohort", **kw):
    return build_tcga(root / name, cache=root / f"{name}-cache", xena_url=gdc.xena_url, gdc_api=gdc.url,
                      progress=False, **{**KW, **kw})


def test_builds_the_cohort_and_reports_what_it_skipped(gdc, tmp_path):
    cohort = load_cohort(build(gdc, tmp_path))
    assert cohort.patients() == PATIENTS  # no RNA: not selected; unreadable: skipped
    assert len(cohort.tiles) == 15 and cohort.tiles.shape[1:] == (32, 32, 3)
    assert cohort.manifest["source"] == "tcga" and cohort.manifest["mpp"] == pytest.approx(1.0)
    report = cohort.manifest["report"]
    assert report["slides_unreadable"]["count"] == 1
    assert "TCGA-BB-0001-01Z-00-DX1.svs" in report["slides_unreadable"]["items"]
    assert report["rna"]["primary_tumour_samples"] == 6  # the 11A normal sample is dropped
    # the hostile name stayed inside the cache, and nothing was written beside out and cache
    assert (tmp_path / "cohort-cache" / "slides" / "escape.svs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "cohort-cache"]
    assert not (tmp_path / "escape.svs").exists()


def test_resume_after_an_interruption_gives_the_same_cohort(gdc, tmp_path):
    reference = load_cohort(build(gdc, tmp_path, "reference"))
    # interrupted run: a checksum mismatch on one slide and a connection cut on another
    gdc.serve_wrong_bytes("/data/uuid-2")
    gdc.cut_first("/data/uuid-3", 5000)
    first = load_cohort(build(gdc, tmp_path))
    assert PATIENTS[2] not in first.patients() and first.manifest["report"]["slides_failed"]["count"] == 1
    ranges = [r["headers"].get("range") for r in gdc.requests_to("/data/uuid-3")]
    assert ranges == [None, None, "bytes=5000-"]  # reference run; cut at 5000 bytes; resumed there
    # the next run fetches only the unfinished slide
    gdc._wrong.clear()
    before = {k: gdc.count(f"/data/uuid-{k}") for k in range(5)}
    resumed = load_cohort(build(gdc, tmp_path))
    after = {k: gdc.count(f"/data/uuid-{k}") for k in range(5)}
    assert {k for k in before if after[k] != before[k]} == {2}
    assert np.array_equal(np.asarray(resumed.tiles), np.asarray(reference.tiles))
    pd.testing.assert_frame_equal(resumed.tiles_table, reference.tiles_table)
    pd.testing.assert_frame_equal(resumed.rna, reference.rna)
    assert resumed.splits.equals(reference.splits)


def test_a_killed_slide_is_redone_and_parallel_workers_agree(gdc, tmp_path):
    reference = load_cohort(build(gdc, tmp_path, "reference"))
    build(gdc, tmp_path)
    cache = tmp_path / "cohort-cache"
    (cache / "records" / "uuid-1.json").unlink()  # as if killed between the tiles and the record
    (cache / "tiles" / "uuid-0.npy").unlink()  # as if the tiles were lost: the record alone is not trusted
    redone = load_cohort(build(gdc, tmp_path, workers=2))
    assert np.array_equal(np.asarray(redone.tiles), np.asarray(reference.tiles))
    record = json.loads((cache / "records" / "uuid-1.json").read_text())
    assert record["status"] == "tiled" and record["level"] == 1  # 0.25 um/px base: level 1 is 20x


def test_selection_is_seeded_and_capped(gdc, tmp_path):
    a = load_cohort(build(gdc, tmp_path, "a", max_patients=3))
    b = load_cohort(build(gdc, tmp_path, "b", max_patients=3))
    assert a.manifest["report"]["slides_selected"] == 3 and a.patients() == b.patients()
    # an unreadable slide among the drawn ones costs its patient (reported), nobody replaces it
    assert len(a.patients()) == 3 - a.manifest["report"]["slides_unreadable"]["count"]


def test_no_keep_slides_deletes_each_slide_once_tiled(gdc, tmp_path):
    build(gdc, tmp_path, keep_slides=False)
    assert not any((tmp_path / "cohort-cache" / "slides").glob("*.svs"))


def test_command_line(gdc, tmp_path, capsys):
    args = ["cohort", "tcga", "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "cache"),
            "--xena-url", gdc.xena_url, "--gdc-api", gdc.url, "--tiles-per-patient", "2",
            "--tile-size", "64", "--image-size", "32", "--workers", "1"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "source tcga" in printed.out
    assert "unreadable: TCGA-BB-0001-01Z-00-DX1.svs" in printed.err  # skipped, and said so
    assert main(args + ["--max-patients", "0"]) == 2  # bad input: one line, exit 2
    err = capsys.readouterr().err
    assert "--max-patients" in err and ">= 1" in err and err.count("\n") == 1


def test_kill_9_mid_download_then_rerun_gives_the_same_cohort(gdc, tmp_path):
    """The real command in a subprocess, killed with SIGKILL while a slide is half downloaded."""
    import os
    import signal
    import subprocess
    import sys
    import time

    reference = load_cohort(build(gdc, tmp_path, "reference"))
    half = len(gdc.files["/data/uuid-3"]) // 2
    gdc.stall("/data/uuid-3", after=half, seconds=60)  # the transfer hangs half way
    cmd = [sys.executable, "-m", "rna2histo", "cohort", "tcga", "--out", str(tmp_path / "cohort"),
           "--cache", str(tmp_path / "cache"), "--xena-url", gdc.xena_url, "--gdc-api", gdc.url,
           "--tiles-per-patient", "3", "--tile-size", "64", "--image-size", "32", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "cache" / "slides" / "TCGA-AA-0004-01Z-00-DX1.svs.part"
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size >= half - (1 << 16)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    have = part.stat().st_size
    assert 0 < have <= half and not (tmp_path / "cohort").exists()  # killed mid-transfer
    gdc.release()
    before = {k: gdc.count(f"/data/uuid-{k}") for k in range(5)}
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    after = {k: gdc.count(f"/data/uuid-{k}") for k in range(5)}
    assert {k for k in before if after[k] != before[k]} == {3, 4}  # the unfinished ones only
    assert gdc.requests_to("/data/uuid-3")[-1]["headers"].get("range") == f"bytes={have}-"
    resumed = load_cohort(tmp_path / "cohort")
    assert np.array_equal(np.asarray(resumed.tiles), np.asarray(reference.tiles))
    pd.testing.assert_frame_equal(resumed.tiles_table, reference.tiles_table)


def test_the_default_rna_matrix_follows_the_project():
    from rna2histo.cohort import xena

    assert xena.matrix_url("TCGA-LUAD") == xena.XENA_URL
    assert xena.matrix_url("TCGA-LUSC").endswith("/TCGA.LUSC.sampleMap%2FHiSeqV2.gz")
