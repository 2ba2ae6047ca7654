"""Checks of what a user sets, made before any work starts, each refusal one line naming the setting.

- `check_number`: one number against its kind (whole or finite) and range; the model configs
  (`rna2histo.models.base.ModelConfig.preset`) and the training loop (`check_fit`) use it.
- `assigned`, `check_like_default`, `check_range`, `unknown_message`: what
  `rna2histo.book.parameters.check_parameters` refuses in a chapter's injected parameters: names
  the chapter does not declare, values of another type than the default's, numbers outside their
  `CHAPTER_RANGES` entry.
"""

from __future__ import annotations

import ast
import difflib
import math
import numbers
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; `low_open` / `high_open` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """" > 0", " >= 1", " in [0, 1)" or "" (any value)."""
        if self.high is None:
            return "" if self.low is None else f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f" {'<' if self.high_open else '<='} {self.high:g}"
        return f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


ANY = Range()
POSITIVE = Range(0, low_open=True)  # learning rates, factors
NON_NEGATIVE = Range(0)  # loss weights, seeds, indices
AT_LEAST_ONE = Range(1)  # counts, sizes, widths
UNIT = Range(0, 1)  # probabilities, labels, decays
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)


def is_whole(value) -> bool:
    """An int (numpy's too), not a bool (True would pass as 1) and not a float such as 1.5 or 2.0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or float (numpy's too), not a bool and not text: YAML reads 2e-4 as text."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number_error(name: str, value, kind: type, allowed: Range = ANY) -> str | None:
    """Why `value` is not a valid `kind` (int or float) in `allowed`, or None if it is."""
    if kind is int:
        if not (is_whole(value) and allowed.holds(value)):
            return f"{name}: expected a whole number{allowed.describe()}, got {value!r}"
        return None
    if not is_real(value):
        return f"{name}: expected a number, got {value!r}"
    if not (math.isfinite(value) and allowed.holds(value)):
        return f"{name}: expected a finite number{allowed.describe()}, got {value!r}"
    return None


def check_number(name: str, value, kind: type, allowed: Range = ANY) -> None:
    """Raise a one-line `UserError` unless `value` is a valid `kind` (int or float) in `allowed`."""
    error = number_error(name, value, kind, allowed)
    if error:
        raise UserError(error)


# fit's own numeric keywords (the model's go to its config, checked by ModelConfig.preset)
FIT_SETTINGS: dict[str, tuple[type, Range]] = {
    "epochs": (int, AT_LEAST_ONE),
    "batch_size": (int, AT_LEAST_ONE),
    "ckpt_every": (int, AT_LEAST_ONE),  # epoch % ckpt_every: 0 would divide by zero
    "seed": (int, NON_NEGATIVE),  # numpy's SeedSequence refuses negative seeds
    "sample_patients": (int, AT_LEAST_ONE),  # a sample grid needs at least one patient
    "rna_latent": (int, AT_LEAST_ONE),
    "rna_beta": (float, NON_NEGATIVE),  # a KL weight; 0 leaves a plain autoencoder
    "reprediction_tiles": (int, NON_NEGATIVE),  # 0: no faithfulness check while training
}


def check_fit(params: dict) -> None:
    """The training loop's settings (fit's keywords, in `params`), and the model's config
    overrides in ``params["options"]``, before any data is read or latent fitted."""
    for name, (kind, allowed) in FIT_SETTINGS.items():
        if name in params:
            check_number(name, params[name], kind, allowed)
    workers = params.get("workers", "auto")
    if workers not in (None, "auto") and number_error("workers", workers, int, NON_NEGATIVE):
        raise UserError(f"workers: expected 'auto' or a whole number >= 0, got {workers!r}")
    if "model" in params:
        _check_model_options(params["model"], params.get("model_size", "small"), params.get("options", {}))


def _check_model_options(model: str, model_size: str, options: dict) -> None:
    """Build the model's config (not the model): unknown fields, model_size and numbers refused."""
    from .models import model_class

    model_class(model).Config.preset(model_size, **options)


# --- a chapter's parameters (checked by `rna2histo.book.parameters.check_parameters`) ----------


def assigned(source: str) -> dict:
    """The names a cell assigns at top level, with their literal values (None where not literal)."""
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = _literal(node.value)
    return names


def _literal(node: ast.expr):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None  # e.g. papermill's float('nan'): the kernel's value is checked instead


def unknown_message(unknown: list[str], known: list[str]) -> str:
    """One line: each unknown name with the known names closest to it, then every known name."""
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{name!r}{hint}")
    noun = "parameter" if len(unknown) == 1 else "parameters"
    return f"unknown {noun} {', '.join(parts)}; this chapter takes: {', '.join(known)}"


def default_kind_error(name: str, value, default) -> str | None:
    """Why `value` cannot stand for a numeric `default`: whole where the default is, finite always."""
    if is_whole(default):
        return number_error(name, value, int)
    if is_real(default):
        return number_error(name, value, float)
    return None


# The ranges of the chapters' numeric parameters, by name (one name per concept across the
# chapters): chapter 00's cohort, 05's evaluation, 06's downstream experiment; the model
# chapters' own go through fit (FIT_SETTINGS) and the model's config (FIELD_RANGES) as well.
CHAPTER_RANGES: dict[str, Range] = {
    **{name: allowed for name, (_, allowed) in FIT_SETTINGS.items()},
    **dict.fromkeys(("patients", "tiles_per_patient", "image_size", "genes", "tile_size", "n_per_patient",
                     "n_pairs", "n_fid", "n_boot", "classifier_steps", "classifier_batch", "sample_steps"),
                    AT_LEAST_ONE),
    "workers": AT_LEAST_ONE,  # chapter 00: slides tiled in parallel (fit's own is checked by check_fit)
    "scale": POSITIVE,
    # 0 means "all" (max_patients), "the chapter's" (comparison_epochs), "as many as real" (synthetic_)
    **dict.fromkeys(("max_patients", "comparison_epochs", "synthetic_per_patient"), NON_NEGATIVE),
    "fractions": Range(0, 1, low_open=True),  # shares of the training patients
}


def check_range(name: str, value) -> None:
    """A chapter parameter (a number, or a list of them) inside its `CHAPTER_RANGES` entry."""
    allowed = CHAPTER_RANGES.get(name)
    if allowed is None:
        return
    for entry in value if isinstance(value, (list, tuple)) else [value]:
        if is_real(entry) and not allowed.holds(entry):
            raise UserError(f"{name}: expected {'values' if entry is not value else 'a value'}"
                            f"{allowed.describe()}, got {value!r}")


def check_like_default(name: str, value, default) -> None:
    error = default_kind_error(name, value, default)
    if error:
        raise UserError(error)
