"""A missing cohort is built from the embedded default; profiles define the cohorts they name."""

import pytest

from rna2histo.book import _default_cohort_params, chapter_parameters, ensure_cohort
from rna2histo.errors import UserError
from rna2histo.paths import ROOT, resolve


def test_missing_cohort_is_built_from_chapter_00_defaults(tmp_path, capsys):
    cohort = ensure_cohort(tmp_path / "fresh", image_size=64)
    defaults = chapter_parameters(ROOT / "book" / "00_data.ipynb")
    assert "building the embedded default" in capsys.readouterr().out
    assert cohort.manifest["source"] == "synthetic"
    assert cohort.manifest["counts"]["patients"] == defaults["patients"]
    assert len(cohort.tiles) == defaults["patients"] * defaults["tiles_per_patient"]
    again = ensure_cohort(tmp_path / "fresh", image_size=64)  # now it exists: loaded, not rebuilt
    assert "building" not in capsys.readouterr().out and again.root == cohort.root
    with pytest.raises(UserError, match="has 64 px tiles but image_size is 32"):
        ensure_cohort(tmp_path / "fresh", image_size=32)


def test_a_profile_defines_the_cohort_it_names():
    demo = _default_cohort_params(resolve("data/cohorts/demo"))
    assert (demo["patients"], demo["tiles_per_patient"], demo["genes"]) == (100, 10, 2000)
    other = _default_cohort_params(resolve("data/cohorts/elsewhere"))
    assert other == chapter_parameters(ROOT / "book" / "00_data.ipynb")
