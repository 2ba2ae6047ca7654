"""Hostile or unlucky input: links planted in the download cache, image bombs, Unicode ids.

Each test is named for the defect it guards against; the outside world is faked (a loopback
server from tests/fake_gdc.py, files in tmp_path).
"""

from __future__ import annotations

import gzip
import os
import struct
import unicodedata
import warnings
import zlib
from functools import partial

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image, ImageFile

from rna2histo.__main__ import main
from rna2histo.cohort import gdc, http, xena
from rna2histo.cohort import load_cohort as _load_cohort
from rna2histo.cohort.folder import build_folder
from rna2histo.cohort.rna_table import read_rna_table
from rna2histo.errors import UserError
from tests.fake_gdc import FakeGDC

T, S = 32, 16  # tile and image size of the folder cohorts here
NFC = unicodedata.normalize("NFC", "Müller")

# These cohorts are read to be inspected; most hold too few patients to train on.
load_cohort = partial(_load_cohort, check_splits=False)
NFD = unicodedata.normalize("NFD", "Müller")
OUTSIDE = b"a file outside the cache that a download must never touch\n"


@pytest.fixture
def fake():
    with FakeGDC() as server:
        yield server


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# -- 6: links in the download cache ----------------------------------------------------------


def slide(fake, data: bytes) -> pd.Series:
    record = fake.add_slide("f-1", "TCGA-05-4244-01Z-00-DX1.abc.svs", "TCGA-05-4244", data)
    return pd.Series(record | {"patient_id": "TCGA-05-4244"})


def outside_file(tmp_path):
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(OUTSIDE)
    return target


def test_a_symlinked_part_file_does_not_redirect_the_download(fake, tmp_path):
    target = outside_file(tmp_path)
    row = slide(fake, os.urandom(5000))
    part = tmp_path / "cache" / "slides" / (row["file_name"] + ".part")
    part.parent.mkdir(parents=True)
    part.symlink_to(target)
    with pytest.raises(UserError) as err:
        gdc.download_slide(row, tmp_path / "cache", api=fake.url, backoff=0)
    message = one_line(err)
    assert str(part) in message and "is a symbolic link" in message and "remove it" in message
    assert target.read_bytes() == OUTSIDE
    assert not (part.parent / row["file_name"]).exists()


class LinkPlanter(requests.Session):
    """A session that swaps the .part file for a link just before the body arrives: the race
    that a check before opening cannot close, only O_NOFOLLOW at the open itself."""

    def __init__(self, part, target):
        super().__init__()
        self.part, self.target = part, target

    def get(self, *args, **kw):
        self.part.unlink(missing_ok=True)
        self.part.symlink_to(self.target)
        return super().get(*args, **kw)


def test_a_part_file_swapped_for_a_link_mid_download_is_not_written_through(fake, tmp_path):
    target = outside_file(tmp_path)
    data = os.urandom(5000)
    url = fake.add_file("/f.bin", data)
    dest = tmp_path / "cache" / "f.bin"
    part = dest.with_name("f.bin.part")
    dest.parent.mkdir()
    part.write_bytes(data[:1000])  # an interrupted download: the next attempt appends
    with pytest.raises(UserError) as err:
        http.download(url, dest, session=LinkPlanter(part, target), backoff=0)
    assert "is a symbolic link" in one_line(err)
    assert target.read_bytes() == OUTSIDE
    assert fake.requests_to("/f.bin")[0]["headers"]["range"] == "bytes=1000-"


def test_a_hard_linked_part_file_is_not_written_through(fake, tmp_path):
    target = outside_file(tmp_path)
    url = fake.add_file("/f.bin", os.urandom(5000))
    dest = tmp_path / "cache" / "f.bin"
    dest.parent.mkdir()
    os.link(target, dest.with_name("f.bin.part"))
    with pytest.raises(UserError) as err:
        http.download(url, dest, backoff=0)
    assert "hard links" in one_line(err)
    assert target.read_bytes() == OUTSIDE


def test_a_symlinked_destination_is_refused_not_followed(fake, tmp_path):
    target = outside_file(tmp_path)
    url = fake.add_file("/f.bin", os.urandom(5000))
    dest = tmp_path / "cache" / "f.bin"
    dest.parent.mkdir()
    dest.symlink_to(target)
    with pytest.raises(UserError) as err:
        http.download(url, dest, md5="0" * 32, backoff=0)
    assert str(dest) in one_line(err) and "is a symbolic link" in str(err.value)
    assert target.read_bytes() == OUTSIDE and dest.is_symlink()
    assert fake.count("/f.bin") == 0  # refused before any transfer


def test_downloads_still_resume_and_verify(fake, tmp_path):
    data = os.urandom(300_000)
    url = fake.add_file("/f.bin", data)
    fake.cut_first("/f.bin", 100_000)
    dest = http.download(url, tmp_path / "f.bin", size=len(data), backoff=0)
    assert dest.read_bytes() == data and not dest.with_name("f.bin.part").exists()


