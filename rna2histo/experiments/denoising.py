"""Where a diffusion model's samples go wrong: real tiles denoised from growing noise levels.

Grain in samples can come from the sampler (too few steps, their spacing) or from the
denoiser (noise levels it has not learnt to remove). Noising real tiles to x_t and sampling
back (`Diffusion.denoise`) separates the two: the sampler is the same, but the tile's own
structure is given up to level t. Clean tiles back from every level put the fault in the
sampler; grain from some level on puts it in the denoiser at that level.

Grain and blur are measured by the high-frequency ratios of `rna2histo.evaluation.detail`
(luma: detail and blur; chroma: colour speckle; 1 = as the real tiles).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data.dataset import tiles_to_model, to_uint8
from ..evaluation.detail import high_frequency_ratios
from ..generate import LoadedRun, generate


def denoising_ladder(
    run: LoadedRun, tiles: np.ndarray, rna: pd.DataFrame, levels, seed: int = 0, **sample_kw
) -> tuple[dict, pd.DataFrame]:
    """`tiles` (uint8 (N, S, S, 3); row i of `rna` is tile i's patient) denoised from each
    t in `levels`, and per level: the noise's scale against the signal's,
    sqrt((1 - alpha_bar_t) / alpha_bar_t), the RMSE to the tiles (grey levels, 0-255) and the
    high-frequency ratios to the tiles. The last entry, "sample", is the model's samples from
    pure noise for the same patients (the same seed); its RMSE is left out: nothing ties a
    sample to a tile.
    `sample_kw` go to the sampler (``steps``, ``guidance``, ``eta``).
    """
    model = run.model
    c, _ = run.conditions(rna)
    device = c.device
    x0 = tiles_to_model(tiles).to(device)
    outputs, rows = {}, []
    for t in levels:
        generator = torch.Generator(device).manual_seed(seed)
        out = to_uint8(model.denoise(x0, c, int(t), generator=generator, **sample_kw))
        ab = float(model.alpha_bar[int(t)])
        rmse = float(np.sqrt(((out.astype(np.float32) - tiles.astype(np.float32)) ** 2).mean()))
        outputs[int(t)] = out
        rows.append({"t_start": str(int(t)), "noise_to_signal": np.sqrt((1 - ab) / ab), "rmse": rmse,
                     **high_frequency_ratios(out, tiles)})
    samples, _, _ = generate(run, rna, n=1, seed=seed, **sample_kw)
    outputs["sample"] = samples
    rows.append({"t_start": "sample", "noise_to_signal": np.nan, "rmse": np.nan,
                 **high_frequency_ratios(samples, tiles)})
    return outputs, pd.DataFrame(rows).set_index("t_start")
