"""Generation for users with RNA but no slides: tiles from a trained run for new profiles.

The run's checkpoint carries the fitted normaliser, so a new profile is aligned to the training
genes by symbol (missing genes take the training median, extra genes are ignored) and
z-scored exactly as the training data were; the alignment is reported. A run conditioned on a
compact RNA latent (``rna_encoder`` pca or betavae) carries that fitted latent too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .data.dataset import to_uint8
from .data.latent import Latent
from .data.rna import Normaliser
from .errors import UserError, where
from .models import Generator, model_class
from .runs import load_checkpoint


@dataclass
class LoadedRun:
    model: Generator
    normaliser: Normaliser
    checkpoint: dict  # everything but the state dicts: epoch, params, config, best_val
    latent: Latent | None = None  # the run's RNA latent (None: the model reads the genes)

    def condition(self, z) -> np.ndarray:
        """What the model is conditioned on, from normalised profiles (P, G): the genes or their latent."""
        z = np.asarray(z, dtype=np.float32)
        return z if self.latent is None else self.latent.encode(z)

    def conditions(self, rna: pd.DataFrame, source: str = "the RNA table") -> tuple[torch.Tensor, dict]:
        """Raw profiles (rows of `rna`) -> the model's conditions (P, C) on its device, and the
        gene alignment of the run's normaliser. Profiles the run cannot read faithfully (too few of
        its genes, infinite values, another scale) are refused, naming `source`."""
        check_values(rna, source)
        z, alignment = self.normaliser.transform(rna)
        check_profiles(z, rna, alignment, source)
        device = next(self.model.parameters()).device
        return torch.tensor(self.condition(z), device=device), alignment


MIN_GENE_SHARE = 0.5  # below this most of the condition would be the training median, not the profile
# z-scores against the training statistics: a log2 profile of the training's kind has a median |z|
# near 0.7; raw counts or TPM against log2 training give tens to thousands
MAX_MEDIAN_ABS_Z = 5.0
MAX_ABS_Z = 1e3  # one value this far out (1e30, a pasted id) makes tiles of nothing


def check_values(rna: pd.DataFrame, source: str) -> None:
    """Refuse +/-inf: an empty cell is a missing value (imputed), infinity is a broken one."""
    values = rna.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.argwhere(np.isinf(values))
    if len(bad):
        row, col = bad[0]
        raise UserError(f"{source}: row {rna.index[row]!r}, column {rna.columns[col]!r}: {values[row, col]} "
                        f"is not a finite value ({len(bad)} such values); fix or empty those cells")


def check_profiles(z: pd.DataFrame, rna: pd.DataFrame, alignment: dict, source: str) -> None:
    """Refuse profiles that share too few genes with the run or sit on another scale."""
    expected = alignment["genes_expected"]
    found = expected - alignment["genes_missing_filled_with_median"]
    if found < MIN_GENE_SHARE * expected:
        raise UserError(f"{source}: {found} of the run's {expected} genes are columns of the table "
                        f"({found / expected:.0%}; at least {MIN_GENE_SHARE:.0%} needed); name the columns by "
                        "the gene symbols the run was trained on")
    absolute = np.abs(z.to_numpy()[:, z.columns.isin(rna.columns)])  # the genes the table gave
    median = float(np.median(absolute)) if absolute.size else 0.0
    if median > MAX_MEDIAN_ABS_Z:
        raise UserError(f"{source}: the profiles lie a median {median:.1f} training standard deviations from the "
                        f"training means (training-like profiles: under 1; refused above {MAX_MEDIAN_ABS_Z:g}); "
                        "transform them as the training RNA was (e.g. log2(x + 1))")
    if absolute.size and absolute.max() > MAX_ABS_Z:
        row, col = np.unravel_index(absolute.argmax(), absolute.shape)
        raise UserError(f"{source}: row {z.index[row]!r}, column {z.columns[col]!r} lies {absolute[row, col]:.3g} "
                        "training standard deviations from the training mean; check the value")


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """The model of a run folder at checkpoint `which` (best, last or epoch_010), in eval mode."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not path.exists():
        raise where(Path(run_dir), f"no checkpoint {which!r} (train the model first, or pick another)")
    state = load_checkpoint(path, map_location=device)
    cls = model_class(state["model"])
    try:
        cfg = cls.Config.from_saved(state["config"])
    except UserError as err:
        raise where(path, f"{err}; retrain the run") from None
    model = cls(cfg)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as err:  # weights of another version of the architecture
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise where(path, f"does not match this version's {state['model']} ({first}); retrain the run") from None
    model.to(device).eval()
    meta = {k: v for k, v in state.items() if k not in ("state_dict", "optimizers", "schedulers", "scaler")}
    latent = state.get("rna_latent")  # absent in checkpoints written before latents existed
    latent = None if latent is None else Latent.from_state_dict(latent)
    return LoadedRun(model, Normaliser.from_state_dict(state["normaliser"]), meta, latent)


