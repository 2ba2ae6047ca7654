"""Faithfulness measures on planted data, the shuffled control, and the simulator's ground truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort import build_cohort
from rna2histo.evaluation import faithfulness as fa
from rna2histo.evaluation.morphology import morphometrics_table
from rna2histo.markers import PROGRAMS


def _tiles(means: np.ndarray, per_patient: int, spread: float, rng) -> pd.DataFrame:
    """Tile table: per patient p, `per_patient` rows of means[p] + N(0, spread^2) noise."""
    ids = [f"P{i:03d}" for i in range(len(means))]
    x = np.repeat(means, per_patient, 0) + spread * rng.standard_normal((len(means) * per_patient,
                                                                         means.shape[1]))
    table = pd.DataFrame(x, columns=fa.FEATURES)
    table.insert(0, "patient_id", np.repeat(ids, per_patient))
    return table


def _faithful(n_patients=40, seed=0):
    """Real tiles of patients with distinct means; generated = the same tiles + small noise."""
    rng = np.random.default_rng(seed)
    real = _tiles(rng.standard_normal((n_patients, len(fa.FEATURES))), 7, 0.7, rng)
    generated = real.copy()
    generated[list(fa.FEATURES)] += 0.1 * rng.standard_normal((len(real), len(fa.FEATURES)))
    return real, generated


def test_frechet_zero_on_itself_and_grows_with_shift():
    rng = np.random.default_rng(0)
    real = _tiles(np.zeros((1, len(fa.FEATURES))), 500, 1.0, rng)
    same = _tiles(np.zeros((1, len(fa.FEATURES))), 500, 1.0, rng)
    assert abs(fa.morph_frechet_distance(real, real)) < 1e-6
    assert fa.morph_frechet_distance(real, same) < 0.5  # sampling noise only
    fds = []
    for shift in (0.25, 0.5, 1.0):
        moved = real.copy()
        moved[list(fa.FEATURES)] += shift
        fds.append(fa.morph_frechet_distance(real, moved))
    assert np.all(np.diff(fds) > 0)
    assert fds[-1] == pytest.approx(len(fa.FEATURES) * 1.0, rel=0.15)  # |mu|^2 in real-sd units


def test_standardise_uses_real_scale_and_drops_constants():
    real, generated = _faithful(10)
    real["h_od"], generated["h_od"] = 0.3, 0.9  # constant over the real tiles
    real_z, gen_z = fa.standardise(real, generated)
    assert "h_od" not in real_z and "h_od" not in gen_z and real_z.attrs["dropped"] == ["h_od"]
    cols = fa.feature_columns(real_z)
    assert np.allclose(real_z[cols].mean(), 0) and np.allclose(real_z[cols].std(ddof=0), 1)
    mean, std = real["nuclei"].mean(), real["nuclei"].std(ddof=0)
    assert np.allclose(gen_z["nuclei"], (generated["nuclei"] - mean) / std)
    again, _ = fa.standardise(real_z, gen_z)  # idempotent
    assert np.allclose(again[cols], real_z[cols])


def test_faithful_generator_beats_chance():
    real, generated = _faithful()
    err = fa.patient_morph_error(real, generated)
    assert err["ratio"] < 0.5 and len(err["table"]) == 40
    ret = fa.patient_retrieval(real, generated)
    assert ret["chance_top1"] == pytest.approx(1 / 40)
    assert ret["chance_top5"] == pytest.approx(5 / 40)
    assert ret["top1"] > 0.8 and ret["top5"] >= ret["top1"]


def test_shuffled_control_falls_to_chance():
    """Relabelled by derangements, a faithful generator's tiles lose their patient."""
    real, generated = _faithful(n_patients=40)
    ids = sorted(set(real["patient_id"]))
    top1, top5, ratio = [], [], []
    for seed in range(20):
        shuffled = fa.shuffle_labels(generated, fa.derangement(ids, seed))
        ret = fa.patient_retrieval(real, shuffled)
        top1.append(ret["top1"])
        top5.append(ret["top5"])
        ratio.append(fa.patient_morph_error(real, shuffled)["ratio"])
    # Each label now sits on another patient's tiles: top-1 about 0, top-5 about 4 / 39.
    assert np.mean(top1) <= 1 / 40 + 0.02
    assert abs(np.mean(top5) - 5 / 40) < 0.05
    assert 0.9 < np.mean(ratio) < 1.15


def test_rna_blind_generator_scores_the_same_shuffled():
    """Generated tiles drawn from the pooled cohort, whatever the patient: chance either way."""
    real, _ = _faithful(n_patients=40)
    rng = np.random.default_rng(1)
    blind = real.iloc[rng.permutation(len(real))].reset_index(drop=True)
    blind["patient_id"] = real["patient_id"].to_numpy()
    ids = sorted(set(real["patient_id"]))
    for table in (blind, fa.shuffle_labels(blind, fa.derangement(ids, 0))):
        assert fa.patient_retrieval(real, table)["top1"] <= 0.15
        assert 0.8 < fa.patient_morph_error(real, table)["ratio"] < 1.2


