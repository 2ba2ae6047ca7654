"""Biological faithfulness: does generated tissue carry the biology of the conditioning RNA?

Weight-free: every measure works on per-tile morphometrics (`morphology.morphometrics_table`)
with a `patient_id` column, one table for the real test tiles and one for the generated tiles
(made from each test patient's RNA), plus per-patient RNA program scores (`rna.program_scores`).
Features are z-scored on the real tiles' scale (`standardise`), so both sets share one unit:
a real-tile standard deviation.

- `morph_frechet_distance`: Frechet distance between Gaussians fitted to the two sets.
- `patient_morph_error`: how far a patient's generated tiles lie from the same patient's real
  tiles, relative to other patients' (ratio < 1: the RNA made them resemble their own patient).
- `conditioning_spearman`: rank correlation across patients between an RNA program score and
  the morphometric read-out it should drive (`MATCHING`), for generated or real tiles.
- `patient_retrieval`: is the true patient among the k nearest real patients?

Shuffled control. `derangement(ids, seed)` gives a map p -> q with q != p: patient p receives
the RNA of patient q. Either generate p's tiles from q's RNA and label them p, or relabel the
tiles already generated (`shuffle_labels`): since a generator sees only the RNA and its own
noise, both give the same distribution of tiles per label. Then call the same measures
unchanged. A model that ignores the RNA scores the same with and without shuffling; a faithful
model drops to chance: retrieval top-k to about k / n, error ratio to about 1, rho to about 0.

On a simulated cohort, `ground_truth_agreement` checks the read-outs against the per-tile truth
and `program_ground_truth` the generated read-outs against the patients' true program levels.
`faithfulness_metrics` gathers the headline numbers with patient-bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from ..cohort.nuclei import KINDS
from ..cohort.tissue import TILE_UM
from .stats import bootstrap_ci, frechet_distance, summary

FEATURES = (
    "nuclei",
    "density_per_100um2",
    "mean_area",
    "mean_eccentricity",
    "h_od",
    "e_od",
    "lymphocyte_fraction",
    "stroma_fraction",
    "lumen_fraction",
)
MIN_STD = 1e-12  # a feature with a smaller spread over the real tiles is constant and dropped
# program -> (morphometric read-out, expected sign of its rank correlation with the program).
# Chosen from the simulator (cohort/tissue.py, cohort/nuclei.py), checked on a 60-patient cohort
# at 128 px (patient-level Spearman in brackets).
MATCHING: dict[str, tuple[str, int]] = {
    # Epithelium is where tumour nuclei sit, and they are the large ones (10-13.5 um across, vs
    # 6-7.5 um lymphocytes and thin fibroblasts); density barely moves, since tumour nuclei
    # (16 um lattice) merely replace fibroblasts (0.84; density -0.17).
    "epithelial": ("mean_area", +1),
    # Lymphocytes are kept with probability 0.9 q_immune^1.5, small, round and dark (0.74).
    "immune": ("lymphocyte_fraction", +1),
    # Eosin-dominant pixels outside nuclei and lumen: collagen (0.79).
    "stroma": ("stroma_fraction", +1),
    # Proliferation enlarges tumour nuclei by up to 15% (32% in area) and adds mitoses (dense,
    # which h_od does not resolve: 0.0). It shares mean_area with the epithelial program, but
    # keeps its own signal: partial rho 0.52 given the other programs (0.59 raw).
    "proliferation": ("mean_area", +1),
    # Near-white pixels: the lumen / air-space area of the tile (0.82).
    "lumen": ("lumen_fraction", +1),
}
# read-out -> what the simulator's truth (`truth_readouts`) gives for it
TRUTH = {
    "nuclei": "nuclei with their centre in the tile, all classes",
    "density_per_100um2": "those nuclei per 100 um^2 of non-lumen area",
    "mean_area": "share of tumour nuclei (mitoses included), the large ones: a rank proxy",
    "lymphocyte_fraction": "lymphocytes / nuclei",
    "stroma_fraction": "gt_stroma_fraction",
    "lumen_fraction": "gt_lumen_fraction",
}


def feature_columns(*tables: pd.DataFrame) -> list[str]:
    """The FEATURES present in every table, in FEATURES order."""
    cols = [c for c in FEATURES if all(c in t.columns for t in tables)]
    if not cols:
        raise ValueError(f"no morphometric columns ({', '.join(FEATURES)}) in the tables")
    return cols


def standardise(real: pd.DataFrame, generated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables z-scored with the REAL tiles' mean and std (ddof 0), other columns kept.

    A feature constant over the real tiles (std < MIN_STD) is dropped from both, not scaled by
    1: it has no real-tile unit, and a raw difference would weigh in at an arbitrary scale.
    The dropped names are in `attrs["dropped"]`. z-scoring is idempotent, so measures may
    standardise tables that already were.
    """
    cols = feature_columns(real, generated)
    mean, std = real[cols].mean(), real[cols].std(ddof=0)
    kept = [c for c in cols if std[c] >= MIN_STD]
    out = []
    for table in (real, generated):
        z = table.drop(columns=[c for c in FEATURES if c in table.columns and c not in kept])
        z[kept] = (table[kept].astype(np.float64) - mean[kept]) / std[kept]
        z.attrs["dropped"] = [c for c in cols if c not in kept]
        out.append(z)
    return out[0], out[1]


