"""What the condition holds: the ridge behind the R^2 report, and the demo profile's condition."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from rna2histo.cohort import build_cohort
from rna2histo.evaluation.condition import condition_report, ridge_r2
from rna2histo.paths import PARAMS

MODEL_PROFILES = ("01_cgan", "02_cvae", "03_diffusion", "04_hybrid")


def test_ridge_r2_finds_a_linear_signal_and_none_in_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10))
    y = np.stack([x @ rng.normal(size=10), rng.normal(size=200)], axis=1)
    r2 = ridge_r2(x[:150], x[150:], y[:150], y[150:])
    assert r2[0] > 0.99  # exact linear signal
    assert r2[1] < 0.1  # independent noise: nothing to explain


def test_the_ridges_dual_form_for_more_genes_than_patients_is_the_primal_solution():
    from rna2histo.evaluation.condition import _ridge

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 80)), rng.normal(size=(30, 2))
    w, b = _ridge(x, y, 3.0)  # 80 features > 30 patients: solved through the 30 x 30 system
    xc, yc = x - x.mean(0), y - y.mean(0)
    primal = np.linalg.solve(xc.T @ xc + 3.0 * np.eye(80), xc.T @ yc)
    assert np.allclose(w, primal, atol=1e-8) and np.allclose(b, y.mean(0) - x.mean(0) @ primal)


@pytest.fixture(scope="module")
def demo_rna_cohort(tmp_path_factory):
    """The demo profile's cohort, at the demo's patients, genes and seed (tiles barely matter here)."""
    params = yaml.safe_load((PARAMS / "demo" / "00_data.yaml").read_text())
    keys = ("patients", "tiles_per_patient", "image_size", "seed", "genes")
    return build_cohort("synthetic", tmp_path_factory.mktemp("demo") / "cohort", **{k: params[k] for k in keys})


@pytest.mark.parametrize("chapter", MODEL_PROFILES)
def test_the_demo_condition_keeps_every_tissue_program(demo_rna_cohort, chapter):
    """Held-out R^2 >= 0.7 of each true program from the condition the demo profile trains on.

    The top 8 principal components kept about 0 (the nuisance biology owns them); a change of the
    demo cohort or encoder that loses the programs again fails here.
    """
    params = yaml.safe_load((PARAMS / "demo" / f"{chapter}.yaml").read_text())
    spec = {k: params[k] for k in ("rna_encoder", "rna_latent", "rna_beta") if k in params}
    table = condition_report(demo_rna_cohort, {"demo": spec})
    programs = ["epithelial", "immune", "stroma", "proliferation", "lumen"]
    kept = table.loc["demo", programs]
    assert (kept >= 0.7).all(), kept.round(3).to_dict()
    assert len(demo_rna_cohort.patients("test")) >= 50  # the across-patient measures need patients
