"""The encoder comparison reuses the chapter's run for the encoder it used and trains the others."""

import json

import yaml

from rna2histo.experiments import downstream, encoder_comparison
from rna2histo.training.loop import fit

from .conftest import write_tiny_cohort


def test_comparison_reuses_the_chapters_run_and_trains_the_other_encoders(tmp_path):
    cohort = write_tiny_cohort(tmp_path / "cohort", patients=10, tiles_per_patient=2, size=16, genes=20)
    params = {"cohort_dir": str(cohort.root), "epochs": 1, "batch_size": 8, "image_size": 16,
              "rna_encoder": "pca", "rna_latent": 3, "device": "cpu"}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "02_cvae.yaml").write_text(yaml.safe_dump(params))
    chapter_run = fit("cvae", cohort.root, tmp_path / "chapter_run", epochs=1, batch_size=8, device="cpu",
                      progress=False, rna_encoder="pca", rna_latent=3)
    runs = encoder_comparison.comparison_runs(
        ["cvae"], ["mlp", "pca"], {"cvae": str(chapter_run)}, str(tmp_path / "comparison"),
        str(tmp_path / "profile"), rna_latent=3, device="cpu",
    )
    assert runs["cvae (pca)"] == chapter_run  # same encoder and latent settings: reused, not retrained
    trained = json.loads((runs["cvae (mlp)"] / "params.json").read_text())
    assert runs["cvae (mlp)"] == tmp_path / "comparison" / "cvae" / "mlp"
    assert trained["rna_encoder"] == "mlp" and trained["epochs"] == 1 and trained["batch_size"] == 8

    # another latent size is another run
    other = encoder_comparison.comparison_runs(
        ["cvae"], ["pca"], {"cvae": str(chapter_run)}, str(tmp_path / "comparison"),
        str(tmp_path / "profile"), rna_latent=2, device="cpu",
    )
    assert other["cvae (pca)"] == tmp_path / "comparison" / "cvae" / "pca"

    # another budget retrains the chapter's encoder too: every encoder gets the same epochs
    shorter = encoder_comparison.comparison_runs(
        ["cvae"], ["pca"], {"cvae": str(chapter_run)}, str(tmp_path / "budget"),
        str(tmp_path / "profile"), rna_latent=3, epochs=2, device="cpu",
    )
    assert shorter["cvae (pca)"] == tmp_path / "budget" / "cvae" / "pca"
    assert json.loads((shorter["cvae (pca)"] / "params.json").read_text())["epochs"] == 2


def test_overall_counts_only_paired_intervals_that_exclude_zero():
    import pandas as pd

    found = pd.DataFrame({"setting": ["real + a (same patients)", "a only (TSTR)", "real + b (same patients)"],
                          "fraction": [0.1, float("nan"), 0.5], "paired": ["above", "below", "overlaps"]})
    text = downstream.overall(found)
    assert "helped in 1 of 3 settings: real + a (same patients) at 10%." in text
    assert "hurt in 1 of 3 settings: a only (TSTR)." in text
    assert "In 1, the paired 95% interval" in text and "no interval" not in text
