"""A chapter's parameters as it runs with them: checked, shown once, passed on as a whole.

Every chapter's cell after its ``parameters`` cell is `check_cell` (a model chapter's,
`model_check_cell`). It calls `check_parameters`, which refuses names that papermill injected but
the chapter does not declare (papermill itself only warns, so ``-p epochz 1`` would run the
defaults), values whose type differs from the default's and numbers outside their range, then
shows one table of the values the chapter runs with (the injected values over the defaults,
with each parameter's comment) and returns them as `Parameters`. The training settings every
model chapter shares (`TRAINING`: device, seed, the RNA encoder, ...) are declared here once; a
model chapter's parameters cell holds its own, and may set a shared one too. The built book hides the
parameters cell and papermill's injected cell (`hide_parameter_cells`), so the table is where a
reader sees them.
"""

from __future__ import annotations

import io
import tokenize
from collections.abc import Mapping

import pandas as pd

from ..errors import UserError, where
from ..paths import ROOT
from ..settings import (
    AT_LEAST_ONE,
    assigned,
    check_fit,
    check_like_default,
    check_number,
    check_range,
    unknown_message,
)
from ..training.loop import FIT_KEYWORDS

INJECTED_HEADER = "# Parameters"  # the first line of the cell papermill inserts after "parameters"
CHECK_COMMENT = "# refuses a parameter papermill only warns of, and shows the values this chapter runs with"


def check_cell(chapter: str) -> str:
    """The cell after the parameters cell of a chapter that trains nothing (00, 05, 06)."""
    return f"""\
{CHECK_COMMENT}
from rna2histo.book.parameters import check_parameters

params = check_parameters("{chapter}")"""


# The model chapters' shared settings: name -> (default, what it is). papermill warns that they are
# unknown to a chapter's parameters cell when it injects them; the check accepts them.
TRAINING = {
    "image_size": (64, "tile side in pixels; must match the cohort"),
    "model_size": ("small", "\"small\" (CPU) or \"thesis\" (the study's architecture)"),
    "device": ("auto", '"auto" picks cuda, then mps, then cpu'),
    "seed": (0, "seeds initialisation, batches, augmentation and noise"),
    "resume": (False, "continue from the run's last checkpoint"),
    "amp": (True, "mixed precision on CUDA (bf16 where supported, else fp16); no effect on CPU"),
    "cpu_bf16": (False, "bf16 autocast on a CPU with native bf16 (AVX512-BF16, AMX); fp32 elsewhere"),
    "ckpt_every": (10, "keep a checkpoint every this many epochs (plus best and last)"),
    "reprediction_tiles": (0, "> 0: tiles per val patient for the held-out re-prediction check that picks best"),
    "rna_encoder": ("mlp", '"mlp" (all genes, the study), "pca" or "betavae" (a compact latent; chapter 06)'),
    "rna_latent": (200, "pca / betavae: latent dimensions (pca: at most training patients - 1)"),
    "rna_beta": (1.0, "betavae: weight of the KL term"),
    "augment": ("study", '"study" (flips, rotations, shift, colour jitter), "geometric" (no jitter), "none"'),
    "train": (True, "False: show the run in run_dir as trained before (python -m rna2histo train, torchrun)"),
}


def with_shared(declared: dict, shared: dict) -> dict:
    """A chapter's defaults: its parameters cell's, then the `shared` ones it does not set itself."""
    return {**declared, **{name: default for name, (default, _) in shared.items() if name not in declared}}


def model_check_cell(model: str) -> str:
    """A model chapter's check cell: the same check, inside the object that runs the chapter's steps."""
    return f"""\
{CHECK_COMMENT}, then loads the cohort
from rna2histo.book.chapter import ModelChapter

{model} = ModelChapter("{model}")"""


