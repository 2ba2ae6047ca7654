"""The on-disk cohort format: one for every source (synthetic, folder, tcga).

A cohort is a folder::

    manifest.json     {"format": "rna2histo-cohort", "format_version": 1, "source": "synthetic",
                       "params": {...build parameters...}, "counts": {"patients", "tiles", "genes"},
                       "image_size": S, "mpp": um per pixel or null, "report": {...what was
                       skipped, imputed or dropped, with counts and lists...},
                       "files": [the names above that the builder wrote]}
    rna.parquet       patients x genes (float32), index `patient_id`, columns gene symbols;
                      log2(RSEM + 1) scale as given by the source; NaN where a value is missing
    tiles.npy         uint8 (N, S, S, 3) RGB, opened memory-mapped, never loaded whole
    tiles.parquet     row i describes tile i: `patient_id`, `origin` (source file or "synthetic"),
                      `x`, `y` (top-left corner in the origin, pixels), ground truth `gt_*` if known
    splits.csv        `patient_id`, `split` in {train, val, test}
    patients.parquet  optional: per-patient ground truth (`program_*` levels of simulated cohorts)

Writes are atomic: everything goes into a hidden temporary folder beside the target, the manifest
last, and the folder is renamed into place at the end. An interrupted build leaves no folder that
`load_cohort` accepts, and an existing cohort is only replaced by a complete one. A rebuild
replaces only the old cohort's own files (its manifest's "files"); anything else a user keeps in
the folder (notes, other outputs) is carried over into the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError, where

FORMAT = "rna2histo-cohort"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# What a cohort written before the manifest listed its files may hold: all a rebuild replaces
OWN_FILES = ("manifest.json", "rna.parquet", "tiles.npy", "tiles.parquet", "splits.csv", "patients.parquet")


@dataclass
class Cohort:
    """A cohort read from disk; `tiles` is a read-only memory map."""

    root: Path
    manifest: dict
    rna: pd.DataFrame  # (patients, genes)
    tiles: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    tiles_table: pd.DataFrame  # (N, ...) one row per tile
    splits: pd.DataFrame  # patient_id, split
    patients_table: pd.DataFrame | None = None  # per-patient ground truth, if known

    @property
    def image_size(self) -> int:
        return int(self.tiles.shape[1])

    def patients(self, split: str | None = None) -> list[str]:
        """Patient ids in cohort order, optionally of one split."""
        if split is None:
            return list(self.rna.index)
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        chosen = set(self.splits.loc[self.splits["split"] == split, "patient_id"])
        return [p for p in self.rna.index if p in chosen]

    def split_counts(self) -> pd.DataFrame:
        """Patients and tiles per split, rows train/val/test."""
        split_of = dict(zip(self.splits["patient_id"], self.splits["split"]))
        counts = {
            "patients": self.splits["split"].value_counts(),
            "tiles": self.tiles_table["patient_id"].map(split_of).value_counts(),
        }
        return pd.DataFrame(counts).reindex(list(SPLITS), fill_value=0)

    def check_splits(self) -> None:
        """Training, model selection and held-out evaluation each need a patient of their own."""
        counts = self.split_counts()["patients"]
        if (counts < 1).any():
            found = ", ".join(f"{s} {n}" for s, n in counts.items())
            raise where(self.root, f"a cohort to train on needs at least one patient in each of train, val and "
                        f"test, this one has {found}; build it from 3 or more patients (the split gives "
                        f"15% each to val and test)")

    def tile_indices(self, split: str | None = None) -> np.ndarray:
        """Row numbers of the tiles that belong to a split's patients."""
        if split is None:
            return np.arange(len(self.tiles_table))
        keep = self.tiles_table["patient_id"].isin(self.patients(split))
        return np.flatnonzero(keep.to_numpy())

    def patient_tiles(self, ids, n: int) -> dict[str, np.ndarray]:
        """The first `n` tiles of each patient in `ids`: {patient: uint8 (<= n, S, S, 3)}."""
        table = self.tiles_table["patient_id"].to_numpy()
        return {p: np.asarray(self.tiles[np.flatnonzero(table == p)[:n]]) for p in ids}


