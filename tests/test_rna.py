import numpy as np
import pandas as pd
import pytest

from rna2histo.data.rna import Normaliser, fit_on_training
from rna2histo.errors import UserError


def frame(values, genes, ids=None):
    ids = ids or [f"P{i}" for i in range(len(values))]
    return pd.DataFrame(np.array(values, dtype=float), index=ids, columns=genes)


def test_fit_imputes_drops_and_zscores():
    train = frame(
        [[1, 5, np.nan, 2], [3, 5, np.nan, np.inf], [5, 5, np.nan, 4]],
        ["A", "CONST", "ALLNAN", "B"],
    )
    norm = Normaliser.fit(train)
    assert norm.genes == ["A", "B"]
    r = norm.fit_report
    assert (r["genes_all_nan_dropped"], r["genes_constant_dropped"], r["values_imputed"]) == (1, 1, 1)
    assert norm.medians.tolist() == [3, 3]  # B's inf is ignored for the median
    z, _ = norm.transform(train)
    assert np.allclose(z["A"], [-1.2247, 0, 1.2247], atol=1e-4)
    assert np.isclose(z["B"].iloc[1], 0.0)  # inf -> training median 3 -> mean 3


def test_transform_aligns_by_gene_symbol():
    norm = Normaliser.fit(frame([[1, 2], [3, 6]], ["A", "B"]))
    new = frame([[6, 3, 100.0]], ["B", "A", "EXTRA"], ids=["NEW"])
    z, report = norm.transform(new)
    assert list(z.columns) == ["A", "B"]
    assert np.allclose(z.loc["NEW"], [1.0, 1.0])  # A: (3-2)/1, B: (6-4)/2
    assert report["genes_extra_ignored"] == 1 and report["genes_missing_filled_with_median"] == 0

    partial = frame([[np.nan]], ["B"], ids=["NEW"])
    z, report = norm.transform(partial)
    assert report["genes_missing_filled_with_median"] == 1 and report["values_imputed"] == 1
    assert np.allclose(z.loc["NEW"], [0.0, 0.0])  # both filled with medians (== means here)


def test_fitted_on_training_patients_only(tiny_cohort):
    norm = fit_on_training(tiny_cohort)
    train = tiny_cohort.rna.loc[tiny_cohort.patients("train")]
    assert norm.fit_report["patients"] == len(train)
    assert np.allclose(norm.means, train.mean().to_numpy(), atol=1e-5)
    assert not np.allclose(norm.means, tiny_cohort.rna.mean().to_numpy(), atol=1e-5)


def test_save_load_round_trip(tmp_path):
    norm = Normaliser.fit(frame([[1, 2], [3, 7], [4, 1]], ["A", "B"]))
    loaded = Normaliser.load(norm.save(tmp_path / "norm.json"))
    assert loaded.genes == norm.genes
    assert np.array_equal(loaded.means, norm.means) and np.array_equal(loaded.stds, norm.stds)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="bad.json: not a saved normaliser"):
        Normaliser.load(tmp_path / "bad.json")
