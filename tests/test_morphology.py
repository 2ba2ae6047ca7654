"""Nuclei segmentation and morphometrics against the simulator's ground truth (and MoNuSeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rna2histo import paths
from rna2histo.cohort import tissue
from rna2histo.errors import UserError
from rna2histo.evaluation import morphology

MONUSEG = Path(paths.ROOT).parent / "shared" / "data" / "monuseg-sample"


@pytest.fixture(scope="module")
def tiles():
    """12 synthetic 128 px tiles, immune level low / mid / high in turn, with nucleus labels."""
    rng = np.random.default_rng(1)
    stain = tissue.draw_stain(rng)
    out = []
    for i in range(12):
        immune = [0.05, 0.5, 0.95][i % 3]
        q = dict(epithelial=rng.uniform(), immune=immune, stroma=rng.uniform(),
                 proliferation=0.3, lumen=rng.uniform())
        tile = tissue.render_tile(q, stain, rng, 128, labels=True)
        out.append((immune, tile, morphology.morphometrics(tile.image, 0.5)))
    return out


def test_counts_and_dice_on_synthetic(tiles):
    dice, pred, true = [], [], []
    for _, tile, m in tiles:
        labels = morphology.segment_nuclei(tile.image, 0.5)
        gt, p = tile.labels > 0, labels > 0
        dice.append(2 * (gt & p).sum() / (gt.sum() + p.sum()))
        pred.append(labels.max())
        true.append(len(np.unique(tile.labels)) - 1)
        assert labels.dtype == np.int32 and m["nuclei"] == labels.max()
    assert np.mean(dice) > 0.85  # measured 0.90
    assert np.corrcoef(pred, true)[0, 1] > 0.5  # measured 0.72


def test_fractions_track_truth(tiles):
    lymph = {k: np.mean([m["lymphocyte_fraction"] for i, _, m in tiles if i == k]) for k in (0.05, 0.95)}
    assert lymph[0.95] > lymph[0.05] + 0.05
    for name in ("stroma", "lumen"):
        got = [m[f"{name}_fraction"] for _, _, m in tiles]
        want = [t.truth[f"gt_{name}_fraction"] for _, t, _ in tiles]
        assert np.corrcoef(got, want)[0, 1] > 0.7  # measured 0.87 (stroma), 0.99 (lumen)


def test_blank_tile():
    m = morphology.morphometrics(np.full((128, 128, 3), 255, np.uint8))
    assert m["nuclei"] == 0 and m["lumen_fraction"] > 0.99


def test_table(tiles):
    stack = np.stack([t.image for _, t, _ in tiles[:3]])
    table = morphology.morphometrics_table(stack, 0.5)
    assert len(table) == 3 and "lumen_fraction" in table


def test_unpaired_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"")
    with pytest.raises(UserError, match="images"):
        morphology.validate_segmentation(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(UserError, match="nowhere"):
        morphology.validate_segmentation(tmp_path / "nowhere", tmp_path / "masks")


@pytest.mark.skipif(not MONUSEG.is_dir(), reason="shared MoNuSeg sample absent")
def test_monuseg_dice():
    table = morphology.validate_segmentation(MONUSEG / "images", MONUSEG / "masks", mpp=0.25)
    assert len(table) == 4
    assert table["dice"].mean() >= 0.75  # measured 0.754
