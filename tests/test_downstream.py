"""Downstream utility: labels, the tile classifier, the AUC and the experiment's bookkeeping."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from rna2histo.cohort import build_cohort
from rna2histo.data.rna import fit_on_training
from rna2histo.errors import UserError
from rna2histo.experiments import classifier as clf
from rna2histo.experiments import downstream as ds
from rna2histo.markers import MARKERS

from .conftest import write_tiny_cohort


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A simulated cohort (14 train, 3 val, 3 test patients) with its training normaliser."""
    out = tmp_path_factory.mktemp("downstream") / "simulated"
    cohort = build_cohort("synthetic", out, patients=20, tiles_per_patient=2, image_size=32, seed=0, genes=80)
    return cohort, fit_on_training(cohort)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """24 patients of random tiles (16 train, 4 val, 4 test), labels alternating within each split."""
    cohort = write_tiny_cohort(tmp_path_factory.mktemp("downstream") / "tiny", patients=24, tiles_per_patient=2)
    labels = {p: i % 2 for s in ("train", "val", "test") for i, p in enumerate(cohort.patients(s))}
    return cohort, pd.Series(labels)


def painted(labels, size=16, seed=0):
    """Noisy tiles, red where the label is 1 and blue where it is 0: a task any classifier solves."""
    labels = np.asarray(labels)
    tiles = np.random.default_rng(seed).integers(0, 90, (len(labels), size, size, 3), dtype=np.uint8)
    tiles[labels == 1, ..., 0] += 150
    tiles[labels == 0, ..., 2] += 150
    return tiles


def identity_source(cohort):
    """A fake generator: every tile is constant, channel 0 = the position of its RNA's patient.

    It stands in for a trained generator the test does not train, and lets the test read back
    whose RNA each synthetic tile came from. Records each request.
    """
    position = {p: i for i, p in enumerate(cohort.patients())}

    def source(ids, n, seed):
        source.calls.append((list(ids), n, seed))
        tiles = np.zeros((len(ids) * n, cohort.image_size, cohort.image_size, 3), np.uint8)
        tiles[..., 0] = np.repeat([position[p] for p in ids], n)[:, None, None]
        tiles[..., 1] = 255  # no random real tile is constant 255 in green
        return tiles

    source.calls = []
    return source


# --- roc_auc and its interval -------------------------------------------------------------


def test_roc_auc_matches_hand_computed_pairs_with_ties():
    # positives 0.4, 0.8 vs negatives 0.1, 0.4: pairs 1 + 1/2 (tie) + 1 + 1 = 3.5 of 4
    assert clf.roc_auc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert clf.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert clf.roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert clf.roc_auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    assert np.isnan(clf.roc_auc([0.2, 0.7], [1, 1]))
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 40), rng.integers(0, 2, 40)  # many ties
    pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1, s0 in itertools.product(scores[labels == 1], scores[labels == 0])]
    assert clf.roc_auc(scores, labels) == pytest.approx(np.mean(pairs))


def test_auc_interval_resamples_patients_and_survives_one_class_draws():
    # three patients per class: about 1 resample in 30 holds one class only, and is left out
    patients = np.repeat(["A", "B", "C", "D", "E", "F"], 5)
    labels = np.repeat([0, 0, 0, 1, 1, 1], 5)
    scores = np.random.default_rng(0).random(30) + labels * 0.3
    result = clf.auc_ci(scores, labels, patients, n_boot=300, seed=0)
    assert result["value"] == pytest.approx(clf.roc_auc(scores, labels))
    assert 1 <= result["degenerate_draws"] <= 30
    lo, hi = result["ci"]
    assert lo < result["value"] < hi


# --- labels -------------------------------------------------------------------------------


def test_rna_labels_split_training_patients_at_their_median(simulated):
    cohort, normaliser = simulated
    labels, threshold = ds.rna_labels(cohort, normaliser)
    scores = ds.immune_scores(cohort.rna, normaliser)
    train = cohort.patients("train")
    assert threshold == pytest.approx(scores.loc[train].median())
    assert labels.loc[train].mean() == pytest.approx(0.5)  # 14 training patients: 7 above
    assert list(labels.index) == cohort.patients() and set(labels) <= {0, 1}
    same = ds.label_profiles(cohort.rna, normaliser, threshold)
    pd.testing.assert_series_equal(same, labels)


