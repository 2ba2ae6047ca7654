"""Image metrics: SSIM and LPIPS per pair, FID and KID from Inception features, patient bootstrap.

FID and KID run torch-fidelity's real InceptionV3 code path on a randomly initialised network
(no pretrained weights offline): the values check the plumbing and the maths, not Inception.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import linalg, ndimage
from skimage.metrics import structural_similarity

from rna2histo.errors import UserError
from rna2histo.evaluation import image_metrics as im
from rna2histo.evaluation import stats as st


def smooth_tiles(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """n uint8 tiles (n, size, size, 3) of blurred noise: structure at a few pixels' scale."""
    noise = np.random.default_rng(seed).normal(size=(n, size, size, 3))
    x = ndimage.gaussian_filter(noise, (0, 2, 2, 0))
    return np.clip(128 + 40 * x / x.std(), 0, 255).astype(np.uint8)


def add_noise(tiles: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noisy = tiles + np.random.default_rng(seed).normal(0, sigma, tiles.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# pairs, SSIM, LPIPS


def test_random_pairs_same_patient_and_seeded():
    real_p = np.array(["A"] * 5 + ["B"] * 3 + ["C"] * 4)
    gen_p = np.array(["B"] * 6 + ["C"] * 2 + ["D"] * 4)  # D has no real tiles
    pairs = im.random_pairs(real_p, gen_p, n_pairs=200, same_patient=True, seed=3)
    assert pairs.shape == (200, 2)
    assert (real_p[pairs[:, 0]] == gen_p[pairs[:, 1]]).all()
    assert set(gen_p[pairs[:, 1]]) == {"B", "C"}
    assert np.array_equal(pairs, im.random_pairs(real_p, gen_p, 200, same_patient=True, seed=3))
    assert not np.array_equal(pairs, im.random_pairs(real_p, gen_p, 200, same_patient=True, seed=4))

    unpaired = im.random_pairs(real_p, gen_p, n_pairs=200, seed=3)
    assert unpaired[:, 0].max() < len(real_p) and unpaired[:, 1].max() < len(gen_p)
    assert (real_p[unpaired[:, 0]] != gen_p[unpaired[:, 1]]).mean() > 0.5  # the study's: any pair
    with pytest.raises(UserError, match="same-patient"):
        im.random_pairs(["A"], ["B"], same_patient=True)


def test_ssim_is_scikit_image_with_an_11px_uniform_window():
    real = smooth_tiles(4, seed=0)
    generated = np.concatenate([real[:2], add_noise(real[2:], 30.0)])
    pairs = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [0, 3]])
    scores = im.ssim_scores(real, generated, pairs)
    want = [
        structural_similarity(real[i], generated[j], win_size=11, channel_axis=-1, data_range=255)
        for i, j in pairs
    ]
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores[:2], 1.0)
    assert 0 < scores[2] < 0.9 and scores[4] < scores[2]  # noisy < identical; unrelated lowest


def test_lpips_random_trunk_scores_pairs():
    net = im.load_lpips("lpips-random")
    real = smooth_tiles(6, size=32, seed=0)
    generated = np.concatenate([real[:3], smooth_tiles(3, size=32, seed=5)])
    pairs = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]])
    scores = im.lpips_scores(net, real, generated, pairs, batch_size=4)  # two batches
    assert scores.shape == (6,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:3], 0.0, atol=1e-6)
    assert (scores[3:] > 1e-3).all()


def test_lpips_without_pretrained_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert im.load_lpips("auto") is None
    with pytest.raises(UserError, match="weights download"):
        im.load_lpips("lpips")


