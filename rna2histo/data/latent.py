"""Compact RNA latents: PCA or a beta-VAE over the normalised profiles, fitted on training patients.

The study's MLP conditions a generator on all G genes; RNA-GAN and RNA-CDM first compress the
profile into a latent of ~200 dimensions. `rna_encoder` picks one of

    mlp      no latent: the generator's own RNA MLP reads the G normalised genes (the study)
    pca      the top k principal components of the training patients' profiles
    betavae  the posterior mean of a beta-VAE trained on the training patients' profiles

A latent sits between the normaliser and the generator, frozen: ``c = encode(z)`` with fixed,
fitted constants, never statistics of a batch (a batch may hold one patient's tiles). The
fitted latent is saved in every checkpoint, so generating from new profiles needs the run alone.
PCA scores are divided by one global constant (not per component) so that the latent has unit
mean square on the training patients while the leading components keep their weight.

Both latents reconstruct a profile, so both report the same two numbers per split: the mean
squared reconstruction error per gene, and the share of variance kept,
1 - sum |z - z_hat|^2 / sum |z - mean_train|^2.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import UserError
from ..paths import cached

RNA_ENCODERS = ("mlp", "pca", "betavae")
VAE_HIDDEN = 512  # the beta-VAE's one hidden layer on each side


class BetaVAE(nn.Module):
    """q(u | z) = N(mu(z), diag sigma^2(z)) over k dimensions; a linear-output decoder back to G genes.

    Loss per profile: sum_g (z_g - z_hat_g)^2 + beta * KL(q(u | z) || N(0, I)).
    """

    def __init__(self, n_genes: int, latent: int, hidden: int = VAE_HIDDEN):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_genes, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, n_genes))

    def posterior(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(z).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def loss(self, z: torch.Tensor, beta: float, generator: torch.Generator | None = None):
        mu, logvar = self.posterior(z)
        u = mu + torch.randn(mu.shape, generator=generator) * (0.5 * logvar).exp()
        recon = (self.decoder(u) - z).pow(2).sum(1).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return recon + beta * kl, recon, kl


@dataclass
class Latent:
    """A fitted latent: ``encode`` maps normalised profiles (P, G) to conditions (P, k)."""

    kind: str
    n_genes: int
    dim: int
    state: dict  # tensors: pca {mean, components, scale}; betavae the network's state dict
    settings: dict  # how it was fitted (requested k, beta, steps, ...) and what it decided

    def __post_init__(self):
        if self.kind == "betavae":
            self._vae = BetaVAE(self.n_genes, self.dim)
            self._vae.load_state_dict(self.state)
            self._vae.eval()

    @torch.no_grad()
    def encode(self, z) -> np.ndarray:
        z = _tensor(z)
        if self.kind == "pca":
            return ((z - self.state["mean"]) @ self.state["components"].T / self.state["scale"]).numpy()
        return self._vae.posterior(z)[0].numpy()

    @torch.no_grad()
    def reconstruct(self, z) -> np.ndarray:
        z = _tensor(z)
        if self.kind == "pca":
            scores = (z - self.state["mean"]) @ self.state["components"].T
            return (scores @ self.state["components"] + self.state["mean"]).numpy()
        return self._vae.decoder(self._vae.posterior(z)[0]).numpy()

    def state_dict(self) -> dict:
        return {"kind": self.kind, "n_genes": self.n_genes, "dim": self.dim, "state": self.state,
                "settings": self.settings}

    @classmethod
    def from_state_dict(cls, state: dict) -> Latent:
        return cls(state["kind"], state["n_genes"], state["dim"], state["state"], state["settings"])


def _tensor(z) -> torch.Tensor:
    values = z.to_numpy() if isinstance(z, pd.DataFrame) else np.asarray(z)
    return torch.tensor(values, dtype=torch.float32)  # a copy: cohort profiles are read-only maps


def fit_pca(z_train: np.ndarray, k: int = 200) -> Latent:
    """The top k components of the training profiles (k at most patients - 1: the rest are zero)."""
    z = _tensor(z_train).double()
    n = len(z)
    if n < 3:
        raise UserError(f"PCA needs at least 3 training patients (got {n})")
    kept = min(k, n - 1, z.shape[1])
    mean = z.mean(0)
    _, s, vt = torch.linalg.svd(z - mean, full_matrices=False)
    variance = s[:kept].pow(2) / (n - 1)
    scale = math.sqrt(float(variance.sum()) / kept)  # one constant: unit mean square over the latent
    state = {"mean": mean.float(), "components": vt[:kept].float().contiguous(),
             "scale": torch.tensor(scale, dtype=torch.float32)}
    total = float(((z - mean) ** 2).sum() / (n - 1))
    settings = {"requested_dim": k, "explained_variance_ratio_train": float(variance.sum()) / total}
    if kept < k:
        settings["note"] = f"k = {kept}, not {k}: {n} training patients span at most {n - 1} components"
    return Latent("pca", z.shape[1], kept, state, settings)


def fit_betavae(z_train: np.ndarray, z_val: np.ndarray | None = None, *, latent: int = 200, beta: float = 1.0,
                steps: int = 2000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[Latent, pd.DataFrame]:
    """Train a beta-VAE on the training profiles; keep the weights with the best validation loss.

    Returns the latent and its training history (step, train and val loss, reconstruction, KL).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train, val = _tensor(z_train), None if z_val is None or len(z_val) == 0 else _tensor(z_val)
    vae = BetaVAE(train.shape[1], latent)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=1e-4)
    history, best, best_state = [], math.inf, None
    _evaluate(vae, val if val is not None else train, beta, row := {"step": 0})  # the untrained baseline
    history.append(row)
    for step in range(1, steps + 1):
        vae.train()
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=generator)
        loss, recon, kl = vae.loss(train[idx], beta, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            row = {"step": step, "train_loss": loss.item(), "train_recon": recon.item(), "train_kl": kl.item()}
            score = _evaluate(vae, val if val is not None else train, beta, row)
            history.append(row)
            if score < best:
                best, best_state = score, {k: v.detach().clone() for k, v in vae.state_dict().items()}
    settings = {"beta": beta, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "best_val_loss": best, "selected_on": "val" if val is not None else "train"}
    return Latent("betavae", train.shape[1], latent, best_state, settings), pd.DataFrame(history)


@torch.no_grad()
def _evaluate(vae: BetaVAE, z: torch.Tensor, beta: float, row: dict) -> float:
    """The validation loss without sampling noise (u = mu), written into `row`."""
    vae.eval()
    mu, logvar = vae.posterior(z)
    recon = float((vae.decoder(mu) - z).pow(2).sum(1).mean())
    kl = float((0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean())
    row.update(val_loss=recon + beta * kl, val_recon=recon, val_kl=kl)
    return recon + beta * kl


def reconstruction_report(latent: Latent, z_by_split: dict[str, np.ndarray], z_train: np.ndarray) -> pd.DataFrame:
    """Per split: patients, reconstruction MSE per gene, share of variance kept (around the train mean)."""
    mean = np.asarray(z_train, dtype=np.float64).mean(0)
    rows = {}
    for split, z in z_by_split.items():
        z = np.asarray(z, dtype=np.float64)
        if len(z) == 0:
            continue
        error = ((z - latent.reconstruct(z)) ** 2).sum()
        rows[split] = {"patients": len(z), "recon_mse_per_gene": error / z.size,
                       "variance_kept": 1 - error / ((z - mean) ** 2).sum()}
    return pd.DataFrame(rows).T


def fit_latent(kind: str, cohort, normaliser, *, dim: int = 200, beta: float = 1.0, seed: int = 0) -> Latent | None:
    """The cohort's latent of `kind` (None for ``mlp``), fitted on its training patients only.

    A beta-VAE is trained once per cohort, normaliser and settings, and reused by every model:
    it is cached in ``<cohort>/latents/`` under a key of the training profiles and the settings.
    """
    if kind not in RNA_ENCODERS:
        raise UserError(f"unknown rna_encoder {kind!r}; expected one of {', '.join(RNA_ENCODERS)}")
    if kind == "mlp":
        return None
    z_train = normaliser.transform(cohort.rna.loc[cohort.patients("train")])[0].to_numpy(np.float32)
    if kind == "pca":
        return fit_pca(z_train, dim)
    z_val = normaliser.transform(cohort.rna.loc[cohort.patients("val")])[0].to_numpy(np.float32)
    key = hashlib.sha1(z_train.tobytes() + z_val.tobytes() + f"{dim}-{beta}-{seed}".encode()).hexdigest()[:12]
    path = cohort.root / "latents" / f"betavae-{key}.pt"
    return cached(path, load=lambda f: Latent.from_state_dict(torch.load(f, weights_only=True)),
                  fit=lambda: _betavae(z_train, z_val, dim, beta, seed),
                  save=lambda latent, tmp: torch.save(latent.state_dict(), tmp), what="beta-VAE")


def _betavae(z_train, z_val, dim: int, beta: float, seed: int) -> Latent:
    latent, history = fit_betavae(z_train, z_val, latent=dim, beta=beta, seed=seed)
    latent.settings["history"] = history.to_dict("list")
    return latent
