"""Bring your own data: a cohort from an RNA table and a folder of images, one subfolder a patient.

::

    rna.csv          patient_id,CD3E,MKI67,...   (or .tsv, .txt, .parquet; see `rna_table`)
    images/P001/*    any image Pillow decodes, any size: H&E fields, crops, TIFF exports
    images/P002/*

Each image is resampled by `scale` (0.5 turns 40x into 20x), cut into non-overlapping
`tile_size` tiles from the top-left, row by row; tiles that are mostly background (tissue
fraction < `MIN_TISSUE`) are dropped and the rest resized to `image_size`. Input that cannot be
used as a whole (an unreadable table, no patient in common) is a one-line `UserError` and nothing
is written; single images or patients that give nothing are skipped and listed in the manifest's
``report``. That includes an image above `max_pixels`, judged from its header before a pixel is
decoded: a 2 MB PNG can declare 23,000 x 23,000 pixels and take gigabytes once decoded.
Folder names are patient ids in Unicode NFC (macOS stores names decomposed, NFD).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError, where
from ..paths import resolve
from .format import CohortWriter, check_output
from .rna_table import (
    _one_line,
    check_normalisation,
    clean_rna,
    counted,
    patient_id,
    read_rna_table,
)
from .split import split_patients

MIN_TISSUE = 0.5  # a tile is kept when at least this fraction of its pixels is tissue
WHITE_LEVEL = 210  # a pixel whose darkest channel is above this is glass (optical density < 0.08)
MIN_SATURATION = 0.08  # HSV saturation; grey glass, shadows and black pen marks are below it
# Images with more pixels are skipped unless `max_pixels` says otherwise. Decoding takes 3 bytes
# a pixel as RGB (4 for RGBA), the conversion to RGB a second copy, transparency and resampling
# one or two more: about 10-20 bytes a pixel at the peak, so 100 megapixels is 1-2 GB, which a
# laptop holds. A large ROI fits (10,000 x 10,000 pixels is 2.5 mm square at 0.25 um/pixel);
# whole-slide exports are beyond it and belong to a slide reader, not Pillow.
MAX_PIXELS = 100_000_000
CAP_HINT = "raise --max-pixels if it is meant"
BATCH = 256  # tiles handed to the writer at once
TILE_COLUMNS = ["patient_id", "origin", "x", "y", "tissue_fraction"]  # tiles.parquet
# report entries for images that gave no tile, each {image path: reason}
SKIPPED = ("undecodable_images", "images_smaller_than_tile", "images_without_tissue")


def build_folder(
    rna, images, out, tile_size=256, image_size=128, scale=1.0, seed=0, progress=False,
    max_pixels=None,
) -> Path:
    """Build a cohort at `out` from an RNA table and an images folder; returns `out`.

    `max_pixels` (default `MAX_PIXELS`) caps an image's pixels, before and after `scale`.
    """
    rna, images, out = resolve(rna), resolve(images), resolve(out)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels  # read now: tests patch it
    _check_params(tile_size, image_size, scale)
    _check_max_pixels(max_pixels)
    check_output(out)  # before any long work: refuse a folder that is not ours at once
    if not images.is_dir():
        raise where(images, "images folder not found" if not images.exists() else "is not a folder")
    table, rna_report = clean_rna(read_rna_table(rna))
    if table.shape[1] == 0:
        raise where(rna, "every gene is missing for every patient")
    folders, merged, loose = _patient_folders(images)
    patients = _matched(table, folders, rna, images)
    report = {
        "rna": rna_report,
        "rna_without_images": counted(sorted(set(table.index) - set(folders))),
        "images_without_rna": counted(sorted(set(folders) - set(table.index))),
        "merged_folders": counted(merged),
        "files_outside_patient_folders": counted(loose),
    }
    jobs = [(p, f) for p in patients for f in folders[p]]
    limits = _Limits(tile_size, scale, max_pixels)
    with CohortWriter(out, image_size) as writer:
        rows, tiling = _tile_all(jobs, images, writer, limits, image_size, progress)
        kept = sorted(set(rows["patient_id"]))
        report.update(tiling, patients_without_tiles=counted(sorted(set(patients) - set(kept))))
        if not kept:
            raise where(images, f"no tile kept for any patient; {_why_empty(report)}")
        return writer.commit(
            source="folder",
            params=_params(rna, images, tile_size, image_size, scale, seed) | {
                "max_pixels": int(max_pixels)},
            rna=table.loc[kept],
            tiles_table=rows,
            splits=split_patients(kept, seed),
            mpp=None,  # unknown: a folder of images carries no reliable scan resolution
            report=report,
        )


def _params(rna, images, tile_size, image_size, scale, seed) -> dict:
    return {
        "rna": str(rna),
        "images": str(images),
        "tile_size": int(tile_size),
        "image_size": int(image_size),
        "scale": float(scale),
        "seed": int(seed),
        "min_tissue": MIN_TISSUE,
    }


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that are neither near-white glass nor colourless (grey, black)."""
    rgb = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # channel-wise maximum/minimum: much faster than reducing over an axis of length 3
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    # HSV saturation (high - low) / high >= MIN_SATURATION, without a division by zero for black
    coloured = (high - low) >= np.float32(MIN_SATURATION) * high
    return (low <= WHITE_LEVEL) & coloured & (high > 0)