def test_test_patients_do_not_move_the_threshold(simulated):
    cohort, normaliser = simulated
    _, threshold = ds.rna_labels(cohort, normaliser)
    test = cohort.patients("test")
    rna = cohort.rna.copy()
    immune = [g for g in MARKERS["immune"] if g in rna.columns]
    rna.loc[test, immune] += 10.0  # every test patient becomes strongly immune-high
    changed = dataclasses.replace(cohort, rna=rna)
    labels, moved = ds.rna_labels(changed, fit_on_training(changed))
    assert moved == threshold  # a median over all patients would move with 3 of 20 shifted
    assert (labels.loc[test] == 1).all()


def test_truth_labels_from_ground_truth_and_clear_errors(simulated, tiny):
    cohort, _ = simulated
    labels, threshold = ds.truth_labels(cohort)
    level = cohort.patients_table["program_immune"]
    assert threshold == pytest.approx(level.loc[cohort.patients("train")].median())
    assert (labels == (level > threshold)).all()
    random_cohort, _ = tiny
    with pytest.raises(UserError, match="no ground-truth program_immune"):
        ds.truth_labels(random_cohort)
    with pytest.raises(UserError, match="immune marker genes"):
        ds.rna_labels(random_cohort, fit_on_training(random_cohort))


# --- the classifier -----------------------------------------------------------------------


