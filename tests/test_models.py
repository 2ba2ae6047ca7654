"""The cGAN, cVAE and hybrid against the contract: steps, over-fitting, sampling, presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rna2histo.errors import UserError
from rna2histo.models.adversary import adversarial_losses
from rna2histo.models.cgan import CGAN
from rna2histo.models.cvae import CVAE
from rna2histo.models.hybrid import Hybrid, resolve_perceptual
from rna2histo.nets.conv import UpBlock, UpDecoder
from rna2histo.nets.weights import lpips_weights_path
from rna2histo.training.step import Step

MODELS = [CGAN, CVAE, Hybrid]
GENES, SIZE = 50, 32
CPU = torch.device("cpu")
ids = pytest.mark.parametrize("model_cls", MODELS, ids=lambda m: m.name)


@pytest.fixture(autouse=True)
def one_thread():
    # Other test runs share the machine; one thread is also faster at these sizes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(model_cls, preset="small", **overrides):
    if model_cls is Hybrid:
        overrides.setdefault("perceptual", "none")
    torch.manual_seed(0)
    fields = {"n_genes": GENES, "image_size": SIZE, **overrides}
    return model_cls(model_cls.Config.preset(preset, **fields))


def tiles(n=8, seed=0):
    """A batch of n tiles, one per patient: a distinct mean colour plus a smooth pattern."""
    g = torch.Generator().manual_seed(seed)
    colour = torch.rand(n, 3, 1, 1, generator=g) * 1.4 - 0.7
    pattern = F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=SIZE, mode="bilinear")
    x = (colour + 0.25 * pattern).clamp(-1, 1)  # (n, 3, S, S)
    return x, torch.randn(n, GENES, generator=g), torch.arange(n)


class RecordingStep(Step):
    """A `Step` that notes which top-level parts of `model` each named optimiser moved."""

    def __init__(self, model, optimizers):
        super().__init__(optimizers, CPU)
        self.model, self.moved = model, {}

    def __call__(self, name, loss):
        before = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        value = super().__call__(name, loss)
        params = self.model.named_parameters()
        self.moved[name] = {n.split(".")[0] for n, p in params if not torch.equal(p, before[n])}
        return value


PARTS = {  # which optimiser moves which parts
    "cgan": {"d": {"discriminator"}, "g": {"generator"}},
    "cvae": {"main": {"rna", "encoder", "decoder"}},
    "hybrid": {"d": {"discriminator"}, "g": {"rna", "encoder", "decoder"}},
}


@ids
def test_one_step_moves_every_part_through_the_contract(model_cls):
    model = build(model_cls)
    opts = model.configure_optimizers(epochs=3)
    step = RecordingStep(model, opts)
    out = model.training_step(tiles(4), step)
    assert out and all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert step.moved == PARTS[model_cls.name]
    assert list(step.moved) == list(PARTS[model_cls.name])  # D steps before G
    for _, schedule in opts.values():
        schedule.step()
    val = model.eval().validation_step(tiles(4, seed=1))
    assert math.isfinite(val["loss"]) and all(isinstance(v, float) for v in val.values())


@ids
def test_sample_is_seeded_in_range_and_follows_c(model_cls):
    model = build(model_cls).eval()
    _, c, _ = tiles(3)

    def draw(cond, seed):
        return model.sample(cond, torch.Generator().manual_seed(seed))

    def change(y):  # relative: untrained outputs are small
        return (y - x).abs().mean() / x.abs().mean()

    x = draw(c, 1)
    assert x.shape == (3, 3, SIZE, SIZE)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, draw(c, 1))
    assert change(draw(c, 2)) > 0.05  # other noise, other images
    assert change(draw(c.roll(1, 0), 1)) > 0.05  # same noise, other RNA


def test_condition_enters_after_batchnorm():
    """A training batch of one patient's tiles: a FiLM before BatchNorm would be normalised away."""
    torch.manual_seed(0)
    block = UpBlock(8, 8, cond_dim=4, norm="batch").train()
    nn.init.normal_(block.film.proj.weight, 0.0, 0.1)  # as after some training: 1 + gamma > 0
    h, s = torch.randn(4, 8, 4, 4), torch.randn(2, 4)
    one, other = s[[0, 0, 0, 0]], s[[1, 1, 1, 1]]  # (4, 4): one patient per batch
    assert (block(h, one) - block(h, other)).abs().mean() > 0.05
    before = [block.norm(block.film(block.conv(h), cond)) for cond in (one, other)]
    assert torch.allclose(*before, atol=1e-3)  # the order this block avoids


