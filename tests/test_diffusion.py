"""The diffusion model: contract, schedule, over-fitting, DDIM, guidance, EMA and checkpoints."""

import copy
import io

import numpy as np
import pytest
import torch

from rna2histo.errors import UserError
from rna2histo.models.base import count_parameters
from rna2histo.models.diffusion import Diffusion, DiffusionConfig
from rna2histo.training.step import Step

GENES, SIZE = 16, 16


def make(size=SIZE, **overrides):
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig.preset("small", n_genes=GENES, image_size=size, **overrides))


def tiles(n, size):
    """Smooth, distinct RGB patterns in [-1, 1]: (n, 3, size, size)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    rgb = [[torch.sin(3 * (k + 1) * xx), torch.cos(2 * (k + 1) * yy), xx * yy] for k in range(n)]
    return torch.stack([torch.stack(channels) for channels in rgb])


def train(model, x, c, steps):
    step = Step(model.configure_optimizers(1), torch.device("cpu"))
    model.train()
    losses = []
    for _ in range(steps):
        losses.append(model.training_step((x, c, None), step)["loss"])
        model.on_step_end()
    return losses


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def trained():
    """A small model after a few steps, so the EMA lags the online weights; do not mutate."""
    model = make(lr=1e-3)
    train(model, tiles(4, SIZE), torch.randn(4, GENES, generator=gen(1)), steps=4)
    return model.eval()


def test_training_step_through_the_contract():
    model = make()
    before = copy.deepcopy(model.net.state_dict())
    losses = train(model, tiles(4, SIZE), torch.randn(4, GENES), steps=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = model.net.state_dict()
    keys = ("rna.net.0.weight", "unet.stem.weight", "unet.head.2.weight", "unet.cond_mlp.0.weight")
    for key in keys:
        assert not torch.equal(before[key], after[key]), key
    batch = (tiles(2, SIZE), torch.randn(2, GENES), None)
    first = model.validation_step(batch)
    assert set(first) == {"loss"} and first == model.validation_step(batch)  # fixed t and noise


def test_schedule_and_q_sample_statistics():
    model = make()
    betas = np.linspace(1e-4, 0.02, 1000)
    assert model.alpha_bar[0].item() == pytest.approx(1 - 1e-4)
    assert model.alpha_bar[-1].item() == pytest.approx(np.prod(1 - betas), rel=1e-4)  # ~4.0e-5
    x0 = torch.full((4000, 3, 2, 2), 0.5)
    for t in (0, 300, 999):
        xt = model.q_sample(x0, torch.full((4000,), t), torch.randn_like(x0))
        ab = model.alpha_bar[t].item()
        assert xt.mean().item() == pytest.approx(0.5 * ab**0.5, abs=0.01)
        assert xt.std().item() == pytest.approx((1 - ab) ** 0.5, abs=0.01)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_overfits_a_handful_of_tiles(prediction):
    model = make(size=32, lr=2e-3, cond_dropout=0.0, prediction=prediction)
    x, c = tiles(4, 32), torch.randn(4, GENES)
    g = gen(1)
    t, noise = torch.randint(0, 1000, (16,), generator=g), torch.randn(16, 3, 32, 32, generator=g)

    def loss():
        with torch.no_grad():
            return float(model.denoising_loss(model.net, x.repeat(4, 1, 1, 1), c.repeat(4, 1), t, noise))

    start = loss()
    train(model, x, c, steps=60)
    # in practice eps 1.04 -> 0.13; v, whose target at large t is the tile itself, 0.61 -> 0.24
    assert loss() < {"eps": 0.3, "v": 0.5}[prediction] * start


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_noise_an_exact_output_stands_for_is_the_noise(prediction):
    """Sampling reads every output as eps: an exact eps or v target must give back the noise."""
    model = make(prediction=prediction)
    g = gen(3)
    x0, noise = tiles(4, SIZE), torch.randn(4, 3, SIZE, SIZE, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a, s = model.alpha_bar[t].sqrt().view(-1, 1, 1, 1), (1 - model.alpha_bar[t]).sqrt().view(-1, 1, 1, 1)
    exact = noise if prediction == "eps" else a * noise - s * x0
    xt = model.q_sample(x0, t, noise)
    torch.testing.assert_close(model.eps_from_output(exact, xt, t), noise, atol=1e-4, rtol=0)


def test_an_unknown_prediction_is_refused():
    with pytest.raises(UserError, match="prediction must be one of eps, v, not 'x0'"):
        make(prediction="x0")


def test_ddim_is_deterministic_per_seed(trained):
    c = torch.randn(2, GENES, generator=gen(2))
    a, b = trained.sample(c, gen(0), steps=4), trained.sample(c, gen(0), steps=4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, trained.sample(c, gen(1), steps=4), atol=1e-3)
    noisy = trained.sample(c, gen(0), steps=4, eta=1.0)
    assert torch.equal(noisy, trained.sample(c, gen(0), steps=4, eta=1.0))  # eta > 0: still seeded
    assert not torch.allclose(noisy, a, atol=1e-3)


def test_samples_have_the_contract_shape_and_range(trained):
    x = trained.sample(torch.randn(3, GENES), gen(0), steps=2)
    assert x.shape == (3, 3, SIZE, SIZE) and x.min() >= -1 and x.max() <= 1
    assert trained.sample(torch.randn(1, GENES), gen(0), steps=1).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(UserError, match="DDIM steps"):
        trained.sample(torch.randn(1, GENES), gen(0), steps=0)


def test_timesteps_are_evenly_spaced_down_to_zero(trained):
    assert trained.timesteps(5, 99) == [99, 74, 50, 25, 0]
    assert trained.timesteps(3) == [999, 500, 0]


def test_denoise_starts_from_the_noised_tiles(trained):
    x0, c = tiles(2, SIZE), torch.randn(2, GENES, generator=gen(6))
    near = trained.denoise(x0, c, 0, gen(0), steps=10)  # x_0 = 0.99995 x_0 + 0.01 noise, one step
    assert (near - x0).abs().mean() < 0.02
    far = trained.denoise(x0, c, 999, gen(0), steps=10)
    assert (far - x0).abs().mean() > 0.1
    assert torch.equal(far, trained.denoise(x0, c, 999, gen(0), steps=10))
    with pytest.raises(UserError, match="t_start must be between 0 and 999, not 1000"):
        trained.denoise(x0, c, 1000, gen(0))


def test_guidance_scale_one_is_plain_conditional(trained):
    c = torch.randn(2, GENES, generator=gen(3))
    plain = trained.sample(c, gen(0), steps=4, guidance=1.0)  # one conditional pass per step
    # Just off 1, the two-pass eps_u + s (eps_c - eps_u) path runs and must agree.
    near = trained.sample(c, gen(0), steps=4, guidance=1.0 + 1e-6)
    assert torch.allclose(plain, near, atol=1e-4)
    assert not torch.allclose(plain, trained.sample(c, gen(0), steps=4, guidance=3.0), atol=1e-3)


def test_condition_changes_samples(trained):
    c1, c2 = torch.randn(2, GENES, generator=gen(4)).chunk(2)
    x1, x2 = trained.sample(c1, gen(0), steps=4), trained.sample(c2, gen(0), steps=4)
    assert not torch.allclose(x1, x2, atol=1e-3)


def test_initialise_restarts_the_ema_as_a_copy():
    model = make()
    train(model, tiles(2, SIZE), torch.randn(2, GENES), steps=1)
    model.initialise()  # the loop calls it once on a fresh model
    ema = model.ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in model.net.state_dict().items())
    assert int(model.ema_updates) == 0


def test_ema_lags_online_weights_and_is_used_for_sampling(trained):
    online, ema = trained.net.state_dict(), trained.ema.state_dict()
    assert not torch.equal(online["unet.stem.weight"], ema["unet.stem.weight"])
    assert int(trained.ema_updates) == 4
    model = copy.deepcopy(trained)
    c = torch.randn(2, GENES, generator=gen(5))
    ref = model.sample(c, gen(0), steps=3)
    with torch.no_grad():
        model.net.unet.head[2].weight.add_(1.0)  # online weights do not reach sampling ...
        assert torch.equal(ref, model.sample(c, gen(0), steps=3))
        model.ema.unet.head[2].weight.add_(1.0)  # ... the EMA weights do
    assert not torch.allclose(ref, model.sample(c, gen(0), steps=3), atol=1e-3)


def test_state_dict_round_trip_keeps_the_ema(trained):
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert any(k.startswith("ema.") for k in state) and "ema_updates" in state
    assert not any("alpha_bar" in k for k in state)  # derived from the config, not stored
    fresh = Diffusion(trained.cfg)
    fresh.load_state_dict(state)
    fresh.eval()
    for key, value in trained.ema.state_dict().items():
        assert torch.equal(value, fresh.ema.state_dict()[key]), key
    c = torch.randn(2, GENES, generator=gen(6))
    assert torch.equal(trained.sample(c, gen(0), steps=3), fresh.sample(c, gen(0), steps=3))


def test_optional_attention_keeps_shapes():
    model = make(attention_levels=(1,))
    assert model.sample(torch.randn(2, GENES), gen(0), steps=1).shape == (2, 3, SIZE, SIZE)


def test_image_size_must_fit_the_levels():
    with pytest.raises(UserError, match="divisible"):
        make(size=18, channel_mults=(1, 2, 2))  # 18 px cannot halve twice


def test_thesis_preset_exceeds_the_study_count():
    cfg = DiffusionConfig.preset("thesis", n_genes=16_383, image_size=128)
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = Diffusion(cfg)
    counts = model.parameter_counts()
    assert counts["unet"] > Diffusion.STUDY_PARAMETERS["unet"]  # 17.6M
    assert sum(counts.values()) == count_parameters(model.net) == count_parameters(model.ema)
    widths = [m.out_features for m in model.net.rna.net if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256]
