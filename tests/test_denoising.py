"""The denoising ladder: grain measure, and real tiles denoised by a trained run's sampler."""

import numpy as np
import pandas as pd
import pytest

from rna2histo.book import chapter
from rna2histo.cohort import load_cohort
from rna2histo.evaluation.detail import detail_metrics, high_frequency_ratios, tile_energies
from rna2histo.experiments.denoising import denoising_ladder
from rna2histo.generate import load_run
from rna2histo.training.loop import fit

from .conftest import write_tiny_cohort


def high_frequency(tiles):
    return dict(zip(("luma", "chroma"), tile_energies(tiles).mean(axis=0)))


def test_high_frequency_of_flat_grey_and_coloured_stripes():
    assert high_frequency(np.full((2, 8, 8, 3), 77, np.uint8)) == {"luma": 0, "chroma": 0}
    grey = np.zeros((1, 8, 8, 3), np.uint8)
    grey[:, :, ::2] = 255  # every interior pixel differs from its left and right neighbours by 255
    assert high_frequency(grey) == pytest.approx({"luma": 2 * 255, "chroma": 0}, abs=1e-3)
    # red and blue columns of nearly the same luma: the stripes are (almost) all chroma
    colour = np.zeros((1, 8, 8, 3), np.uint8)
    colour[:, :, ::2, 0], colour[:, :, 1::2, 2] = 100, 255  # luma 29.9 and 29.07
    hf = high_frequency(colour)
    assert hf["luma"] < 2 and hf["chroma"] > 100
    ratios = high_frequency_ratios(colour // 2, colour)  # half the colour contrast
    assert ratios["chroma_hf_ratio"] == pytest.approx(0.5, rel=0.02)


def test_detail_metrics_resample_patients_and_see_blur():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    patients = np.repeat(["a", "b", "c", "d"], 3)
    blurred = ((real.astype(np.uint16) + np.roll(real, 1, axis=1) + np.roll(real, 1, axis=2)) // 3).astype(np.uint8)
    same = detail_metrics(real, patients, real, patients, n_boot=50)
    assert same["luma_hf_ratio"]["value"] == pytest.approx(1) == same["chroma_hf_ratio"]["value"]
    blur = detail_metrics(real, patients, blurred, patients, n_boot=50)
    for name in ("luma_hf_ratio", "chroma_hf_ratio"):
        lo, hi = blur[name]["ci"]
        assert lo <= blur[name]["value"] <= hi < 0.8, name


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoising")
    cohort_dir = write_tiny_cohort(root / "cohort", patients=10, tiles_per_patient=4, size=32, genes=24).root
    run = fit("diffusion", cohort_dir, root / "run", epochs=1, batch_size=8, device="cpu",
              progress=False, sample_patients=2, sample_steps=4)
    return load_run(run), load_cohort(cohort_dir)


def test_the_ladder_returns_tiles_from_little_noise_and_is_seeded(diffusion_run):
    trained, cohort = diffusion_run
    real = cohort.patient_tiles(cohort.patients("val")[:2], 2)
    ids = [p for p in real for _ in range(len(real[p]))]
    tiles = np.concatenate(list(real.values()))
    outputs, table = denoising_ladder(trained, tiles, cohort.rna.loc[ids], (0, 999), seed=1)
    assert list(outputs) == [0, 999, "sample"] and all(o.shape == tiles.shape for o in outputs.values())
    assert list(table.index) == ["0", "999", "sample"]
    # x_0 is 0.99995 x_0 + 0.01 noise: one step back is within a few grey levels of the tile,
    # whatever the (barely trained) network says; from t = 999 the tile is gone
    assert table.loc["0", "rmse"] < 3 < table.loc["999", "rmse"]
    assert table.loc["999", "noise_to_signal"] > 100 > 0.02 > table.loc["0", "noise_to_signal"]
    assert np.isnan(table.loc["sample", "rmse"])
    assert (table[["luma_hf_ratio", "chroma_hf_ratio"]] > 0).all().all()
    again, _ = denoising_ladder(trained, tiles, cohort.rna.loc[ids], (0, 999), seed=1)
    assert all(np.array_equal(outputs[k], again[k]) for k in outputs)


def test_the_chapter_figure_has_a_row_per_level(diffusion_run):
    trained, cohort = diffusion_run
    fig, table = chapter.denoising(trained, cohort, levels=(50, 500), patients=2, per_patient=2)
    assert [ax.get_title(loc="left") for ax in fig.axes[::4]] == ["real", "from t = 50", "from t = 500", "samples"]
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["50", "500", "sample"]
