"""Fine detail against the real tiles: grain and blur as numbers, with patient intervals.

High-frequency energy is the mean absolute 4-neighbour Laplacian, taken separately of the grey
level (luma) and of the colour left after removing it (chroma, each RGB channel minus the luma,
averaged over the three). Real H&E keeps its fine detail in luma (nucleus outlines, chromatin)
and has smooth colour, so against the real tiles (ratio 1 = as fine-grained as they are) colour
speckle raises the chroma ratio and blur lowers both. Measured 2026-12-03 on the demo runs (32
tiles of 8 validation patients): a 10-epoch diffusion model's grain was colour speckle (chroma
ratio 1.43, luma 0.95) and the cVAE's blur showed as luma 0.04.
"""

from __future__ import annotations

import numpy as np

from .stats import set_distance_ci, summary

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 weights
PARTS = ("luma", "chroma")


def _laplacian_energy(a: np.ndarray) -> np.ndarray:
    """Mean absolute 4-neighbour Laplacian of each image (N, H, W) over its interior: (N,)."""
    neighbours = a[:, :-2, 1:-1] + a[:, 2:, 1:-1] + a[:, 1:-1, :-2] + a[:, 1:-1, 2:]
    return np.abs(4 * a[:, 1:-1, 1:-1] - neighbours).mean(axis=(1, 2))


def tile_energies(tiles: np.ndarray) -> np.ndarray:
    """Luma and chroma high-frequency energy of each uint8 tile (N, S, S, 3): (N, 2), grey levels."""
    rgb = tiles.astype(np.float32)
    luma = rgb @ LUMA  # (N, S, S)
    chroma = rgb - luma[..., None]
    chroma_energy = np.mean([_laplacian_energy(chroma[..., k]) for k in range(3)], axis=0)
    return np.stack([_laplacian_energy(luma), chroma_energy], axis=1)


def _ratios(real_e: np.ndarray, gen_e: np.ndarray) -> np.ndarray:
    return gen_e.mean(axis=0) / real_e.mean(axis=0)


def high_frequency_ratios(tiles: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Mean energies of `tiles` over those of `real`: {"luma_hf_ratio", "chroma_hf_ratio"}."""
    ratios = _ratios(tile_energies(real), tile_energies(tiles))
    return {f"{part}_hf_ratio": float(r) for part, r in zip(PARTS, ratios)}


def detail_metrics(real_tiles, real_patients, gen_tiles, gen_patients, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """The two ratios as evaluation metrics, each {"value", "ci"}: the interval resamples the
    patients of both sets (`stats.set_distance_ci`)."""
    real_e, gen_e = tile_energies(real_tiles), tile_energies(gen_tiles)
    out = {}
    for k, part in enumerate(PARTS):
        ci = set_distance_ci(lambda a, b, k=k: _ratios(a, b)[k], real_e, gen_e, real_patients,
                             gen_patients, n_boot=n_boot, seed=seed)
        out[f"{part}_hf_ratio"] = summary(*ci)
    return out