def reach(depth: int) -> int:
    """How far (in output pixels) a change to the first map's corner cell spreads in a 64 px tile."""
    torch.manual_seed(0)
    decoder = UpDecoder(64, 4, 4, (8, 8, 8, 8), norm="none", upsample="resize", depth=depth)
    s = torch.randn(1, 4), torch.randn(1, 4)
    base = decoder(*s)
    bump = decoder.film0.register_forward_hook(lambda m, i, h: h + F.pad(torch.ones(1, 8, 1, 1), (0, 3, 0, 3)))
    changed = (decoder(*s) - base).abs().amax(dim=(0, 1)) > 0  # (64, 64)
    bump.remove()
    return int(changed.any(dim=0).nonzero().max()) + 1


def test_decoder_depth_lets_first_map_cells_mix():
    """One conv per size (the study's) leaves each 16 px cell of a 64 px tile nearly on its own."""
    assert reach(1) == 16 + 8 + 4 + 2 + 1  # each size's 3x3 conv reaches one pixel further
    assert reach(2) == 32 + 16 + 8 + 4 + 1  # and a 3x3 refine conv per size, from 4x4 (16 px)
    with pytest.raises(UserError, match="decoder depth 0 must be at least 1"):
        UpDecoder(64, 4, 4, (8, 8, 8, 8), depth=0)


@pytest.mark.parametrize("model_cls", [CGAN, Hybrid], ids=lambda m: m.name)
def test_both_gans_take_the_generator_depth(model_cls):
    """`g_depth` is one adversary field: the hybrid's decoder deepens as the cGAN's generator does."""
    def decoder(model):
        return model.generator.decoder if model_cls is CGAN else model.decoder

    shallow, deep = build(model_cls), build(model_cls, g_depth=2)
    assert [len(decoder(m).refine0) for m in (shallow, deep)] == [0, 1]
    assert all(len(block.refine) == 1 for block in decoder(deep).blocks)
    x, c, _ = tiles(2)
    assert deep.sample(c).shape == x.shape


@pytest.mark.parametrize("model_cls", [CVAE, Hybrid], ids=lambda m: m.name)
def test_vae_models_overfit_a_handful_of_tiles(model_cls):
    lr = {"lr": 1e-3} if model_cls is CVAE else {"lr_g": 1e-3, "lr_d": 1e-3}  # a few dozen steps
    model = build(model_cls, **lr)
    batch, step = tiles(8), Step(model.configure_optimizers(1), CPU)
    first = model.training_step(batch, step)["recon"]
    for _ in range(30):
        last = model.training_step(batch, step)["recon"]
    assert last < 0.5 * first


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_cgan_learns_each_conditions_colour(loss):
    """G(z, c_i) takes on tile i's mean colour: far closer than at the start or with c shuffled."""
    model = build(CGAN, lr_g=1e-3, lr_d=1e-3, loss=loss)
    x, c, p = tiles(8)
    step = Step(model.configure_optimizers(1), CPU)

    def colour_error(cond):  # mean distance of mean RGB, (8, 3) vs (8, 3)
        fake = model.sample(cond, torch.Generator().manual_seed(1))
        return float((fake.mean((2, 3)) - x.mean((2, 3))).norm(dim=1).mean())

    start = colour_error(c)
    for _ in range(120):
        model.training_step((x, c, p), step)
    end = colour_error(c)
    # Bounds outside the measured spread: over seeds 0-3 under ATEN_CPU_CAPABILITY default, avx2
    # and avx512 (one thread), end/start ranged 0.20-0.62 and end/shuffled 0.13-0.41, hinge the
    # slower; a G that ignores c sits near 1 on both (benchmarks/experiments.md, 2026-12-06).
    assert end < 0.8 * start
    assert end < 0.6 * colour_error(c.roll(1, 0))


def test_adversarial_losses_at_known_logits():
    cfg = CGAN.Config(loss="hinge")
    real, fake = torch.tensor([[2.0], [0.5]]), torch.tensor([[-3.0], [0.0]])  # (B, 1): whole tiles
    loss_d, loss_g = adversarial_losses(real, fake, cfg)
    # D: relu(1 - real) = (0, 0.5), relu(1 + fake) = (0, 1): a met margin costs nothing
    assert float(loss_d) == pytest.approx(0.25 + 0.5) and float(loss_g) == pytest.approx(1.5)
    cfg = CGAN.Config(loss="bce")  # the study's labels 0.9 / 0.1
    loss_d, loss_g = adversarial_losses(torch.zeros(3, 1), torch.zeros(3, 1), cfg)
    assert float(loss_d) == pytest.approx(2 * math.log(2)) and float(loss_g) == pytest.approx(math.log(2))
    assert adversarial_losses(None, fake, cfg)[0] is None
    # patch logits are a second group, added at the whole tile's weight whatever their number
    tile, patches = torch.zeros(3, 1), torch.full((3, 16), 5.0)
    _, loss_g = adversarial_losses(None, torch.cat([tile, patches], 1), cfg)
    assert float(loss_g) == pytest.approx(math.log(2) + float(F.binary_cross_entropy_with_logits(
        torch.tensor(5.0), torch.tensor(0.9))))
    with pytest.raises(UserError, match="unknown loss 'wgan'; expected one of bce, hinge"):
        build(CGAN, loss="wgan")