# -- 7: image bombs in a folder cohort -------------------------------------------------------


def he_tile(rows=2, cols=3, seed=0) -> np.ndarray:
    """(rows*T, cols*T, 3) uint8 of pink tissue: every tile is kept."""
    rng = np.random.default_rng(seed)
    base = np.array([215, 140, 190]) + rng.integers(-20, 20, (rows * T, cols * T, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def png_bomb(path, width=23_000, height=23_000) -> None:
    """A valid PNG header declaring `width` x `height` RGB pixels, with a tiny IDAT: decoding it
    would need width * height * 3 bytes (1.6 GB here); reading its header costs nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


@pytest.fixture
def folder(tmp_path):
    """P1 with a 96 x 64 tissue image (6 tiles), P2 with a 96 x 32 one (3); RNA for both."""
    images = tmp_path / "images"
    for pid, rows in (("P1", 2), ("P2", 1)):
        (images / pid).mkdir(parents=True)
        Image.fromarray(he_tile(rows=rows)).save(images / pid / "a.png")
    rna = tmp_path / "rna.csv"
    rna.write_text("id,CD3E,MKI67\nP1,1.0,2.0\nP2,3.0,4.0\n")
    return rna, images, tmp_path / "cohort"


@pytest.fixture
def no_big_decode(monkeypatch):
    """Decoding an image of more than 10 megapixels fails the test (the bomb must not be)."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        if self.size[0] * self.size[1] > 10**7:
            raise AssertionError(f"decoded a {self.size} image")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


def test_an_image_bomb_under_pillows_limit_is_refused_from_its_header(folder, no_big_decode):
    rna, images, out = folder
    png_bomb(images / "P1" / "bomb.png")
    assert (images / "P1" / "bomb.png").stat().st_size < 1000
    cohort = load_cohort(build_folder(rna, images, out, tile_size=T, image_size=S))
    reason = cohort.manifest["report"]["undecodable_images"]["items"]["P1/bomb.png"]
    assert reason.startswith("23000 x 23000 pixels = 529 megapixels, more than the cap of 100")
    assert "raise --max-pixels" in reason
    assert cohort.manifest["counts"]["tiles"] == 9  # the other images are tiled as before
    assert cohort.manifest["params"]["max_pixels"] == 100_000_000
    assert cohort.manifest["report"]["images_above_max_pixels"] == 1


def test_max_pixels_sets_the_cap(folder):
    rna, images, out = folder
    small = load_cohort(build_folder(rna, images, out, tile_size=T, image_size=S,
                                     max_pixels=6 * T * T - 1))
    assert small.manifest["report"]["undecodable_images"]["count"] == 1
    assert small.patients() == ["P2"]
    reason = small.manifest["report"]["undecodable_images"]["items"]["P1/a.png"]
    assert "96 x 64 pixels" in reason and "max_pixels=6143" in reason
    big = load_cohort(build_folder(rna, images, out.with_name("big"), tile_size=T, image_size=S,
                                   max_pixels=6 * T * T))
    assert big.manifest["counts"]["tiles"] == 9


def test_the_cap_holds_after_scale_too(folder):
    rna, images, out = folder
    cohort = load_cohort(build_folder(rna, images, out, tile_size=T, image_size=S, scale=2.0,
                                      max_pixels=13_000))
    reason = cohort.manifest["report"]["undecodable_images"]["items"]["P1/a.png"]
    assert "192 x 128 pixels after --scale 2 = 0.0246 megapixels" in reason
    assert cohort.patients() == ["P2"]  # 96 x 32 is 192 x 64 after scaling: under the cap


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_a_bad_max_pixels_is_one_line(folder, bad):
    rna, images, out = folder
    with pytest.raises(UserError) as err:
        build_folder(rna, images, out, tile_size=T, image_size=S, max_pixels=bad)
    assert "--max-pixels must be a positive whole number" in one_line(err)
    assert not out.exists()


@pytest.mark.parametrize("signal", ["error", "warning"])
def test_pillows_own_bomb_check_is_the_same_refusal(folder, monkeypatch, signal):
    """Pillow checks sizes where we cannot (GIF and ICO frames as they load): its error, and
    its warning (which it only warns), skip the image with the same hint, never decode it."""
    rna, images, out = folder
    load = ImageFile.ImageFile.load

    def bomb_in_p1(self):
        if "P1" in str(getattr(self, "filename", "")):
            message = "Image size (900000000 pixels) exceeds limit of 100000000 pixels"
            if signal == "error":
                raise Image.DecompressionBombError(message)
            warnings.warn(message, Image.DecompressionBombWarning)
            raise AssertionError("decoded after Pillow's bomb warning")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb_in_p1)
    cohort = load_cohort(build_folder(rna, images, out, tile_size=T, image_size=S))
    reason = cohort.manifest["report"]["undecodable_images"]["items"]["P1/a.png"]
    assert "exceeds limit" in reason and reason.endswith("raise --max-pixels if it is meant")
    assert cohort.patients() == ["P2"]
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, restored afterwards


def test_max_pixels_on_the_command_line(folder, capsys):
    rna, images, out = folder
    argv = ["cohort", "folder", "--rna", str(rna), "--images", str(images), "--out", str(out),
            "--tile-size", str(T), "--image-size", str(S), "--max-pixels", "100"]
    assert main(argv) == 2  # every image skipped: no tile, one line naming the cause
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("error: ")
    assert "2 images could not be decoded (2 of them above the pixel cap: raise --max-pixels" \
        in error and not out.exists()


# -- 11: ids that differ only in Unicode normalisation ---------------------------------------


@pytest.mark.parametrize("rna_id, folder_name", [(NFC, NFD), (NFD, NFC)])
def test_an_nfd_folder_name_joins_the_nfc_rna_id(tmp_path, rna_id, folder_name):
    assert rna_id != folder_name and len(NFD) == len(NFC) + 1
    images = tmp_path / "images"
    (images / folder_name).mkdir(parents=True)
    Image.fromarray(he_tile()).save(images / folder_name / "a.png")
    if folder_name not in os.listdir(images):
        pytest.skip("this file system normalises names itself")
    rna = tmp_path / "rna.csv"
    rna.write_text(f"id,CD3E,MKI67\n{rna_id},1.0,2.0\n", encoding="utf-8")
    cohort = load_cohort(build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S))
    assert cohort.patients() == [NFC] and list(cohort.rna.index) == [NFC]
    assert cohort.manifest["report"]["images_without_rna"]["count"] == 0


