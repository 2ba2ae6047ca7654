"""Every params file must name only parameters its chapter has (papermill would only warn)."""

import pytest

from rna2histo.book.runner import chapter_parameters, chapters, profile_parameters
from rna2histo.errors import UserError
from rna2histo.paths import PARAMS, ROOT

PARAM_FILES = sorted(PARAMS.glob("*/*.yaml"))


def test_every_profile_file_belongs_to_a_chapter():
    stems = {nb.stem for nb in chapters()}
    assert PARAM_FILES, "no params files found"
    for path in PARAM_FILES:
        assert path.stem in stems, f"{path} has no chapter book/{path.stem}.ipynb in _toc.yml"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_params_keys_match_the_chapter(path):
    notebook = ROOT / "book" / f"{path.stem}.ipynb"
    known = chapter_parameters(notebook)
    given = profile_parameters(path.parent.name, notebook)
    unknown = set(given) - set(known)
    assert not unknown, f"{path}: parameters the chapter does not have: {sorted(unknown)}"
    for name, value in given.items():
        assert type(value) is type(known[name]) or isinstance(known[name], float), f"{path}: {name} changes type"


def test_demo_and_thesis_profiles_cover_every_chapter():
    for profile in ("demo", "thesis"):
        for notebook in chapters():
            assert (PARAMS / profile / f"{notebook.stem}.yaml").exists(), f"params/{profile} lacks {notebook.stem}"


def test_unknown_profile_is_a_user_error():
    with pytest.raises(UserError, match="no profile 'nope'"):
        profile_parameters("nope", chapters()[0])


def test_parameters_cell_is_first_and_literal():
    for notebook in chapters():
        params = chapter_parameters(notebook)
        assert params, f"{notebook.name}: no parameters cell"
