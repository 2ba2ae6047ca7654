import math

import numpy as np
import pytest
import torch

from rna2histo.data.augment import (
    _YIQ,
    LUMA,
    StudyAugment,
    _hue_rotation,
    augmentation,
    colour_jitter,
    geometry,
)
from rna2histo.errors import UserError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flips_and_rotations_reach_exactly_the_eight_symmetries():
    tile = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = geometry(tile.repeat(400, 1, 1, 1), 0, gen())
    symmetries = {tuple(torch.rot90(t, k, dims=(-2, -1)).flatten().tolist())
                  for t in (tile[0, 0], tile[0, 0].flip(-1)) for k in range(4)}
    assert {tuple(v[0].flatten().tolist()) for v in views} == symmetries


def test_shift_is_a_crop_of_the_mirrored_tile_and_spans_the_range():
    x = torch.randn(40, 3, 12, 12)
    out = geometry(x, 3, gen(), p_rot=0.0)
    shifts = set()
    for a, b in zip(x, out):  # each output is one crop of its own tile mirrored at the border
        padded = torch.from_numpy(np.pad(a.numpy(), ((0, 0), (3, 3), (3, 3)), mode="reflect"))
        hits = [(dy, dx) for dy in range(7) for dx in range(7) for dims in ([], [-1], [-2], [-1, -2])
                if torch.equal(b, padded[:, dy:dy + 12, dx:dx + 12].flip(dims))]
        assert len(hits) == 1
        shifts.add(hits[0])
    assert len(shifts) > 20  # many of the 49 offsets drawn


def test_hue_rotation_keeps_luma_turns_the_chroma_angle_and_a_full_turn_is_identity():
    m = _hue_rotation(torch.tensor([0.1, 1.0]))
    luma = torch.tensor(LUMA)
    assert torch.allclose(luma @ m[0], luma, atol=1e-5)
    assert torch.allclose(m[1], torch.eye(3), atol=1e-5)
    red = torch.tensor([0.6, 0.3, 0.3])
    angle = lambda rgb: math.atan2(*(_YIQ[1:] @ rgb).flip(0).tolist())  # noqa: E731
    assert angle(m[0] @ red) - angle(red) == pytest.approx(2 * math.pi * 0.1, abs=1e-4)


def test_colour_jitter_matches_the_steps_one_by_one():
    x = torch.rand(5, 3, 6, 6) * 0.4 + 0.3  # no step leaves [0, 1]
    out = colour_jitter(x, 0.2, 0.2, 0.2, 0.1, generator=gen(3))
    g = gen(3)
    b, c, s = (0.8 + 0.4 * torch.rand(5, generator=g) for _ in range(3))
    h = -0.1 + 0.2 * torch.rand(5, generator=g)
    grey = lambda t: sum(w * t[:, i] for i, w in enumerate(LUMA)).unsqueeze(1)  # noqa: E731
    expect = x * b[:, None, None, None]
    mean = grey(expect).mean((1, 2, 3), keepdim=True)
    expect = mean + c[:, None, None, None] * (expect - mean)
    expect = grey(expect) + s[:, None, None, None] * (expect - grey(expect))
    expect = torch.einsum("bij,bjhw->bihw", _hue_rotation(h), expect)
    assert torch.allclose(out, expect, atol=1e-5)


def test_colour_jitter_leaves_grey_grey_and_stays_in_range():
    grey = torch.full((8, 3, 4, 4), 0.3)
    assert torch.allclose(colour_jitter(grey, saturation=0.2, hue=0.1, generator=gen()), grey, atol=1e-5)
    bright = colour_jitter(torch.full((200, 3, 2, 2), 0.9), brightness=0.2, generator=gen())
    assert bright.amax() == 1 and bright.amin() >= 0.72 - 1e-6


def test_study_augment_is_seeded_in_range_and_differs_per_tile():
    x = torch.rand(1, 3, 32, 32).repeat(16, 1, 1, 1) * 2 - 1
    augment = StudyAugment(32)
    a, b = augment(x, gen(1)), augment(x, gen(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1 and a.max() <= 1
    assert len({t.sum().item() for t in a}) == 16


def test_geometric_augmentation_moves_pixels_and_never_changes_a_colour():
    x = torch.rand(1, 3, 32, 32).repeat(16, 1, 1, 1) * 2 - 1
    colours = {tuple(c) for c in x[0].flatten(1).T.tolist()}
    geometric, study = augmentation("geometric", 32)(x, gen(2)), augmentation("study", 32)(x, gen(2))
    assert not torch.equal(geometric, x)  # the tiles moved ...
    assert all(tuple(c) in colours for t in geometric for c in t.flatten(1).T.tolist())  # ... as they were
    assert not all(tuple(c) in colours for c in study[0].flatten(1).T.tolist())  # the study's jitter recolours
    assert augmentation("none", 32) is None
    with pytest.raises(UserError, match="unknown augment 'colour'; expected one of study, geometric, none"):
        augmentation("colour", 32)
