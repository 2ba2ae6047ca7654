"""The patient-level split: every tile of a patient lands in the same split."""

from __future__ import annotations

import numpy as np
import pandas as pd

FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


def split_patients(patient_ids, seed: int, fractions: dict[str, float] = FRACTIONS) -> pd.DataFrame:
    """Assign patients to train/val/test, seeded and independent of input order.

    Val and test get ``round(fraction * n)`` patients each (at least one when there are three or
    more patients), train the rest: 50 patients give 34/8/8, as in the reference study.
    """
    ids = sorted(set(map(str, patient_ids)))
    if len(ids) != len(list(patient_ids)):
        raise ValueError("patient ids must be unique")
    order = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)
    n_val = _share(fractions["val"], n)
    n_test = _share(fractions["test"], n)
    labels = np.array(["train"] * n, dtype=object)
    labels[order[:n_test]] = "test"
    labels[order[n_test : n_test + n_val]] = "val"
    return pd.DataFrame({"patient_id": ids, "split": labels})


def _share(fraction: float, n: int) -> int:
    return max(1, round(fraction * n)) if n >= 3 else 0
