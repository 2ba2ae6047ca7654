"""Running the book: every chapter through papermill with a profile's parameters, then Jupyter Book.

A profile is a folder ``params/<profile>/`` with one YAML per chapter (same stem as the chapter);
a chapter without a file runs with its own defaults. Executed copies go to ``_build/``, so
building the book never modifies the committed chapters. `train_chapter` runs a model chapter's
training alone, with the same parameters, e.g. on several GPUs under torchrun.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ..errors import UserError, where
from ..paths import PARAMS, ROOT, atomic_write, source_version
from ..settings import default_kind_error, is_real
from .parameters import TRAINING, check_training, fit_arguments, with_shared

BUILD = ROOT / "_build"


def chapters() -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml``, in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc.get("parts", [toc]) for entry in part.get("chapters", [])]
    return [ROOT / f"{name}.ipynb" for name in files if (ROOT / f"{name}.ipynb").exists()]


def chapter_parameters(notebook: Path) -> dict:
    """The names and default values of a chapter's ``parameters`` cell, and for a model chapter the
    shared training settings it does not set itself (`rna2histo.book.parameters.TRAINING`)."""
    import papermill

    inferred = papermill.inspect_notebook(str(notebook))
    # papermill reports defaults as source text; the cell holds literals only
    own = {name: ast.literal_eval(spec["default"]) for name, spec in inferred.items()}
    return with_shared(own, shared_parameters(notebook))


def shared_parameters(notebook: Path) -> dict:
    """The settings a chapter takes beside its parameters cell's: `TRAINING` for a model chapter."""
    from ..models import MODELS

    return TRAINING if stem_model(notebook) in MODELS else {}


def stem_model(notebook: Path) -> str:
    """The model named by a chapter's file, ``NN_<model>`` (a model chapter's, if it is in `MODELS`)."""
    return notebook.stem.split("_", 1)[-1]


def profile_dir(profile: str) -> Path:
    if not (PARAMS / profile).is_dir():
        raise UserError(f"no profile {profile!r}: {PARAMS / profile} does not exist")
    return PARAMS / profile


def profile_parameters(profile: str, notebook: Path) -> dict:
    """The profile's parameters for one chapter (empty when the profile has no file for it)."""
    path = profile_dir(profile) / f"{notebook.stem}.yaml"
    if not path.exists():
        return {}
    return read_parameters(path)


