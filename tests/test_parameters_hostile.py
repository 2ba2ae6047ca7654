"""Chapter parameters and training settings against hostile input (defects 10 and 4): a misspelt
papermill parameter, nan, a negative learning rate, 1.5 or True for a whole number. Each is
refused in one line naming the setting, before any work starts."""

import logging
import math
import subprocess
import sys

import jupytext
import nbformat
import papermill
import pytest
import yaml

from rna2histo.__main__ import main
from rna2histo.book import runner as book
from rna2histo.book.parameters import INJECTED_HEADER, check_cell, model_check_cell
from rna2histo.book.runner import chapter_parameters, stem_model, training_parameters
from rna2histo.errors import UserError
from rna2histo.models import MODELS, model_class
from rna2histo.models.base import FIELD_RANGES
from rna2histo.paths import ROOT
from rna2histo.settings import CHAPTER_RANGES, assigned, check_fit
from rna2histo.training.loop import fit

CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def tiny_chapter(path):
    """A notebook with a parameters cell, the chapters' check cell, and one cell that prints."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('epochs = 3  # passes\nlr = 1e-4\nrun_dir = "runs/x"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(check_cell("chapter")), nbformat.v4.new_code_cell("print(epochs)")]
    nbformat.write(nb, path)
    return path


def run_chapter(tmp_path, **parameters):
    return papermill.execute_notebook(str(tiny_chapter(tmp_path / "chapter.ipynb")), str(tmp_path / "out.ipynb"),
                                      parameters=parameters, progress_bar=False, kernel_name="python3")


MISSPELT = "unknown parameter 'epochz' (did you mean 'epochs'?); this chapter takes: epochs, lr, run_dir"


# --- defect 10: a misspelt parameter ran the defaults silently ---------------------------------

def test_defect10_misspelt_parameter_is_refused(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run_chapter(tmp_path, epochz=1)
    assert err.value.ename == "UserError" and err.value.evalue == MISSPELT
    assert MISSPELT in str(err.value)


def table_rows(check_cell) -> list[list[str]]:
    """The check cell's table of parameters, as text rows: name, value, [default,] what."""
    (shown,) = check_cell.outputs
    assert shown.output_type == "display_data" and "<table" in shown.data["text/html"]
    return [line.split(maxsplit=3) for line in shown.data["text/plain"].splitlines()[2:]]


def test_defect10_declared_parameter_runs_and_the_check_shows_the_values_once(tmp_path):
    out = run_chapter(tmp_path, epochs=1)
    check = out.cells[[c.source for c in out.cells].index(check_cell("chapter"))]
    # the injected value over the default, the parameters cell's comment as what it is
    assert table_rows(check) == [["epochs", "1", "3", "passes"], ["lr", "0.0001"], ["run_dir", "'runs/x'"]]
    assert out.cells[-1].outputs[0]["text"] == "1\n"
    plain = run_chapter(tmp_path)  # nothing injected: no default column
    assert table_rows(plain.cells[1])[0] == ["epochs", "3", "passes"]


def test_defect10_injected_value_of_the_wrong_kind_is_refused(tmp_path):
    for value, message in [(1.5, "epochs: expected a whole number, got 1.5"),
                           (True, "epochs: expected a whole number, got True")]:
        with pytest.raises(papermill.PapermillExecutionError) as err:
            run_chapter(tmp_path, epochs=value)
        assert err.value.evalue == message
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run_chapter(tmp_path, lr=math.nan)
    assert err.value.evalue == "lr: expected a finite number, got nan"


