"""RNA latents: PCA and beta-VAE fitted on training patients only, saved in a run, used by generate."""

import numpy as np
import pytest
import torch

from rna2histo.data.latent import fit_betavae, fit_latent, fit_pca, reconstruction_report
from rna2histo.data.rna import fit_on_training
from rna2histo.errors import UserError
from rna2histo.generate import generate, load_run
from rna2histo.training.loop import fit

from .conftest import write_tiny_cohort

FAST = dict(model="cvae", batch_size=8, device="cpu", progress=False, sample_patients=2, epochs=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_tiny_cohort(tmp_path_factory.mktemp("latent") / "cohort", patients=12, tiles_per_patient=2,
                             size=16, genes=30)


def low_rank_profiles(n=40, genes=50, rank=3, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, genes)) + noise * rng.normal(size=(n, genes))).astype(np.float32)


def test_pca_recovers_a_low_rank_cohort_and_reports_what_it_kept():
    z = low_rank_profiles()
    latent = fit_pca(z[:30], k=3)
    report = reconstruction_report(latent, {"train": z[:30], "held out": z[30:]}, z[:30])
    assert latent.dim == 3 and latent.settings["explained_variance_ratio_train"] > 0.99
    assert report.loc["held out", "variance_kept"] > 0.99
    assert report.loc["held out", "patients"] == 10
    codes = latent.encode(z[:30])
    assert codes.shape == (30, 3)
    assert np.mean(codes**2) * 30 / 29 == pytest.approx(1.0, rel=1e-4)  # one global scale: unit variance on train
    assert codes[:, 0].var() > codes[:, 2].var()  # and the leading component keeps its weight


def test_pca_caps_k_at_the_training_patients_and_says_so():
    latent = fit_pca(low_rank_profiles(n=10), k=200)
    assert latent.dim == 9 and "10 training patients" in latent.settings["note"]


def test_pca_sees_the_training_patients_only(cohort):
    normaliser = fit_on_training(cohort)
    before = fit_latent("pca", cohort, normaliser, dim=4)
    changed = cohort.rna.copy()
    changed.loc[cohort.patients("test")] += 50.0  # a test patient far away must not move the fit
    cohort_changed = type(cohort)(**{**cohort.__dict__, "rna": changed})
    after = fit_latent("pca", cohort_changed, normaliser, dim=4)
    assert torch.equal(before.state["components"], after.state["components"])
    changed.loc[cohort.patients("train")[:1]] += 5.0
    moved = fit_latent("pca", type(cohort)(**{**cohort.__dict__, "rna": changed}), normaliser, dim=4)
    assert not torch.equal(before.state["components"], moved.state["components"])


def test_betavae_reduces_its_loss_and_keeps_the_best_validation_weights():
    z = low_rank_profiles(n=60, genes=40)
    latent, history = fit_betavae(z[:48], z[48:], latent=8, beta=0.1, steps=300, batch_size=16, lr=3e-3)
    assert history.step.iloc[0] == 0  # the untrained network's loss comes first
    assert history.val_loss.iloc[-1] < 0.2 * history.val_loss.iloc[0]
    assert latent.settings["best_val_loss"] == pytest.approx(history.val_loss.min())
    report = reconstruction_report(latent, {"val": z[48:]}, z[:48])
    assert report.loc["val", "variance_kept"] > 0.5
    assert latent.encode(z[48:]).shape == (12, 8)


def test_betavae_is_trained_once_per_cohort_and_reused(cohort, monkeypatch):
    normaliser = fit_on_training(cohort)
    first = fit_latent("betavae", cohort, normaliser, dim=4)
    assert len(list((cohort.root / "latents").glob("betavae-*.pt"))) == 1

    def no_training(*a, **k):
        raise AssertionError("the cached beta-VAE should have been reused")

    monkeypatch.setattr("rna2histo.data.latent.fit_betavae", no_training)
    again = fit_latent("betavae", cohort, normaliser, dim=4)
    z = normaliser.transform(cohort.rna)[0]
    assert np.array_equal(first.encode(z), again.encode(z))


def test_an_unknown_encoder_is_named():
    with pytest.raises(UserError, match="unknown rna_encoder 'umap'; expected one of mlp, pca, betavae"):
        fit_latent("umap", None, None)


@pytest.mark.parametrize("encoder", ["pca", "betavae"])
def test_a_run_carries_its_latent_to_generate(cohort, tmp_path, encoder):
    run = fit(cohort_dir=cohort.root, run_dir=tmp_path / encoder, rna_encoder=encoder, rna_latent=4, **FAST)
    loaded = load_run(run)
    assert loaded.latent is not None and loaded.latent.kind == encoder
    assert loaded.model.cfg.n_genes == 4  # the model reads the latent, not the genes
    fitted = __import__("json").loads((run / "params.json").read_text())["rna_latent_fit"]
    assert set(fitted["report"]) == {"train", "val", "test"}
    rna = cohort.rna.iloc[:2]
    images, _, _ = generate(loaded, rna, n=2, seed=0)
    assert images.shape == (4, 16, 16, 3)
    # generation feeds the model exactly the latent of the normalised profile
    z = loaded.normaliser.transform(rna)[0].to_numpy()
    expected = loaded.model.sample(torch.tensor(loaded.latent.encode(z)).repeat_interleave(2, 0),
                                   generator=torch.Generator().manual_seed(0))
    assert np.array_equal(images, ((expected.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())


def test_resume_refuses_another_encoder(cohort, tmp_path):
    fit(cohort_dir=cohort.root, run_dir=tmp_path / "r", rna_encoder="pca", rna_latent=4, **FAST)
    with pytest.raises(UserError, match="cannot resume"):
        fit(cohort_dir=cohort.root, run_dir=tmp_path / "r", rna_encoder="mlp", resume=True, **FAST)
    with pytest.raises(UserError, match=r"rna_latent=4 \(asked: 3\)"):
        fit(cohort_dir=cohort.root, run_dir=tmp_path / "r", rna_encoder="pca", rna_latent=3, resume=True, **FAST)
