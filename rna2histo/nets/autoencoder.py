"""A tile autoencoder: x (B, 3, S, S) <-> z (B, k, S/f, S/f), trained once per cohort.

Latent diffusion (Rombach et al. 2022) moves generation into the latent grid of an
autoencoder trained once and frozen: the denoiser's U-Net then works on f^2 fewer positions,
which on a CPU is most of its cost. Encoder and decoder are residual GroupNorm-SiLU stacks
with one stride-2 conv (encoder) or nearest up-sampling + conv (decoder) per halving; the
latent is deterministic (no KL term): the diffusion model needs a fixed map x -> z, and the
scale it samples at is fixed afterwards from the training latents (`latent_scale`).

The loss is L1 on the pixels plus L1 on their Laplacian (`laplacian`), the second against the
blur an L1- or L2-trained decoder otherwise settles for: the nucleus outlines and chromatin
live in the highest frequencies of H&E.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conv import check_size


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class Residual(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))) at a constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class TileAutoencoder(nn.Module):
    """``encode``: (B, 3, S, S) in [-1, 1] -> (B, latent_channels, S/2^n, S/2^n); ``decode`` back.

    ``widths``: the channels at each size, full size first; n = len(widths) - 1 halvings.
    """

    def __init__(self, latent_channels: int = 4, widths: tuple[int, ...] = (32, 64)):
        super().__init__()
        self.latent_channels, self.widths = latent_channels, tuple(widths)
        enc: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            enc += [Residual(a), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        enc += [Residual(widths[-1]), _group_norm(widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1), Residual(widths[-1])]
        for a, b in zip(widths[:0:-1], widths[-2::-1], strict=True):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), Residual(b)]
        dec += [_group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def latent_size(self, image_size: int) -> int:
        return check_size(image_size, len(self.widths) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x):
        return self.decode(self.encode(x))


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian of each channel, reflect-padded: (B, C, H, W) -> (B, C, H, W)."""
    c = x.shape[1]
    kernel = LAPLACIAN.to(x.dtype).to(x.device).expand(c, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, w_laplacian: float = 1.0) -> torch.Tensor:
    """L1 on the pixels + ``w_laplacian`` x L1 on their Laplacian (the fine detail)."""
    loss = (x_hat - x).abs().mean()
    if w_laplacian:
        loss = loss + w_laplacian * (laplacian(x_hat) - laplacian(x)).abs().mean()
    return loss
