"""Conv building blocks shared by the cGAN, the cVAE and the hybrid, written once.

- `down`, `DownStack`: Conv2d 4x4 stride 2 + norm + LeakyReLU, halving the size per block; the
  stack returns every block's feature map (the hybrid's feature matching reads them). It is the
  body of the discriminator and of the VAE encoder.
- `FiLM`, `UpBlock`, `UpDecoder`: (z, e) -> x, a linear projection to a small map and
  up-sampling layers doubling it (`up`: the study's transposed convs, or resize + conv); the cGAN
  generator, the cVAE decoder and the hybrid decoder.

Where the condition enters: *after* every normalisation, as a per-sample scale and shift (FiLM).
BatchNorm removes each channel's mean and scale over the batch, and a batch may hold one
patient's tiles, which share c: a condition that scales or shifts channels before the norm is
then the same for every sample and is normalised away exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

NORMS = ("batch", "instance", "group", "none")
UPSAMPLE = ("transposed", "resize")
SLOPE = 0.2  # LeakyReLU slope of DCGAN and the study


def norm2d(kind: str, channels: int, affine: bool = True) -> nn.Module:
    """A 2-d normalisation by name; ``affine=False`` where a FiLM supplies scale and shift."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=affine)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=affine)
    if kind == "group":  # per sample, so safe at any batch composition
        return nn.GroupNorm(math.gcd(32, channels), channels, affine=affine)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown norm {kind!r}; expected one of {', '.join(NORMS)}")


def check_size(image_size: int, blocks: int) -> int:
    """The spatial size after `blocks` halvings: image_size / 2^blocks, which must be whole."""
    if image_size % 2**blocks:
        raise UserError(f"image_size {image_size} is not divisible by 2^{blocks} = {2**blocks}")
    return image_size // 2**blocks


def down(c_in: int, c_out: int, norm: str = "batch") -> nn.Sequential:
    """Conv2d 4x4 stride 2 + norm + LeakyReLU: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""
    # No bias before a norm: the norm's mean subtraction would cancel it.
    conv = nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none")
    return nn.Sequential(conv, norm2d(norm, c_out), nn.LeakyReLU(SLOPE))


class DownStack(nn.Module):
    """x (B, 3, S, S) -> [h_1, ..., h_n], h_k (B, channels[k-1], S/2^k, S/2^k).

    The first block is never normalised, as in DCGAN (normalising the layer that reads the image
    destabilised training there; a per-sample norm would also discard the stain's absolute colour).
    """

    def __init__(self, channels: tuple[int, ...], norm: str = "batch", in_channels: int = 3):
        super().__init__()
        widths = (in_channels, *channels)
        pairs = enumerate(zip(widths[:-1], widths[1:]))
        self.blocks = nn.ModuleList(down(a, b, norm if k else "none") for k, (a, b) in pairs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features

    def out_features(self, image_size: int) -> int:
        """Length of the flattened last map: C_n * (S / 2^n)^2."""
        side = check_size(image_size, len(self.blocks))
        return self.blocks[-1][0].out_channels * side * side


class FiLM(nn.Module):
    """h * (1 + gamma(s)) + beta(s), per sample and channel: the condition s after the norm.

    Zero-initialised, so every block starts as the identity and learns how much s should matter.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # h (B, C, H, W), s (B, cond_dim) -> gamma, beta (B, C, 1, 1)
        gamma, beta = self.proj(s)[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta


def up(c_in: int, c_out: int, kind: str = "transposed", bias: bool = True) -> nn.Module:
    """A layer doubling the size: (B, c_in, H, W) -> (B, c_out, 2H, 2W).

    "transposed": ConvTranspose2d 4x4 stride 2, the study's. Each output pixel is drawn by one of
    four 2x2 sub-kernels chosen by the parity of its position; until training makes them agree,
    neighbouring pixels are drawn differently and a generator paints a checkerboard (Odena,
    Dumoulin & Olah 2016, "Deconvolution and checkerboard artifacts"). "resize": nearest-neighbour
    x2, then a 3x3 conv, one kernel for every output pixel: the fix that paper recommends.
    """
    if kind == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
    if kind == "resize":
        resize = nn.Upsample(scale_factor=2, mode="nearest")
        return nn.Sequential(resize, nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias))
    raise UserError(f"unknown upsample {kind!r}; expected one of {', '.join(UPSAMPLE)}")


class ConvFiLM(nn.Module):
    """`conv` + norm + FiLM(s) + LeakyReLU: the condition after the norm, at one resolution."""

    def __init__(self, conv: nn.Module, c_out: int, cond_dim: int, norm="batch"):
        super().__init__()
        self.conv = conv
        self.norm = norm2d(norm, c_out, affine=False)
        self.film = FiLM(cond_dim, c_out)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.film(self.norm(self.conv(h)), s), SLOPE)