def test_defect10_misspelt_parameter_via_the_papermill_cli(tmp_path):
    chapter = tiny_chapter(tmp_path / "chapter.ipynb")
    cmd = [sys.executable, "-m", "papermill", str(chapter), str(tmp_path / "out.ipynb"), "-p", "epochz", "1",
           "-k", "python3", "--no-progress-bar"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and MISSPELT in done.stderr + done.stdout


def test_defect10_book_refuses_a_misspelt_profile_parameter_in_one_line(tmp_path, monkeypatch, capsys):
    chapter = tiny_chapter(tmp_path / "chapter.ipynb")
    (tmp_path / "params" / "p").mkdir(parents=True)
    (tmp_path / "params" / "p" / "chapter.yaml").write_text("epochz: 1\n")
    monkeypatch.setattr(book, "chapters", lambda: [chapter])
    monkeypatch.setattr(book, "PARAMS", tmp_path / "params")
    monkeypatch.setattr(book, "BUILD", tmp_path / "build")
    monkeypatch.setattr(book, "build_html", lambda executed, headline=None: tmp_path / "html")
    assert main(["book", "--profile", "p"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"error: chapter.ipynb with params/p: {MISSPELT}"
    assert not any("Traceback" in line for line in lines)
    (tmp_path / "params" / "p" / "chapter.yaml").write_text("epochs: 1\n")
    assert book.execute("p") == [tmp_path / "build" / "executed" / "book" / "chapter.ipynb"]
    # the built book shows the parameters once: the check cell's table, not the two cells that set them
    executed = nbformat.read(tmp_path / "build" / "executed" / "book" / "chapter.ipynb", as_version=4)
    removed = [c.source.splitlines()[0] for c in executed.cells if "remove-cell" in c.metadata.get("tags", [])]
    assert removed == ["epochs = 3  # passes", INJECTED_HEADER]


def test_a_chapter_that_fails_on_a_bug_keeps_papermills_traceback(tmp_path, monkeypatch):
    """Only bad input (UserError) is shortened to one line; a bug shows where it happened."""
    nb = nbformat.read(tiny_chapter(tmp_path / "chapter.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("1 / 0"))
    nbformat.write(nb, tmp_path / "chapter.ipynb")
    monkeypatch.setattr(book, "chapters", lambda: [tmp_path / "chapter.ipynb"])
    monkeypatch.setattr(book, "BUILD", tmp_path / "build")
    with pytest.raises(papermill.PapermillExecutionError, match="ZeroDivisionError"):
        book.execute("demo")


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_defect10_every_chapter_checks_its_parameters(notebook):
    """The check cell right after the parameters cell, in the notebook and in its .py twin."""
    for nb in (nbformat.read(notebook, as_version=4), jupytext.read(notebook.with_suffix(".py"))):
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{notebook.name}: expected one parameters cell"
        params, check = nb.cells[tagged[0]], nb.cells[tagged[0] + 1]
        model = stem_model(notebook)
        expected = model_check_cell(model) if model in MODELS else check_cell(notebook.stem)
        assert check.cell_type == "code" and check.source == expected, f"{notebook.name}: no check cell"
        # the check tells papermill's injected cell from the parameters cell by this header
        assert not params.source.lstrip().startswith(INJECTED_HEADER)


def test_defect4_chapter_parameters_out_of_range_are_refused(tmp_path):
    """Chapters 00, 05 and 06 train nothing, so their numbers are checked by name in the check cell."""
    nb = nbformat.read(tiny_chapter(tmp_path / "chapter.ipynb"), as_version=4)
    nb.cells[0].source += "\npatients = 16\nscale = 1.0\nfractions = [0.25, 1.0]\nn_boot = 1000"
    nbformat.write(nb, tmp_path / "chapter.ipynb")

    def refusal(**parameters):
        with pytest.raises(papermill.PapermillExecutionError) as err:
            papermill.execute_notebook(str(tmp_path / "chapter.ipynb"), str(tmp_path / "out.ipynb"),
                                       parameters=parameters, progress_bar=False, kernel_name="python3")
        return err.value.evalue

    assert refusal(patients=0) == "patients: expected a value >= 1, got 0"
    assert refusal(scale=-0.5) == "scale: expected a value > 0, got -0.5"
    assert refusal(n_boot=-1) == "n_boot: expected a value >= 1, got -1"
    assert refusal(fractions=[0.5, 1.5]) == "fractions: expected values in (0, 1], got [0.5, 1.5]"
    papermill.execute_notebook(str(tmp_path / "chapter.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters={"patients": 3, "fractions": [0.1, 1.0]}, progress_bar=False,
                               kernel_name="python3")


@pytest.mark.parametrize("notebook", [c for c in CHAPTERS if c.stem[:2] in ("00", "05", "06")], ids=lambda p: p.stem)
def test_every_numeric_parameter_of_chapters_00_05_06_has_a_range(notebook):
    """A new number in those chapters needs a range in CHAPTER_RANGES (the model chapters' go
    through fit and the model's config)."""
    params = next(c for c in nbformat.read(notebook, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    numeric = [k for k, v in assigned(params.source).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               or isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)]
    assert numeric and not set(numeric) - set(CHAPTER_RANGES), set(numeric) - set(CHAPTER_RANGES)


# --- defect 4: numbers were not checked (nan, negative, 1.5 or True for a whole number) --------

BAD = [("lr", math.nan, "expected a finite number > 0, got nan"),
       ("lr", -1e-4, "expected a finite number > 0, got -0.0001"),
       ("z_dim", 1.5, "expected a whole number >= 1, got 1.5"),
       ("z_dim", True, "expected a whole number >= 1, got True"),
       ("z_dim", 0, "expected a whole number >= 1, got 0")]


@pytest.mark.parametrize("model", ["cgan", "cvae", "hybrid", "diffusion"])
def test_defect4_model_config_refuses_bad_numbers(model):
    cfg = model_class(model).Config
    for field, value, message in BAD:
        field = {"lr": "lr" if hasattr(cfg, "lr") else "lr_g",
                 "z_dim": "z_dim" if hasattr(cfg, "z_dim") else "base_channels"}[field]
        with pytest.raises(UserError, match=f"^{cfg.__name__}.{field}: {message}$"):
            cfg.preset("small", **{field: value})
    for name in cfg.PRESETS:  # every preset is valid
        cfg.preset(name)


def test_defect4_ranges_follow_each_fields_meaning():
    from rna2histo.models.cvae import CVAEConfig
    from rna2histo.models.diffusion import DiffusionConfig

    for overrides, message in [(dict(betas=(0.9, 1.0)), "betas: expected 2 finite numbers in [0, 1)"),
                               (dict(enc_channels=[32, 0]), "enc_channels: expected a list of whole numbers >= 1"),
                               (dict(beta=-0.1), "beta: expected a finite number >= 0"),
                               (dict(lr_step=0), "lr_step: expected a whole number >= 1")]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            CVAEConfig.preset("small", **overrides)
    for overrides, message in [(dict(cond_dropout=1.5), "cond_dropout: expected a finite number in [0, 1]"),
                               (dict(beta_end=1.0), "beta_end: expected a finite number in (0, 1)")]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            DiffusionConfig.preset("small", **overrides)
    # what is meaningful stays allowed: a weight of 0, no blocks per level, negative guidance, lists
    DiffusionConfig.preset("small", cond_dropout=0.0, blocks=0, guidance=-1.0, channel_mults=[1, 2])
    CVAEConfig.preset("small", beta=0.0, lr=1)


def test_defect4_every_numeric_config_field_has_a_range():
    from typing import get_args, get_origin, get_type_hints

    for name in MODELS:
        cfg = model_class(name).Config
        for field, hint in get_type_hints(cfg).items():
            numeric = hint in (int, float) or (get_origin(hint) is tuple and get_args(hint)[0] in (int, float))
            if numeric and field in cfg.__dataclass_fields__:
                assert field in FIELD_RANGES, f"{cfg.__name__}.{field}: give it a range in FIELD_RANGES"


FIT_BAD = [(dict(epochs=1.5), "epochs: expected a whole number >= 1, got 1.5"),
           (dict(epochs=True), "epochs: expected a whole number >= 1, got True"),
           (dict(batch_size=0), "batch_size: expected a whole number >= 1, got 0"),
           (dict(ckpt_every=0), "ckpt_every: expected a whole number >= 1, got 0"),
           (dict(seed=-1), "seed: expected a whole number >= 0, got -1"),
           (dict(sample_patients=2.0), "sample_patients: expected a whole number >= 1, got 2.0"),
           (dict(rna_latent=0), "rna_latent: expected a whole number >= 1, got 0"),
           (dict(rna_beta=math.nan), "rna_beta: expected a finite number >= 0, got nan"),
           (dict(workers=-1), "workers: expected 'auto' or a whole number >= 0, got -1"),
           (dict(lr=math.nan), "CVAEConfig.lr: expected a finite number > 0, got nan"),
           (dict(lr=-1.0), "CVAEConfig.lr: expected a finite number > 0, got -1.0")]


@pytest.mark.parametrize(("bad", "message"), FIT_BAD, ids=[m.split(":")[0] + str(b) for b, m in FIT_BAD])
def test_defect4_fit_refuses_bad_settings_before_any_work(tmp_path, bad, message):
    settings = {**dict(epochs=1, batch_size=8, device="cpu", progress=False), **bad}
    # no cohort there: the refusal comes before the loop reads one
    with pytest.raises(UserError) as err:
        fit("cvae", tmp_path / "no-cohort", tmp_path / "run", **settings)
    assert str(err.value) == message
    assert not (tmp_path / "run").exists()


def test_defect4_fit_settings_that_are_fine_pass():
    check_fit(dict(model="cvae", epochs=1, batch_size=1, ckpt_every=1, seed=0, sample_patients=1,
                   rna_latent=1, rna_beta=0.0, workers="auto", options=dict(lr=2e-4)))


def write_params(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("lr: .nan", "lr: expected a finite number, got nan"),
    ("epochs: 1.5", "epochs: expected a whole number, got 1.5"),
    ("batch_size: true", "batch_size: expected a whole number, got True"),
    ("lr: -1.0", "CVAEConfig.lr: expected a finite number > 0, got -1.0"),
    ("epochs: 0", "epochs: expected a whole number >= 1, got 0"),
    ("rna_beta: -1.0", "rna_beta: expected a finite number >= 0, got -1.0"),
    ("image_size: 0", "image_size: expected a whole number >= 1, got 0"),
])
def test_defect4_parameters_file_refuses_bad_numbers(tmp_path, capsys, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError) as err:
        training_parameters("cvae", path)
    assert str(err.value) == f"{path}: {message}"
    # the command line: one line, exit status 2, nothing built or trained
    assert main(["train", "cvae", "-f", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {path}: {message}"]
    assert not (tmp_path / "run").exists()


def test_defect4_parameters_file_with_good_numbers_passes(tmp_path):
    defaults = chapter_parameters(ROOT / "book" / "02_cvae.ipynb")
    path = write_params(tmp_path / "mine.yaml", epochs=2, lr=2.0e-4, beta=0.0, rna_beta=0.5)
    assert training_parameters("cvae", path) == {**defaults, "epochs": 2, "lr": 2.0e-4, "beta": 0.0, "rna_beta": 0.5}


def test_a_model_chapters_shared_settings_are_known_to_it():
    """chapter_parameters adds TRAINING to a model chapter's own; papermill's "unknown parameter"
    warning is dropped for those names only."""
    from rna2histo.book.parameters import TRAINING

    cgan = chapter_parameters(ROOT / "book" / "01_cgan.ipynb")
    assert set(TRAINING) <= set(cgan) and cgan["z_dim"] == 64 and cgan["device"] == "auto"
    assert "device" not in chapter_parameters(ROOT / "book" / "05_evaluation.ipynb")
    quiet = book._KnownToTheChapter(TRAINING)
    record = lambda name: logging.LogRecord("papermill", logging.WARNING, "", 0,  # noqa: E731
                                            f"Passed unknown parameter: {name}", (), None)
    assert not quiet.filter(record("device")) and quiet.filter(record("epochz"))