def test_classifier_learns_red_versus_blue_and_is_seeded():
    y = np.arange(64) % 2
    x, held_out = painted(y, seed=0), painted(y, seed=1)
    kw = dict(steps=30, batch_size=16, width=8)
    state = torch.get_rng_state()
    model = clf.train_classifier(x, y, seed=0, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    scores = clf.predict(model, held_out)
    assert clf.roc_auc(scores, y) > 0.95
    torch.rand(3)  # whatever the caller's random state, the seed alone decides
    assert np.array_equal(scores, clf.predict(clf.train_classifier(x, y, seed=0, **kw), held_out))
    assert not np.array_equal(scores, clf.predict(clf.train_classifier(x, y, seed=1, **kw), held_out))


def test_every_training_batch_is_augmented(monkeypatch):
    # the flips, rotations and colour draws themselves: tests/test_augment.py
    used = []
    monkeypatch.setattr(clf, "geometry", lambda x, generator: used.append(len(x)) or x)
    y = np.arange(8) % 2
    clf.train_classifier(painted(y), y, steps=3, batch_size=4, width=4)
    assert used == [4, 4, 4]


def test_training_refuses_one_class_and_mismatched_labels():
    x = painted(np.ones(8))
    with pytest.raises(UserError, match="both classes"):
        clf.train_classifier(x, np.ones(8), steps=1)
    with pytest.raises(UserError, match="8 real tiles but 7 real labels"):
        clf.train_classifier(x, np.ones(7), steps=1)


# --- the experiment -----------------------------------------------------------------------


def test_fraction_subsets_are_nested_stratified_and_seeded(tiny):
    cohort, labels = tiny
    train = cohort.patients("train")
    settings = ds.plan(train, labels, ["g"], fractions=(0.1, 0.25, 0.5, 1.0), seed=0)
    real_only = [s.real_patients for s in settings if s.generator is None]
    assert [len(s) for s in real_only] == [2, 4, 8, 16]  # ceil(0.1 * 16) = 2; at least one per class
    for small, large in zip(real_only, real_only[1:]):
        assert large[: len(small)] == small
    assert all(set(labels.loc[s]) == {0, 1} for s in real_only)
    assert ds.plan(train, labels, ["g"], seed=0) == ds.plan(train, labels, ["g"], seed=0)
    assert ds.plan(train, labels, ["g"], seed=1)[0].real_patients != real_only[0]
    assert ds.subset_size(0.07, 100) == 7  # 0.07 * 100 is 7.000000000000001 in floating point
    imbalanced = pd.Series({p: int(i < 4) for i, p in enumerate(train)})  # 4 of 16 positive
    half = ds.plan(train, imbalanced, [], fractions=(0.5,), seed=0)[0].real_patients
    assert imbalanced.loc[half].sum() == 2  # a quarter of the 8, as in all training patients


def _patients_of(tiles, cohort):
    """Whose tile is each row: real tiles by their bytes, fake synthetic ones by channel 0."""
    real = {cohort.tiles[i].tobytes(): p for i, p in enumerate(cohort.tiles_table["patient_id"])}
    synthetic = (tiles[..., 1] == 255).all(axis=(1, 2))
    return [cohort.patients()[t[0, 0, 0]] if s else real[t.tobytes()] for t, s in zip(tiles, synthetic)]


def test_experiment_feeds_each_setting_the_right_patients(tiny, monkeypatch):
    cohort, labels = tiny
    trained, evaluated = [], []

    def fake_train(real, labels, synthetic=None, synthetic_labels=None, **kw):
        trained.append((real, labels, synthetic, synthetic_labels))

    def fake_predict(model, tiles):
        evaluated.append(tiles)
        return np.random.default_rng(len(evaluated)).random(len(tiles))

    monkeypatch.setattr(ds, "train_classifier", fake_train)
    monkeypatch.setattr(ds, "predict", fake_predict)
    source = identity_source(cohort)
    results = ds.utility_experiment(cohort, labels, {"fake": source}, fractions=(0.5, 0.25, 1.0), seed=3, n_boot=20)

    train, test = cohort.patients("train"), cohort.patients("test")
    assert source.calls == [(train, 2, 3)]  # asked once, for every training patient
    settings = ds.plan(train, labels, ["fake"], (0.5, 0.25, 1.0), seed=3)
    assert len(trained) == len(results) == len(settings) == 3 + 3 + 2 + 1
    assert "real + fake (RNA-only patients)" not in set(results.loc[results.fraction == 1.0, "setting"])
    for (real, real_y, synthetic, synthetic_y), s, (_, row) in zip(trained, settings, results.iterrows()):
        real_ids = _patients_of(real, cohort)
        assert sorted(set(real_ids)) == sorted(s.real_patients) and len(real) == row.real_tiles
        assert list(real_y) == list(labels.loc[real_ids])
        if s.source == "none":
            assert synthetic is None and row.synthetic_tiles == 0
            continue
        synthetic_ids = _patients_of(synthetic, cohort)
        assert list(synthetic_y) == list(labels.loc[synthetic_ids])  # the label of the RNA used
        expected = {"same patients": set(s.real_patients), "all patients": set(train),
                    "RNA-only patients": set(train) - set(s.real_patients)}[s.source]
        assert set(synthetic_ids) == expected and set(synthetic_ids) <= set(train)
        if s.source == "all patients":  # TSTR: no real tile at all
            assert len(real) == 0 and np.isnan(row.fraction)
    test_idx = cohort.tile_indices("test")
    assert all(np.array_equal(tiles, cohort.tiles[test_idx]) for tiles in evaluated)
    assert (results.test_patients == len(test)).all() and (results.test_tiles == len(test_idx)).all()


def test_experiment_end_to_end_and_its_findings(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "c", patients=40, tiles_per_patient=2, size=16)  # 3 test patients a class
    labels = pd.Series({p: i % 2 for s in ("train", "val", "test") for i, p in enumerate(cohort.patients(s))})
    owner = cohort.tiles_table["patient_id"]
    # the real tiles carry their label in colour, so a few steps learn something
    cohort = dataclasses.replace(cohort, tiles=painted(labels.loc[owner].to_numpy()))

    def paint(ids, n, seed):
        return painted(np.repeat(labels.loc[ids].to_numpy(), n), seed=seed)

    results = ds.utility_experiment(cohort, labels, {"paint": paint}, fractions=(0.5, 1.0), seed=0, n_boot=20,
                                    steps=4, batch_size=8, width=4)
    assert list(results.columns[:11]) == ["setting", "generator", "source", "fraction", "real_patients",
                                          "real_tiles", "synthetic_patients", "synthetic_tiles",
                                          "test_patients", "test_tiles", "auc"]
    assert results[["auc", "lo", "hi"]].notna().all().all()
    table = ds.findings(results)
    assert len(table) == len(results) - 2  # every row but the two "real only"
    assert set(table.intervals) <= {"above", "overlaps", "below", "undefined"}
    assert all(f"{a:.2f}" in text for a, text in zip(results.auc[results.generator.notna()], table.finding))


def test_findings_compare_intervals_from_the_numbers():
    def row(setting, generator, fraction, auc, lo, hi, delta=None):
        d = (np.nan, np.nan, np.nan) if delta is None else delta
        return dict(setting=setting, generator=generator, fraction=fraction, auc=auc, lo=lo, hi=hi,
                    delta=d[0], delta_lo=d[1], delta_hi=d[2])

    results = pd.DataFrame([
        row("real only", None, 0.1, 0.60, 0.55, 0.65),
        row("real + a (same patients)", "a", 0.1, 0.80, 0.70, 0.90, (0.20, 0.10, 0.30)),
        row("real + b (same patients)", "b", 0.1, 0.62, 0.50, 0.70, (0.02, -0.05, 0.09)),
        row("real + c (same patients)", "c", 0.1, 0.40, 0.30, 0.50, (-0.20, -0.30, -0.10)),
        row("real only", None, 1.0, 0.70, 0.60, 0.80),
        row("a only (TSTR)", "a", np.nan, 0.75, 0.61, 0.85, (0.05, -0.02, 0.12)),
    ])
    table = ds.findings(results)
    assert list(table.intervals) == ["above", "overlaps", "below", "overlaps"]
    assert list(table.paired) == ["above", "overlaps", "below", "overlaps"]  # the difference vs 0
    assert table.finding[0].startswith("At 10% of training slides, real + a (same patients) reaches AUC "
                                       "0.80 [0.70, 0.90] vs 0.60 [0.55, 0.65] for real only")
    assert "vs 0.70 [0.60, 0.80] for real only with all training slides" in table.finding[3]  # TSTR


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 1.5, -0.2, "0.5", True])
def test_fraction_outside_unit_interval_is_refused(tiny, fraction):
    cohort, labels = tiny
    with pytest.raises(UserError, match=r"fraction must be in \(0, 1\]"):
        ds.utility_experiment(cohort, labels, {}, fractions=(0.5, fraction))