class Parameters(Mapping):
    """The values a chapter runs with, by name in the parameters cell's order; ``fit(**params)`` works.

    `defaults` are the parameters cell's literals (None where not a literal), `notes` its comments.
    Shown in a notebook, it is one table: value, default where the value differs, what it is.
    """

    def __init__(self, values: dict, defaults: dict, notes: dict):
        self.values, self.defaults, self.notes = values, defaults, notes

    def __getitem__(self, name):
        return self.values[name]

    def __iter__(self):
        return iter(self.values)

    def __len__(self):
        return len(self.values)

    def table(self) -> pd.DataFrame:
        table = pd.DataFrame({"value": [repr(v) for v in self.values.values()]}, index=list(self.values))
        changed = [name for name, value in self.values.items() if value != self.defaults.get(name)]
        if changed:
            table["default"] = [repr(self.defaults[n]) if n in changed else "" for n in self.values]
        table["what"] = [self.notes.get(name, "") for name in self.values]
        table.index.name = "parameter"
        return table

    def _repr_html_(self) -> str:
        return self.table().to_html()

    def __repr__(self) -> str:
        return self.table().to_string()


def check_parameters(chapter: str, shared: dict | None = None) -> Parameters:
    """Check the injected parameters, show the table of the chapter's values and return them.

    `chapter`: the notebook's stem (``05_evaluation``); `shared`: settings the chapter takes
    beside its parameters cell's (`TRAINING`), name -> (default, what).

    Called by the cell right after the chapter's ``parameters`` cell. Under papermill (the CLI or
    `rna2histo.book.runner.execute`) the cells run before it are, in IPython's input history, the
    parameters cell and then papermill's injected cell, headed ``# Parameters``. In a plain run
    (Jupyter, no parameters given) the cell before is the parameters cell; where no history is kept
    (nbval), it is read from the chapter's notebook.
    """
    from IPython import get_ipython
    from IPython.display import display

    shell = get_ipython()
    if shell is None:
        raise UserError("check_parameters reads the chapter's parameters from its kernel: run it in a notebook")
    history, namespace = list(shell.user_ns.get("In", [])), shell.user_ns
    injected = len(history) >= 3 and history[-2].lstrip().startswith(INJECTED_HEADER)
    source = history[-3] if injected else history[-2] if len(history) >= 2 else ""
    if not assigned(source):
        source = parameters_cell(chapter)
    own, shared = assigned(source), shared or {}
    declared = with_shared(own, shared)
    if injected:
        _check_injected(assigned(history[-2]), declared, namespace)
    values = {name: namespace.get(name, default) for name, default in declared.items()}
    notes = {**{name: what for name, (_, what) in shared.items()}, **comments(source)}
    params = Parameters(values, declared, notes)
    display(params)
    return params


def parameters_cell(chapter: str) -> str:
    """The source of the ``parameters`` cell of ``book/<chapter>.ipynb``."""
    import nbformat

    path = ROOT / "book" / f"{chapter}.ipynb"
    if not path.is_file():
        raise UserError(f"no chapter {chapter!r}: {path} does not exist")
    for cell in nbformat.read(path, as_version=4).cells:
        if "parameters" in cell.metadata.get("tags", []):
            return cell.source
    raise where(path, "no cell tagged 'parameters'")


def _check_injected(injected: dict, declared: dict, namespace: dict) -> None:
    unknown = [name for name in injected if name not in declared]
    if unknown:
        raise UserError(unknown_message(unknown, list(declared)))
    for name in injected:  # the injected values, as the kernel evaluated them
        check_like_default(name, namespace.get(name), declared[name])
        check_range(name, namespace.get(name))


def comments(source: str) -> dict:
    """Each top-level assignment's trailing comment, by name (the parameters cell's "what")."""
    by_line = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string.lstrip("#").strip()
    lines = {}
    for number, line in enumerate(source.splitlines(), start=1):
        name = line.split("=", 1)[0].strip()
        if "=" in line and name.isidentifier() and number in by_line:
            lines[name] = by_line[number]
    return lines


def fit_arguments(params: Mapping) -> dict:
    """A model chapter's parameters as `rna2histo.training.loop.fit` takes them (the tile size is
    the cohort's)."""
    return {name: value for name, value in params.items() if name != "image_size"}


def check_training(model: str, params: Mapping) -> None:
    """A model chapter's parameters (`rna2histo.book.runner.training_parameters`) as fit will take them:
    its keywords, and the rest (z_dim, lr, ...) as the model's config overrides."""
    check_number("image_size", params.get("image_size", 1), int, AT_LEAST_ONE)
    arguments = fit_arguments(params)
    options = {k: v for k, v in arguments.items() if k not in FIT_KEYWORDS}
    check_fit({**{k: v for k, v in arguments.items() if k in FIT_KEYWORDS}, "model": model, "options": options})