def tissue_fraction(rgb: np.ndarray) -> float:
    """The fraction of an (H, W, 3) uint8 RGB tile's pixels that are tissue (see `tissue_mask`)."""
    return float(tissue_mask(rgb).mean())


def _check_params(tile_size, image_size, scale) -> None:
    for name, value in (("tile-size", tile_size), ("image-size", image_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"--{name} must be a positive whole number of pixels, got {value!r}")
    if not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise UserError(f"--scale must be a positive number, got {scale!r}")


def _check_max_pixels(max_pixels) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) \
            or max_pixels < 1:
        raise UserError(f"--max-pixels must be a positive whole number, got {max_pixels!r}")


def _patient_folders(images: Path) -> tuple[dict[str, list[Path]], dict, list[str]]:
    """Image files per patient, the folders merged into one patient, and files at the top level."""
    folders: dict[str, list[Path]] = defaultdict(list)
    names: dict[str, list[str]] = defaultdict(list)
    loose = []
    entries = [e for e in sorted(images.iterdir()) if not e.name.startswith(".")]
    check_normalisation([e.name for e in entries if e.is_dir()], images)
    for entry in entries:  # dot files skipped: .DS_Store, editor and sync leftovers
        if not entry.is_dir():
            loose.append(entry.name)
            continue
        pid = patient_id(entry.name)
        names[pid].append(entry.name)
        files = [f for f in sorted(entry.iterdir()) if f.is_file() and not f.name.startswith(".")]
        folders[pid].extend(files)
    merged = {pid: found for pid, found in names.items() if len(found) > 1}
    return dict(folders), merged, loose


def _matched(table: pd.DataFrame, folders: dict, rna: Path, images: Path) -> list[str]:
    """Patients with both an RNA profile and an image folder, or a UserError saying why none."""
    both = sorted(set(table.index) & set(folders))
    if both:
        return both
    if not folders:
        raise where(images, "no patient subfolders (expected IMAGES/<patient_id>/<image files>)")
    raise UserError(
        f"{rna} and {images}: no patient in both: the RNA table has {len(table)} patients "
        f"(e.g. {_example(table.index)}), the images folder {len(folders)} "
        f"(e.g. {_example(folders)})"
    )


def _example(ids) -> str:
    ids = sorted(ids)
    return repr(ids[0]) if ids else "none"


class _Limits(NamedTuple):
    """What an image must fit: tiles of `tile_size` after `scale`, at most `max_pixels`."""

    tile_size: int
    scale: float
    max_pixels: int