def test_derangement_has_no_fixed_points_and_is_seeded():
    ids = [f"P{i:02d}" for i in range(30)]
    for seed in range(50):
        m = fa.derangement(ids, seed)
        assert sorted(m) == ids and sorted(m.values()) == ids
        assert all(p != q for p, q in m.items())
    assert fa.derangement(ids, 3) == fa.derangement(ids, 3)
    assert fa.derangement(ids, 3) != fa.derangement(ids, 4)
    assert fa.derangement(["a", "b"], 0) == {"a": "b", "b": "a"}
    with pytest.raises(ValueError):
        fa.derangement(["a"], 0)


def _scores(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:03d}" for i in range(n)], name="patient_id")
    return pd.DataFrame(rng.standard_normal((n, len(PROGRAMS))), index=ids, columns=list(PROGRAMS))


def test_conditioning_recovers_planted_relation_and_nothing_else():
    scores = _scores(300, 0)
    rng = np.random.default_rng(1)
    matching = {"immune": ("lymphocyte_fraction", 1), "stroma": ("stroma_fraction", 1),
                "lumen": ("lumen_fraction", 1), "epithelial": ("e_od", -1)}
    planted = pd.DataFrame(index=scores.index)
    planted["lymphocyte_fraction"] = 1 / (1 + np.exp(-2 * scores["immune"]))
    planted["stroma_fraction"] = scores["stroma"] ** 3
    planted["lumen_fraction"] = np.exp(scores["lumen"])
    planted["e_od"] = -np.exp(scores["epithelial"])
    planted += 0.05 * rng.standard_normal(planted.shape)
    table = fa.conditioning_spearman(scores, planted, matching)
    assert (table["signed_rho"] > 0.8).all() and (table.loc["epithelial", "rho"] < -0.8)
    assert table.attrs["summary"]["mean_signed_rho"] > 0.8

    # Independent read-outs, tile tables averaged per patient, the default MATCHING.
    tiles = _tiles(rng.standard_normal((300, len(fa.FEATURES))), 3, 0.5, rng)
    table = fa.conditioning_spearman(scores, tiles)
    assert list(table.index) == list(fa.MATCHING) and (table["n_patients"] == 300).all()
    assert (table["rho"].abs() < 0.25).all() and abs(fa.conditioning_summary(table)) < 0.15


def test_metrics_json_matches_the_measures():
    real, generated = _faithful(n_patients=20)
    scores = _scores(20, 2)
    metrics = fa.faithfulness_metrics(real, generated, scores, n_boot=100)
    assert set(metrics) == {"morph_fd", "patient_morph_error", "conditioning_spearman",
                            "retrieval_top1", "retrieval_top5"}
    json.dumps(metrics)
    for m in metrics.values():
        assert np.isfinite(m["value"]) and m["ci"][0] <= m["ci"][1]
    assert metrics["morph_fd"]["value"] == pytest.approx(fa.morph_frechet_distance(real, generated))
    assert metrics["patient_morph_error"]["value"] == pytest.approx(
        fa.patient_morph_error(real, generated)["ratio"])
    assert metrics["retrieval_top1"]["value"] == fa.patient_retrieval(real, generated)["top1"]
    summary = fa.conditioning_summary(fa.conditioning_spearman(scores, generated))
    assert metrics["conditioning_spearman"]["value"] == pytest.approx(summary)
    lo, hi = metrics["patient_morph_error"]["ci"]
    assert lo <= metrics["patient_morph_error"]["value"] <= hi


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """120 simulated tiles at 128 px (0.5 um/px, the resolution segmentation is calibrated at)."""
    out = tmp_path_factory.mktemp("faithfulness") / "cohort"
    cohort = build_cohort("synthetic", out, patients=24, tiles_per_patient=5, image_size=128,
                          seed=0, genes=100)
    morph = morphometrics_table(np.asarray(cohort.tiles), cohort.manifest["mpp"])
    morph.insert(0, "patient_id", cohort.tiles_table["patient_id"].to_numpy())
    return cohort, morph


def test_morphometrics_track_ground_truth_counts(simulated):
    cohort, morph = simulated
    table = fa.ground_truth_agreement(morph, cohort.tiles_table)
    # acceptance: rank correlation with the true counts > 0.8; measured 0.88 (0.75-0.89 over
    # cohort seeds 0-3 of this size, 0.86 on 300 tiles)
    assert table.loc["nuclei", "rho"] > 0.8
    assert table.loc["lumen_fraction", "rho"] > 0.8  # measured 0.95
    assert table.loc["lymphocyte_fraction", "rho"] > 0.7  # measured 0.91


def test_real_tiles_follow_true_programs(simulated):
    """Real tiles as a perfect generator: their read-outs follow the patients' true programs."""
    cohort, morph = simulated
    table = fa.program_ground_truth(cohort.patients_table, morph)
    assert list(table.index) == list(fa.MATCHING) and (table["n_patients"] == 24).all()
    assert table.attrs["summary"]["mean_signed_rho"] > 0.5  # measured 0.71


@pytest.mark.xfail(strict=True, reason="at 64 px (1 um/px) rho is 0.72 here, 0.64 on 300 tiles")
def test_ground_truth_counts_at_64px(tmp_path):
    cohort = build_cohort("synthetic", tmp_path / "c", patients=24, tiles_per_patient=5,
                          image_size=64, seed=0, genes=100)
    morph = morphometrics_table(np.asarray(cohort.tiles), cohort.manifest["mpp"])
    assert fa.ground_truth_agreement(morph, cohort.tiles_table).loc["nuclei", "rho"] > 0.8
