"""The cohort's tile autoencoder (`rna2histo.nets.autoencoder`): trained once, on the training
patients' real tiles only, cached beside the cohort and frozen inside every model that uses it.

The cache is ``<cohort>/autoencoders/tile-<key>.pt``, keyed by the cohort's manifest (a rebuilt
cohort trains a new one), the recipe's `VERSION` and the settings, as the re-prediction
regressor's; a damaged cache file is trained again, never trusted. Beside the weights it keeps
the latent scale (1 / the standard deviation of the training latents, so that the diffusion
model's latents have unit variance, as Rombach et al. 2022 scale theirs) and the validation
reconstruction error of every epoch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data.augment import geometry
from ..data.dataset import tiles_to_model
from ..nets.autoencoder import TileAutoencoder, reconstruction_loss
from ..paths import cached, cohort_cache_key
from .step import cpu_has_bf16

VERSION = 1  # the training recipe below; a change trains every cohort's autoencoder again


@dataclass
class FittedAutoencoder:
    net: TileAutoencoder  # frozen, in eval mode
    scale: float  # latents are multiplied by it: unit standard deviation on the training tiles
    settings: dict  # how it was trained and what it measured (history: val L1 per epoch)


def fit_autoencoder(cohort, *, channels: int, widths: tuple[int, ...], epochs: int, batch_size: int = 32,
                    lr: float = 1e-3, w_laplacian: float = 1.0, noise: float = 0.0, seed: int = 0,
                    progress: bool = False) -> FittedAutoencoder:
    """Train on the training patients' tiles (flips and quarter turns), validate on val's.

    ``noise`` > 0 decodes z + noise x std(z) x N(0, I) in training, so that the decoder also
    maps latents near the encoder's to tiles: a sampler's latents are never exactly on them.
    """
    train = tiles_to_model(np.asarray(cohort.tiles[cohort.tile_indices("train")]))
    val = tiles_to_model(np.asarray(cohort.tiles[cohort.tile_indices("val")]))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = TileAutoencoder(channels, widths)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = max(1, len(train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch, pct_start=0.05)
    bf16 = cpu_has_bf16()  # where the CPU computes bf16 natively: 1.3-1.6x per step here
    history = []
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(train), generator=generator)
        for k in range(per_epoch):
            x = geometry(train[order[k * batch_size : (k + 1) * batch_size]], generator=generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                z = net.encode(x)
                if noise:
                    z = z + noise * z.detach().std() * torch.randn(z.shape, generator=generator).to(z.dtype)
                x_hat = net.decode(z)
            loss = reconstruction_loss(x_hat.float(), x, w_laplacian)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        history.append({"epoch": epoch, "val_l1": _val_l1(net, val)})
        if progress:
            print(f"tile autoencoder: epoch {epoch}/{epochs}, val L1 {history[-1]['val_l1']:.4f}", flush=True)
    net.eval().requires_grad_(False)
    with torch.no_grad():
        std = float(torch.cat([net.encode(x) for x in train.split(256)]).std())
    settings = {"channels": channels, "widths": list(widths), "epochs": epochs, "w_laplacian": w_laplacian,
                "noise": noise, "seed": seed, "bf16": bf16, "history": history}
    return FittedAutoencoder(net, 1.0 / max(std, 1e-6), settings)


@torch.no_grad()
def _val_l1(net: TileAutoencoder, val: torch.Tensor) -> float:
    if not len(val):
        return math.nan
    net.eval()
    return float(sum((net(x) - x).abs().sum() for x in val.split(256)) / val.numel())


def cohort_autoencoder(cohort, *, channels: int, widths: tuple[int, ...], epochs: int, noise: float = 0.0,
                       seed: int = 0, progress: bool = True) -> FittedAutoencoder:
    """The cohort's autoencoder with these settings: trained once (`fit_autoencoder`), then read."""
    settings = {"channels": channels, "widths": list(widths), "epochs": epochs, "seed": seed}
    if noise:  # a key without it for noise 0: the caches trained before the setting existed
        settings["noise"] = noise
    key = cohort_cache_key(cohort.root, {"version": VERSION, **settings})
    path = cohort.root / "autoencoders" / f"tile-{key}.pt"

    def fit():
        if progress:
            print(f"training the tile autoencoder of {cohort.root.name} once (cached in {path.parent})", flush=True)
        return fit_autoencoder(cohort, channels=channels, widths=tuple(widths), epochs=epochs, noise=noise,
                               seed=seed, progress=progress)

    return cached(path, _load, fit, _save, "tile autoencoder")


def _load(path) -> FittedAutoencoder:
    state = torch.load(path, weights_only=True)
    settings = json.loads(state["settings"])
    net = TileAutoencoder(settings["channels"], tuple(settings["widths"]))
    net.load_state_dict(state["state_dict"])
    return FittedAutoencoder(net.eval().requires_grad_(False), float(state["scale"]), settings)


def _save(fitted: FittedAutoencoder, tmp) -> None:
    torch.save({"state_dict": fitted.net.state_dict(), "scale": fitted.scale,
                "settings": json.dumps(fitted.settings)}, tmp)


def prepare(model, cohort, seed: int = 0, progress: bool = True) -> None:
    """Attach the cohort's autoencoder to a fresh model that runs in its latent grid (trained on
    first use); a model without one (``autoencoder`` None or absent) is left as it is."""
    if getattr(model, "autoencoder", None) is None:
        return
    cfg = model.cfg
    fitted = cohort_autoencoder(cohort, channels=cfg.latent_channels, widths=tuple(cfg.latent_widths),
                                epochs=cfg.latent_epochs, noise=cfg.latent_noise, seed=seed, progress=progress)
    model.attach_autoencoder(fitted.net.state_dict(), fitted.scale)
