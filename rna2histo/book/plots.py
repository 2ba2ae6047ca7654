"""The figures the chapters share. Each returns its matplotlib Figure and never saves it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def tile_grid(cohort, patients, n_tiles: int = 6, labels: pd.DataFrame | None = None):
    """Rows of `n_tiles` tiles for each patient, labelled with its id and optional `labels` row."""
    rows = {}
    for patient, tiles in cohort.patient_tiles(patients, n_tiles).items():
        text = patient
        if labels is not None:
            text += "\n" + " ".join(f"{k[:3]} {v:.2f}" for k, v in labels.loc[patient].items())
        rows[text] = tiles
    return tile_rows(rows, width=n_tiles, cell=(1.3, 1.4))


def tile_rows(rows: dict[str, np.ndarray], width: int | None = None, cell: tuple[float, float] = (1.1, 1.2)):
    """One row of tiles per entry, titled with its key; values uint8 (k, S, S, 3). `width`
    columns (default: the longest row), each `cell` inches wide and high."""
    n = width or max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(cell[0] * n, cell[1] * len(rows)), squeeze=False)
    for row, (label, tiles) in zip(axes, rows.items()):
        for ax, tile in zip(row, list(tiles) + [None] * n):
            ax.axis("off")
            if tile is not None:
                ax.imshow(tile)
        row[0].set_title(label, fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def pca_by_program(z: pd.DataFrame, colours: pd.DataFrame):
    """Patients on the first two principal components of `z`, one panel per column of `colours`."""
    x = z.to_numpy() - z.to_numpy().mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    explained = s[:2] ** 2 / (s**2).sum()
    fig, axes = plt.subplots(1, colours.shape[1], figsize=(3.2 * colours.shape[1], 3), squeeze=False)
    for ax, name in zip(axes[0], colours.columns):
        points = ax.scatter(pcs[:, 0], pcs[:, 1], c=colours.loc[z.index, name], cmap="viridis", s=18)
        ax.set(title=name, xlabel=f"PC1 ({explained[0]:.0%})", ylabel=f"PC2 ({explained[1]:.0%})")
        fig.colorbar(points, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def scatter_pairs(x: pd.DataFrame, y: pd.DataFrame, pairs: dict[str, str]):
    """One scatter panel per (column of `x`, column of `y`) pair, with Spearman's rho."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3), squeeze=False)
    for ax, (xname, yname) in zip(axes[0], pairs.items()):
        a, b = x[xname], y.loc[x.index, yname]
        ax.scatter(a, b, s=14)
        rho = a.rank().corr(b.rank())
        ax.set(xlabel=f"{xname} (RNA score)", ylabel=yname, title=f"Spearman rho = {rho:.2f}")
    fig.tight_layout()
    return fig


def augmentation_examples(dataset, index: int = 0, n: int = 6, seed: int = 0):
    """The same training tile through the augmentations `n` times (first panel: unaugmented)."""
    import torch

    from ..data.dataset import to_uint8

    x = dataset[index][0]  # (3, S, S), unaugmented: the loader augments whole batches
    torch.manual_seed(seed)
    views = [x, *dataset.augment(x[None].repeat(n - 1, 1, 1, 1))]
    images = to_uint8(torch.stack(views))
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.8))
    for k, (ax, image) in enumerate(zip(axes, images)):
        ax.imshow(image)
        ax.set_title("original" if k == 0 else f"augmented {k}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return fig


HIGHER_IS_BETTER = {"reprediction": "reprediction (held-out, higher is better)"}


def loss_curves(metrics: pd.DataFrame):
    """Training and validation losses per epoch, one panel per loss that has both or either."""
    names = sorted({c.split("_", 1)[1] for c in metrics.columns if c.startswith(("train_", "val_"))})
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for split, style in (("train", "-o"), ("val", "--s")):
            column = f"{split}_{name}"
            if column in metrics:
                measured = metrics[["epoch", column]].dropna()  # some are measured every few epochs
                ax.plot(measured["epoch"], measured[column], style, ms=3, label=split)
        ax.set(title=HIGHER_IS_BETTER.get(name, name), xlabel="epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def real_vs_generated(real: dict, generated: dict, n: int = 6):
    """Per patient (rows): `n` real tiles, a gap, then `n` generated tiles; dicts patient -> uint8 (k, S, S, 3)."""
    patients = list(real)
    fig, axes = plt.subplots(len(patients), 2 * n, figsize=(1.1 * 2 * n, 1.2 * len(patients)), squeeze=False)
    for row, patient in zip(axes, patients):
        for j, ax in enumerate(row):
            ax.axis("off")
            source, k = (real, j) if j < n else (generated, j - n)
            if k < len(source[patient]):
                ax.imshow(source[patient][k])
        row[0].set_title(f"{patient}: real", fontsize=7, loc="left")
        row[n].set_title("generated", fontsize=7, loc="left")
    fig.tight_layout()
    return fig


def auc_by_fraction(results: pd.DataFrame, title: str = ""):
    """ROC AUC (95% interval over test patients) against the share of training slides kept,
    one line per setting; train-on-synthetic rows (no slides) as dashed levels on the right."""
    on_axis = results[results["fraction"].notna()]
    tstr = results[results["fraction"].isna()]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for setting, rows in on_axis.groupby("setting", sort=False):
        rows = rows.sort_values("fraction")
        style = "-o" if setting == "real only" else "--." if "RNA-only" in setting else ":."
        line, = ax.plot(rows["fraction"], rows["auc"], style, ms=4, label=setting,
                        lw=2.2 if setting == "real only" else 1)
        ax.fill_between(rows["fraction"], rows["lo"], rows["hi"], color=line.get_color(), alpha=0.08)
    for _, row in tstr.iterrows():
        ax.errorbar(1.06, row["auc"], yerr=[[row["auc"] - row["lo"]], [row["hi"] - row["auc"]]], fmt="s",
                    ms=4, capsize=2, label=row["setting"])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="share of training patients with slides", ylabel="ROC AUC on real test tiles", title=title)
    ax.legend(fontsize=6, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig
