"""The evaluation protocol end to end: a trained run, a missing run, metrics.json, and weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rna2histo.cohort import build_cohort
from rna2histo.evaluation import image_metrics, protocol, report
from rna2histo.training.loop import fit

IMAGE = ("ssim_random", "ssim_same_patient", "lpips", "fid", "kid", "luma_hf_ratio", "chroma_hf_ratio")
FAITHFUL = ("rna_reprediction_spearman", "morph_fd", "patient_morph_error", "conditioning_spearman", "retrieval_top1", "retrieval_top5")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A simulated cohort (20 patients: 3 test patients) and a cVAE trained on it for one epoch."""
    root = tmp_path_factory.mktemp("evaluation")
    cohort = build_cohort("synthetic", root / "cohort", patients=20, tiles_per_patient=4, image_size=32,
                          seed=0, genes=100)
    run = fit("cvae", root / "cohort", root / "runs" / "cvae", epochs=1, batch_size=8, device="cpu",
              progress=False, ckpt_every=1)
    return root, cohort, run


def _is_metric(entry: dict) -> bool:
    return set(entry) >= {"value", "ci"} and len(entry["ci"]) == 2


def test_metrics_json_has_every_metric_with_intervals(trained):
    root, cohort, run = trained
    weights = image_metrics.random_inception_weights(root / "inception.pt")
    settings = protocol.Settings(n_pairs=40, n_fid=30, n_boot=20, mpp=cohort.manifest["mpp"])
    runs = {"cvae": run, "cgan": root / "runs" / "never-trained"}
    out = root / "eval"
    evaluation = protocol.evaluate(runs, cohort, out, n=3, settings=settings, perceptual="lpips-random",
                                   inception_weights=weights)
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(evaluation.metrics))  # what the chapter shows is what is saved
    for model in ("cvae", "real"):
        entry = written[model]
        for name in IMAGE + FAITHFUL:
            assert _is_metric(entry[name]), (model, name)
        for name in FAITHFUL:
            assert _is_metric(entry["shuffled"][name]), (model, name)
    n_test = len(cohort.patients("test"))
    assert written["cvae"]["fid"]["n_generated"] == 3 * n_test  # all of them: fewer than n_fid
    assert written["cvae"]["fid"]["n_real"] == min(30, len(protocol.real_tiles(cohort).tiles))
    assert "program_truth_spearman" in written["cvae"]  # simulated cohort: ground truth known
    assert written["cgan"]["unavailable"] and "checkpoint" in written["cgan"]["reason"]
    assert len(evaluation.generated["cvae"].tiles) == 3 * len(cohort.patients("test"))
    assert written["protocol"]["generated_per_patient"] == 3
    # the chapter's tables read the same metrics
    table = report.results_table(written)
    assert list(table.index) == ["cvae", "cgan", "real"]
    assert table.loc["cgan"].iloc[0].startswith("unavailable")
    assert not report.faithfulness_table(written).empty
    headline = report.headline_markdown(written, "runs/evaluation/x/metrics.json")
    assert "| cvae " in headline and "| real " in headline and "unavailable" in headline
    assert f"{len(cohort.patients('test'))} test patients" in headline


def test_missing_weights_are_reported_unavailable_with_the_download_command(trained, monkeypatch, tmp_path):
    root, cohort, run = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no pretrained weights here
    settings = protocol.Settings(n_pairs=20, n_boot=10, mpp=cohort.manifest["mpp"])
    evaluation = protocol.evaluate({"cvae": run}, cohort, tmp_path / "eval", n=2, settings=settings)
    entry = evaluation.metrics["cvae"]
    for name in ("lpips", "fid", "kid"):
        assert entry[name]["unavailable"] and "weights download" in entry[name]["reason"], name
    assert _is_metric(entry["ssim_random"]) and _is_metric(entry["morph_fd"])


def test_real_halves_split_every_patient_without_overlap(trained):
    _, cohort, _ = trained
    real = protocol.real_tiles(cohort)
    a, b = protocol.split_halves(real, seed=1)
    assert len(a.tiles) + len(b.tiles) == len(real.tiles)
    assert set(a.patients) == set(b.patients) == set(real.patients)
    # no tile in both halves: compare raw bytes
    seen = {t.tobytes() for t in a.tiles}
    assert not any(t.tobytes() in seen for t in b.tiles)
    assert np.array_equal(protocol.split_halves(real, seed=1)[0].tiles, a.tiles)  # seeded