def patient_means(morph: pd.DataFrame) -> pd.DataFrame:
    """(patients, features) mean of each patient's tiles, index patient_id (sorted)."""
    return morph.groupby("patient_id")[feature_columns(morph)].mean()


def morph_frechet_distance(real: pd.DataFrame, generated: pd.DataFrame) -> float:
    """Frechet distance of the standardised morphometrics, in real-tile variance units.

    0 for identical sets; needs more tiles than features in each set for a full-rank fit.
    """
    real_z, gen_z = standardise(real, generated)
    cols = feature_columns(real_z, gen_z)
    return frechet_distance(real_z[cols].to_numpy(np.float64), gen_z[cols].to_numpy(np.float64))


def _mean_vectors(real: pd.DataFrame, generated: pd.DataFrame):
    """Per-patient mean standardised vectors: real (R, F) and generated (G, F) frames."""
    real_z, gen_z = standardise(real, generated)
    cols = feature_columns(real_z, gen_z)
    real_m = real_z.groupby("patient_id")[cols].mean()
    gen_m = gen_z.groupby("patient_id")[cols].mean()
    return real_m, gen_m.loc[gen_m.index.isin(real_m.index)]


def _distances(gen_m: pd.DataFrame, real_m: pd.DataFrame) -> np.ndarray:
    """(G, R) Euclidean distances between generated and real patient means."""
    g, r = gen_m.to_numpy(), real_m.to_numpy()
    return np.sqrt(((g[:, None, :] - r[None, :, :]) ** 2).sum(-1))


