"""The tile autoencoder and latent diffusion: shapes, the detail loss, the cached fit, the frozen part."""

import numpy as np
import pandas as pd
import pytest
import torch

from rna2histo.cohort import CohortWriter, load_cohort, split_patients
from rna2histo.data.dataset import tiles_to_model
from rna2histo.errors import UserError
from rna2histo.generate import generate, load_run
from rna2histo.models.diffusion import Diffusion, DiffusionConfig
from rna2histo.nets.autoencoder import TileAutoencoder, laplacian, reconstruction_loss
from rna2histo.runs import load_checkpoint
from rna2histo.training import autoencoder as fitting
from rna2histo.training.loop import fit
from rna2histo.training.step import Step

from .conftest import interrupt_after

SIZE, GENES = 16, 12
SMALL = dict(channels=4, widths=(8, 16))


def smooth_tiles(n: int, size: int, seed: int) -> np.ndarray:
    """Distinct smooth colour patterns (uint8): learnable, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    f = rng.uniform(1, 3, (n, 3, 2))
    phase = rng.uniform(0, np.pi, (n, 3))
    waves = np.sin(f[..., :1, None] * xx + f[..., 1:, None] * yy + phase[..., None, None])  # (n, 3, S, S)
    return ((waves.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "cohort"
    ids = [f"P{i:02d}" for i in range(12)]
    rna = pd.DataFrame(np.random.default_rng(0).normal(8, 2, (12, GENES)).astype(np.float32),
                       index=pd.Index(ids, name="patient_id"), columns=[f"G{j}" for j in range(GENES)])
    with CohortWriter(out, SIZE) as writer:
        rows = []
        for k, p in enumerate(ids):
            writer.add_tiles(smooth_tiles(4, SIZE, seed=k))
            rows += [{"patient_id": p, "origin": "test", "x": j * SIZE, "y": 0} for j in range(4)]
        writer.commit(source="test", params={}, rna=rna, tiles_table=pd.DataFrame(rows),
                      splits=split_patients(ids, 0))
    return load_cohort(out, check_splits=False)


def test_the_latent_grid_halves_once_per_width_after_the_first_and_a_bad_size_is_refused():
    net = TileAutoencoder(**{"latent_channels": 4, "widths": (8, 16, 16)})
    z = net.encode(torch.zeros(2, 3, 32, 32))
    assert z.shape == (2, 4, 8, 8) and net.factor == 4 and net.latent_size(32) == 8
    assert net.decode(z).shape == (2, 3, 32, 32)
    with pytest.raises(UserError, match="not divisible"):
        net.latent_size(18)


def test_the_detail_term_sees_what_blur_removes_and_nothing_in_flat_colour():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert laplacian(torch.full((1, 3, 8, 8), 0.3)).abs().max() < 1e-6
    assert reconstruction_loss(x, x) == 0
    pixels_only = reconstruction_loss(blurred, x, w_laplacian=0)
    assert reconstruction_loss(blurred, x, w_laplacian=1) > 2 * pixels_only  # blur costs mostly detail


def test_fitting_learns_the_tiles_and_scales_the_training_latents_to_unit_deviation(cohort):
    fitted = fitting.fit_autoencoder(cohort, epochs=40, batch_size=8, lr=3e-3, **SMALL)
    history = [row["val_l1"] for row in fitted.settings["history"]]
    assert history[-1] < 0.5 * history[0]
    train = tiles_to_model(np.asarray(cohort.tiles[cohort.tile_indices("train")]))
    with torch.no_grad():
        z = fitted.net.encode(train) * fitted.scale
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)
    assert not any(p.requires_grad for p in fitted.net.parameters())


def test_the_cohort_autoencoder_is_trained_once_and_a_damaged_cache_is_trained_again(cohort, monkeypatch, capsys):
    first = fitting.cohort_autoencoder(cohort, epochs=1, progress=False, **SMALL)
    (path,) = (cohort.root / "autoencoders").glob("tile-*.pt")

    def refuse(*args, **kw):
        raise AssertionError("trained again")

    monkeypatch.setattr(fitting, "fit_autoencoder", refuse)
    again = fitting.cohort_autoencoder(cohort, epochs=1, progress=False, **SMALL)
    assert again.scale == first.scale
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.undo()
    path.write_bytes(b"not a checkpoint")
    fitting.cohort_autoencoder(cohort, epochs=1, progress=False, **SMALL)
    assert "unreadable cached tile autoencoder" in capsys.readouterr().out
    fitting.cohort_autoencoder(cohort, epochs=2, progress=False, **SMALL)  # other settings, another file
    assert len(list((cohort.root / "autoencoders").glob("tile-*.pt"))) == 2


def latent_model(**overrides) -> Diffusion:
    torch.manual_seed(0)
    cfg = DiffusionConfig.preset("small", n_genes=GENES, image_size=SIZE, latent_channels=4,
                                 latent_widths=(8, 16), latent_epochs=1, channel_mults=(1, 2), **overrides)
    return Diffusion(cfg)


def test_latent_diffusion_trains_the_denoiser_only_and_draws_tiles_through_the_decoder(cohort):
    model = latent_model()
    fitting.prepare(model, cohort, progress=False)
    assert model.unet.stem.in_channels == 4 and model.size == SIZE // 2
    frozen = {k: v.clone() for k, v in model.autoencoder.state_dict().items()}
    step = Step(model.configure_optimizers(1), torch.device("cpu"))
    optimised = {id(p) for group in step.optimizers["main"].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in model.autoencoder.parameters()}
    x = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    model.train()
    model.training_step((x, torch.randn(4, GENES), None), step)
    for k, v in model.autoencoder.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    out = model.eval().sample(torch.randn(3, GENES), torch.Generator().manual_seed(0), steps=3)
    assert out.shape == (3, 3, SIZE, SIZE) and out.abs().max() <= 1


def test_a_checkpoint_carries_the_autoencoder_and_a_pixel_model_keeps_its_old_state_keys(cohort):
    model = latent_model()
    fitting.prepare(model, cohort, progress=False)
    fresh = latent_model()
    fresh.load_state_dict(model.state_dict())
    c, g = torch.randn(2, GENES), lambda: torch.Generator().manual_seed(3)
    assert torch.equal(model.eval().sample(c, g(), steps=2), fresh.eval().sample(c, g(), steps=2))
    assert float(fresh.latent_scale) == float(model.latent_scale) != 1.0
    pixel = Diffusion(DiffusionConfig.preset("small", n_genes=GENES, image_size=SIZE))
    assert not [k for k in pixel.state_dict() if k.startswith("autoencoder") or k == "latent_scale"]


def test_a_latent_run_trains_generates_and_resumes_from_its_own_autoencoder(cohort, tmp_path, monkeypatch):
    settings = dict(batch_size=8, device="cpu", progress=False, sample_patients=1, latent_channels=4,
                    latent_widths=(8, 16), latent_epochs=1, channel_mults=(1, 2), sample_steps=2, epochs=2)
    straight = fit("diffusion", cohort.root, tmp_path / "a", **settings)
    loaded = load_run(straight)
    assert loaded.model.autoencoder is not None
    ids = cohort.patients("test")
    tiles, index, _ = generate(loaded, cohort.rna.loc[ids], n=2, seed=0)
    assert tiles.shape == (2 * len(ids), SIZE, SIZE, 3) and tiles.dtype == np.uint8
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            fit("diffusion", cohort.root, tmp_path / "b", **settings)
    # the checkpoint holds the autoencoder: resuming neither trains nor reads the cohort's cache
    monkeypatch.setattr(fitting, "cohort_autoencoder", lambda *a, **k: pytest.fail("autoencoder prepared again"))
    resumed = fit("diffusion", cohort.root, tmp_path / "b", resume=True, **settings)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
