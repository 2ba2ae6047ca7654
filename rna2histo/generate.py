"""Generation for users with RNA but no slides: tiles from a trained run for new profiles.

The run's checkpoint carries the fitted normaliser, so a new profile is aligned to the training
genes by symbol (missing genes take the training median, extra genes are ignored) and
z-scored exactly as the training data were; the alignment is reported. A run conditioned on a
compact RNA latent (``rna_encoder`` pca or betavae) carries that fitted latent too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .data import to_uint8
from .errors import UserError, where
from .latent import Latent
from .models import Generator, model_class
from .rna import Normaliser
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

    def conditions(self, rna: pd.DataFrame) -> tuple[torch.Tensor, dict]:
        """Raw profiles (rows of `rna`) -> the model's conditions (P, C) on its device, and the
        gene alignment of the run's normaliser."""
        z, alignment = self.normaliser.transform(rna)
        device = next(self.model.parameters()).device
        return torch.tensor(self.condition(z), device=device), alignment


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
    run: LoadedRun, rna: pd.DataFrame, n: int = 7, seed: int = 0, batch_size: int = 64, **sample_kw
) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """`n` tiles per profile (rows of `rna`): uint8 (P*n, S, S, 3), an index, the gene alignment.

    All noise comes from one generator seeded with `seed`, so the same call gives the same tiles.
    """
    c, alignment = run.conditions(rna)
    c = c.repeat_interleave(n, 0)
    generator = torch.Generator(c.device).manual_seed(seed)
    images = [
        to_uint8(run.model.sample(c[i : i + batch_size], generator=generator, **sample_kw))
        for i in range(0, len(c), batch_size)
    ]
    index = pd.DataFrame({"patient_id": np.repeat(rna.index.to_numpy(), n), "sample": np.tile(np.arange(n), len(rna))})
    return np.concatenate(images), index, alignment


def write_tiles(images: np.ndarray, index: pd.DataFrame, out: str | Path) -> pd.DataFrame:
    """PNG files ``<patient>_<sample>.png`` and ``index.csv`` (patient_id, sample, file) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", str(p)) for p in index.patient_id]  # ids are not paths
    index = index.assign(file=[f"{p}_{s}.png" for p, s in zip(safe, index["sample"])])
    for image, name in zip(images, index.file):
        Image.fromarray(image).save(out / name)
    index.to_csv(out / "index.csv", index=False)
    return index


def real_and_generated(run: LoadedRun, cohort, split: str = "val", patients: int = 4, n: int = 6, seed: int = 0):
    """For the first `patients` of a split: {patient: real tiles}, {patient: generated tiles}, uint8."""
    ids = cohort.patients(split)[:patients]
    real = cohort.patient_tiles(ids, n)
    images, index, _ = generate(run, cohort.rna.loc[ids], n=n, seed=seed)
    generated = {p: images[(index.patient_id == p).to_numpy()] for p in ids}
    return real, generated
