"""Does a generator listen to the RNA? The same noise with different patients' profiles.

For val patients i != j and shared noise z_k, the conditioning difference is

    D_rna = mean_{k, i != j} |G(z_k, c_i) - G(z_k, c_j)|       (pixels in [0, 1])

and its baseline is the same quantity for *shuffled* profiles: each gene's values permuted
across the patients independently. Shuffling keeps every gene's distribution but destroys the
co-expression of the programs (markers that rise and fall together), so a model that learned
the programs sees near-average patients and D_shuffled is small; a model that ignores the RNA
gives D_rna ~ D_shuffled ~ 0, and one that reacts to single genes at random gives both alike.
"""

from __future__ import annotations

import numpy as np
import torch


def _pairwise_difference(images: torch.Tensor) -> float:
    """images (P, K, 3, S, S) in [-1, 1] -> mean |x_i - x_j| over patients i != j, in [0, 1] units."""
    p = images.shape[0]
    flat = images.flatten(2).float() / 2  # [-1, 1] -> differences in [0, 1] units
    total = sum((flat[i] - flat[j]).abs().mean() for i in range(p) for j in range(i + 1, p))
    return float(total / (p * (p - 1) / 2))


@torch.no_grad()
def conditioning_difference(model, c: torch.Tensor, n_noise: int = 4, seed: int = 0, **sample_kw) -> dict:
    """D_rna and its shuffled-gene baseline for profiles c (P, G), with `n_noise` shared noises."""
    c = torch.tensor(np.array(c, dtype=np.float32))
    if len(c) < 2:
        raise ValueError("the conditioning check needs at least two patients")
    device = next(model.parameters()).device
    shuffler = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(c.shape, generator=shuffler), dim=0)  # per-gene permutation
    shuffled = torch.gather(c, 0, order)
    result = {}
    for name, profiles in (("different patients", c), ("shuffled RNA", shuffled)):
        images = []
        for profile in profiles:
            generator = torch.Generator(device).manual_seed(seed)  # the same noise for everyone
            batch = profile[None].repeat(n_noise, 1).to(device)
            images.append(model.sample(batch, generator=generator, **sample_kw).cpu())
        result[name] = _pairwise_difference(torch.stack(images))
    result["ratio"] = result["different patients"] / max(result["shuffled RNA"], 1e-12)
    return result
