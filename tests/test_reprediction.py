"""RNA re-prediction: the measure, the regressor it reads tiles with, its cache and the training check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from rna2histo.cohort import build_cohort
from rna2histo.data.rna import fit_on_training
from rna2histo.evaluation import faithfulness as fa
from rna2histo.evaluation import reprediction as rp
from rna2histo.markers import MARKERS
from rna2histo.training.loop import fit


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """160 simulated patients of 3 tiles at 32 px: 24 test patients to rank."""
    root = tmp_path_factory.mktemp("reprediction")
    return build_cohort("synthetic", root / "cohort", patients=160, tiles_per_patient=3, image_size=32,
                        seed=0, genes=200)


def test_gene_spearman_is_scipys_per_gene_and_undefined_for_a_constant_gene():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 4)), rng.normal(size=(12, 4))
    a[:, 3] = 1.0
    rho = rp.gene_spearman(a, b)
    for j in range(3):
        assert rho[j] == pytest.approx(stats.spearmanr(a[:, j], b[:, j])[0])
    assert np.isnan(rho[3])
    assert np.isnan(rp.gene_spearman(a[:2], b[:2])).all()  # two patients have no ranks to compare


def test_reprediction_spearman_is_one_for_a_monotone_prediction_and_minus_one_for_its_reverse():
    rng = np.random.default_rng(1)
    ids = [f"P{i}" for i in range(20)]
    truth = pd.DataFrame(rng.normal(size=(20, 5)), index=ids, columns=list("abcde"))
    assert rp.reprediction_spearman(np.exp(truth), truth, n_boot=50) == {"value": 1.0, "ci": [1.0, 1.0]}
    assert rp.reprediction_spearman(-truth, truth, n_boot=50)["value"] == pytest.approx(-1.0)


def test_targets_are_the_markers_then_the_most_variable_other_genes(cohort):
    normaliser = fit_on_training(cohort)
    genes = rp.target_genes(cohort, normaliser, n_variable=5)
    markers = [g for gs in MARKERS.values() for g in gs if g in normaliser.genes]
    assert genes[: len(markers)] == markers and len(genes) == len(markers) + 5
    others = cohort.rna.loc[cohort.patients("train"), normaliser.genes].var().drop(markers)
    assert set(genes[len(markers):]) == set(others.nlargest(5).index)


def test_the_regressor_reads_the_programs_back_from_held_out_real_tiles_and_not_from_shuffled_ones(cohort):
    """Trained on the training patients' tiles only; the test patients' markers come back."""
    normaliser = fit_on_training(cohort)
    regressor = rp.fit_regressor(cohort, normaliser, epochs=12)
    truth = rp.measured(cohort, normaliser, regressor.genes)
    rows = cohort.tile_indices("test")
    ids = cohort.tiles_table["patient_id"].to_numpy()[rows]
    predicted = regressor.patient_predictions(np.asarray(cohort.tiles[rows]), ids)
    markers = [g for g in regressor.genes if any(g in gs for gs in MARKERS.values())]
    real = rp.mean_gene_spearman(predicted[markers], truth)
    shuffled = []
    for seed in range(20):  # the control's expectation is 0; one derangement alone is noisy
        inverse = {q: p for p, q in fa.derangement(list(predicted.index), seed).items()}
        shuffled.append(rp.mean_gene_spearman(predicted[markers].rename(index=inverse).sort_index(), truth))
    assert real > 0.2  # measured 0.31-0.35 over three cohort seeds
    assert abs(np.mean(shuffled)) < 0.1
    assert regressor.settings["targets"] == len(regressor.genes) and len(regressor.settings["history"]) == 12


def test_the_regressor_is_trained_once_per_cohort_and_a_damaged_cache_is_retrained(cohort, monkeypatch, capsys):
    calls = []
    real_fit = rp.fit_regressor

    def counting(*args, **kw):
        calls.append(1)
        return real_fit(*args, **{**kw, "epochs": 1})

    monkeypatch.setattr(rp, "fit_regressor", counting)
    first = rp.cohort_regressor(cohort, epochs=3, progress=False)
    again = rp.cohort_regressor(cohort, epochs=3, progress=False)
    assert len(calls) == 1
    tiles = np.asarray(cohort.tiles[:5])
    assert np.array_equal(first.predict(tiles), again.predict(tiles)) and first.genes == again.genes
    (cached,) = (cohort.root / "regressors").glob("reprediction-*.pt")
    cached.write_bytes(b"not a checkpoint")
    rp.cohort_regressor(cohort, epochs=3, progress=False)
    assert len(calls) == 2 and "unreadable cached regressor" in capsys.readouterr().out
    rp.cohort_regressor(cohort, epochs=4, progress=False)  # other settings: another cache entry
    assert len(calls) == 3 and len(list((cohort.root / "regressors").glob("reprediction-*.pt"))) == 2


def test_training_logs_held_out_faithfulness_and_keeps_the_best_scoring_epoch(cohort, tmp_path, monkeypatch):
    """val_reprediction at every ckpt_every epoch and the last; best.pt is the highest of them."""
    scores = iter([0.1, 0.5, 0.2])
    monkeypatch.setattr(rp.ValidationCheck, "__call__", lambda self, model, device: next(scores))
    monkeypatch.setattr(rp, "cohort_regressor", lambda c, n: rp.fit_regressor(c, n, epochs=1))
    run = fit("cvae", cohort.root, tmp_path / "run", epochs=5, batch_size=32, device="cpu", progress=False,
              ckpt_every=2, reprediction_tiles=2, rna_encoder="pca", rna_latent=8)
    metrics = pd.read_csv(run / "metrics.csv").set_index("epoch")
    assert metrics["val_reprediction"].dropna().to_dict() == {2: 0.1, 4: 0.5, 5: 0.2}
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False, map_location="cpu")
    assert best["epoch"] == 4 and best["best_reprediction"] == 0.5


def test_the_check_scores_generated_tiles_of_the_validation_patients(cohort, monkeypatch):
    monkeypatch.setattr(rp, "cohort_regressor", lambda c, n: rp.fit_regressor(c, n, epochs=1))
    normaliser = fit_on_training(cohort)
    conditions = torch.zeros(len(cohort.patients()), 4)
    check = rp.ValidationCheck.of(cohort, normaliser, conditions, per_patient=2)
    seen = []

    class Constant(torch.nn.Module):  # the same tile for every patient: no faithfulness at all
        def sample(self, c, generator=None):
            seen.append(len(c))
            return torch.zeros(len(c), 3, 32, 32)

    assert check(Constant(), torch.device("cpu")) == 0.0  # a constant prediction ranks nothing
    assert sum(seen) == 2 * len(cohort.patients("val"))