def patient_morph_error(real: pd.DataFrame, generated: pd.DataFrame) -> dict:
    """Distance of each patient's generated mean vector to their own vs other patients' real one.

    Per patient p (in both tables): error = |g_p - r_p|, baseline = mean over q != p of
    |g_p - r_q|, with g, r the mean standardised morphometric vectors. Returns {"error": mean
    error, "baseline": mean baseline, "ratio": error / baseline, "table": (patients, [error,
    baseline, ratio]) frame}; ratio < 1 means generated tiles resemble their own patient more.
    """
    real_m, gen_m = _mean_vectors(real, generated)
    if len(real_m) < 2:
        raise ValueError("patient_morph_error needs real tiles of at least two patients")
    d = _distances(gen_m, real_m)
    own = real_m.index.get_indexer(gen_m.index)
    rows = np.arange(len(gen_m))
    error = d[rows, own]
    baseline = (d.sum(1) - error) / (d.shape[1] - 1)
    table = pd.DataFrame({"error": error, "baseline": baseline}, index=gen_m.index)
    table["ratio"] = table["error"] / table["baseline"]
    mean_error, mean_baseline = float(error.mean()), float(baseline.mean())
    return {
        "error": mean_error,
        "baseline": mean_baseline,
        "ratio": mean_error / mean_baseline,
        "table": table,
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(rho, p); NaN when fewer than 3 values or either side is constant."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    rho, p = stats.spearmanr(x, y)
    return float(rho), float(p)


def _aligned(scores: pd.DataFrame, per_patient: pd.DataFrame, matching: dict):
    """Programs kept, (P, K) score and read-out arrays of the common patients, signs (K,)."""
    means = patient_means(per_patient) if "patient_id" in per_patient.columns else per_patient
    common = scores.index[scores.index.isin(means.index)]
    keep = [k for k, (col, _) in matching.items() if k in scores.columns and col in means.columns]
    x = scores.loc[common, keep].to_numpy(np.float64)
    y = means.loc[common, [matching[k][0] for k in keep]].to_numpy(np.float64)
    return keep, x, y, np.array([matching[k][1] for k in keep], dtype=np.float64)


def _summary(signed: np.ndarray) -> float:
    """Mean sign-corrected rho; an undefined rho (constant read-out) counts as 0, no relation."""
    return float(np.nan_to_num(signed, nan=0.0).mean()) if len(signed) else float("nan")


def conditioning_spearman(
    scores: pd.DataFrame, per_patient_morph: pd.DataFrame, matching: dict = MATCHING
) -> pd.DataFrame:
    """Spearman across patients between each program score and its read-out (`MATCHING`).

    `scores`: (patients, programs), index patient_id; `per_patient_morph`: per-patient means
    (index patient_id) or a tile table with a patient_id column, averaged here. Call it once
    with generated and once with real tiles. Rows: programs; columns readout, sign, rho,
    signed_rho (= sign * rho), p_value, n_patients. `attrs["summary"]["mean_signed_rho"]` is
    the one number for the metrics JSON (undefined rhos count as 0).
    """
    keep, x, y, signs = _aligned(scores, per_patient_morph, matching)
    rows = []
    for j, program in enumerate(keep):
        rho, p = _spearman(x[:, j], y[:, j])
        rows.append({"readout": matching[program][0], "sign": int(signs[j]), "rho": rho,
                     "signed_rho": signs[j] * rho, "p_value": p, "n_patients": len(x)})
    table = pd.DataFrame(rows, index=pd.Index(keep, name="program"))
    table.attrs["summary"] = {"mean_signed_rho": conditioning_summary(table)}
    return table


def conditioning_summary(table: pd.DataFrame) -> float:
    """Mean sign-corrected rho of a `conditioning_spearman` table (NaN rho counts as 0)."""
    return _summary(table["signed_rho"].to_numpy(np.float64))


def patient_retrieval(real: pd.DataFrame, generated: pd.DataFrame, k=(1, 5)) -> dict:
    """Top-k accuracy of finding a patient from the mean of their generated tiles.

    Per-patient means, not single tiles: the RNA sets a patient's tissue, not where on the
    slide a tile was cut, so single tiles mostly measure within-slide spread the RNA cannot
    explain; and patients stay the unit, as in the other measures and the bootstrap. The real
    patients (candidates) are ranked by the distance from their mean real vector; ties count
    against. Returns {"top<k>", "chance_top<k>" (= min(k, n) / n), "n_patients", "table" (rank
    per patient, 1 = best)}.
    """
    real_m, gen_m = _mean_vectors(real, generated)
    d = _distances(gen_m, real_m)
    own = d[np.arange(len(gen_m)), real_m.index.get_indexer(gen_m.index)]
    rank = (d <= own[:, None]).sum(1)  # candidates at least as close, the true one included
    out: dict = {}
    for kk in k:
        out[f"top{kk}"] = float(np.mean(rank <= kk))
        out[f"chance_top{kk}"] = min(kk, len(real_m)) / len(real_m)
    out["n_patients"] = len(gen_m)
    out["table"] = pd.DataFrame({"rank": rank}, index=gen_m.index)
    return out


def derangement(ids, seed: int) -> dict:
    """Seeded random map p -> q over `ids` with q != p for every p: p receives q's RNA.

    Uniform over derangements (permutations redrawn until none has a fixed point, e ~ 2.7
    draws on average); at least two distinct ids.
    """
    ids = list(ids)
    if len(set(ids)) != len(ids) or len(ids) < 2:
        raise ValueError("derangement needs at least two distinct ids")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(ids))
        if not np.any(perm == np.arange(len(ids))):
            return {ids[i]: ids[j] for i, j in enumerate(perm)}


def shuffle_labels(generated: pd.DataFrame, mapping: dict) -> pd.DataFrame:
    """The shuffled control from tiles already generated: tiles made from q's RNA are relabelled
    p where mapping[p] = q, so that patient p's tiles come from another patient's RNA."""
    inverse = {q: p for p, q in mapping.items()}
    out = generated.copy()
    out["patient_id"] = out["patient_id"].map(lambda q: inverse.get(q, q))
    return out


def truth_readouts(tiles_gt: pd.DataFrame) -> pd.DataFrame:
    """Per tile, the simulator's truth for each read-out of `TRUTH` (same column names).

    `tiles_gt`: a simulated cohort's tiles table (gt_* counts and fractions).
    """
    counts = tiles_gt[[f"gt_{name}" for name in KINDS.values()]].to_numpy(np.float64)
    total = counts.sum(1)
    per_nucleus = np.maximum(total, 1)  # a tile without nuclei has fractions 0, as morphometrics
    tissue_um2 = TILE_UM**2 * (1 - tiles_gt["gt_lumen_fraction"].to_numpy(np.float64))
    tumour = (tiles_gt["gt_tumour_nuclei"] + tiles_gt["gt_mitoses"]).to_numpy(np.float64)
    return pd.DataFrame(
        {
            "nuclei": total,
            "density_per_100um2": 100 * total / np.maximum(tissue_um2, 1e-9),
            "mean_area": tumour / per_nucleus,
            "lymphocyte_fraction": tiles_gt["gt_lymphocytes"].to_numpy(np.float64) / per_nucleus,
            "stroma_fraction": tiles_gt["gt_stroma_fraction"].to_numpy(np.float64),
            "lumen_fraction": tiles_gt["gt_lumen_fraction"].to_numpy(np.float64),
        },
        index=tiles_gt.index,
    )


