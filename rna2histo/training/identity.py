"""What a run is, and when a finished run stands for the one asked.

A run is its identity settings and the version of the code that trained it: `reusable_run`
reuses a finished run of exactly those, `matching_checkpoint` refuses to resume a different one,
and `record_resume` writes what a resume changed into params.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..paths import resolve, source_version
from ..runs import CONTENTS, TRAINING_STATE, load_checkpoint

# What shows, evaluates or orchestrates but never changes what training computes: editing it keeps
# a finished run reusable (`reusable_run`). Every other file of the package counts ("x/" is a package).
NOT_TRAINING = ("__main__.py", "generate.py", "bench/", "book/", "experiments/", "nets/weights.py",
                "evaluation/conditioning.py", "evaluation/morphology.py", "evaluation/protocol.py",
                "evaluation/report.py", "evaluation/image_metrics.py", "evaluation/detail.py",
                "evaluation/faithfulness.py", "evaluation/condition.py")

if TYPE_CHECKING:
    from .loop import Trainer


# What must match for a finished run to stand for the one asked: who it is, how long it trained,
# how its best checkpoint was chosen, its model config and the code that trained it.
REUSE_KEYS = ("epochs", "ckpt_every", "reprediction_tiles", "options", "code_version")


def training_code_version() -> str:
    """A hash of the package's source files that training runs (all but `NOT_TRAINING`)."""
    return source_version(exclude=NOT_TRAINING)


def reusable_run(params: dict) -> Path | None:
    """The run folder, when it holds a finished run of exactly these settings and this code.

    A run is reused rather than retrained when its ``last`` checkpoint reached the asked epochs and
    its identity settings, `REUSE_KEYS` and model notes are the asked ones; `resume` asks to
    continue instead. Says in the terminal what is reused, or why not.
    """
    run_dir = resolve(params["run_dir"])
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if params["resume"] or not (last.exists() and best.exists()):
        return None
    try:
        saved = load_checkpoint(last, mmap=True)
    except UserError:
        return None  # an unreadable run is trained afresh, as before
    old = saved["params"]
    changed = identity_changes(old, params) + [f"{k}={old.get(k)!r} (asked: {params.get(k)!r})"
                                               for k in REUSE_KEYS if old.get(k) != params.get(k)]
    if saved["epoch"] != params["epochs"]:
        changed.append(f"trained {saved['epoch']} of {old.get('epochs')} epochs")
    if changed:
        if params["progress"]:
            print(f"{params['model']}: retraining {run_dir}: " + "; ".join(changed[:3]), flush=True)
        return None
    if params["progress"]:
        print(f"{params['model']}: reusing the finished run in {run_dir} (same settings and training code "
              f"{params['code_version']}); delete it or change run_dir to train again", flush=True)
    return run_dir


def config_changes(saved, cfg) -> str:
    """The fields where a run's config (`ModelConfig.from_saved`) and `cfg` differ, as
    "name: saved -> now", or ""."""
    old, now = saved.to_dict(), cfg.to_dict()
    return ", ".join(f"{k}: {old[k]!r} -> {now[k]!r}" for k in sorted(now) if old[k] != now[k])


# What a run is: a resume that changes one of these would continue another run under this one's
# name. The rest (epochs aside, checked below) may change on resume: where it runs, how often it
# keeps checkpoints, what it shows; params.json then lists the changes under "resumes".
IDENTITY = ("model", "cohort_dir", "seed", "batch_size", "model_size", "augment", "amp", "cpu_bf16",
            "rna_encoder", "rna_latent", "rna_beta")


RESUMABLE = ("epochs", "ckpt_every", "device", "workers", "channels_last", "fused",
             "cudnn_benchmark", "compile", "sample_patients", "progress", "reprediction_tiles")


def _identity(params: dict, key: str):
    value = params.get(key)
    return str(resolve(value)) if key == "cohort_dir" and value is not None else value


def identity_changes(saved: dict, asked: dict) -> list[str]:
    """The identity settings where a run's saved params and the asked ones differ, as
    "name=saved (asked: now)"; a setting an older run did not record is not compared."""
    return [f"{k}={_identity(saved, k)!r} (asked: {_identity(asked, k)!r})" for k in IDENTITY
            if k in saved and _identity(saved, k) != _identity(asked, k)]


def record_resume(params: dict, saved: dict, epoch: int) -> None:
    """params.json tells the truth about a resumed run: which settings changed at which epoch."""
    changed = {k: [saved.get(k), params.get(k)] for k in RESUMABLE if saved.get(k) != params.get(k)}
    params["resumes"] = [*saved.get("resumes", []), {"epoch": epoch, "changed": changed}]


def matching_checkpoint(path: Path, trainer: Trainer) -> dict:
    state = load_checkpoint(path, map_location=trainer.device, needs=CONTENTS + TRAINING_STATE)
    changed = identity_changes(state["params"], trainer.params)
    if changed:
        raise UserError(f"{path}: cannot resume: the run was trained with {', '.join(changed)}; "
                        "resume with the run's settings or use another run_dir")
    encoder = state["params"].get("rna_encoder", "mlp"), state["params"].get("rna_latent_fit")
    if encoder != (trainer.params["rna_encoder"], trainer.params.get("rna_latent_fit")):
        dim = "" if encoder[1] is None else f" with {encoder[1]['dim']} dimensions"
        raise UserError(f"{path}: cannot resume: the run was conditioned through rna_encoder={encoder[0]!r}{dim}; "
                        "use the same rna_encoder settings or another run_dir")
    if state["model"] != trainer.model.name:
        raise UserError(f"{path}: cannot resume: it holds a different model ({state['model']}); "
                        "use another run_dir")
    try:
        saved = type(trainer.model.cfg).from_saved(state["config"])
    except UserError as err:
        raise UserError(f"{path}: cannot resume: {err}; use another run_dir") from None
    changed = config_changes(saved, trainer.model.cfg)
    if changed:
        raise UserError(f"{path}: cannot resume: it holds a different model config ({changed}); "
                        "use another run_dir")
    notes = state["params"].get("model_notes", {})
    if notes != trainer.params["model_notes"]:
        raise UserError(f"{path}: cannot resume: the run had {notes}, this machine gives {trainer.params['model_notes']}")
    planned = state["params"]["epochs"]
    if planned != trainer.params["epochs"]:
        # the LR schedules were built for the planned length; stretching them would change them
        raise UserError(
            f"{path}: cannot resume: the run was planned for {planned} epochs and its learning-rate "
            f"schedule depends on it (asked: {trainer.params['epochs']}); use epochs={planned} or a new run_dir"
        )
    processes = state["params"].get("processes", 1)
    if processes != trainer.params["processes"]:
        raise UserError(
            f"{path}: cannot resume: the run trained on {processes} processes, a step on "
            f"{processes} x {state['params']['batch_size']} tiles; resume it on {processes} or use a new run_dir"
        )
    return state
