"""Statistics shared by the image metrics and the faithfulness measures.

- `bootstrap_ci`, `bootstrap_ci_two`, `mean_ci`, `set_distance_ci`: tiles of one patient are
  correlated (same tissue, same RNA condition), so the independent units are patients. A
  resample draws patients with replacement and keeps all the units (pairs, tiles) of each drawn
  patient; the interval is the percentile interval of the resampled statistic.
- `frechet_distance`: the distance between Gaussians fitted to two sets of feature vectors, used
  on Inception features (FID) and on standardised morphometrics alike.
- `summary`, `unavailable`: the JSON shapes of a metric in `metrics.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def frechet_distance(real_f: np.ndarray, gen_f: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of Gaussians fitted to rows (N1, d), (N2, d).

    Through Tr sqrt(S1 S2) = ||B A^T||_* / sqrt((n1 - 1)(n2 - 1)), A and B the centred rows:
    exact for any sizes (S1 = A^T A / (n1 - 1), and the nonzero eigenvalues of S1 S2 are the
    squared singular values of B A^T over (n1 - 1)(n2 - 1)); an SVD of (n2, n1) instead of an
    eigendecomposition of (d, d): much cheaper when there are fewer tiles than d = 2048.
    """
    real_f, gen_f = np.asarray(real_f, np.float64), np.asarray(gen_f, np.float64)
    if min(len(real_f), len(gen_f)) < 2:
        raise ValueError("a Frechet distance needs at least two feature vectors per set")
    a, b = real_f - real_f.mean(0), gen_f - gen_f.mean(0)
    n1, n2 = len(a) - 1, len(b) - 1
    diff = real_f.mean(0) - gen_f.mean(0)
    tr_covmean = np.linalg.svd(b @ a.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    return float(diff @ diff + (a * a).sum() / n1 + (b * b).sum() / n2 - 2 * tr_covmean)


def _units_by_patient(groups) -> dict:
    """{patient id: index array of its units} for the per-unit ids `groups` (N,)."""
    groups = np.asarray(groups)
    ids, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # units grouped by patient, in input order
    blocks = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1])
    return dict(zip(ids.tolist(), blocks))


def _percentile_interval(draws: Sequence[float], level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.asarray(draws, dtype=np.float64), [tail, 100 - tail])
    return float(lo), float(hi)


def _bootstrap(statistic: Callable, group_sets: Sequence, n_boot: int, seed: int, level: float):
    """Value and percentile CI of statistic(*idx), one index array per unit set in `group_sets`.

    Each resample draws as many patients as there are, with replacement, from the union of the
    sets' patients; every set gets the units of the drawn patients, repeated as often as the
    patient is drawn. Draws that leave a set without units are redrawn.
    """
    tables = [_units_by_patient(g) for g in group_sets]
    if any(not t for t in tables):
        raise ValueError("the bootstrap needs at least one unit in every set")
    patients = sorted(set().union(*tables))
    value = float(statistic(*(np.arange(len(g)) for g in group_sets)))
    rng = np.random.default_rng(seed)
    empty = np.zeros(0, dtype=np.int64)
    draws = []
    while len(draws) < n_boot:
        chosen = [patients[k] for k in rng.integers(0, len(patients), len(patients))]
        idx = [np.concatenate([t.get(p, empty) for p in chosen]) for t in tables]
        if all(len(i) for i in idx):
            draws.append(float(statistic(*idx)))
    finite = [d for d in draws if np.isfinite(d)]  # a degenerate resample (NaN) says nothing
    return value, _percentile_interval(finite, level) if finite else (np.nan, np.nan)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], groups, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """(statistic over all units, percentile CI over patient resamples).

    `groups` (N,) gives the patient of each unit; statistic(idx) gets an index array into the
    units: all of them for the value, the units of resampled patients (duplicates kept) for the
    interval. For pair scores, units are pairs grouped by their generated tile's patient.
    """
    return _bootstrap(statistic, [groups], n_boot, seed, level)


def bootstrap_ci_two(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    real_groups,
    gen_groups,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, tuple[float, float]]:
    """`bootstrap_ci` for a statistic of two aligned sets, statistic(real_idx, gen_idx).

    One patient draw resamples both: the real and the generated tiles of each drawn patient.
    For FID each resample costs one `fid_from_features` (see its note on cost); FID and KID are
    biased upwards by duplicated tiles and small sets, so their intervals can sit above the value.
    """
    return _bootstrap(statistic, [real_groups, gen_groups], n_boot, seed, level)


def mean_ci(scores: np.ndarray, groups, **kw) -> tuple[float, tuple[float, float]]:
    """Mean of per-unit scores (e.g. SSIM per pair) with its patient bootstrap CI."""
    scores = np.asarray(scores, dtype=np.float64)
    return bootstrap_ci(lambda idx: scores[idx].mean(), groups, **kw)


def set_distance_ci(
    distance: Callable, real_f: np.ndarray, gen_f: np.ndarray, real_patients, gen_patients, **kw
) -> tuple[float, tuple[float, float]]:
    """distance(real_f, gen_f) (e.g. `fid_from_features`) with its patient bootstrap CI."""
    return bootstrap_ci_two(
        lambda i, j: distance(real_f[i], gen_f[j]), real_patients, gen_patients, **kw
    )


def summary(value: float, ci: tuple[float, float]) -> dict:
    """{"value": v, "ci": [lo, hi]}: a metric as the evaluation chapter writes it to JSON.

    An undefined number (NaN: e.g. a rank correlation over fewer than three patients) becomes
    None, JSON's null, since NaN is not valid JSON.
    """

    def number(x):
        x = float(x)
        return x if np.isfinite(x) else None

    return {"value": number(value), "ci": [number(ci[0]), number(ci[1])]}


def unavailable(reason: str) -> dict:
    """{"unavailable": True, "reason": ...}: a metric that could not be computed, and why."""
    return {"unavailable": True, "reason": str(reason)}
