"""RNA re-prediction: how much of a patient's measured expression can be read back from tiles.

The field's measure of faithfulness (HE2RNA, STMDiT): a tile-to-expression regressor, trained on
the *real tiles of the training patients only*, predicts target genes from a tile; a patient's
prediction is the mean over its tiles. For held-out patients, the Spearman correlation across
patients between predicted and measured expression is taken per gene and averaged over the
targets: `rna_reprediction_spearman`. Read from the real test tiles it is the ceiling; from tiles
generated from those patients' RNA it says how much of the RNA the generator drew; from the
shuffled control (tiles relabelled by a derangement) it should be about 0.

No pathology network can be fetched here, so the regressor is trained in-domain: a small CNN,
fitted once per cohort and cached in ``<cohort>/regressors/`` under a key of the cohort's manifest
and the settings. It is an instrument, never a training loss: a generator trained against it would
make the measure circular (the training loop only *selects* checkpoints by it, as by a val loss).

Targets: the marker genes of the tissue programs (`rna2histo.markers`) and the most variable other
genes of the training patients, z-scored with the training patients' statistics (the normaliser's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from ..data.dataset import tiles_to_model
from ..data.rna import Normaliser, fit_on_training
from ..generate import sample_tiles
from ..markers import MARKERS
from ..paths import cached, cohort_cache_key
from .stats import bootstrap_ci, summary

VERSION = 1  # of the regressor's recipe: a change retrains every cached regressor
N_VARIABLE = 42  # the most variable non-marker genes among the targets (58 markers + 42 = 100)
WIDTHS = (32, 64, 96, 128)  # the CNN's channels, one stride-2 stage each


class TileRegressor(nn.Module):
    """Four stride-2 conv stages with GroupNorm, global mean pooling, a linear head to the targets."""

    def __init__(self, n_targets: int, widths=WIDTHS):
        super().__init__()
        layers, c_in = [], 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                       nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@dataclass
class Regressor:
    """A fitted tile -> target-genes regressor and the genes it predicts (z-scores)."""

    net: TileRegressor
    genes: list[str]
    settings: dict  # how it was trained and how it did on the validation patients

    @torch.no_grad()
    def predict(self, tiles: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, S, S, 3) uint8 tiles -> (N, targets) predicted z-scores."""
        self.net.eval()
        out = [self.net(tiles_to_model(tiles[i : i + batch])).numpy() for i in range(0, len(tiles), batch)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)

    def patient_predictions(self, tiles: np.ndarray, patients) -> pd.DataFrame:
        """(patients, genes) mean prediction over each patient's tiles, index patient_id (sorted)."""
        frame = pd.DataFrame(self.predict(tiles), columns=self.genes)
        frame["patient_id"] = np.asarray(patients).astype(str)
        return frame.groupby("patient_id")[self.genes].mean()


def target_genes(cohort, normaliser: Normaliser, n_variable: int = N_VARIABLE) -> list[str]:
    """The markers present in the normalised genes, then the top `n_variable` others by training variance."""
    kept = set(normaliser.genes)
    markers = [g for genes in MARKERS.values() for g in genes if g in kept]
    train = cohort.rna.loc[cohort.patients("train"), normaliser.genes]
    variance = train.var().drop(markers).sort_values(ascending=False, kind="stable")
    return markers + [str(g) for g in variance.index[:n_variable]]


def measured(cohort, normaliser: Normaliser, genes: list[str]) -> pd.DataFrame:
    """(patients, genes) measured expression of every cohort patient, z-scored on the training patients."""
    return normaliser.transform(cohort.rna)[0][genes]


def gene_spearman(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(genes,) Spearman across patients (rows) per gene (column); NaN where a side is constant."""
    if len(predicted) < 3:
        return np.full(predicted.shape[1], np.nan)
    a, b = stats.rankdata(predicted, axis=0), stats.rankdata(truth, axis=0)
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def mean_gene_spearman(predicted: pd.DataFrame, truth: pd.DataFrame) -> float:
    """The mean over genes of `gene_spearman` on the patients of `predicted` (an undefined rho counts as 0)."""
    rho = gene_spearman(predicted.to_numpy(np.float64), truth.loc[predicted.index, predicted.columns].to_numpy(np.float64))
    return float(np.nan_to_num(rho, nan=0.0).mean())


def reprediction_spearman(predicted: pd.DataFrame, truth: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """`mean_gene_spearman` with its patient-bootstrap interval, {"value", "ci"} as in metrics.json."""
    p = predicted.to_numpy(np.float64)
    t = truth.loc[predicted.index, predicted.columns].to_numpy(np.float64)
    statistic = lambda idx: float(np.nan_to_num(gene_spearman(p[idx], t[idx]), nan=0.0).mean())  # noqa: E731
    return summary(*bootstrap_ci(statistic, np.arange(len(p)), n_boot=n_boot, seed=seed, level=level))


# --- training, once per cohort ----------------------------------------------------------------------


def _patient_tiles(cohort, split: str):
    rows = cohort.tile_indices(split)
    return rows, cohort.tiles_table["patient_id"].to_numpy()[rows].astype(str)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random dihedral transform of the batch (tissue has no orientation)."""
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, (2, 3))
    return x.flip(3) if torch.rand(1, generator=generator) < 0.5 else x


