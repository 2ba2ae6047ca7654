"""What a generator's condition holds: held-out R^2 of the tissue programs from each RNA encoder.

A generator cannot draw what its condition does not carry. For an encoder (`rna2histo.data.latent`)
fitted on the training patients, a ridge regression from the condition to each target is fitted
on the training patients (its penalty chosen by 5-fold cross-validation among them) and scored on
the test patients: R^2 = 1 - SS_res / SS_tot around the test mean. Targets: the simulated cohort's
true program levels (``patients.parquet``) and the re-prediction targets
(`rna2histo.evaluation.reprediction`, reported as their mean R^2). Two references without an
encoder: every normalised gene (what the RNA holds at all, through the same ridge) and the marker
genes alone (a baseline that needs labels real RNA does not have).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.latent import fit_latent
from ..data.rna import fit_on_training
from ..markers import MARKERS
from . import reprediction as rp
from .faithfulness import true_programs

PENALTIES = np.logspace(-3, 4, 15)
FOLDS = 5


def _standardised(train: np.ndarray, test: np.ndarray):
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """(weights (F, T), intercept (T,)) of ridge on centred data; the dual form when F > N."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    if x.shape[1] > x.shape[0]:
        w = xc.T @ np.linalg.solve(xc @ xc.T + penalty * np.eye(len(x)), yc)
    else:
        w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ yc)
    return w, ym - xm @ w


def ridge_r2(x_train, x_test, y_train, y_test) -> np.ndarray:
    """(targets,) held-out R^2 of a ridge from x to each column of y, the penalty chosen per target
    by cross-validation on the training rows (folds by position: patients have no order)."""
    x_train, x_test = _standardised(np.asarray(x_train, np.float64), np.asarray(x_test, np.float64))
    y_train, y_test = np.asarray(y_train, np.float64), np.asarray(y_test, np.float64)
    folds = np.arange(len(x_train)) % FOLDS
    errors = np.zeros((len(PENALTIES), y_train.shape[1]))
    for k, penalty in enumerate(PENALTIES):
        for f in range(FOLDS):
            fit_rows, held = folds != f, folds == f
            w, b = _ridge(x_train[fit_rows], y_train[fit_rows], penalty)
            errors[k] += ((x_train[held] @ w + b - y_train[held]) ** 2).sum(0)
    best = errors.argmin(0)
    r2 = np.empty(y_train.shape[1])
    for k in np.unique(best):
        cols = best == k
        w, b = _ridge(x_train, y_train[:, cols], PENALTIES[k])
        residual = ((x_test @ w + b - y_test[:, cols]) ** 2).sum(0)
        total = ((y_test[:, cols] - y_test[:, cols].mean(0)) ** 2).sum(0)
        r2[cols] = 1 - residual / total
    return r2


def condition_report(cohort, encoders: dict[str, dict], seed: int = 0) -> pd.DataFrame:
    """Rows: each encoder of `encoders` (name -> {"rna_encoder", "rna_latent", "rna_beta"}), then
    ``all genes`` and ``marker genes``; columns: held-out R^2 of every true program (simulated
    cohorts), the mean R^2 of the re-prediction targets, and the condition's dimensions."""
    normaliser = fit_on_training(cohort)
    z, _ = normaliser.transform(cohort.rna)
    train, test = cohort.patients("train"), cohort.patients("test")
    targets = rp.measured(cohort, normaliser, rp.target_genes(cohort, normaliser))
    truth = true_programs(cohort.patients_table) if cohort.patients_table is not None else None
    conditions = {}
    for name, spec in encoders.items():
        latent = fit_latent(spec["rna_encoder"], cohort, normaliser, dim=spec.get("rna_latent", 200),
                            beta=spec.get("rna_beta", 1.0), seed=seed)
        conditions[name] = z.to_numpy() if latent is None else latent.encode(z)
    conditions["all genes"] = z.to_numpy()
    markers = [g for gs in MARKERS.values() for g in gs if g in z.columns]
    conditions["marker genes"] = z[markers].to_numpy()
    index = {p: i for i, p in enumerate(z.index)}
    tr, te = [index[p] for p in train], [index[p] for p in test]
    rows = {}
    for name, c in conditions.items():
        row = {}
        if truth is not None:
            r2 = ridge_r2(c[tr], c[te], truth.loc[train].to_numpy(), truth.loc[test].to_numpy())
            row.update(zip(truth.columns, r2))
        row["reprediction targets"] = float(ridge_r2(c[tr], c[te], targets.loc[train], targets.loc[test]).mean())
        row["dimensions"] = c.shape[1]
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")
