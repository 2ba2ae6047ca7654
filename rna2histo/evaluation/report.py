"""Tables and figures of the evaluation chapter, from an `Evaluation` or its metrics.json.

Each figure function returns its matplotlib Figure and never saves it; tables are DataFrames.
The study's own numbers (Tables 4.1 and 4.4 of the thesis) sit here as constants, so the book
can print them beside ours without anyone retyping them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .faithfulness import MATCHING

MODELS = ("cgan", "cvae", "diffusion", "hybrid")

# Table 4.1 of the study (test set, 7 images per test RNA, 500 random pairs, 1,000 vs 1,000 for
# FID; TCGA-LUAD at 128 px): mean and std over pairs, no interval.
STUDY_TABLE_4_1 = pd.DataFrame(
    {
        "ssim": [0.482, 0.823, 0.645, 0.704],
        "ssim_std": [0.0324, 0.0412, 0.0358, 0.0389],
        "lpips": [0.4016, 0.6626, 0.4165, 0.3465],
        "lpips_std": [0.1253, 0.1487, 0.1298, 0.1156],
        "fid": [304.89, 275.64, 393.61, 455.23],
    },
    index=pd.Index(MODELS, name="model"),
)

# Table 4.4 of the study (Colab T4/V100 16 GB): training and generation cost.
STUDY_TABLE_4_4 = pd.DataFrame(
    {
        "epochs": [50, 40, 50, 60],
        "train_minutes": [75, 48, 300, 108],
        "ms_per_image": [50, 30, 3000, 50],
        "gpu_memory_gb": [8, 8, 10, 10],
    },
    index=pd.Index(MODELS, name="model"),
)

IMAGE_METRICS = ("ssim_random", "ssim_same_patient", "lpips", "fid", "kid", "luma_hf_ratio", "chroma_hf_ratio")
FAITHFULNESS = ("rna_reprediction_spearman", "morph_fd", "patient_morph_error", "conditioning_spearman",
                "retrieval_top1", "retrieval_top5")
BETTER = {"ssim_random": "higher", "ssim_same_patient": "higher", "lpips": "lower", "fid": "lower",
          "kid": "lower", "luma_hf_ratio": "nearer 1 (< 1: blur)",
          "chroma_hf_ratio": "nearer 1 (> 1: colour speckle)", "morph_fd": "lower",
          "patient_morph_error": "lower (< 1: own patient)", "conditioning_spearman": "higher",
          "retrieval_top1": "higher", "retrieval_top5": "higher", "program_truth_spearman": "higher",
          "rna_reprediction_spearman": "higher (real: the ceiling)"}


def cell(metric: dict | None, digits: int = 3) -> str:
    """'v [lo, hi]' or 'unavailable' for one metrics.json entry."""
    if metric is None:
        return ""
    if metric.get("unavailable"):
        return "unavailable"
    def fmt(x):
        return "n/a" if x is None else f"{x:.{digits}f}"

    lo, hi = metric["ci"]
    return f"{fmt(metric['value'])} [{fmt(lo)}, {fmt(hi)}]"


def _entries(metrics: dict) -> dict:
    """The evaluated sets: every model, then the real-vs-real baseline; not the protocol."""
    order = [m for m in metrics if m not in ("real", "protocol")] + ["real"]
    return {m: metrics[m] for m in order if m in metrics}


def results_table(metrics: dict, names=IMAGE_METRICS, digits: int = 3) -> pd.DataFrame:
    """Rows: models (and 'real'), columns: metric 'value [95% CI]'; a whole model may be unavailable."""
    rows = {}
    for model, entry in _entries(metrics).items():
        if entry.get("unavailable"):
            rows[model] = {name: "unavailable: " + entry["reason"] for name in names[:1]}
            continue
        rows[model] = {name: cell(entry.get(name), digits) for name in names}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def unavailable_reasons(metrics: dict) -> pd.DataFrame:
    """Each metric that could not be computed, once, with the reason (e.g. weights absent)."""
    reasons = {}
    for model, entry in _entries(metrics).items():
        if entry.get("unavailable"):
            reasons.setdefault(f"{model} (whole model)", entry["reason"])
            continue
        for name, metric in entry.items():
            if isinstance(metric, dict) and metric.get("unavailable"):
                reasons.setdefault(name, metric["reason"])
    return pd.DataFrame({"reason": reasons}).rename_axis("unavailable")


def faithfulness_table(metrics: dict, digits: int = 3) -> pd.DataFrame:
    """Faithfulness per model: each measure with RNA as given and with RNA shuffled across patients."""
    rows = {}
    for model, entry in _entries(metrics).items():
        if entry.get("unavailable"):
            continue
        row = {}
        for name in FAITHFULNESS + ("program_truth_spearman",):
            if name in entry:
                row[(name, "RNA")] = cell(entry[name], digits)
                row[(name, "shuffled")] = cell(entry.get("shuffled", {}).get(name), digits)
        rows[model] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table.rename_axis("model")


def long_form(metrics: dict, names) -> pd.DataFrame:
    """(model, metric, value, lo, hi) rows for every available metric of `names`."""
    rows = []
    for model, entry in _entries(metrics).items():
        for name in names:
            m = entry.get(name)
            if m and not m.get("unavailable") and None not in (m["value"], *m["ci"]):
                rows.append({"model": model, "metric": name, "value": m["value"], "lo": m["ci"][0], "hi": m["ci"][1]})
    return pd.DataFrame(rows, columns=["model", "metric", "value", "lo", "hi"])


def metric_bars(metrics: dict, names):
    """One panel per available metric: a bar per model with its 95% bootstrap interval."""
    data = long_form(metrics, names)
    shown = [n for n in names if n in set(data["metric"])]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(2.6 * max(len(shown), 1), 2.8), squeeze=False)
    palette = dict(zip(_entries(metrics), sns.color_palette("colorblind")))
    for ax, name in zip(axes[0], shown):
        part = data[data["metric"] == name]
        sns.barplot(part, x="model", y="value", hue="model", palette=palette, ax=ax, legend=False)
        ax.errorbar(np.arange(len(part)), part["value"], yerr=[part["value"] - part["lo"], part["hi"] - part["value"]],
                    fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set(title=f"{name} ({BETTER[name].split(' ')[0]} is better)", xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    return fig


def tradeoff(metrics: dict):
    """LPIPS against FID per model, with both intervals; None when either metric is unavailable."""
    data = long_form(metrics, ("lpips", "fid"))
    wide = data.pivot(index="model", columns="metric")
    if not {"lpips", "fid"} <= set(data["metric"]):
        return None
    fig, ax = plt.subplots(figsize=(4, 3.2))
    for model, row in wide.iterrows():
        x, y = row[("value", "fid")], row[("value", "lpips")]
        ax.errorbar(x, y, xerr=[[x - row[("lo", "fid")]], [row[("hi", "fid")] - x]],
                    yerr=[[y - row[("lo", "lpips")]], [row[("hi", "lpips")] - y]], fmt="o", capsize=3, label=model)
    ax.set(xlabel="FID (lower is better)", ylabel="LPIPS (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def morphometric_scatter(scores: pd.DataFrame, morph: dict, matching: dict = MATCHING):
    """Per program (columns): the patient's RNA program score against the mean matching
    read-out of its tiles, one row per tile set (real test tiles first, then each model)."""
    sets = {"real": morph["real_all"], **{k: v for k, v in morph.items() if k not in ("real", "real_all")}}
    programs = [p for p in matching if p in scores.columns]
    fig, axes = plt.subplots(len(sets), len(programs), figsize=(2.2 * len(programs), 2.0 * len(sets)),
                             squeeze=False, sharex="col", sharey="col")
    for i, (name, table) in enumerate(sets.items()):
        for j, program in enumerate(programs):
            ax, readout = axes[i, j], matching[program][0]
            means = table.groupby("patient_id")[readout].mean()
            ax.scatter(scores.loc[means.index, program], means, s=10)
            if i == 0:
                ax.set_title(f"{program}\n-> {readout}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=6)
    fig.supxlabel("RNA program score (mean z of marker genes)", fontsize=8)
    fig.tight_layout()
    return fig


def resource_table(resources: pd.DataFrame) -> pd.DataFrame:
    """Ours next to the study's Table 4.4 (which ran on a T4/V100 at 128 px: not the same task)."""
    ours = resources.set_index("model").rename(columns=lambda c: f"ours: {c}")
    study = STUDY_TABLE_4_4.rename(columns=lambda c: f"study: {c}")
    return ours.join(study, how="left").round(3)


