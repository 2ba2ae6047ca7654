"""RNA preprocessing: the reference study's normalisation, fitted on training patients only.

The study replaces +/-inf by NaN, imputes each gene's median and z-scores every gene with
statistics over *all* samples, which leaks test patients into training. Here `Normaliser.fit`
sees the training split alone, and the fitted statistics travel with every model so that a new
profile is normalised exactly as the training data were:

    x_g <- median_g                     where x_g is NaN or +/-inf (training median)
    z_g  = (x_g - mean_g) / std_g       for the genes kept at fit time

Genes that are NaN for every training patient, or constant in training, carry no information
and are dropped. New profiles are aligned by gene symbol: missing genes get the training median
(so z = (median - mean) / std), extra genes are ignored; both are counted in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import where
from ..paths import atomic_write

MIN_STD = 1e-6  # below this a gene is constant in training (log2 units)


@dataclass
class Normaliser:
    """Per-gene median imputation and z-score, with the statistics of the training patients."""

    genes: list[str]
    medians: np.ndarray  # (G,)
    means: np.ndarray  # (G,)
    stds: np.ndarray  # (G,)
    fit_report: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, rna: pd.DataFrame) -> Normaliser:
        """Fit on a (patients, genes) frame of training patients."""
        x = rna.to_numpy(dtype=np.float64, copy=True)
        nonfinite = ~np.isfinite(x)
        x[nonfinite] = np.nan
        all_nan = nonfinite.all(axis=0)
        x, genes = x[:, ~all_nan], rna.columns[~all_nan]
        medians = np.nanmedian(x, axis=0)
        x = np.where(np.isnan(x), medians, x)
        means, stds = x.mean(axis=0), x.std(axis=0)
        varying = stds > MIN_STD
        report = {
            "patients": len(rna),
            "genes_in": rna.shape[1],
            "genes_all_nan_dropped": int(all_nan.sum()),
            "genes_constant_dropped": int((~varying).sum()),
            "genes_kept": int(varying.sum()),
            "values_imputed": int(nonfinite[:, ~all_nan].sum()),
        }
        return cls(
            genes=[str(g) for g in genes[varying]],
            medians=medians[varying].astype(np.float32),
            means=means[varying].astype(np.float32),
            stds=stds[varying].astype(np.float32),
            fit_report=report,
        )

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def transform(self, rna: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
        """z-scores of any (patients, genes) frame, aligned to the fitted genes by symbol.

        Returns the (patients, fitted genes) float32 frame and a report of what alignment did.
        """
        present = pd.Index(self.genes).isin(rna.columns)
        aligned = rna.reindex(columns=self.genes).to_numpy(dtype=np.float64)
        missing_values = ~np.isfinite(aligned)
        aligned = np.where(missing_values, self.medians, aligned)
        z = ((aligned - self.means) / self.stds).astype(np.float32)
        report = {
            "patients": len(rna),
            "genes_expected": self.n_genes,
            "genes_missing_filled_with_median": int((~present).sum()),
            "genes_extra_ignored": int((~rna.columns.isin(self.genes)).sum()),
            "values_imputed": int(missing_values[:, present].sum()),
            # a gene absent from the table, or empty for some profile, took the median somewhere
            "genes_imputed": int(missing_values.any(axis=0).sum()),
        }
        return pd.DataFrame(z, index=rna.index, columns=self.genes), report

    def state_dict(self) -> dict:
        """Plain lists and numbers: safe for JSON and for ``torch.load(weights_only=True)``."""
        return {
            "genes": list(self.genes),
            "medians": self.medians.tolist(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
            "fit_report": dict(self.fit_report),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Normaliser:
        arrays = {k: np.asarray(state[k], dtype=np.float32) for k in ("medians", "means", "stds")}
        return cls(genes=list(state["genes"]), fit_report=dict(state.get("fit_report", {})), **arrays)

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically (temporary file, then rename)."""
        return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(self.state_dict())))

    @classmethod
    def load(cls, path: str | Path) -> Normaliser:
        path = Path(path)
        try:
            state = json.loads(path.read_text())
            return cls.from_state_dict(state)
        except FileNotFoundError:
            raise where(path, "no such normaliser file") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise where(path, f"not a saved normaliser ({err})") from None


def fit_on_training(cohort) -> Normaliser:
    """The cohort's normaliser: fitted on its training split only."""
    return Normaliser.fit(cohort.rna.loc[cohort.patients("train")])


def program_scores(z: pd.DataFrame, markers: dict[str, list[str]]) -> pd.DataFrame:
    """Per-patient program score: the mean z-score of the program's marker genes present in `z`."""
    scores = {}
    for program, genes in markers.items():
        present = [g for g in genes if g in z.columns]
        if present:
            scores[program] = z[present].mean(axis=1)
    return pd.DataFrame(scores, index=z.index)