@torch.no_grad()
def generate(
    run: LoadedRun, rna: pd.DataFrame, n: int = 7, seed: int = 0, batch_size: int = 64,
    source: str = "the RNA table", **sample_kw
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """`n` tiles per profile (rows of `rna`): uint8 (P*n, S, S, 3), an index, the gene alignment.

    All noise comes from one generator seeded with `seed`, so the same call gives the same tiles.
    `source` names the table in a refusal (see `LoadedRun.conditions`).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"n: tiles per profile must be a whole number >= 1, got {n!r}")
    c, alignment = run.conditions(rna, source)
    images = sample_tiles(run.model, c.repeat_interleave(n, 0), seed, batch_size, **sample_kw)
    index = pd.DataFrame({"patient_id": np.repeat(rna.index.to_numpy(), n), "sample": np.tile(np.arange(n), len(rna))})
    return images, index, alignment


@torch.no_grad()
def sample_tiles(model, conditions: torch.Tensor, seed: int, batch_size: int = 64, **sample_kw) -> np.ndarray:
    """One tile per model condition (N, k), uint8 (N, S, S, 3), in batches of `batch_size`, all
    noise from one generator seeded with `seed` (on the conditions' device)."""
    generator = torch.Generator(conditions.device).manual_seed(seed)
    return np.concatenate([
        to_uint8(model.sample(conditions[i : i + batch_size], generator=generator, **sample_kw))
        for i in range(0, len(conditions), batch_size)
    ])


def file_stems(patients) -> list[str]:
    """A file name stem per patient id, unique even on a case-insensitive file system.

    Ids are not paths: characters other than letters, digits, '.', '_' and '-' become '_'. An id
    that changed so, or that meets another id's stem, gets a short hash of itself, so 'a/b' and
    'a_b' stay two files; index.csv maps each file back to its id.
    """
    ids = [str(p) for p in patients]
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", p).lstrip(".") or "_" for p in ids]
    counts = pd.Series([s.casefold() for s in safe]).value_counts()
    stems = [s if s == p and counts[s.casefold()] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}"
             for p, s in zip(ids, safe)]
    if len({s.casefold() for s in stems}) < len(set(ids)):
        raise UserError("patient ids give clashing file names even with their hashes; rename the patients")
    return stems


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output folder that holds files, unless `overwrite` (see `write_tiles`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise where(out, "exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise where(out, "is not empty; choose another --out, or pass --overwrite to replace an earlier generate's tiles")
    return out


def write_tiles(images: np.ndarray, index: pd.DataFrame, out: str | Path, overwrite: bool = False) -> pd.DataFrame:
    """PNG files ``<patient>_<sample>.png`` and ``index.csv`` (patient_id, sample, file) in `out`.

    An existing `out` with files in it is refused unless `overwrite`, which replaces only the files
    an earlier ``index.csv`` there lists: a user's other files stay. The tiles are written to a
    temporary folder beside `out` first, so a failure leaves `out` as it was.
    """
    out = check_out(out, overwrite)
    stems = dict(zip(pd.unique(index.patient_id), file_stems(pd.unique(index.patient_id))))
    index = index.assign(file=[f"{stems[p]}_{s}.png" for p, s in zip(index.patient_id, index["sample"])])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as err:
        raise where(out, f"cannot write there ({err.strerror}); choose another --out") from None
    try:
        for image, name in zip(images, index.file):
            Image.fromarray(image).save(tmp / name)
        index.to_csv(tmp / "index.csv", index=False)
        _move_into(tmp, out)
    except OSError as err:
        raise where(out, f"cannot write the tiles ({err.strerror}); choose another --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def _move_into(tmp: Path, out: Path) -> None:
    """`tmp`'s files into `out`; the files of an earlier index.csv go first, index.csv comes last."""
    if not out.exists():
        os.replace(tmp, out)
        return
    earlier = out / "index.csv"
    if earlier.is_file():
        try:
            old_files = pd.read_csv(earlier)["file"].astype(str)
        except (KeyError, ValueError, pd.errors.ParserError):
            raise where(earlier, "is not a generate index (no file column); choose another --out") from None
        for name in old_files:
            if Path(name).name == name:  # never a path out of the folder
                (out / name).unlink(missing_ok=True)
        earlier.unlink()
    for path in sorted(tmp.iterdir(), key=lambda p: p.name == "index.csv"):
        os.replace(path, out / path.name)


def real_and_generated(run: LoadedRun, cohort, split: str = "val", patients: int = 4, n: int = 6, seed: int = 0):
    """For the first `patients` of a split: {patient: real tiles}, {patient: generated tiles}, uint8."""
    ids = cohort.patients(split)[:patients]
    real = cohort.patient_tiles(ids, n)
    images, index, _ = generate(run, cohort.rna.loc[ids], n=n, seed=seed)
    generated = {p: images[(index.patient_id == p).to_numpy()] for p in ids}
    return real, generated