def study_comparison(metrics: dict) -> pd.DataFrame:
    """Our SSIM (random pairs), LPIPS and FID beside the study's Table 4.1, model by model."""
    ours = results_table(metrics, ("ssim_random", "lpips", "fid"))
    study = STUDY_TABLE_4_1.apply(
        lambda r: pd.Series({"study: ssim": f"{r['ssim']:.3f} +/- {r['ssim_std']:.3f}",
                             "study: lpips": f"{r['lpips']:.3f} +/- {r['lpips_std']:.3f}",
                             "study: fid": f"{r['fid']:.1f}"}), axis=1)
    return ours.rename(columns=lambda c: f"ours: {c}").join(study, how="left").fillna("")


def headline_markdown(metrics: dict, source: str) -> str:
    """The book's opening-page summary of a metrics.json: a Markdown table and where it came from."""
    columns = {"rna_reprediction_spearman": "RNA re-prediction rho", "ssim_random": "SSIM", "lpips": "LPIPS",
               "fid": "FID", "morph_fd": "morph FD",
               "patient_morph_error": "patient error", "retrieval_top1": "retrieval top-1",
               "conditioning_spearman": "RNA-morphology rho"}
    table = results_table(metrics, tuple(columns), digits=2).rename(columns=columns)
    p = metrics.get("protocol", {})
    lines = [
        "## Headline results",
        "",
        f"Measured by the evaluation chapter on {p.get('test_patients', '?')} test patients "
        f"({p.get('real_tiles', '?')} real tiles, {p.get('generated_per_patient', '?')} generated per patient), "
        f"read from `{source}`; 95% intervals over patients; `real` is a real-vs-real baseline.",
        "",
        table.fillna("").to_markdown(),
        "",
    ]
    for name, reason in unavailable_reasons(metrics)["reason"].items():
        lines.append(f"- {name} unavailable: {reason}")
    lines.append("")  # the page goes on after the include
    return "\n".join(lines)
