"""DiffAugment: what each policy does to a tile, that gradients pass, and the cGAN's use of it."""

import pytest
import torch

from rna2histo.errors import UserError
from rna2histo.models.cgan import CGAN
from rna2histo.nets.diffaugment import color, cutout, diff_augment, parse_policy, translation


def test_policy_names_are_parsed_and_unknown_ones_refused():
    assert parse_policy("translation, cutout") == ("translation", "cutout")
    assert parse_policy("none") == parse_policy("") == ()
    with pytest.raises(UserError, match="unknown d_augment policy 'flip'"):
        parse_policy("translation,flip")


def test_translation_is_a_zero_filled_shift_within_an_eighth_of_the_side():
    torch.manual_seed(0)
    x = torch.rand(30, 3, 16, 16) + 1  # no zeros of its own
    out = translation(x)
    shifts = set()
    for a, b in zip(x, out):
        padded = torch.nn.functional.pad(a, (2, 2, 2, 2))  # 16 / 8 = 2 pixels at most
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(b, padded[:, dy:dy + 16, dx:dx + 16])]
        assert len(hits) == 1
        shifts.add(hits[0])
    assert len(shifts) > 10  # tiles draw their own shifts


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_border():
    torch.manual_seed(0)
    out = cutout(torch.ones(50, 3, 16, 16))
    zeros = (out[:, 0] == 0)
    for mask in zeros:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        height, width = len(rows), len(cols)
        assert 0 < height <= 8 and 0 < width <= 8
        assert mask.sum() == height * width  # one rectangle, whole
    assert (zeros.sum((1, 2)) == 64).sum() > 10  # most squares lie wholly inside
    assert torch.equal(out[:, 0], out[:, 2])  # every channel cut alike


def test_gradients_pass_through_every_policy():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    diff_augment(x, ("color", "translation", "cutout")).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not torch.equal(color(x.detach()), x.detach())


def test_cgan_augments_what_d_sees_in_training_only():
    torch.manual_seed(0)
    cfg = CGAN.Config.preset("small", n_genes=10, image_size=32, d_augment="translation,cutout")
    model = CGAN(cfg)
    x, c = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randn(4, 10)
    model.eval()
    assert torch.equal(model.judge(x, c), model.judge(x, c))  # validation: the tiles as they are
    model.train()
    model.discriminator.eval()  # dropout off, so any difference is the augmentation
    assert not torch.equal(model.judge(x, c), model.judge(x, c))
    with pytest.raises(UserError, match="unknown d_augment policy"):
        CGAN(CGAN.Config.preset("small", n_genes=10, image_size=32, d_augment="blur"))
