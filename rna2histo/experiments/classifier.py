"""The downstream classifier: a small CNN from one tile to a patient-level 0/1 label, and its score.

`train_classifier` trains on pooled real and synthetic tiles for a fixed number of steps;
`roc_auc` scores it from ranks, `auc_ci` adds a 95% interval over resampled test patients
(the project's one patient bootstrap, `rna2histo.evaluation.stats`) and `auc_difference_ci`
the paired difference between two classifiers on the same patients. Used by
`rna2histo.experiments.downstream`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import nn

from ..data.augment import colour_jitter, geometry, in_unit_range
from ..data.dataset import to_model_range
from ..errors import UserError
from ..evaluation import stats


class TileClassifier(nn.Module):
    """Four (conv 3x3 stride 2, BatchNorm, ReLU) blocks, global average pool, linear: one logit.

    About 100k weights at width 16: small enough that a 200-step training on 64 px tiles takes
    seconds on two CPU cores, so the experiment's dozens of trainings fit in minutes. Any tile
    size works (the pool removes it); at 64 px the last map is 4 x 4, at 128 px 8 x 8.
    """

    def __init__(self, width: int = 16, blocks: int = 4):
        super().__init__()
        layers, c_in = [], 3
        for i in range(blocks):
            c_out = width * 2**i
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1] -> logits (B,)."""
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def _as_batch(tiles: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S, 3), memory-mapped or not -> uint8 tensor (B, 3, S, S)."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2)


def _pool(real, labels, synthetic, synthetic_labels) -> tuple[np.ndarray, np.ndarray]:
    """Real and synthetic tiles pooled into one uint8 array (N, S, S, 3) and labels (N,)."""
    parts = [(real, labels, "real")]
    if synthetic is not None:
        parts.append((synthetic, synthetic_labels, "synthetic"))
    tiles, ys = [], []
    for x, y, name in parts:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise UserError(f"{name} tiles must be uint8 (N, S, S, 3), got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise UserError(f"{len(x)} {name} tiles but {len(y)} {name} labels")
        tiles.append(x)
        ys.append(y)
    if len({x.shape[1:] for x in tiles}) > 1:
        raise UserError(f"real and synthetic tiles differ in size: {[x.shape[1:] for x in tiles]}")
    y = np.concatenate(ys).astype(np.float32)
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        classes = sorted(set(y.tolist()))
        raise UserError(f"training labels must be 0/1 with both classes present, got {classes}")
    return np.concatenate(tiles), y


def train_classifier(
    real: np.ndarray,
    labels,
    synthetic: np.ndarray | None = None,
    synthetic_labels=None,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 16,
    jitter: float = 0.2,
    device: str = "cpu",
) -> TileClassifier:
    """A `TileClassifier` trained with BCE-with-logits and Adam on real and synthetic tiles pooled.

    The budget is `steps` batches whatever the pool size (no epochs): each step draws the next
    `batch_size` tiles of a seeded reshuffle of the pool, so every tile is seen about equally
    often and a bigger pool means more variety, not more gradient steps. Initialisation,
    batches and augmentation all follow `seed` (the caller's global RNG is left untouched),
    so the same call gives the same model.
    """
    if steps < 1 or batch_size < 1:
        raise UserError(f"steps and batch_size must be at least 1, got {steps} and {batch_size}")
    tiles, y = _pool(real, labels, synthetic, synthetic_labels)
    tiles, y = _as_batch(tiles), torch.from_numpy(y)  # (N, 3, S, S) uint8, (N,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TileClassifier(width).to(device)
    generator = torch.Generator().manual_seed(seed)
    order = _batch_order(len(tiles), steps * batch_size, generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        x = geometry(to_model_range(tiles[idx].to(device)), generator=generator)  # flips, rotations
        # no hue: each patient has its own stain, and a classifier must learn tissue, not stain
        x = in_unit_range(colour_jitter, x, jitter, jitter, jitter, 0.0, generator=generator)
        loss = loss_fn(model(x), y[idx].to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval()


def _batch_order(n: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """`total` indices into n items: back-to-back seeded permutations (epochs without the name)."""
    rounds = -(-total // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:total]


@torch.no_grad()
def predict(model: TileClassifier, tiles: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(label = 1) per tile, uint8 (N, S, S, 3) in, float64 (N,) out; eval mode, no gradients."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.sigmoid(model(to_model_range(_as_batch(tiles[i : i + batch_size]).to(device)))).cpu()
        for i in range(0, len(tiles), batch_size)
    ]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


# --- the score ---------------------------------------------------------------------------


def roc_auc(scores, labels) -> float:
    """ROC AUC = U / (n1 n0), Mann-Whitney U from average ranks (ties count 1/2); NaN for one class.

    U = R1 - n1 (n1 + 1) / 2 with R1 the rank sum of the positives: the share of
    (positive, negative) pairs the scores order correctly.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


MIN_PATIENTS_PER_CLASS = 3  # fewer test patients of a class: no interval (see `auc_ci`)


def too_few_patients(labels, patients) -> bool:
    """Whether either class has fewer than MIN_PATIENTS_PER_CLASS test patients."""
    per_patient = pd.Series(np.asarray(labels)).groupby(np.asarray(patients)).first()
    counts = per_patient.value_counts()
    return len(counts) < 2 or counts.min() < MIN_PATIENTS_PER_CLASS


def auc_ci(scores, labels, patients, n_boot: int = 1000, seed: int = 0) -> dict:
    """The tile-level AUC and its 95% interval over resampled PATIENTS (`stats.bootstrap_ci`).

    Labels are per patient, so a resample can draw patients of one class only; its AUC is
    undefined (NaN) and `stats` leaves such draws out of the percentile interval. How many were
    left out is reported. With fewer than MIN_PATIENTS_PER_CLASS test patients in a class there
    is no interval at all: the draws that keep both classes all but repeat the same patients,
    and their percentiles would shrink to a point that claims a certainty the data lack.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if too_few_patients(labels, patients):
        return {**stats.summary(roc_auc(scores, labels), (np.nan, np.nan)), "degenerate_draws": None}
    degenerate = []

    def statistic(idx):
        value = roc_auc(scores[idx], labels[idx])
        degenerate.append(not np.isfinite(value))
        return value

    value, ci = stats.bootstrap_ci(statistic, np.asarray(patients), n_boot=n_boot, seed=seed)
    return {**stats.summary(value, ci), "degenerate_draws": int(sum(degenerate[1:]))}


def auc_difference_ci(scores, reference, labels, patients, n_boot: int = 1000, seed: int = 0):
    """AUC(scores) - AUC(reference) on the same test tiles, bootstrapped over the same patients.

    Paired: each resample scores both classifiers on the same patients, so the interval is
    narrower than two separate intervals and says directly whether the difference excludes 0.
    """
    scores, reference, labels = (np.asarray(a, np.float64) for a in (scores, reference, labels))
    if too_few_patients(labels, patients):  # no interval: see `auc_ci`
        return stats.summary(roc_auc(scores, labels) - roc_auc(reference, labels), (np.nan, np.nan))

    def statistic(idx):
        return roc_auc(scores[idx], labels[idx]) - roc_auc(reference[idx], labels[idx])

    value, ci = stats.bootstrap_ci(statistic, np.asarray(patients), n_boot=n_boot, seed=seed)
    return stats.summary(value, ci)