def test_bad_sources_and_labels_are_refused(tiny):
    cohort, labels = tiny

    def short(ids, n, seed):
        return identity_source(cohort)(ids, n, seed)[:-1]

    with pytest.raises(UserError, match=r"source 'short' returned .* expected uint8 \(32, 16, 16, 3\)"):
        ds.utility_experiment(cohort, labels, {"short": short})
    one_class = labels.copy()
    one_class.loc[cohort.patients("test")] = 1
    with pytest.raises(UserError, match="all 4 test patients have label 1"):
        ds.utility_experiment(cohort, one_class, {})
    with pytest.raises(UserError, match="labels lack 1 cohort patients"):
        ds.utility_experiment(cohort, labels.drop(cohort.patients()[0]), {})


def test_run_source_generates_once_from_the_cohort_rna(tiny, monkeypatch):
    cohort, _ = tiny
    asked = []

    def fake_generate(run, rna, n, seed, **kw):
        asked.append((list(rna.index), n, seed, kw))
        return np.zeros((len(rna) * n, 16, 16, 3), np.uint8), None, {}

    monkeypatch.setattr(ds, "load_run", lambda run_dir, which, device: "run")
    monkeypatch.setattr(ds, "generate", fake_generate)
    source = ds.run_source("runs/x", cohort, steps=5)
    ids = cohort.patients("train")[:3]
    assert source(ids, 2, 0).shape == (6, 16, 16, 3)
    source(ids, 2, 0)
    assert asked == [(ids, 2, 0, {"steps": 5})]  # the second request came from memory


def test_no_interval_from_too_few_test_patients_of_a_class():
    rng = np.random.default_rng(0)
    scores = rng.random(24)
    few = np.repeat(["a", "b"], 12)  # one patient per class: draws that keep both classes repeat them
    labels = np.repeat([0, 1], 12)
    result = clf.auc_ci(scores, labels, few, n_boot=100)
    assert result["ci"] == [None, None] and result["value"] == pytest.approx(clf.roc_auc(scores, labels))
    assert clf.auc_difference_ci(scores, scores[::-1], labels, few, n_boot=100)["ci"] == [None, None]
    enough = np.repeat(["a", "b", "c", "d", "e", "f"], 4)  # three patients per class
    assert None not in clf.auc_ci(scores, labels, enough, n_boot=100)["ci"]
