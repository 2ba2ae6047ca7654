"""The network layer of the TCGA cohort against a loopback GDC and Xena (tests/fake_gdc.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort import gdc, http, xena
from rna2histo.errors import UserError
from tests.fake_gdc import FakeGDC, xena_matrix

FAST = {"backoff": 0}  # retries without sleeping


@pytest.fixture
def fake():
    with FakeGDC() as server:
        yield server


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def slide_row(fake, data: bytes, file_name="TCGA-05-4244-01Z-00-DX1.abc.svs", file_id="f-1"):
    return pd.Series(fake.add_slide(file_id, file_name, "TCGA-05-4244", data)
                     | {"patient_id": "TCGA-05-4244"})


# -- listing and choosing slides -------------------------------------------------------------


def test_diagnostic_slides_pages_through_every_result(fake):
    for i in range(7):
        fake.add_slide(f"id-{i}", f"TCGA-05-{4200 + i}-01Z-00-DX1.u{i}.svs",
                       f"TCGA-05-{4200 + i}", b"x" * (i + 1))
    fake.add_slide("other", "TCGA-22-0001-01Z-00-DX1.u.svs", "TCGA-22-0001", b"y",
                   project="TCGA-LUSC")
    slides = gdc.diagnostic_slides("TCGA-LUAD", api=fake.url, page_size=3)
    assert list(slides.columns) == ["file_id", "file_name", "md5sum", "file_size", "patient_id"]
    assert sorted(slides["file_id"]) == [f"id-{i}" for i in range(7)]
    assert slides["file_size"].tolist() == list(range(1, 8))
    bodies = [json.loads(r["body"]) for r in fake.requests_to("/files")]
    assert [(b["from"], b["size"]) for b in bodies] == [(0, 3), (3, 3), (6, 3)]
    terms = {c["content"]["field"]: c["content"]["value"] for c in bodies[0]["filters"]["content"]}
    assert terms["cases.project.project_id"] == ["TCGA-LUAD"]
    assert terms["files.experimental_strategy"] == ["Diagnostic Slide"]
    assert terms["files.access"] == ["open"] and terms["files.data_format"] == ["SVS"]
    assert set(bodies[0]["fields"].split(",")) >= {"file_id", "md5sum", "cases.submitter_id"}


def test_a_failing_search_is_retried(fake):
    fake.add_slide("id-0", "TCGA-05-4244-01Z-00-DX1.u.svs", "TCGA-05-4244", b"x")
    fake.fail_next("/files", 503)
    assert len(gdc.diagnostic_slides("TCGA-LUAD", api=fake.url, **FAST)) == 1
    assert fake.count("/files") == 2


def slides_table(patients: int) -> pd.DataFrame:
    rows = []
    for i in range(patients):
        pid = f"TCGA-AA-{i:04d}"
        for dx in (2, 1):  # listed DX2 first: the choice must not depend on the order
            rows.append({"file_id": f"{pid}-dx{dx}", "file_name": f"{pid}-01Z-00-DX{dx}.u.svs",
                         "md5sum": "0" * 32, "file_size": 1, "patient_id": pid})
    return pd.DataFrame(rows)


def test_select_slides_keeps_patients_with_rna_one_slide_each():
    slides = slides_table(4)
    chosen = gdc.select_slides(slides, ["TCGA-AA-0003", "TCGA-AA-0001", "TCGA-ZZ-9999"])
    assert chosen["patient_id"].tolist() == ["TCGA-AA-0001", "TCGA-AA-0003"]
    assert chosen["file_name"].str.contains("DX1").all()


def test_select_slides_draws_a_seeded_repeatable_subset():
    slides = slides_table(20)
    rna = slides["patient_id"].unique()
    first = gdc.select_slides(slides, rna, max_patients=5, seed=3)
    again = gdc.select_slides(slides.sample(frac=1, random_state=1), rna, max_patients=5, seed=3)
    other = gdc.select_slides(slides, rna, max_patients=5, seed=4)
    assert len(first) == 5 and first["patient_id"].is_monotonic_increasing
    pd.testing.assert_frame_equal(first, again)
    assert first["patient_id"].tolist() != other["patient_id"].tolist()
    assert len(gdc.select_slides(slides, rna, max_patients=50)) == 20


# -- downloading -----------------------------------------------------------------------------


def test_a_cut_connection_resumes_with_a_range_request(fake, tmp_path):
    data = payload(300_000)
    row = slide_row(fake, data)
    fake.cut_first("/data/f-1", 120_000)
    path = gdc.download_slide(row, tmp_path, api=fake.url, chunk=1 << 14, **FAST)
    assert path == tmp_path / "slides" / "TCGA-05-4244-01Z-00-DX1.abc.svs"
    assert path.read_bytes() == data
    first, second = fake.requests_to("/data/f-1")
    assert "range" not in first["headers"]
    assert second["headers"]["range"] == "bytes=120000-"
    assert not path.with_name(path.name + ".part").exists()


def test_a_checksum_mismatch_keeps_nothing(fake, tmp_path):
    row = slide_row(fake, payload(5000))
    fake.serve_wrong_bytes("/data/f-1")
    with pytest.raises(UserError) as err:
        gdc.download_slide(row, tmp_path, api=fake.url, **FAST)
    message = str(err.value)
    assert "/data/f-1" in message and "md5 mismatch" in message and row["md5sum"] in message
    assert "\n" not in message
    assert list((tmp_path / "slides").iterdir()) == []  # neither the file nor a .part


def test_a_server_error_is_retried(fake, tmp_path):
    data = payload(1000)
    row = slide_row(fake, data)
    fake.fail_next("/data/f-1", 500)
    assert gdc.download_slide(row, tmp_path, api=fake.url, **FAST).read_bytes() == data
    assert fake.count("/data/f-1") == 2


def test_retries_run_out_with_a_one_line_error(fake, tmp_path):
    fake.add_file("/flaky", b"abc")
    fake.fail_next("/flaky", 502, times=10)
    with pytest.raises(UserError, match=r"/flaky: failed after 3 attempts: HTTP 502"):
        http.download(fake.url + "/flaky", tmp_path / "f", retries=2, **FAST)
    assert fake.count("/flaky") == 3


def test_a_missing_file_is_not_retried(fake, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        http.download(fake.url + "/nothing", tmp_path / "f", **FAST)
    assert fake.count("/nothing") == 1


def test_an_unusable_url_is_not_retried(tmp_path):
    with pytest.raises(UserError, match="not a usable URL"):
        http.download("api.gdc.cancer.gov/data/x", tmp_path / "f", **FAST)


def test_a_verified_file_is_not_fetched_again(fake, tmp_path):
    data = payload(2000)
    row = slide_row(fake, data)
    first = gdc.download_slide(row, tmp_path, api=fake.url, **FAST)
    again = gdc.download_slide(row, tmp_path, api=fake.url, **FAST)
    assert first == again and fake.count("/data/f-1") == 1


def test_a_server_that_ignores_range_restarts_the_file(fake, tmp_path):
    data = payload(4000)
    url = fake.add_file("/whole", data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"junk that is not the start of the file")
    fake.ignore_range("/whole")
    http.download(url, dest, md5=hashlib.md5(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data
    assert fake.requests_to("/whole")[0]["headers"]["range"].startswith("bytes=")


def test_a_complete_part_answered_416_is_verified_and_kept(fake, tmp_path):
    data = payload(4000)
    url = fake.add_file("/done", data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data)  # killed after the last byte, before rename
    http.download(url, dest, md5=hashlib.md5(data).hexdigest(), **FAST)
    assert dest.read_bytes() == data and fake.count("/done") == 1


def test_a_part_longer_than_the_file_starts_again(fake, tmp_path):
    data = payload(4000)
    url = fake.add_file("/short", data)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data + b"extra")
    http.download(url, dest, size=len(data), **FAST)
    assert dest.read_bytes() == data
    assert "range" not in fake.requests_to("/short")[0]["headers"]


def test_progress_reports_bytes(fake, tmp_path):
    url = fake.add_file("/p", payload(3000))
    seen = []
    http.download(url, tmp_path / "p", chunk=1000, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3000, 3000)


# -- hostile names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("..\\x.svs", "x.svs"),
        ("/abs/path.svs", "path.svs"),
        (".hidden.svs", "hidden.svs"),
        ("a b;c$(rm).svs", "a_b_c__rm_.svs"),
        ("x/..", None),
        ("", None),
    ],
)
def test_safe_name(name, expected):
    safe = http.safe_name(name)
    if expected:
        assert safe == expected
    assert safe and "/" not in safe and "\\" not in safe and ".." not in safe
    assert not safe.startswith(".") and len(safe) <= http.MAX_NAME


def test_safe_name_caps_length_and_keeps_the_extension():
    safe = http.safe_name("a" * 500 + ".svs")
    assert len(safe) <= http.MAX_NAME and safe.endswith(".svs")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\x.svs", "/abs/path.svs", ".."])
def test_a_hostile_slide_name_lands_inside_the_cache(fake, tmp_path, name):
    data = payload(100)
    row = slide_row(fake, data, file_name=name)
    path = gdc.download_slide(row, tmp_path / "cache", api=fake.url, **FAST)
    assert path.parent == tmp_path / "cache" / "slides" and path.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_inside_refuses_a_symlink_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "elsewhere.svs", root / "slide.svs")
    with pytest.raises(UserError, match="outside"):
        http.inside(root, "slide.svs")


# -- the Xena matrix -------------------------------------------------------------------------


def test_fetch_and_read_the_xena_matrix(fake, tmp_path):
    samples = ["TCGA-05-4244-01", "TCGA-05-4244-11", "TCGA-05-4249-01",
               "TCGA-05-4250-01B", "TCGA-05-4250-01A"]
    matrix = xena_matrix(genes=6, samples=samples)
    fake.set_matrix(matrix)
    path = xena.fetch_matrix(fake.xena_url, tmp_path / "xena", **FAST)
    assert path == tmp_path / "xena" / "TCGA.LUAD.sampleMap_HiSeqV2.gz"
    assert xena.fetch_matrix(fake.xena_url, tmp_path / "xena") == path
    assert fake.count("/download/TCGA.LUAD.sampleMap%2FHiSeqV2.gz") == 1  # cached
    table = xena.read_matrix(path)
    assert table.shape == (5, 6) and table.index.name == "sample"
    assert (table.dtypes == np.float32).all()
    np.testing.assert_allclose(table.to_numpy(), matrix.T.to_numpy(), rtol=1e-6)

    profiles, report = xena.primary_tumour_profiles(table)
    assert profiles.index.name == "patient_id"
    assert profiles.index.tolist() == ["TCGA-05-4244", "TCGA-05-4249", "TCGA-05-4250"]
    np.testing.assert_array_equal(profiles.loc["TCGA-05-4250"], table.loc["TCGA-05-4250-01A"])
    np.testing.assert_array_equal(profiles.loc["TCGA-05-4244"], table.loc["TCGA-05-4244-01"])
    assert report["other_sample_types"]["items"] == {"11": 1}
    assert report["extra_primary_samples_dropped"]["items"] == ["TCGA-05-4250-01B"]
    assert (report["samples"], report["primary_tumour_samples"], report["patients"]) == (5, 4, 3)


def gz(text: str) -> bytes:
    return gzip.compress(text.encode())


GOOD_HEADER = "sample\tTCGA-05-4244-01\tTCGA-05-4249-01\n"


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"", "empty"),
        (gz("<Error><Code>AccessDenied</Code></Error>\n"), "no sample columns"),
        (gz("sample\tpatient_a\tpatient_b\nG1\t1\t2\n"), "not TCGA sample barcodes"),
        (gz(GOOD_HEADER), "no gene rows"),
        (gz(GOOD_HEADER + "G1\t1.5\tn/a?\n"), "non-numeric value 'n/a?' at gene 'G1'"),
        (gz(GOOD_HEADER + "G1\t1\t2\nG1\t3\t4\n"), "duplicate gene rows: 'G1'"),
        (gz(GOOD_HEADER + "G1\t1\t2\t3\n"), "header names 2 samples but rows have 3"),
        (gz(GOOD_HEADER + "G1\t1\t2\n" * 50)[:40], "cannot read"),  # a truncated download
        (gz("sample\tTCGA-05-4244-01\tTCGA-05-4244-01\nG1\t1\t2\n"), "duplicate sample"),
    ],
)
def test_a_malformed_matrix_is_a_one_line_error(tmp_path, raw, problem):
    path = tmp_path / "HiSeqV2.gz"
    path.write_bytes(raw)
    with pytest.raises(UserError) as err:
        xena.read_matrix(path)
    message = str(err.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message