def read_parameters(path: Path) -> dict:
    """A parameters file: a YAML mapping of parameter names to values."""
    if not path.is_file():
        raise where(path, "no such parameters file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise where(path, f"not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise where(path, "expected a mapping of parameter names to values")
    return values


def model_chapter(model: str) -> Path:
    """The chapter that trains `model`: ``book/NN_<model>.ipynb``."""
    from ..models import model_class

    model_class(model)  # an unknown model is a UserError naming the known ones
    for notebook in chapters():
        if stem_model(notebook) == model:
            return notebook
    raise UserError(f"no chapter in _toc.yml trains {model!r}")


def training_parameters(model: str, path: Path) -> dict:
    """The parameters of `model`'s chapter: its defaults, overridden by the file at `path`."""
    notebook = model_chapter(model)
    if path.stem != notebook.stem and path.stem in {nb.stem for nb in chapters()}:
        raise where(path, f"is chapter {path.stem}'s file; {model} is trained by chapter {notebook.stem}")
    defaults, values = chapter_parameters(notebook), read_parameters(path)
    for key, value in values.items():
        if key not in defaults:
            raise where(path, f"unknown parameter {key!r}; chapter {notebook.stem} has {', '.join(defaults)}")
        if is_real(defaults[key]) and isinstance(value, str):
            raise where(path, f"{key}: expected a number, got {value!r}" + YAML_EXPONENT_HINT)
        mismatch = default_kind_error(key, value, defaults[key])  # true, 1.5 where the default is whole, .nan
        if mismatch:
            raise where(path, mismatch)
    params = {**defaults, **values}
    try:  # ranges, and the model's fields, before a cohort is built or a model trained
        check_training(model, params)
    except UserError as err:
        raise where(path, str(err)) from None
    return params


# YAML 1.1 (PyYAML) reads 2e-4 as text: it takes a float only with a decimal point, 2.0e-4.
YAML_EXPONENT_HINT = " (write exponents with a decimal point, 2.0e-4: YAML reads 2e-4 as text)"


def train_chapter(model: str, params_file: Path, run_dir: Path | None = None, resume: bool = False,
                  compile: bool = False, **overrides) -> Path:
    """Train `model` as its chapter does, with the chapter's parameters from `params_file`.

    Missing parameters take the chapter's defaults; ``image_size`` is checked against the cohort,
    which is built from the embedded default if missing (as in the chapter); every other parameter
    goes to `rna2histo.training.loop.fit`. A chapter's ``train`` is ignored: this trains. `run_dir` and
    `resume` override the file, as do `overrides` (chapter parameters such as ``rna_encoder``);
    `compile` turns on ``torch.compile`` (`rna2histo.training.fastpath`). Under
    torchrun every process calls this and process 0 builds a missing cohort before the others read
    it; ``batch_size`` is then per process.
    """
    from ..training import distributed
    from ..training.loop import fit
    from ..training.step import pick_device

    params = {**training_parameters(model, Path(params_file)), **overrides}
    image_size = params.get("image_size")
    params = fit_arguments(params)
    params.pop("train", None)
    if run_dir is not None:
        params["run_dir"] = str(run_dir)
    params["resume"] = params.get("resume", False) or resume
    params["compile"] = params.get("compile", False) or compile
    with distributed.session(pick_device(params["device"])) as world:
        with world.main_first():
            ensure_cohort(params["cohort_dir"], image_size)
        return fit(model, **params)


def execute(profile: str = "demo", only: list[str] | None = None) -> list[Path]:
    """Run the chapters top to bottom with a profile's parameters into ``_build/executed``.

    A chapter whose notebook, parameters, package code, earlier chapters and output folders are as
    when it last ran is not run again: its executed copy is reused from ``_build/cache`` (see
    `chapter_key`). Each chapter's start, end and time are printed, and ``times.json`` keeps them.
    """
    profile_dir(profile)  # before the first chapter says it is running
    out_dir = BUILD / "executed" / "book"
    out_dir.mkdir(parents=True, exist_ok=True)
    done, times, key = [], {}, ""
    for notebook in chapters():
        if only and notebook.stem not in only:
            continue
        target = out_dir / notebook.name
        parameters = profile_parameters(profile, notebook)
        key = chapter_key(notebook, parameters, key)
        started = time.perf_counter()
        if _reuse(notebook, parameters, key, target):
            print(f"reusing {notebook.name}: notebook, params/{profile}, code, earlier chapters and outputs "
                  "unchanged since its last run", flush=True)
        else:
            print(f"running {notebook.name} with params/{profile}/{notebook.stem}.yaml", flush=True)
            _run_chapter(notebook, target, parameters, profile)
            _remember(notebook, parameters, key, target)
        times[notebook.stem] = round(time.perf_counter() - started, 1)
        print(f"{notebook.name} done in {times[notebook.stem]:.0f} s", flush=True)
        done.append(target)
    (out_dir / "times.json").write_text(json.dumps({"profile": profile, "seconds": times}, indent=1))
    return done


def _run_chapter(notebook: Path, target: Path, parameters: dict, profile: str) -> None:
    """papermill, with the chapter's output (training progress lines) streamed to the terminal."""
    import papermill

    quiet = _KnownToTheChapter(shared_parameters(notebook))
    logging.getLogger("papermill").addFilter(quiet)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(target),
            parameters=parameters,
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=True,
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
        )
        hide_parameter_cells(target)
    except papermill.PapermillExecutionError as err:
        if err.ename != "UserError":  # a bug: papermill's traceback is what a developer needs
            raise
        # bad input (a profile's value, a cohort): the chapter's one line, not the kernel's traceback
        raise where(f"{notebook.name} with params/{profile}", err.evalue) from None
    finally:
        logging.getLogger("papermill").removeFilter(quiet)


class _KnownToTheChapter(logging.Filter):
    """Drops papermill's "Passed unknown parameter" for the shared settings a chapter does take."""

    PREFIX = "Passed unknown parameter: "

    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(self.PREFIX) and message[len(self.PREFIX):] in self.names)


