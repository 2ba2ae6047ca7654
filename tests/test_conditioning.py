"""The conditioning difference samples every patient from the same noise, in batched calls."""

import numpy as np
import pytest
import torch

from rna2histo.evaluation.conditioning import conditioning_difference, same_noise_samples
from rna2histo.models import build_model

CASES = {  # model: (config, sample keywords); diffusion with eta > 0 draws noise at every step
    "cgan": ({}, {}),
    "cvae": ({}, {}),
    "hybrid": ({"perceptual": "none"}, {}),
    "diffusion": ({}, {"steps": 3, "eta": 0.5, "guidance": 2.0}),
}


def patient_by_patient(model, profiles, n_noise, seed, **sample_kw):
    """The definition: each profile repeated `n_noise` times, from a generator seeded afresh."""
    out = []
    for profile in profiles:
        generator = torch.Generator().manual_seed(seed)
        out.append(model.sample(profile[None].repeat(n_noise, 1), generator=generator, **sample_kw))
    return torch.stack(out)  # (P, K, 3, S, S)


@pytest.mark.parametrize("name", list(CASES))
def test_batched_samples_equal_patient_by_patient(name):
    config, sample_kw = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, n_genes=12, image_size=16, **config).eval()
    profiles = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    expected = patient_by_patient(model, profiles, 3, seed=4, **sample_kw)
    for batch_size in (3, 6, 64):  # chunks of 1 and 2 patients, and one call for all five
        batched = same_noise_samples(model, profiles, 3, seed=4, batch_size=batch_size, **sample_kw)
        assert batched.shape == expected.shape
        # Other batch sizes take other matmul kernels: DDIM with guidance (1 / sqrt(alpha_bar)
        # amplifies them) differs by ~3e-4 on some CPUs. Another noise draw differs by O(1).
        torch.testing.assert_close(batched, expected, rtol=1e-3, atol=1e-3)


def test_one_profile_for_everyone_gives_identical_tiles():
    model = build_model("cgan", n_genes=12, image_size=16).eval()
    same = torch.randn(1, 12).expand(4, 12)
    images = same_noise_samples(model, same, 2, seed=0, batch_size=4)  # chunks of 2 patients
    assert all(torch.equal(images[0], images[p]) for p in range(1, 4))
    assert not torch.equal(images[0, 0], images[0, 1])  # the noises differ from each other


def test_the_same_profile_for_every_patient_differs_by_nothing():
    model = build_model("cvae", n_genes=12, image_size=16).eval()
    c = np.repeat(np.random.default_rng(0).normal(size=(1, 12)), 4, axis=0).astype(np.float32)
    result = conditioning_difference(model, c, n_noise=2, batch_size=4)  # two calls of two patients
    assert result == {"different patients": 0.0, "shuffled RNA": 0.0, "ratio": 0.0}