def is_cohort(path: Path) -> bool:
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def check_output(out: Path) -> None:
    """Refuse to build into something that is not ours to replace."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise where(out, "exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_cohort(out):
        raise where(out, "exists and is not a cohort; choose another --out or remove it first")


def load_cohort(root: str | Path, check_splits: bool = True) -> Cohort:
    """Read and check a cohort folder; the tiles stay on disk (memory-mapped).

    `check_splits` refuses a cohort with an empty train, val or test split (`Cohort.check_splits`);
    only code that describes a cohort rather than trains or evaluates on it turns it off.
    """
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        hint = "build one with `python -m rna2histo cohort synthetic --out DIR`"
        raise where(root, f"not a cohort (no manifest.json); {hint}")
    manifest = _read_manifest(manifest_path)
    try:
        rna = pd.read_parquet(root / "rna.parquet")
        table = pd.read_parquet(root / "tiles.parquet")
        splits = pd.read_csv(root / "splits.csv", dtype={"patient_id": str})
        tiles = np.load(root / "tiles.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        raise where(root, f"damaged cohort: {err}") from None
    patients_path = root / "patients.parquet"
    patients_table = pd.read_parquet(patients_path) if patients_path.exists() else None
    if tiles.ndim != 4 or tiles.shape[3] != 3 or tiles.dtype != np.uint8:
        raise where(root / "tiles.npy", f"expected uint8 (N, S, S, 3), found {tiles.dtype} {tiles.shape}")
    if len(tiles) != len(table):
        raise where(root, f"tiles.npy has {len(tiles)} tiles but tiles.parquet {len(table)} rows")
    cohort = Cohort(root, manifest, rna, tiles, table, splits, patients_table)
    if check_splits:
        cohort.check_splits()
    return cohort


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise where(path, f"not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise where(path, f"not an rna2histo cohort manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise where(
            path,
            f"cohort format version {version} is newer than this rna2histo reads "
            f"({FORMAT_VERSION}); upgrade rna2histo or rebuild the cohort",
        )
    return manifest


class CohortWriter:
    """Builds a cohort in a temporary folder and moves it into place on `commit`.

    Tiles are appended in batches (`add_tiles`) to a raw file, so a source need not know how many
    tiles it will keep; `commit` turns them into ``tiles.npy``. Use as a context manager: leaving
    the block without a commit (an error, Ctrl-C) removes the temporary folder.
    """

    def __init__(self, out: str | Path, image_size: int):
        self.out = Path(out).resolve()
        check_output(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.image_size = int(image_size)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        self._raw = open(self.tmp / "tiles.raw", "wb")
        self.n_tiles = 0

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def add_tiles(self, tiles: np.ndarray) -> None:
        """Append uint8 tiles of shape (n, S, S, 3) or one tile (S, S, 3)."""
        tiles = np.asarray(tiles)
        if tiles.ndim == 3:
            tiles = tiles[None]
        expected = (self.image_size, self.image_size, 3)
        if tiles.dtype != np.uint8 or tiles.shape[1:] != expected:
            raise ValueError(f"tiles must be uint8 (n, {expected}), got {tiles.dtype} {tiles.shape}")
        self._raw.write(np.ascontiguousarray(tiles).tobytes())
        self.n_tiles += len(tiles)

    def commit(
        self,
        *,
        source: str,
        params: dict,
        rna: pd.DataFrame,
        tiles_table: pd.DataFrame,
        splits: pd.DataFrame,
        mpp: float | None = None,
        report: dict | None = None,
        patients_table: pd.DataFrame | None = None,
    ) -> Path:
        """Write the tables and manifest, then move the finished cohort to `out`."""
        _check_tables(rna, tiles_table, splits, self.n_tiles)
        self._finish_tiles()
        rna.astype(np.float32).rename_axis("patient_id").to_parquet(self.tmp / "rna.parquet")
        tiles_table.reset_index(drop=True).to_parquet(self.tmp / "tiles.parquet")
        splits[["patient_id", "split"]].to_csv(self.tmp / "splits.csv", index=False)
        if patients_table is not None:
            patients_table.to_parquet(self.tmp / "patients.parquet")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": source,
            "params": params,
            "counts": {"patients": len(rna), "tiles": self.n_tiles, "genes": rna.shape[1]},
            "image_size": self.image_size,
            "mpp": mpp,
            "report": report or {},
            "files": sorted([p.name for p in self.tmp.iterdir()] + ["manifest.json"]),
        }
        # The manifest goes last: without it the folder is not a cohort.
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default))
        _swap_into_place(self.tmp, self.out)
        return self.out

    def discard(self) -> None:
        if not self._raw.closed:
            self._raw.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _finish_tiles(self) -> None:
        self._raw.close()
        s = self.image_size
        raw_path = self.tmp / "tiles.raw"
        shape = (self.n_tiles, s, s, 3)
        dst = np.lib.format.open_memmap(self.tmp / "tiles.npy", mode="w+", dtype=np.uint8, shape=shape)
        if self.n_tiles:
            src = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=shape)
            for start in range(0, self.n_tiles, 1024):  # bounded memory for any cohort size
                dst[start : start + 1024] = src[start : start + 1024]
            del src
        dst.flush()
        del dst
        raw_path.unlink()


def _check_tables(rna: pd.DataFrame, table: pd.DataFrame, splits: pd.DataFrame, n_tiles: int) -> None:
    """Internal consistency: a source that breaks these has a bug, not bad input."""
    if not rna.index.is_unique:
        raise ValueError("rna index (patient_id) must be unique")
    if len(table) != n_tiles:
        raise ValueError(f"{n_tiles} tiles written but tiles_table has {len(table)} rows")
    if not set(table["patient_id"]) <= set(rna.index):
        raise ValueError("tiles_table names patients that have no RNA profile")
    if set(splits["patient_id"]) != set(rna.index) or not splits["split"].isin(SPLITS).all():
        raise ValueError("splits must assign every patient to one of train/val/test")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, replacing an older cohort there only after the new one is whole.

    The user's own files in `out` (anything the old cohort's manifest does not list) move into
    the new cohort first; if the swap fails they are moved back, so none is ever deleted.
    """
    if not (out.exists() and any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return
    kept = _users_files(out, tmp)
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved = []
    try:
        for name in kept:
            os.replace(out / name, tmp / name)
            moved.append(name)
        os.replace(out, old / "cohort")
        os.replace(tmp, out)
    except BaseException:  # Ctrl-C included: the old cohort and the user's files go back before tmp is discarded
        if not out.exists():
            os.replace(old / "cohort", out)
        for name in moved:
            os.replace(tmp / name, out / name)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _users_files(out: Path, tmp: Path) -> list[str]:
    """The entries of cohort folder `out` that its builder did not write."""
    try:
        listed = json.loads((out / "manifest.json").read_text()).get("files")
    except (OSError, ValueError):
        listed = None
    own = set(listed) if isinstance(listed, list) else set(OWN_FILES)
    kept = sorted(p.name for p in out.iterdir() if p.name not in own)
    clash = [name for name in kept if (tmp / name).exists()]
    if clash:
        raise where(out / clash[0], "is not part of the old cohort, but the new one writes a file of that "
                    "name; move it elsewhere and build again")
    return kept


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