def hide_parameter_cells(notebook: Path) -> None:
    """Tag the parameters cell and papermill's injected cell ``remove-cell``: the built book shows a
    chapter's parameters once, as the table of its check cell (`rna2histo.book.parameters`)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    atomic_write(notebook, lambda tmp: nbformat.write(nb, tmp))


# --- reuse of executed chapters -----------------------------------------------------------------

CACHE = BUILD / "cache"


def chapter_key(notebook: Path, parameters: dict, previous: str) -> str:
    """What a chapter's output depends on: its notebook, its parameters, the package's code and the
    key of the chapter before it (a chapter re-run runs every later chapter again)."""
    # Any code change runs the chapters again; the training inside them still reuses runs whose
    # training code is unchanged (`train.reusable_run`).
    text = json.dumps({"parameters": parameters, "code": source_version(), "previous": previous},
                      sort_keys=True, default=str)
    return hashlib.sha1(notebook.read_bytes() + text.encode()).hexdigest()[:16]


def outputs_fingerprint(parameters: dict, notebook: Path) -> str:
    """Size and time of the files directly inside the folders a chapter reads and writes (its
    ``*_dir`` parameters and ``runs``): a run deleted or retrained elsewhere is seen."""
    from ..paths import resolve

    values = {**chapter_parameters(notebook), **parameters}
    folders = [v for k, v in values.items() if k.endswith("_dir") and isinstance(v, str) and v]
    folders += [v for v in (values.get("runs") or {}).values() if isinstance(v, str)]
    stats = []
    for folder in sorted(set(folders)):
        path = resolve(folder)
        entries = sorted(path.iterdir()) if path.is_dir() else []
        stats.append([folder, [[e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in entries if e.is_file()]])
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:16]


def _cached(notebook: Path) -> tuple[Path, Path]:
    return CACHE / notebook.name, CACHE / f"{notebook.stem}.json"


def _reuse(notebook: Path, parameters: dict, key: str, target: Path) -> bool:
    executed, record = _cached(notebook)
    if not (executed.exists() and record.exists()):
        return False
    try:
        saved = json.loads(record.read_text())
    except json.JSONDecodeError:
        return False
    if saved.get("key") != key or saved.get("outputs") != outputs_fingerprint(parameters, notebook):
        return False
    shutil.copy2(executed, target)
    return True


def _remember(notebook: Path, parameters: dict, key: str, target: Path) -> None:
    from ..paths import atomic_write

    executed, record = _cached(notebook)
    atomic_write(executed, lambda tmp: shutil.copy2(target, tmp))
    fingerprint = outputs_fingerprint(parameters, notebook)
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps({"key": key, "outputs": fingerprint})))


def build_html(executed: list[Path], headline: str | None = None) -> Path:
    """Stage the book's sources with the executed chapters and build the HTML with Jupyter Book.

    `headline`: Markdown that replaces the staged ``book/headline.md`` (the opening page's
    results, from the evaluation chapter's metrics.json); the tracked file is never touched.
    """
    stage = BUILD / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, stage / name)
    for page in (ROOT / "book").glob("*.md"):
        shutil.copy2(page, stage / "book" / page.name)
    for notebook in executed:
        shutil.copy2(notebook, stage / "book" / notebook.name)
    if headline is not None:
        (stage / "book" / "headline.md").write_text(headline)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jupyter_book), "build", str(stage), "--path-output", str(BUILD)]
    subprocess.run(cmd, check=True)
    return BUILD / "_build" / "html" / "index.html"


def headline(profile: str) -> str | None:
    """The opening page's results table from the profile's evaluation, if it has been run."""
    from ..evaluation.report import headline_markdown
    from ..paths import resolve

    notebook = ROOT / "book" / "05_evaluation.ipynb"
    if not notebook.exists():
        return None
    out_dir = {**chapter_parameters(notebook), **profile_parameters(profile, notebook)}["out_dir"]
    path = resolve(out_dir) / "metrics.json"
    if not path.exists():
        return None
    return headline_markdown(json.loads(path.read_text()), f"{out_dir}/metrics.json")


def build(profile: str = "demo") -> Path:
    index = build_html(execute(profile), headline(profile))
    print(f"the book is at {index}")
    return index


def ensure_cohort(cohort_dir: str | Path, image_size: int | None = None):
    """Load the cohort at `cohort_dir`, building it from the embedded default if it is missing.

    A missing cohort is built by the synthetic source with the chapter-00 parameters of the
    profile whose ``cohort_dir`` names it (``data/cohorts/demo`` is params/demo's), or with
    chapter 00's own defaults (the smoke cohort) for any other folder.
    """
    from ..cohort import build_cohort, is_cohort, load_cohort
    from ..paths import resolve

    path = resolve(cohort_dir)
    if not is_cohort(path):
        params = {k: v for k, v in _default_cohort_params(path).items() if k not in ("source", "cohort_dir")}
        if image_size is not None:
            params["image_size"] = image_size
        print(f"no cohort at {cohort_dir}: building the embedded default (synthetic) there")
        build_cohort("synthetic", path, **params)
    cohort = load_cohort(path)
    if image_size is not None and cohort.image_size != image_size:
        raise UserError(
            f"{path}: the cohort has {cohort.image_size} px tiles but image_size is {image_size}; "
            "rebuild it (chapter 00) or set image_size to match"
        )
    return cohort


def _default_cohort_params(path: Path) -> dict:
    from ..paths import resolve

    defaults = chapter_parameters(ROOT / "book" / "00_data.ipynb")
    for profile_file in sorted(PARAMS.glob("*/00_data.yaml")):
        values = yaml.safe_load(profile_file.read_text()) or {}
        if "cohort_dir" in values and resolve(values["cohort_dir"]) == path:
            return {**defaults, **values}
    return defaults
