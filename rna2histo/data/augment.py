"""The study's training augmentations, on whole batches of tiles at once.

Each tile of a batch draws its own flips, rotation, shift and colour factors, as a per-tile
transform would, but every operation runs once over the batch. Per tile, torchvision's
``ColorJitter`` alone (its hue step converts RGB -> HSV -> RGB) cost ~88% of the loader's time
and kept the loader at ~2x the fastest model's appetite on a CPU. Here the colour draws cost one
matrix product per batch and the geometry one strided copy per tile: ~10x less per batch of 16
at 64 px, and the loader at ~14x the fastest model (`rna2histo.bench` measures the ratio).

Randomness comes from `generator`, or from torch's global RNG when it is None: the training
loop seeds the global RNG per epoch, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R 601 luma, as torchvision's rgb_to_grayscale
LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ: Y is luma, (I, Q) the chroma plane in which a rotation shifts hue
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def geometry(x: torch.Tensor, max_shift: int = 0, generator=None, p_rot: float = 0.5) -> torch.Tensor:
    """Per tile of x (B, C, S, S): horizontal and vertical flips (p = 0.5 each), with probability
    `p_rot` a rotation by 90, 180 or 270 degrees (tissue has no 'up'), and a shift by whole pixels
    in [-max_shift, max_shift] along both axes that fills with the mirror image (a random crop of
    a reflect-padded tile: the study's translation, without black borders no H&E tile has)."""
    n, size = len(x), x.shape[-1]
    flips = torch.rand(n, 2, generator=generator) < 0.5
    turns = torch.randint(1, 4, (n,), generator=generator) * (torch.rand(n, generator=generator) < p_rot)
    corner = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    padded = F.pad(x, (max_shift,) * 4, mode="reflect") if max_shift else x
    out = torch.empty_like(x)
    # one view per tile and one copy: cheaper than whole-batch selects for the loader's batches
    for i, ((fh, fv), k, (top, left)) in enumerate(zip(flips.tolist(), turns.tolist(), corner.tolist())):
        tile = padded[i, :, top : top + size, left : left + size]
        dims = [d for d, flip in ((-1, fh), (-2, fv)) if flip]
        tile = tile.flip(dims) if dims else tile
        out[i] = torch.rot90(tile, k, dims=(-2, -1)) if k else tile
    return out


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) RGB -> RGB matrices turning the chroma plane of YIQ by `turns` (B,) of a circle."""
    angle = 2 * math.pi * turns
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(len(turns), 3, 3)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    return torch.linalg.inv(_YIQ) @ rotation @ _YIQ


def colour_jitter(x: torch.Tensor, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
                  generator=None) -> torch.Tensor:
    """torchvision's ColorJitter per tile of x (B, 3, S, S) in [0, 1], as one affine map per tile.

    In this order: brightness scales by b, contrast blends with the tile's mean grey m by c,
    saturation blends each pixel with its grey by s (factors in [1 - f, 1 + f]), and the hue turns
    by h in [-hue, hue] of a circle in YIQ space (luma kept; HSV hue shifting, torchvision's,
    differs slightly for saturated colours at many times the cost). All four are linear, so

        x' = clamp(c b H S x + (1 - c) b m, 0, 1)

    (S and H leave grey unchanged): one matrix per tile and one clamp at the end, where
    torchvision clamps after every step; the two differ only where a step leaves [0, 1].
    """
    n = len(x)
    one = torch.ones(n)
    b = _uniform(n, 1 - brightness, 1 + brightness, generator) if brightness else one
    c = _uniform(n, 1 - contrast, 1 + contrast, generator) if contrast else one
    s = _uniform(n, 1 - saturation, 1 + saturation, generator) if saturation else one
    h = _uniform(n, -hue, hue, generator) if hue else torch.zeros(n)
    luma = torch.tensor(LUMA)
    sat = s[:, None, None] * torch.eye(3) + (1 - s)[:, None, None] * luma  # (B, 3, 3): rows s e_i + (1 - s) l
    m = (c * b)[:, None, None] * (_hue_rotation(h) @ sat)
    mean_grey = torch.einsum("c,bchw->b", luma.to(x), x) / x[0, 0].numel()
    offset = ((1 - c) * b).to(x) * mean_grey  # (B,)
    out = torch.einsum("bij,bjhw->bihw", m.to(x), x) + offset[:, None, None, None]
    return out.clamp_(0, 1)


@dataclass(frozen=True)
class StudyAugment:
    """The reference study's augmentations of a batch x (B, 3, S, S) in [-1, 1]: flips and a
    90-degree rotation (p = 0.5 each), translation by +/-10% of the side, brightness, contrast and
    saturation +/-20%, hue +/-10%."""

    image_size: int
    shift: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        x = geometry(x, max(1, round(self.shift * self.image_size)), generator)
        jitter = (self.brightness, self.contrast, self.saturation, self.hue)
        if not any(jitter):
            return x
        return in_unit_range(colour_jitter, x, *jitter, generator=generator)


AUGMENTATIONS = ("study", "geometric", "none")


def augmentation(name: str, image_size: int) -> StudyAugment | None:
    """A training augmentation by name: "study" (the study's: geometry and colour jitter),
    "geometric" (flips, rotations and shift only) or "none".

    Why "geometric": a generator learns the distribution of the tiles it is shown, augmented ones
    included (augmentations "leak" into the samples, Karras et al. 2020). Flips, rotations and
    shifts give tissue as it could have been cut, so they only add data; the colour jitter gives
    stains no slide has (a 10% hue turn makes eosin orange), and the generators drew them. It is a
    classifier's augmentation, where invariance to stain is the point.
    """
    from ..errors import UserError

    if name == "study":
        return StudyAugment(image_size)
    if name == "geometric":
        return StudyAugment(image_size, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    if name == "none":
        return None
    raise UserError(f"unknown augment {name!r}; expected one of {', '.join(AUGMENTATIONS)}")


def in_unit_range(fn, x: torch.Tensor, *args, **kw) -> torch.Tensor:
    """Apply `fn`, written for images in [0, 1], to x in the models' range [-1, 1]."""
    return fn((x + 1) / 2, *args, **kw) * 2 - 1