# ---------------------------------------------------------------------------------------------
# FID and KID


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Random-Inception features (12, 2048) of tiles and of them with noise of sigma 16, 48."""
    path = im.random_inception_weights(tmp_path_factory.mktemp("inception") / "random.pth")
    base = smooth_tiles(12, size=32, seed=0)
    tiles = np.concatenate([base, add_noise(base, 16.0), add_noise(base, 48.0)])
    f = im.inception_features(tiles, weights_path=path, batch_size=16)
    assert f.shape == (36, 2048) and f.dtype == np.float32 and np.isfinite(f).all()
    return f.reshape(3, 12, 2048)


def test_fid_zero_on_itself_and_grows_with_noise(features):
    base, weak, strong = features
    fid = [im.fid_from_features(base, other) for other in (base, weak, strong)]
    assert abs(fid[0]) < 1e-3 * fid[1]  # measured 2e-6 vs 4
    assert fid[0] < fid[1] < fid[2]
    low_rank = [im.fid_from_features(base, other, method="low-rank") for other in (base, weak, strong)]
    np.testing.assert_allclose(low_rank, fid, rtol=1e-5, atol=1e-5)


def test_kid_near_zero_on_itself_and_grows_with_noise(features):
    base, weak, strong = features
    kid = [im.kid_from_features(base, other, subsets=10) for other in (base, weak, strong)]  # size 12
    # not exactly 0: with Y = X the unbiased MMD^2 is (2/m)(mean k(x, x') - mean k(x, x)) < 0,
    # an O(1/m) term (measured -2.6e-4 against 4.3e-3 for the weak noise, m = 12)
    assert abs(kid[0]) < 0.1 * kid[1]
    assert kid[0] < kid[1] < kid[2]


def test_fid_methods_match_the_textbook_formula():
    rng = np.random.default_rng(0)
    for n1, n2, d in ((40, 30, 8), (10, 14, 24)):  # more and fewer vectors than dimensions
        a = rng.normal(size=(n1, d))
        b = rng.normal(0.5, 1.5, size=(n2, d))
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        diff = a.mean(0) - b.mean(0)
        want = diff @ diff + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
        for method in ("torch-fidelity", "low-rank"):
            assert im.fid_from_features(a, b, method=method) == pytest.approx(want, rel=1e-6)


def test_kid_is_the_unbiased_cubic_mmd():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5)), rng.normal(0.3, 1.0, size=(8, 5))

    def k(x, y):
        return (x @ y.T / 5 + 1) ** 3

    m = 8
    kxx, kyy = k(a, a), k(b, b)
    want = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(a, b).mean()
    # subset size 1000 is clipped to 8: every subset is the whole set, in some order
    assert im.kid_from_features(a, b, subsets=3) == pytest.approx(want, rel=1e-9)


def test_inception_features_without_weights_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    tiles = smooth_tiles(2)
    with pytest.raises(UserError, match="weights download"):
        im.inception_features(tiles)
    with pytest.raises(UserError, match="weights download"):
        im.inception_features(tiles, weights_path=tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------
# bootstrap over patients


def test_bootstrap_interval_contains_the_mean():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"P{i}" for i in range(12)], 5)
    scores = rng.normal(0.5, 0.1, 60) + np.repeat(rng.normal(0, 0.1, 12), 5)
    value, (lo, hi) = st.mean_ci(scores, groups, n_boot=300)
    assert value == pytest.approx(scores.mean())
    assert lo < value < hi
    narrow = st.mean_ci(scores, groups, n_boot=300, level=0.5)[1]
    assert lo < narrow[0] < narrow[1] < hi
    assert st.mean_ci(scores, groups, n_boot=300) == (value, (lo, hi))  # seeded


def test_bootstrap_resamples_whole_patients():
    # every patient has the same mean (0 and 1 tiles): any patient resample gives 0.5 exactly,
    # while a resample of tiles would not
    groups = np.repeat(["A", "B", "C", "D"], [2, 4, 6, 2])
    scores = np.tile([0.0, 1.0], 7)
    assert st.mean_ci(scores, groups, n_boot=200) == (0.5, (0.5, 0.5))

    seen = []

    def statistic(idx):
        seen.append(idx)
        return float(len(idx))

    st.bootstrap_ci(statistic, groups, n_boot=50)
    for idx in seen:
        counts = np.bincount(idx, minlength=len(groups))
        for p in "ABCD":  # each unit of a patient appears as often as the patient was drawn
            assert len(set(counts[groups == p])) == 1


def test_one_patient_with_all_the_signal_widens_the_interval():
    # 10 patients of 5 pairs; only P0 scores 1, so the mean is 0.1. Resampling patients, the mean
    # is (times P0 drawn) / 10: 0 in 35% of draws (0.9^10), 0.3 or more in 7%; resampling pairs
    # would give about 0.1 +/- 0.08 instead.
    groups = np.repeat([f"P{i}" for i in range(10)], 5)
    scores = (groups == "P0").astype(float)
    value, (lo, hi) = st.mean_ci(scores, groups, n_boot=1000)
    assert value == pytest.approx(0.1)
    assert lo == 0.0 and hi >= 0.3


def test_two_sets_share_the_patient_draw():
    real_groups = np.repeat(["A", "B", "C"], [2, 3, 1])
    gen_groups = np.repeat(["A", "B", "C"], [4, 1, 2])
    seen = []

    def statistic(i, j):
        seen.append((i, j))
        return 0.0

    st.bootstrap_ci_two(statistic, real_groups, gen_groups, n_boot=40)
    sizes_real, sizes_gen = {"A": 2, "B": 3, "C": 1}, {"A": 4, "B": 1, "C": 2}
    for i, j in seen[1:]:  # seen[0] is the full sets, for the value
        for p in "ABC":
            assert (real_groups[i] == p).sum() // sizes_real[p] == (gen_groups[j] == p).sum() // sizes_gen[p]


def test_fid_of_a_set_against_itself_stays_zero_under_resampling():
    # identical real and generated sets: the shared draw gives identical resamples, FID 0 in each
    rng = np.random.default_rng(0)
    f = rng.normal(size=(24, 6))
    patients = np.repeat([f"P{i}" for i in range(8)], 3)
    value, (lo, hi) = st.set_distance_ci(
        lambda a, b: im.fid_from_features(a, b, method="low-rank"), f, f, patients, patients, n_boot=50
    )
    assert max(abs(value), abs(lo), abs(hi)) < 1e-9
    shifted = st.set_distance_ci(im.fid_from_features, f, f + 1.0, patients, patients, n_boot=50)
    assert shifted[0] == pytest.approx(6.0) and shifted[1][0] == pytest.approx(6.0)  # |mu shift|^2


def test_json_shapes():
    out = st.summary(np.float64(0.5), (np.float32(0.25), 0.75))
    assert json.loads(json.dumps(out)) == {"value": 0.5, "ci": [0.25, 0.75]}
    assert st.unavailable("no weights") == {"unavailable": True, "reason": "no weights"}
