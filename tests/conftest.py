"""Shared fixtures: a tiny cohort written straight through the format, independent of sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rna2histo.cohort import CohortWriter, load_cohort, split_patients
from rna2histo.training.loop import Trainer


def write_tiny_cohort(out, patients=10, tiles_per_patient=3, size=16, genes=20, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"P{i:02d}" for i in range(patients)]
    rna = pd.DataFrame(
        rng.normal(8, 2, (patients, genes)).astype(np.float32),
        index=pd.Index(ids, name="patient_id"),
        columns=[f"G{j}" for j in range(genes)],
    )
    with CohortWriter(out, size) as writer:
        rows = []
        for p in ids:
            writer.add_tiles(rng.integers(0, 256, (tiles_per_patient, size, size, 3), dtype=np.uint8))
            rows += [{"patient_id": p, "origin": "test", "x": k * size, "y": 0} for k in range(tiles_per_patient)]
        writer.commit(
            source="test",
            params={"seed": seed},
            rna=rna,
            tiles_table=pd.DataFrame(rows),
            splits=split_patients(ids, seed),
        )
    return load_cohort(out, check_splits=False)


@pytest.fixture
def tiny_cohort(tmp_path):
    return write_tiny_cohort(tmp_path / "cohort")


def interrupt_after(monkeypatch, epochs_done):
    """Fault injection: Ctrl-C at the start of the epoch after `epochs_done`."""
    original = Trainer.train_epoch

    def train_epoch(self):
        if self.epoch == epochs_done:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