def ground_truth_agreement(morph: pd.DataFrame, tiles_gt: pd.DataFrame) -> pd.DataFrame:
    """Spearman over tiles between each read-out and its simulated truth; rows in the same order.

    Rows: read-outs of `TRUTH`; columns truth (what it is compared with), rho, n_tiles.
    """
    if len(morph) != len(tiles_gt):
        raise ValueError(f"{len(morph)} morphometric rows but {len(tiles_gt)} ground-truth rows")
    truth = truth_readouts(tiles_gt)
    rows = {}
    for col in [c for c in TRUTH if c in morph.columns]:
        rho, _ = _spearman(morph[col].to_numpy(np.float64), truth[col].to_numpy())
        rows[col] = {"truth": TRUTH[col], "rho": rho, "n_tiles": len(morph)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("readout")


def true_programs(patients_table: pd.DataFrame) -> pd.DataFrame:
    """(patients, programs) true levels p_k from a simulated cohort's patients table."""
    cols = [c for c in patients_table.columns if c.startswith("program_")]
    return patients_table[cols].rename(columns=lambda c: c.removeprefix("program_"))


def program_ground_truth(
    patients_table: pd.DataFrame, morph: pd.DataFrame, matching: dict = MATCHING
) -> pd.DataFrame:
    """`conditioning_spearman` with the true program levels in place of the RNA scores.

    `morph`: generated (or real) tiles with patient_id; says whether their read-outs follow the
    biology the RNA was simulated from, without the noise of scoring the RNA.
    """
    return conditioning_spearman(true_programs(patients_table), morph, matching)


def patient_bootstrap(statistic: Callable[[np.ndarray], float], n_patients: int, **kw) -> dict:
    """`summary` of statistic(idx), idx positions (n,) into the patients drawn with replacement."""
    return summary(*bootstrap_ci(statistic, np.arange(n_patients), **kw))


def faithfulness_metrics(
    real: pd.DataFrame,
    generated: pd.DataFrame,
    scores: pd.DataFrame,
    k=(1, 5),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Headline measures with patient-bootstrap intervals, each {"value", "ci": [lo, hi]}.

    Keys: morph_fd (on the tiles of patients in both sets), patient_morph_error,
    conditioning_spearman (mean signed rho over MATCHING, RNA scores vs generated read-outs),
    retrieval_top<k>. Patients: those with real and generated tiles (and scores, for
    conditioning_spearman). Per-patient errors, baselines and retrieval ranks
    are computed once against all real patients and resampled; morph_fd and conditioning_spearman
    are recomputed on the drawn patients' tiles.
    """
    real_z, gen_z = standardise(real, generated)
    error = patient_morph_error(real_z, gen_z)["table"]
    ranks = patient_retrieval(real_z, gen_z, k)["table"]["rank"].to_numpy()
    e, b = error["error"].to_numpy(), error["baseline"].to_numpy()
    kw = {"n_boot": n_boot, "seed": seed, "level": level}
    out = {"morph_fd": _fd_bootstrap(real_z, gen_z, kw)}
    out["patient_morph_error"] = patient_bootstrap(lambda i: e[i].mean() / b[i].mean(), len(e), **kw)
    _, x, y, signs = _aligned(scores, generated, MATCHING)  # raw: ranks need no common scale
    out["conditioning_spearman"] = patient_bootstrap(
        lambda i: _summary(signs * [_spearman(x[i, j], y[i, j])[0] for j in range(len(signs))]),
        len(x), **kw,
    )
    for kk in k:
        hit = (ranks <= kk).astype(np.float64)
        out[f"retrieval_top{kk}"] = patient_bootstrap(lambda i: hit[i].mean(), len(hit), **kw)
    return out


def _fd_bootstrap(real_z: pd.DataFrame, gen_z: pd.DataFrame, kw: dict) -> dict:
    """morph FD over resampled patients, each bringing all their real and generated tiles."""
    cols = feature_columns(real_z, gen_z)
    patients = sorted(set(real_z["patient_id"]) & set(gen_z["patient_id"]))
    r, g = real_z[cols].to_numpy(np.float64), gen_z[cols].to_numpy(np.float64)
    r_rows = [np.flatnonzero(real_z["patient_id"].to_numpy() == p) for p in patients]
    g_rows = [np.flatnonzero(gen_z["patient_id"].to_numpy() == p) for p in patients]

    def statistic(idx):
        try:
            return frechet_distance(r[np.concatenate([r_rows[i] for i in idx])],
                                    g[np.concatenate([g_rows[i] for i in idx])])
        except ValueError:  # a degenerate resample: left out of the interval
            return float("nan")

    return patient_bootstrap(statistic, len(patients), **kw)
