"""A missing cohort is built from the embedded default; profiles define the cohorts they name."""

import pytest

from rna2histo.book.runner import _default_cohort_params, chapter_parameters, ensure_cohort
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
    assert (demo["patients"], demo["tiles_per_patient"], demo["genes"]) == (360, 4, 2000)
    other = _default_cohort_params(resolve("data/cohorts/elsewhere"))
    assert other == chapter_parameters(ROOT / "book" / "00_data.ipynb")


def test_an_executed_chapter_is_reused_only_while_its_inputs_and_outputs_are_unchanged(tmp_path, monkeypatch):
    import json

    from rna2histo.book import runner as book

    monkeypatch.setattr(book, "CACHE", tmp_path / "cache")
    notebook = tmp_path / "07_x.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]},
                                                "source": "run_dir = 'unused'", "outputs": [],
                                                "execution_count": None}],
                                     "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}},
                                     "nbformat": 4, "nbformat_minor": 4}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch\n1\n")
    params = {"run_dir": str(run)}
    key = book.chapter_key(notebook, params, previous="")
    assert key != book.chapter_key(notebook, {"run_dir": str(run), "epochs": 2}, previous="")
    assert key != book.chapter_key(notebook, params, previous="another chapter ran")
    executed = tmp_path / "out.ipynb"
    assert not book._reuse(notebook, params, key, executed)  # never ran
    executed.write_text("executed")
    book._remember(notebook, params, key, executed)
    executed.unlink()
    assert book._reuse(notebook, params, key, executed) and executed.read_text() == "executed"
    (run / "metrics.csv").write_text("epoch\n1\n2\n")  # the run was trained again elsewhere
    assert not book._reuse(notebook, params, key, executed)
