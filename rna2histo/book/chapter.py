"""The steps every model chapter shares, one call each: data, training report, samples, conditioning.

`ModelChapter` runs them on the chapter's parameters as a whole (`rna2histo.book.parameters`), so
a chapter names each step once and passes no parameter by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.rna import fit_on_training
from ..evaluation.conditioning import conditioning_difference
from ..experiments.denoising import denoising_ladder
from ..generate import LoadedRun, load_run, real_and_generated
from ..models import architecture_table
from ..paths import resolve
from . import plots
from .parameters import TRAINING, check_parameters, fit_arguments
from .runner import ensure_cohort, model_chapter


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


class ModelChapter:
    """A model chapter's steps on its parameters: made by the cell after the parameters cell, it
    checks and shows them (`check_parameters`) and loads the cohort; each later cell calls one step."""

    def __init__(self, model: str):
        self.model, self.params = model, check_parameters(model_chapter(model).stem, TRAINING)
        self.cohort, self.n_genes = prepare(self.params["cohort_dir"], self.params["image_size"])
        self.trained: LoadedRun | None = None

    def architecture(self) -> pd.DataFrame:
        """Parameter counts of both presets next to the study's."""
        return architecture_table(self.model, self.n_genes, self.params["image_size"])

    def train(self) -> pd.DataFrame:
        """Train (or, with ``train=False``, show the run as trained before): the loss curves are drawn
        and the table of the last epochs returned."""
        from ..training.loop import fit

        fit(self.model, **fit_arguments(self.params))
        _, last_epochs = training_report(self.params["run_dir"])
        return last_epochs

    def samples(self, which: str = "best") -> None:
        """Draw real vs generated tiles of validation patients from checkpoint `which`, and keep that
        model for the steps after it (the notebook shows the figure; returning it would show it twice)."""
        self.trained, _ = samples(self.params["run_dir"], self.cohort, which, seed=self.params["seed"])

    def conditioning(self) -> pd.DataFrame:
        """The conditioning difference held out and on training patients (`conditioning`)."""
        return conditioning(self._trained(), self.cohort, seed=self.params["seed"])

    def denoising(self) -> pd.DataFrame:
        """The diffusion model's denoising ladder (`denoising`): the figure drawn, the table returned."""
        _, table = denoising(self._trained(), self.cohort, seed=self.params["seed"])
        return table

    def perceptual_term(self) -> str:
        """Which perceptual term the hybrid trained with, and why it is off when it is."""
        mode = self._trained().checkpoint["params"]["model_notes"]["perceptual"]
        missing = mode == "none" and self.params.get("perceptual") == "auto"
        return f"perceptual term: {'OFF' if mode == 'none' else mode}" + (
            " (the AlexNet weights are not on this machine)" if missing else "")

    def _trained(self) -> LoadedRun:
        if self.trained is None:  # the samples step loads the checkpoint; a step before it loads it here
            self.trained = load_run(resolve(self.params["run_dir"]), "best")
        return self.trained
