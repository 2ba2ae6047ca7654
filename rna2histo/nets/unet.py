"""The U-Net of the diffusion model: eps_theta(x_t, t, cond), conditioned in every residual block.

Network apart from process: this module sees a timestep only as a number to embed and a
condition only as a vector; the noise schedule, q_sample, the loss and the sampler live in
`rna2histo.models.diffusion`. Layout after improved-diffusion (Nichol & Dhariwal 2021): per
level ``blocks`` residual blocks then a stride-2 downsample; the decoder mirrors it with one
extra block per level, each taking the matching encoder activation as a skip connection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, as in DDPM): (B,) -> (B, dim), [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-conv layers; the embedding sets a per-channel scale and shift (FiLM).

    The FiLM sits after the second GroupNorm, so the condition modulates normalised features and
    cannot be undone by the normalisation (improved-diffusion's "scale-shift norm").
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):  # (B, c_in, H, W), (B, E) -> (B, c_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, c_out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual; used only at low resolution."""

    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C / heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class EmbedSequential(nn.Sequential):
    """Layers applied in turn; the residual blocks among them also receive the embedding."""

    def forward(self, h, emb):
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


def mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


def downsample(channels: int) -> nn.Module:
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # (H, W) -> (H/2, W/2)


def upsample(channels: int) -> nn.Module:
    conv = nn.Conv2d(channels, channels, 3, padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv)  # (H, W) -> (2H, 2W)


def encoder(block, base: int, mults, blocks: int) -> tuple[nn.ModuleList, list[int]]:
    """Residual blocks then a downsample per level; also the channels of every skip activation."""
    layers, skips, ch = nn.ModuleList(), [base], base  # skips[0]: the stem's output
    for level, mult in enumerate(mults):
        for _ in range(blocks):
            layers.append(EmbedSequential(*block(ch, base * mult, level)))
            ch = base * mult
            skips.append(ch)
        if level < len(mults) - 1:
            layers.append(EmbedSequential(downsample(ch)))
            skips.append(ch)
    return layers, skips


def decoder(block, base: int, mults, blocks: int, skips: list[int]) -> nn.ModuleList:
    """Mirror of the encoder, one block more per level, each block eating one skip (last first)."""
    layers, skips, ch = nn.ModuleList(), list(skips), skips[-1]
    for level, mult in reversed(list(enumerate(mults))):
        for i in range(blocks + 1):
            level_layers = block(ch + skips.pop(), base * mult, level)
            ch = base * mult
            if level > 0 and i == blocks:
                level_layers.append(upsample(ch))
            layers.append(EmbedSequential(*level_layers))
    return layers


class UNet(nn.Module):
    """eps_theta(x_t, t, cond): (B, 3, S, S), (B,), (B, cond_dim) -> (B, 3, S, S).

    Channels are ``base * mults[level]``; S must be divisible by ``2 ** (len(mults) - 1)``.
    The time embedding (sinusoidal, ``time_dim``) and the condition vector are each mapped to
    ``4 * base`` and summed into one embedding that every residual block receives.
    ``attention_levels`` lists the levels (0 = full resolution) that also get self-attention.
    """

    def __init__(
        self,
        cond_dim: int,
        base: int = 32,
        mults: tuple[int, ...] = (1, 2),
        blocks: int = 1,
        time_dim: int = 128,
        groups: int = 8,
        attention_levels: tuple[int, ...] = (),
        dropout: float = 0.0,
        channels: int = 3,
    ):
        super().__init__()
        self.time_dim, emb_dim = time_dim, 4 * base
        self.time_mlp = mlp(time_dim, emb_dim)
        self.cond_mlp = mlp(cond_dim, emb_dim)

        def block(c_in, c_out, level):
            layers = [ResBlock(c_in, c_out, emb_dim, groups, dropout)]
            if level in attention_levels:
                layers.append(SelfAttention(c_out, groups))
            return layers

        self.stem = nn.Conv2d(channels, base, 3, padding=1)
        self.down, skips = encoder(block, base, mults, blocks)
        ch, bottom = skips[-1], len(mults) - 1
        self.mid = EmbedSequential(*block(ch, ch, bottom), *block(ch, ch, None))  # attention once
        self.up = decoder(block, base, mults, blocks, skips)
        width = base * mults[0]  # the decoder ends at level 0
        self.head = nn.Sequential(
            nn.GroupNorm(groups, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1)
        )

    def forward(self, x, t, cond):  # (B, 3, S, S), (B,), (B, cond_dim) -> (B, 3, S, S)
        emb = self.time_mlp(timestep_embedding(t, self.time_dim)) + self.cond_mlp(cond)  # (B, E)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb)  # skip connection on channels
        return self.head(h)
