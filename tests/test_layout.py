"""The package's layout as issue 25 set it: packages by concept, each opening with what it holds."""

import ast

from rna2histo.paths import ROOT

PACKAGE = ROOT / "rna2histo"


def test_every_package_opens_with_what_it_holds():
    """A folder of modules without an ``__init__.py`` is a namespace package, which
    ``setuptools.packages.find`` leaves out of a wheel; and its opening paragraph is the map."""
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    for folder in folders:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.relative_to(ROOT)} has modules but no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no opening paragraph"


def test_few_modules_at_the_top_and_none_too_long():
    assert len(list(PACKAGE.glob("*.py"))) <= 8
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, f"{path.relative_to(ROOT)} is over 500 lines"