def _tile_all(jobs, images, writer, limits: _Limits, image_size, progress):
    """Tile every (patient, image file) into the writer; the tiles table and what was skipped."""
    sink = _TileSink(writer)
    skipped = {kind: {} for kind in SKIPPED}  # kind -> {image: reason}
    n_cut, tile_size = 0, limits.tile_size
    with _pillow_limit(limits.max_pixels):
        for pid, path in tqdm(jobs, desc="images", unit="image", disable=not progress):
            origin = path.relative_to(images).as_posix()
            try:
                image = _open_scaled(path, limits)
            except _Skip as skip:
                skipped[skip.kind][origin] = skip.reason
                continue
            n = (image.width // tile_size) * (image.height // tile_size)
            n_cut, before = n_cut + n, sink.n
            for x, y, fraction, tile in _tissue_tiles(image, tile_size, image_size):
                sink.add((pid, origin, x, y, fraction), tile)
            if sink.n == before:
                skipped["images_without_tissue"][origin] = f"all {n} tiles are background"
    table = sink.close()
    report = {kind: counted(found) for kind, found in skipped.items()}
    report["tiles"] = {"cut": n_cut, "background": n_cut - len(table), "kept": len(table)}
    # of the undecodable ones: those the cap refused, which the user can let in
    report["images_above_max_pixels"] = sum(
        CAP_HINT in reason for reason in skipped["undecodable_images"].values())
    return table, report


class _TileSink:
    """Rows of the tiles table; their tiles go to the writer in batches of `BATCH`."""

    def __init__(self, writer: CohortWriter):
        self.writer, self.rows, self.batch = writer, [], []

    @property
    def n(self) -> int:
        return len(self.rows)

    def add(self, row: tuple, tile: np.ndarray) -> None:
        """`row` is (patient_id, origin, x, y, tissue_fraction); `tile` (S, S, 3) uint8."""
        self.rows.append(row)
        self.batch.append(tile)
        if len(self.batch) >= BATCH:
            self._flush()

    def close(self) -> pd.DataFrame:
        self._flush()
        table = pd.DataFrame(self.rows, columns=TILE_COLUMNS)
        return table.astype({"x": np.int64, "y": np.int64, "tissue_fraction": np.float32})

    def _flush(self) -> None:
        if self.batch:
            self.writer.add_tiles(np.stack(self.batch))  # (n, S, S, 3)
            self.batch = []


class _Skip(Exception):
    """An image that gives no tiles; `kind` is its entry in the report (one of `SKIPPED`)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@contextmanager
def _pillow_limit(max_pixels):
    """Pillow's own bomb check set to our cap, its warning made an error (a skip, see below).

    Pillow checks sizes where we cannot see them (frames of a GIF or an ICO as they load); its
    default would refuse some images under a raised cap, so it follows `max_pixels`.
    """
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _open_header(path: Path) -> Image.Image:
    """The image opened lazily: size and mode read from the header, no pixel decoded yet.

    Pillow's check is off for this step only, so that an image above the cap is refused by
    `_check_pixels` with its width and height, which Pillow's message lacks.
    """
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _check_pixels(w: int, h: int, size: tuple, limits: _Limits) -> None:
    """Raise `_Skip` if the image, as stored or after scaling to `size`, is above the cap."""
    cap = limits.max_pixels
    for (x, y), when in (((w, h), ""), (size, f" after --scale {limits.scale:g}")):
        if x * y > cap:
            raise _Skip("undecodable_images", (
                f"{x} x {y} pixels{when} = {_mega(x * y)} megapixels, more than the cap of "
                f"{_mega(cap)} (max_pixels={cap}); {CAP_HINT}"))


def _mega(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _open_scaled(path: Path, limits: _Limits) -> Image.Image:
    """The image as RGB on white, resampled by `scale`; raises `_Skip` when it gives no tiles."""
    scale, tile_size = limits.scale, limits.tile_size
    try:
        with _open_header(path) as image:
            w, h = image.size  # from the header: nothing is decoded before the checks
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            _check_pixels(w, h, size, limits)
            if min(size) < tile_size:
                raise _Skip("images_smaller_than_tile", f"{size[0]} x {size[1]} after scaling")
            image.draft("RGB", size)  # JPEG decodes at a reduced size directly: less memory
            rgb = _on_white(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        reason = f"{_one_line(err)}; {CAP_HINT}"
        raise _Skip("undecodable_images", reason) from None
    except (OSError, ValueError, SyntaxError) as err:
        # Pillow reports broken files as OSError, some plugins as SyntaxError or ValueError
        raise _Skip("undecodable_images", _one_line(err)) from None
    if rgb.size != size:
        # LANCZOS antialiases when shrinking; reducing_gap first box-reduces big images (fast)
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def _on_white(image: Image.Image) -> Image.Image:
    """RGB, with transparent parts shown on white (glass) rather than black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _tissue_tiles(image: Image.Image, tile_size: int, image_size: int):
    """Yield (x, y, tissue fraction, (S, S, 3) uint8 tile) for the grid tiles that hold tissue."""
    t = tile_size
    nx, ny = image.width // t, image.height // t
    resized = (image_size, image_size)
    for j in range(ny):  # one strip of tiles at a time: a big image is never copied whole
        strip = np.asarray(image.crop((0, j * t, nx * t, (j + 1) * t)))  # (t, nx * t, 3)
        fractions = tissue_mask(strip).reshape(t, nx, t).mean(axis=(0, 2))  # (nx,)
        for i in np.flatnonzero(fractions >= MIN_TISSUE):
            # a copy: a view would keep the whole strip alive until the batch is written
            tile = strip[:, i * t : (i + 1) * t].copy()  # (t, t, 3)
            if image_size != t:
                tile = np.asarray(Image.fromarray(tile).resize(resized, Image.Resampling.LANCZOS))
            yield int(i * t), int(j * t), float(fractions[i]), tile


def _why_empty(report: dict) -> str:
    parts = [
        f"{report['undecodable_images']['count']} images could not be decoded"
        + _above_cap(report.get("images_above_max_pixels", 0)),
        f"{report['images_smaller_than_tile']['count']} were smaller than the tile",
        f"{report['images_without_tissue']['count']} held only background",
    ]
    return ", ".join(parts)


def _above_cap(n: int) -> str:
    return f" ({n} of them above the pixel cap: {CAP_HINT})" if n else ""