def refine(channels: int, cond_dim: int, norm="batch") -> ConvFiLM:
    """A 3x3 conv keeping size and width: (B, C, H, W) -> (B, C, H, W)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none")
    return ConvFiLM(conv, channels, cond_dim, norm)


class UpBlock(ConvFiLM):
    """`up` (x2) + norm + FiLM(s) + LeakyReLU, then ``depth - 1`` `refine` convs at the new size.

    (B, C, H, W) -> (B, C', 2H, 2W). ``depth = 1`` is the study's (one conv per resolution).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, norm="batch", upsample="transposed",
                 depth: int = 1):
        super().__init__(up(c_in, c_out, upsample, bias=norm == "none"), c_out, cond_dim, norm)
        self.refine = nn.ModuleList(refine(c_out, cond_dim, norm) for _ in range(depth - 1))

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = super().forward(h, s)
        for layer in self.refine:
            h = layer(h, s)
        return h


class UpDecoder(nn.Module):
    """(z, e) -> x in [-1, 1] (B, 3, S, S): s = [z, e] projected to (C_0, S/2^n, S/2^n), upsampled.

    With ``channels = (C_0, ..., C_{n-1})`` the n up-sampling layers (`up`, of kind `upsample`)
    map C_0 -> ... -> C_{n-1} -> 3, the last one followed by Tanh. s reaches every resolution through FiLM: these are the
    generator's skip connections from the condition, so the RNA cannot fade with depth.

    ``depth`` convs per resolution below the last: with 1 (the study's) the projection's cells
    (4x4 at 64 px, each drawn by its own rows of the linear layer, blind to its neighbours) are
    only ever mixed by the up-sampling convs, whose reach grows one pixel per size (the demo
    cGAN's tiles showed their borders as a grid of S/4-pixel blocks after 40 epochs). Each extra
    3x3 conv at a size, starting with the projection's own, lets neighbouring cells agree before
    they are enlarged.
    """

    def __init__(self, image_size: int, z_dim: int, e_dim: int, channels: tuple, norm="batch",
                 upsample="transposed", depth: int = 1):
        super().__init__()
        if depth < 1:
            raise UserError(f"decoder depth {depth} must be at least 1 (convs per resolution)")
        cond = z_dim + e_dim
        self.side = check_size(image_size, len(channels))
        self.project = nn.Linear(cond, channels[0] * self.side**2)
        self.norm0 = norm2d(norm, channels[0], affine=False)
        self.film0 = FiLM(cond, channels[0])
        self.refine0 = nn.ModuleList(refine(channels[0], cond, norm) for _ in range(depth - 1))
        pairs = zip(channels[:-1], channels[1:])
        self.blocks = nn.ModuleList(UpBlock(a, b, cond, norm, upsample, depth) for a, b in pairs)
        self.out = up(channels[-1], 3, upsample)

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        s = torch.cat([z, e], dim=1)  # (B, z_dim + e_dim)
        h = self.project(s).view(s.shape[0], -1, self.side, self.side)  # (B, C_0, S/2^n, S/2^n)
        h = F.leaky_relu(self.film0(self.norm0(h), s), SLOPE)
        for layer in self.refine0:
            h = layer(h, s)
        for block in self.blocks:
            h = block(h, s)
        return torch.tanh(self.out(h))


def gaussian(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """N(0, I) noise drawn from `generator` (on its own device), then moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)
