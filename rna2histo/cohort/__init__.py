"""Cohorts: the on-disk format and the sources that build it (synthetic, folder, tcga)."""

from __future__ import annotations

import inspect
from pathlib import Path

from ..errors import UserError
from .format import FORMAT_VERSION, Cohort, CohortWriter, is_cohort, load_cohort
from .split import split_patients

SOURCES = ("synthetic", "folder", "tcga")

__all__ = [
    "FORMAT_VERSION",
    "SOURCES",
    "Cohort",
    "CohortWriter",
    "build_cohort",
    "describe",
    "is_cohort",
    "load_cohort",
    "split_patients",
]


def _builder(source: str):
    if source == "synthetic":
        from .synthetic import build_synthetic

        return build_synthetic
    if source == "folder":
        from .folder import build_folder

        return build_folder
    if source == "tcga":
        from .tcga import build_tcga

        return build_tcga
    raise UserError(f"unknown cohort source {source!r}; expected one of {', '.join(SOURCES)}")


def build_cohort(source: str, out: str | Path, **params) -> Cohort:
    """Build a cohort from `source` into `out` and load it.

    `params` may hold the parameters of every source (a chapter's parameters cell does); each
    builder takes the ones it knows.
    """
    builder = _builder(source)
    accepted = inspect.signature(builder).parameters
    built = builder(out=Path(out), **{k: v for k, v in params.items() if k in accepted})
    return load_cohort(built, check_splits=False)  # built and described; training checks the splits


def describe(cohort: Cohort) -> str:
    """A few lines that say what a cohort holds."""
    m = cohort.manifest
    counts = cohort.split_counts()
    lines = [
        f"cohort {cohort.root.name} (source {m['source']}, format v{m['format_version']})",
        f"  patients {m['counts']['patients']}, tiles {m['counts']['tiles']}, "
        f"genes {m['counts']['genes']}, tiles {cohort.image_size}x{cohort.image_size} px"
        + (f" at {m['mpp']:.2f} um/px" if m.get("mpp") else ""),
        "  split    " + ", ".join(f"{s} {r.patients} patients / {r.tiles} tiles" for s, r in counts.iterrows()),
    ]
    if (counts["patients"] < 1).any():
        lines.append("  cannot be trained on: train, val and test need at least one patient each (3+ patients)")
    return "\n".join(lines)
