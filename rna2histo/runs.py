"""A run is a folder ``runs/<model>/<run_name>/``: checkpoints, parameters, metrics, samples.

    checkpoints/last.pt, best.pt, epoch_010.pt ...   see `save_checkpoint` for the contents
    params.json                                      the resolved training parameters
    metrics.csv                                      one row per epoch
    samples/epoch_001.png ...                        fixed-noise grids for fixed val patients

Checkpoints hold state dicts, the model config, the fitted RNA normaliser and plain values
only: they load with ``torch.load(weights_only=True)`` and never unpickle code. Every file is
written atomically (temporary file, then rename), so a kill leaves the previous version whole.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import torch

from .errors import where
from .paths import atomic_write

CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict) -> Path:
    """`state`: model, config, normaliser, epoch, optimizers, schedulers, scaler, best_val, params."""
    return atomic_write(path, lambda tmp: torch.save({"format_version": CHECKPOINT_VERSION, **state}, tmp))


# What every reader of a checkpoint uses (generation, evaluation, showing a run), and what a
# resume needs besides.
CONTENTS = ("model", "config", "state_dict", "normaliser", "epoch", "params")
TRAINING_STATE = ("optimizers", "schedulers", "scaler", "best_val")


def load_checkpoint(path: Path, map_location="cpu", mmap: bool = False, needs: tuple = CONTENTS) -> dict:
    """`mmap`: map the file instead of reading it; tensors are read when touched. A file that is
    not ours, or lacks one of `needs`, is a one-line `UserError` naming it and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise where(path, "no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        if isinstance(err, pickle.UnpicklingError) and "weights only load failed" in str(err).lower():
            # torch's message goes on to suggest weights_only=False: the one thing not to do here
            raise where(path, "refused: it holds pickled Python objects, which can run code when loaded; "
                        "rna2histo checkpoints hold tensors and plain values only") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise where(path, f"not a readable rna2histo checkpoint ({type(err).__name__}: {first})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise where(path, f"checkpoint format version {version} is not one this rna2histo reads ({CHECKPOINT_VERSION})")
    missing = [key for key in needs if key not in state]
    if missing:
        raise where(path, f"not a complete rna2histo checkpoint: it lacks {', '.join(missing)}; retrain the run")
    return state


def write_json(path: Path, value: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, default=str)))


def write_metrics(path: Path, rows: list[dict]) -> Path:
    return atomic_write(path, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))


def read_metrics(path: Path) -> list[dict]:
    return pd.read_csv(path).to_dict("records") if Path(path).exists() else []


def trained_run(model: str, run_dir: Path, progress: bool = True) -> Path:
    """The folder of a run trained before (``fit(..., train=False)``); its ``last`` checkpoint must exist."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        how = f"python -m rna2histo train {model} -f PARAMS, or under torchrun"
        raise where(run_dir, f"train=False, but there is no {last.name} checkpoint to show; train the run first ({how}) "
                    "or set train=True")
    state = load_checkpoint(last, mmap=True)  # mapped: only the few plain values below are read
    if state["model"] != model:
        raise where(last, f"holds a {state['model']} run, not {model}")
    if progress:
        p = state["params"]
        print(f"{model}: not training (train=False); the run in {run_dir} has trained {state['epoch']} of "
              f"{p['epochs']} epochs at batch {p['batch_size']} x {p.get('processes', 1)} processes")
    return run_dir
