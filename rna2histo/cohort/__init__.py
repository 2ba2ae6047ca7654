"""Cohorts: the on-disk format and the sources that build it (synthetic, folder, tcga)."""

from .format import FORMAT_VERSION, Cohort, CohortWriter, load_cohort
from .split import split_patients

__all__ = ["FORMAT_VERSION", "Cohort", "CohortWriter", "load_cohort", "split_patients"]