def test_folders_differing_only_in_normalisation_are_refused(tmp_path):
    images = tmp_path / "images"
    for name in (NFC, NFD):
        (images / name).mkdir(parents=True)
        Image.fromarray(he_tile()).save(images / name / "a.png")
    if len(os.listdir(images)) < 2:
        pytest.skip("this file system normalises names itself")
    rna = tmp_path / "rna.csv"
    rna.write_text(f"id,CD3E\n{NFC},1.0\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        build_folder(rna, images, tmp_path / "c", tile_size=T, image_size=S)
    message = one_line(err)
    assert message.startswith(str(images)) and ascii(NFC) in message and ascii(NFD) in message
    assert "Unicode normalisation" in message and "rename one" in message
    assert not (tmp_path / "c").exists() and sorted(os.listdir(tmp_path)) == ["images", "rna.csv"]


def test_rna_ids_differing_only_in_normalisation_are_refused(tmp_path):
    rna = tmp_path / "rna.csv"
    rna.write_text(f"id,CD3E\n{NFC},1.0\nP2,2.0\n{NFD},3.0\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_rna_table(rna)
    message = one_line(err)
    assert message.startswith(str(rna)) and ascii(NFC) in message and ascii(NFD) in message


def test_rna_ids_are_read_in_nfc(tmp_path):
    rna = tmp_path / "rna.parquet"
    pd.DataFrame({"id": [NFD, "P2"], "CD3E": [1.0, 2.0]}).to_parquet(rna)
    assert list(read_rna_table(rna).index) == [NFC, "P2"]


def xena_file(tmp_path, samples):
    header = "sample\t" + "\t".join(samples)
    path = tmp_path / "m.tsv.gz"
    path.write_bytes(gzip.compress(f"{header}\nG1\t{chr(9).join('1' * len(samples))}\n".encode()))
    return path


KELVIN = "TCGA-\u212a5-4244-01"  # KELVIN SIGN: NFC makes it the letter K


def test_xena_barcodes_are_read_in_nfc(tmp_path):
    matrix = xena.read_matrix(xena_file(tmp_path, [KELVIN, "TCGA-05-4244-11"]))
    assert list(matrix.index) == ["TCGA-K5-4244-01", "TCGA-05-4244-11"]


def test_xena_barcodes_differing_only_in_normalisation_are_refused(tmp_path):
    with pytest.raises(UserError) as err:
        xena.read_matrix(xena_file(tmp_path, ["TCGA-K5-4244-01", KELVIN]))
    assert ascii(KELVIN) in one_line(err) and "Unicode normalisation" in str(err.value)


def test_gdc_case_ids_are_read_in_nfc(fake):
    fake.add_slide("f-1", "a.svs", NFD, b"x")
    slides = gdc.diagnostic_slides("TCGA-LUAD", api=fake.url, backoff=0)
    assert slides["patient_id"].tolist() == [NFC]


def test_gdc_case_ids_differing_only_in_normalisation_are_refused(fake):
    fake.add_slide("f-1", "a.svs", NFD, b"x")
    fake.add_slide("f-2", "b.svs", NFC, b"y")
    with pytest.raises(UserError) as err:
        gdc.diagnostic_slides("TCGA-LUAD", api=fake.url, backoff=0)
    message = one_line(err)
    assert message.startswith(fake.url) and ascii(NFC) in message and ascii(NFD) in message
