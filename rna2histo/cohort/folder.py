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
``report``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError, where
from ..paths import resolve
from .format import CohortWriter, check_output
from .rna_table import clean_rna, counted, patient_id, read_rna_table
from .split import split_patients

MIN_TISSUE = 0.5  # a tile is kept when at least this fraction of its pixels is tissue
WHITE_LEVEL = 210  # a pixel whose darkest channel is above this is glass (optical density < 0.08)
MIN_SATURATION = 0.08  # HSV saturation; grey glass, shadows and black pen marks are below it
MAX_PIXELS = 2**29  # larger images are skipped: decoded they take > 2 GB; use a slide source
BATCH = 256  # tiles handed to the writer at once
TILE_COLUMNS = ["patient_id", "origin", "x", "y", "tissue_fraction"]  # tiles.parquet
# report entries for images that gave no tile, each {image path: reason}
SKIPPED = ("undecodable_images", "images_smaller_than_tile", "images_without_tissue")


def build_folder(
    rna, images, out, tile_size=256, image_size=128, scale=1.0, seed=0, progress=False
) -> Path:
    """Build a cohort at `out` from an RNA table and an images folder; returns `out`."""
    rna, images, out = resolve(rna), resolve(images), resolve(out)
    _check_params(tile_size, image_size, scale)
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
    with CohortWriter(out, image_size) as writer:
        rows, tiling = _tile_all(jobs, images, writer, tile_size, image_size, scale, progress)
        kept = sorted(set(rows["patient_id"]))
        report.update(tiling, patients_without_tiles=counted(sorted(set(patients) - set(kept))))
        if not kept:
            raise where(images, f"no tile kept for any patient; {_why_empty(report)}")
        return writer.commit(
            source="folder",
            params=_params(rna, images, tile_size, image_size, scale, seed),
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


def _patient_folders(images: Path) -> tuple[dict[str, list[Path]], dict, list[str]]:
    """Image files per patient, the folders merged into one patient, and files at the top level."""
    folders: dict[str, list[Path]] = defaultdict(list)
    names: dict[str, list[str]] = defaultdict(list)
    loose = []
    for entry in sorted(images.iterdir()):
        if entry.name.startswith("."):  # .DS_Store, editor and sync leftovers
            continue
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


def _tile_all(jobs, images, writer, tile_size, image_size, scale, progress):
    """Tile every (patient, image file) into the writer; the tiles table and what was skipped."""
    sink = _TileSink(writer)
    skipped = {kind: {} for kind in SKIPPED}  # kind -> {image: reason}
    n_cut = 0
    with _pillow_limit_off():
        for pid, path in tqdm(jobs, desc="images", unit="image", disable=not progress):
            origin = path.relative_to(images).as_posix()
            try:
                image = _open_scaled(path, scale, tile_size)
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
def _pillow_limit_off():
    """Let Pillow open large images; `_open_scaled` applies our own limit, `MAX_PIXELS`."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _open_scaled(path: Path, scale: float, tile_size: int) -> Image.Image:
    """The image as RGB on white, resampled by `scale`; raises `_Skip` when it gives no tiles."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            if w * h > MAX_PIXELS:
                reason = f"{w} x {h} pixels is more than {MAX_PIXELS}; cut it into parts"
                raise _Skip("undecodable_images", reason)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            if min(size) < tile_size:
                raise _Skip("images_smaller_than_tile", f"{size[0]} x {size[1]} after scaling")
            image.draft("RGB", size)  # JPEG decodes at a reduced size directly: less memory
            rgb = _on_white(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow reports broken files as OSError, some plugins as SyntaxError or ValueError
        reason = " ".join(str(err).split()) or type(err).__name__
        raise _Skip("undecodable_images", reason) from None
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
        f"{report['undecodable_images']['count']} images could not be decoded",
        f"{report['images_smaller_than_tile']['count']} were smaller than the tile",
        f"{report['images_without_tissue']['count']} held only background",
    ]
    return ", ".join(parts)