@pytest.mark.parametrize("model_cls", [CGAN, Hybrid], ids=lambda m: m.name)
def test_patch_logits_judge_every_position_of_the_chosen_block(model_cls):
    model = build(model_cls, d_patch=3)  # 32 px: block 3 is a 4 x 4 map
    x, c, p = tiles(4)
    logits, features = model.discriminator(x, c)
    assert logits.shape == (4, 1 + 16) and features[2].shape[-1] == 4
    out = model.training_step((x, c, p), Step(model.configure_optimizers(1), CPU))
    assert all(math.isfinite(v) for v in out.values())
    with pytest.raises(UserError, match="d_patch 5: D has blocks 1-4"):
        build(model_cls, d_patch=5)


def test_hybrid_perceptual_modes(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # a torch hub without the AlexNet download
    assert not build(Hybrid, perceptual="none").perceptual_active
    assert not build(Hybrid, perceptual="auto").perceptual_active
    with pytest.raises(UserError, match="weights download"):
        build(Hybrid, perceptual="lpips")
    with pytest.raises(UserError, match="perceptual"):
        build(Hybrid, perceptual="vgg")

    model = build(Hybrid, perceptual="lpips-random")  # the real lpips code path, offline
    assert model.perceptual_active
    assert model.state_dict().keys() == build(Hybrid, perceptual="none").state_dict().keys()
    assert not any(p.requires_grad for p in model.lpips_net.parameters())
    out = model.training_step(tiles(4), Step(model.configure_optimizers(1), CPU))
    assert out["perc"] > 0

    lpips_weights_path().parent.mkdir(parents=True)
    lpips_weights_path().touch()
    assert resolve_perceptual("auto") == "lpips"


@ids
def test_presets_sizes(model_cls):
    extra = {"perceptual": "none"} if model_cls is Hybrid else {}
    with torch.device("meta"):  # no memory for the ~130M thesis parameters
        thesis = model_cls(model_cls.Config.preset("thesis", n_genes=16383, **extra))
        small = model_cls(model_cls.Config.preset("small", n_genes=2000, image_size=64, **extra))
    counts = thesis.parameter_counts()
    print(model_cls.name, "thesis", counts, "study", model_cls.STUDY_PARAMETERS)
    for part, study in model_cls.STUDY_PARAMETERS.items():
        assert study / 1.5 < counts[part] < 1.5 * study
    assert all(2e5 < n < 2.5e6 for n in small.parameter_counts().values())
    with pytest.raises(UserError, match="divisible"):
        build(model_cls, image_size=40)


@ids
def test_config_overrides_are_checked(model_cls):
    cfg = model_cls.Config
    with pytest.raises(UserError, match=f"unknown {cfg.__name__} fields: widht"):
        cfg.preset("small", widht=3)
    lr = "lr" if hasattr(cfg, "lr") else "lr_g"
    with pytest.raises(UserError, match=f"{cfg.__name__}.{lr}: expected a number, got '1e-4'"):
        cfg.preset("small", **{lr: "1e-4"})
    if hasattr(cfg, "upsample"):
        with pytest.raises(UserError, match="unknown upsample 'bilinear'"):
            build(model_cls, upsample="bilinear")
        model = build(model_cls, upsample="resize")  # nearest x2 + 3x3 conv: same tiles out
        x, c, _ = tiles(4)
        out = model.training_step((x, c, None), Step(model.configure_optimizers(1), CPU))
        assert all(math.isfinite(v) for v in out.values())
        assert model.eval().sample(c, torch.Generator().manual_seed(0)).shape == x.shape


def noise_spread(model, c, n=6):
    """Mean |difference| between tiles of one condition from different noise."""
    model.eval()
    samples = model.sample(c[:1].repeat(n, 1), generator=torch.Generator().manual_seed(1))
    return float((samples[:, None] - samples[None]).abs().mean())


@pytest.mark.parametrize("model_cls", [CGAN, Hybrid], ids=lambda m: m.name)
def test_mode_seeking_keeps_the_noise_meaningful(model_cls):
    x, c, p = tiles()
    spread = {}
    for w in (0.0, 1.0):
        model = build(model_cls, w_diverse=w, lr_g=1e-3, lr_d=1e-3)
        step = Step(model.configure_optimizers(1), CPU)
        torch.manual_seed(0)
        for _ in range(40):
            model.train()
            model.training_step((x, c, p), step)
        spread[w] = noise_spread(model, c)
    # without the term the generator drifts towards one tile per condition
    assert spread[1.0] > 1.5 * spread[0.0], spread
