"""The conditional VAE of the study: q(z | x, c) by a conv encoder, p(x | z, c) by a conv decoder.

Objective, per pixel value: with D = 3 S^2 values per tile, e = MLP(c) and a batch of B,

    L = (1 / B D) sum_b ||x_b - Dec(z_b, e_b)||^2
        + beta (1 / B D) sum_b KL(q(z | x_b, c_b) || N(0, I)),
    z_b = mu_b + sigma_b * eps,  eps ~ N(0, I),
    KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2).

Both terms are divided by D, so beta means the same at every image size: with beta = 2 sigma_x^2,
L is (2 sigma_x^2 / D) times the negative ELBO of a Gaussian decoder with per-pixel variance
sigma_x^2, up to a constant. beta = 0.1 is sigma_x ~ 0.22 on the [-1, 1] scale: errors below that
amplitude are not worth latent information.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..nets.conv import DownStack, UpDecoder, gaussian
from ..nets.rna import RNAEncoder
from .base import Generator, ModelConfig, adam, count_parameters, init_weights

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(log sigma^2) finite under fp16 autocast


@dataclass
class CVAEConfig(ModelConfig):
    z_dim: int = 64
    rna_widths: tuple[int, ...] = (256, 128)  # one RNA MLP, shared by encoder and decoder
    enc_channels: tuple[int, ...] = (32, 64, 128, 128)  # 4 strided convs
    dec_channels: tuple[int, ...] = (128, 64, 32, 16)  # 4 up-sampling layers: C_0 -> ... -> 3
    upsample: str = "transposed"  # the study's; "resize" draws no checkerboard (nets.conv.up)
    norm: str = "batch"
    beta: float = 0.1  # KL weight, per pixel value (see the module docstring)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_step: int = 20  # epochs between learning-rate halvings
    lr_gamma: float = 0.5

    PRESETS: ClassVar[dict[str, dict]] = {
        "small": {},  # the defaults above
        "thesis": {  # the study at 128 px: z in R^256, encoder flattens (512, 8, 8)
            "image_size": 128,
            "z_dim": 256,
            "rna_widths": (2048, 1024, 512),
            "enc_channels": (64, 128, 256, 512),
            "dec_channels": (256, 128, 64, 32),
        },
    }


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z | x, c) that gradients pass through."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, summed over latent dimensions: (B, z) -> (B,)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


class Encoder(nn.Module):
    """q(z | x, e): strided convs on x, flattened and joined with e, to mu, log sigma^2 in R^z."""

    def __init__(self, image_size: int, z_dim: int, e_dim: int, channels: tuple, norm="batch"):
        super().__init__()
        self.trunk = DownStack(channels, norm)
        self.heads = nn.Linear(self.trunk.out_features(image_size) + e_dim, 2 * z_dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor):
        h = torch.cat([self.trunk(x)[-1].flatten(1), e], dim=1)  # (B, C_n (S/2^n)^2 + E)
        mu, logvar = self.heads(h).chunk(2, dim=1)  # (B, z) each
        return mu, logvar.clamp(*LOGVAR_RANGE)


class CVAE(Generator):
    """The study's cVAE: `rna` (the condition e), `encoder` q(z | x, e), `decoder` p(x | z, e)."""

    name = "cvae"
    Config = CVAEConfig
    STUDY_PARAMETERS: ClassVar[dict[str, int]] = {"model": 65_124_483}

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.rna = RNAEncoder(cfg.n_genes, cfg.rna_widths)
        e_dim = self.rna.out_features
        self.encoder = Encoder(cfg.image_size, cfg.z_dim, e_dim, cfg.enc_channels, cfg.norm)
        self.decoder = UpDecoder(cfg.image_size, cfg.z_dim, e_dim, cfg.dec_channels, cfg.norm, cfg.upsample)
        self.apply(init_weights)

    def parameter_counts(self) -> dict[str, int]:
        return {"model": count_parameters(self)}

    def configure_optimizers(self, epochs: int, fused: bool = False) -> dict:
        cfg = self.cfg
        opt = adam(self.parameters(), fused, lr=cfg.lr, betas=cfg.betas)
        return {"main": (opt, torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma))}

    def losses(self, x, c, stochastic: bool = True) -> dict[str, torch.Tensor]:
        """L, the MSE and the KL (nats per tile); ``stochastic=False`` decodes z = mu instead."""
        e = self.rna(c)
        mu, logvar = self.encoder(x, e)
        z = reparameterise(mu, logvar) if stochastic else mu
        x_hat = self.decoder(z, e)  # (B, 3, S, S)
        recon = (x_hat.float() - x.float()).pow(2).mean()  # per pixel value
        kl = kl_standard_normal(mu, logvar).mean()  # nats per tile
        loss = recon + self.cfg.beta * kl / x[0].numel()  # KL per pixel value: / D = 3 S^2
        return {"loss": loss, "recon": recon, "kl": kl}

    def training_step(self, batch, step) -> dict[str, float]:
        x, c, _ = batch
        with step.autocast():
            terms = self.losses(x, c)
        step("main", terms["loss"])
        return {k: float(v.detach()) for k, v in terms.items()}

    @torch.no_grad()
    def validation_step(self, batch) -> dict[str, float]:
        """The training objective on held-out patients, decoding the posterior mean (no noise)."""
        x, c, _ = batch
        return {k: float(v) for k, v in self.losses(x, c, stochastic=False).items()}

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None, **kw):
        z = gaussian((c.shape[0], self.cfg.z_dim), generator, c.device)  # z ~ N(0, I), (B, z_dim)
        return self.decoder(z, self.rna(c))
