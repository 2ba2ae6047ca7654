"""Does a compact RNA latent make a generator listen to the RNA? mlp vs pca vs betavae, same budget.

For each model, one run per `rna_encoder`, every other parameter as the model's chapter has it
(its defaults, or a profile's file): the chapter's own run is reused for the encoder it used,
the others are trained here (with ``resume=True``, so an interrupted comparison continues).
`epochs` can shorten every run of the comparison (a smoke test of the chapter); the chapter's
run is then trained again with the others, so that all encoders get the same budget.
Each run is then measured as the chapters and the evaluation chapter measure a model:

- conditioning ratio: the same noise with different patients' RNA vs gene-shuffled RNA
  (`rna2histo.evaluation.conditioning`), on training patients and on held-out (val + test) patients: a
  model that memorised its training patients' profiles reacts to them, not to new ones;
- faithfulness on the test patients (`rna2histo.evaluation.protocol`): patient morph error,
  conditioning Spearman and retrieval, with 95% intervals over patients;
- the latent's share of variance kept on held-out patients (`rna2histo.data.latent`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..book import chapter
from ..book.runner import chapter_parameters, model_chapter, training_parameters
from ..evaluation import protocol, report
from ..generate import LoadedRun, load_run
from ..paths import resolve

LATENT_KEYS = ("rna_encoder", "rna_latent", "rna_beta")


def run_name(model: str, encoder: str) -> str:
    return f"{model} ({encoder})"


def chapter_settings(model: str, params_dir: str = "") -> dict:
    """`model`'s chapter parameters: its defaults, or those of ``<params_dir>/<chapter>.yaml``."""
    notebook = model_chapter(model)
    if not params_dir:
        return chapter_parameters(notebook)
    return training_parameters(model, resolve(params_dir) / f"{notebook.stem}.yaml")


def _same_encoder(params: dict, encoder: str, latent: dict) -> bool:
    """Whether a chapter's parameters condition through `encoder` with these latent settings."""
    if params.get("rna_encoder", "mlp") != encoder:
        return False
    return encoder == "mlp" or all(params.get(k) == latent[k] for k in ("rna_latent", "rna_beta"))


def comparison_runs(models, encoders, runs: dict, out_dir: str, params_dir: str = "", *,
                    rna_latent: int = 200, rna_beta: float = 1.0, epochs: int = 0,
                    device: str = "auto") -> dict[str, Path]:
    """{"<model> (<encoder>)": run folder} for every model and encoder, training what is missing.

    `epochs`: 0 trains each run for its chapter's epochs; otherwise this many.
    """
    from ..training.loop import fit

    latent = {"rna_latent": rna_latent, "rna_beta": rna_beta}
    out = {}
    for model in models:
        params = chapter_settings(model, params_dir)
        budget = {"epochs": epochs or params["epochs"]}
        for encoder in encoders:
            reusable = budget["epochs"] == params["epochs"] and _same_encoder(params, encoder, latent)
            if model in runs and reusable:
                out[run_name(model, encoder)] = resolve(runs[model])  # the chapter's own run
                continue
            kw = {k: v for k, v in params.items() if k not in ("image_size", "train", "run_dir", *LATENT_KEYS)}
            kw.update(device=device, resume=True, progress=False, rna_encoder=encoder, **latent, **budget)
            run_dir = resolve(out_dir) / model / encoder
            print(f"{run_name(model, encoder)}: {kw['epochs']} epochs into {run_dir}", flush=True)
            out[run_name(model, encoder)] = fit(model, run_dir=run_dir, **kw)
    return out


def latent_variance_kept(run: LoadedRun) -> float | None:
    """The run's latent's share of variance kept on test patients (None: conditioned on genes)."""
    fitted = run.checkpoint["params"].get("rna_latent_fit")
    return None if fitted is None else fitted["report"]["test"]["variance_kept"]


def compare(run_dirs: dict, cohort, out_dir: str, n: int = 7, settings: protocol.Settings | None = None,
            seed: int = 0, sample_steps: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The comparison table (one row per run) and the evaluation's metrics (for `report` figures).

    `sample_steps`: DDIM steps of the diffusion runs' conditioning check (default: the model's).
    """
    evaluation = protocol.evaluate(run_dirs, cohort, out_dir, n=n, settings=settings, perceptual="none",
                                   inception_weights=None)
    rows = {}
    for name, run_dir in run_dirs.items():
        run = load_run(run_dir)
        fitted = run.checkpoint["params"].get("rna_latent_fit")
        steps = {"steps": sample_steps} if sample_steps and run.checkpoint["model"] == "diffusion" else {}
        ratio = chapter.conditioning(run, cohort, seed, **steps)["ratio"]
        rows[name] = {
            "condition dims": run.model.cfg.n_genes,
            "variance kept (test)": latent_variance_kept(run),
            "conditioning ratio (train)": ratio["training patients"],
            "conditioning ratio (held out)": ratio["held-out patients"],
            **{m: report.cell(evaluation.metrics[name].get(m)) for m in report.FAITHFULNESS},
        }
        if fitted and "note" in fitted:
            rows[name]["note"] = fitted["note"]
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run"), evaluation.metrics
