"""Differentiable augmentation of a discriminator's inputs (DiffAugment, Zhao et al. 2020).

With little data a GAN's discriminator memorises the real images and its gradient stops telling
G about the distribution (Zhao et al.; the demo cohort has 700 training tiles). Augmenting the
*training data* would not help a generator (it learns to draw the augmented tiles,
`rna2histo.data.augment`); augmenting every image D sees, real and generated alike, in a way
gradients pass through, does: D must judge tissue whatever the shift, colour or missing patch,
and G is never asked to draw those. (`augment.geometry` shifts too, but per tile, mirror-filled,
for the loader; here the shift is zero-filled, batched and on the training device.)

Policies, as in the paper, on images in [-1, 1] (B, 3, S, S), each tile drawing its own:
- "color": brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5);
- "translation": a shift by up to S/8 pixels along each axis, filled with zeros;
- "cutout": a zeroed square of side S/2 at a random place.
"""

from __future__ import annotations

import torch

from ..errors import UserError

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    """"translation,cutout" -> ("translation", "cutout"); "" or "none" -> (); others refused."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip() and p.strip() != "none")
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise UserError(f"unknown d_augment policy {unknown[0]!r}; expected a comma-separated "
                        f"subset of {', '.join(POLICIES)} (or 'none')")
    return names


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """x (B, 3, S, S) -> the same shape, each policy applied in order with per-tile draws."""
    for name in policy:
        x = _OPS[name](x)
    return x


def _rand(x: torch.Tensor) -> torch.Tensor:
    """One U(0, 1) per tile, shaped to broadcast over (C, H, W)."""
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
    x = x + (_rand(x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)  # per pixel, over channels
    x = (x - mean) * (_rand(x) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per tile
    return (x - mean) * (_rand(x) + 0.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each tile by whole pixels; what moves in from outside is zero."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] + dy + 1  # +1: the zero border of pad
    cols = torch.arange(w, device=x.device)[None, None, :] + dx + 1
    rows, cols = rows.clamp(0, h + 1), cols.clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # (B, C, H + 2, W + 2)
    batch = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch, rows.expand(b, h, w), cols.expand(b, h, w)]
    return shifted.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of side ratio * S, centred anywhere in the tile (clipped at the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": color, "translation": translation, "cutout": cutout}
