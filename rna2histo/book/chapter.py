"""The steps every model chapter shares, one call each: data, training report, samples, conditioning."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.rna import fit_on_training
from ..evaluation.conditioning import conditioning_difference
from ..experiments.denoising import denoising_ladder
from ..generate import LoadedRun, load_run, real_and_generated
from ..paths import resolve
from . import plots
from .runner import ensure_cohort


def prepare(cohort_dir: str, image_size: int):
    """The chapter's cohort (built from the embedded default if missing) and its gene count."""
    cohort = ensure_cohort(cohort_dir, image_size)
    n_genes = fit_on_training(cohort).n_genes
    print(f"{len(cohort.tiles)} tiles of {len(cohort.patients())} patients, {n_genes} genes after preprocessing")
    return cohort, n_genes


def training_report(run_dir: str):
    """Loss curves of a run and the table of its last epochs."""
    metrics = pd.read_csv(resolve(run_dir) / "metrics.csv")
    table = metrics.set_index("epoch").filter(regex="^(train|val)_").tail().round(4)
    return plots.loss_curves(metrics), table


def samples(run_dir: str, cohort, which: str = "best", patients: int = 4, n: int = 6, seed: int = 0):
    """The run's model at checkpoint `which`, and real vs generated tiles of validation patients."""
    trained = load_run(resolve(run_dir), which)
    real, generated = real_and_generated(trained, cohort, "val", patients=patients, n=n, seed=seed)
    return trained, plots.real_vs_generated(real, generated, n=n)


def conditioning(trained: LoadedRun, cohort, seed: int = 0, n_noise: int = 4, max_train: int = 15,
                 max_held_out: int = 30, **sample_kw) -> pd.DataFrame:
    """The conditioning difference and its shuffled baseline on (at most `max_held_out`) held-out
    (val and test) patients, and on (at most `max_train`) training patients: a model that
    memorised its training patients' profiles reacts to them, not to new patients. A sensitivity
    check, capped because its cost grows with the patients (chapter 05 measures faithfulness on
    every test patient). `sample_kw` go to the model's ``sample`` (the diffusion model's ``steps``)."""
    groups = {"held-out patients": (cohort.patients("val") + cohort.patients("test"))[:max_held_out],
              "training patients": cohort.patients("train")[:max_train]}
    rows = {}
    for name, ids in groups.items():
        c, _ = trained.normaliser.transform(cohort.rna.loc[ids])
        rows[name] = conditioning_difference(trained.model, c.to_numpy(), n_noise=n_noise, seed=seed,
                                             encode=trained.condition, **sample_kw)
    return pd.DataFrame.from_dict(rows, orient="index").round(4)


def denoising(trained: LoadedRun, cohort, levels=(50, 150, 300, 600, 999), patients: int = 4,
              per_patient: int = 2, seed: int = 0, **sample_kw):
    """The diffusion model's denoising ladder (`rna2histo.experiments.denoising`) on `per_patient` tiles of
    the first `patients` validation patients: a figure of the real tiles, each level's results
    and the samples from pure noise, and the ladder's table."""
    real = cohort.patient_tiles(cohort.patients("val")[:patients], per_patient)
    ids = [p for p in real for _ in range(len(real[p]))]
    tiles = np.concatenate(list(real.values()))
    outputs, table = denoising_ladder(trained, tiles, cohort.rna.loc[ids], levels, seed=seed, **sample_kw)
    rows = {"real": tiles}
    for t, out in outputs.items():
        rows["samples" if t == "sample" else f"from t = {t}"] = out
    return plots.tile_rows(rows), table.round(3)