def fit_regressor(cohort, normaliser: Normaliser | None = None, *, epochs: int = 12, batch_size: int = 64,
                  lr: float = 2e-3, seed: int = 0, progress: bool = False) -> Regressor:
    """Train the regressor on the training patients' real tiles; keep the epoch best on validation.

    Selection: the mean per-gene Spearman of the validation patients' mean predictions (the last
    epoch when there are fewer than three validation patients).
    """
    normaliser = normaliser or fit_on_training(cohort)
    genes = target_genes(cohort, normaliser)
    truth = measured(cohort, normaliser, genes)
    rows, ids = _patient_tiles(cohort, "train")
    tiles = np.asarray(cohort.tiles[rows])
    y = torch.tensor(truth.loc[ids].to_numpy(), dtype=torch.float32)
    val_rows, val_ids = _patient_tiles(cohort, "val")
    val_tiles = np.asarray(cohort.tiles[val_rows])
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = TileRegressor(len(genes))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tiles) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    regressor = Regressor(net, genes, {})
    best, best_state, history = -math.inf, None, []
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(tiles), generator=generator)
        total = 0.0
        for start in range(0, len(tiles), batch_size):
            idx = order[start : start + batch_size].numpy()
            x = _augment(tiles_to_model(tiles[np.sort(idx)]), generator)
            loss = (net(x) - y[np.sort(idx)]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        score = mean_gene_spearman(regressor.patient_predictions(val_tiles, val_ids), truth)
        history.append({"epoch": epoch, "train_mse": total / len(tiles), "val_spearman": score})
        if progress:
            print(f"re-prediction regressor: epoch {epoch}/{epochs}, train mse {total / len(tiles):.3f}, "
                  f"val spearman {score:.3f}", flush=True)
        if len(set(val_ids)) < 3 or score > best:
            best, best_state = score, {k: v.detach().clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    regressor.settings = {"version": VERSION, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                          "targets": len(genes), "best_val_spearman": best, "history": history}
    return regressor


def cohort_regressor(cohort, normaliser: Normaliser | None = None, *, epochs: int = 12, seed: int = 0,
                     progress: bool = True) -> Regressor:
    """The cohort's regressor: trained once (`fit_regressor`), then read from its cache.

    The cache is ``<cohort>/regressors/reprediction-<key>.pt``, keyed by the cohort's manifest
    (a rebuilt cohort writes a new one), the recipe's `VERSION` and the settings. A damaged
    cache file is retrained, never trusted.
    """
    normaliser = normaliser or fit_on_training(cohort)
    settings = {"epochs": epochs, "seed": seed}
    key = cohort_cache_key(cohort.root, {"version": VERSION, "genes": normaliser.genes[:5], **settings})
    path = cohort.root / "regressors" / f"reprediction-{key}.pt"

    def fit():
        if progress:
            print(f"training the re-prediction regressor of {cohort.root.name} once (cached in {path.parent})",
                  flush=True)
        return fit_regressor(cohort, normaliser, epochs=epochs, seed=seed, progress=progress)

    return cached(path, _load_regressor, fit, _save_regressor, "regressor")


def _load_regressor(path) -> Regressor:
    state = torch.load(path, weights_only=True)
    net = TileRegressor(len(state["genes"]))
    net.load_state_dict(state["state_dict"])
    return Regressor(net, list(state["genes"]), state["settings"])


def _save_regressor(regressor: Regressor, tmp) -> None:
    torch.save({"genes": regressor.genes, "settings": regressor.settings, "state_dict": regressor.net.state_dict()}, tmp)


# --- the cheap version the training loop runs -------------------------------------------------------


class ValidationCheck:
    """`rna_reprediction_spearman` of `per_patient` generated tiles per validation patient.

    The training loop calls it every ``ckpt_every`` epochs to log faithfulness next to the losses
    and to pick the ``best`` checkpoint; the noise is fixed, so epochs are compared on the same
    draws. NaN with fewer than three validation patients (no rank correlation across them).
    """

    def __init__(self, regressor: Regressor, truth: pd.DataFrame, conditions: torch.Tensor, ids: list[str],
                 per_patient: int, seed: int = 0):
        self.regressor, self.truth, self.seed = regressor, truth, seed
        self.conditions = conditions.repeat_interleave(per_patient, 0)
        self.labels = np.repeat(np.asarray(ids, dtype=str), per_patient)
        self.enough = len(set(ids)) >= 3

    @classmethod
    def of(cls, cohort, normaliser: Normaliser, conditions: torch.Tensor, per_patient: int, seed: int = 0):
        """`conditions`: (cohort patients, k) model conditions in ``cohort.patients()`` order."""
        regressor = cohort_regressor(cohort, normaliser)
        ids = cohort.patients("val")
        position = {p: i for i, p in enumerate(cohort.patients())}
        rows = torch.tensor([position[p] for p in ids], dtype=torch.long)
        truth = measured(cohort, normaliser, regressor.genes).loc[ids]
        return cls(regressor, truth, conditions[rows], ids, per_patient, seed)

    @torch.no_grad()
    def __call__(self, model, device, batch: int = 64) -> float:
        if not self.enough:
            return float("nan")
        model.eval()
        tiles = sample_tiles(model, self.conditions.to(device), self.seed, batch)
        return mean_gene_spearman(self.regressor.patient_predictions(tiles, self.labels), self.truth)
