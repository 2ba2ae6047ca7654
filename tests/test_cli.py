"""The command line: user errors are one line on stderr, exit status 2, and nothing is written."""

import json
import subprocess
import sys

import pytest

from rna2histo.cohort.format import FORMAT_VERSION


def run(*args):
    return subprocess.run([sys.executable, "-m", "rna2histo", *args], capture_output=True, text=True)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_output_that_is_not_a_cohort(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    result = run("cohort", "synthetic", "--out", str(out), "--patients", "4", "--tiles-per-patient", "1")
    assert_one_line_error(result, str(out), "exists and is not a cohort")
    assert [p.name for p in out.iterdir()] == ["todo.txt"]


def test_newer_cohort_version(tiny_cohort):
    manifest = tiny_cohort.root / "manifest.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = FORMAT_VERSION + 5
    manifest.write_text(json.dumps(data))
    assert_one_line_error(run("cohort", "info", str(tiny_cohort.root)), "manifest.json", "newer")


def test_info_describes_a_cohort(tiny_cohort):
    result = run("cohort", "info", str(tiny_cohort.root))
    assert result.returncode == 0, result.stderr
    assert "patients 10, tiles 30, genes 20" in result.stdout
    assert "train 6 patients / 18 tiles" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["cohort", "synthetic", "--out", "c", "--patients", "1.5"], "--patients: expected a whole number >= 1, got '1.5'"),
    (["cohort", "synthetic", "--out", "c", "--patients", "0"], "--patients: expected a whole number >= 1, got 0"),
    (["cohort", "synthetic", "--out", "c", "--seed", "-1"], "--seed: expected a whole number >= 0, got -1"),
    (["cohort", "folder", "--rna", "r", "--images", "i", "--out", "c", "--scale", "nan"],
     "--scale: expected a finite number > 0, got nan"),
    (["generate", "--run", "r", "--rna", "r", "--out", "o", "--guidance", "x"], "--guidance: expected a number, got 'x'"),
])
def test_numeric_flags_are_refused_with_their_range(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "rna2histo", *args], capture_output=True, text=True, cwd=tmp_path)
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []
