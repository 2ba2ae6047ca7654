"""The GPU fast path's switches: resolved per device, recorded, and on a CPU either off (the plain
path; fused Adam is on by default there too) or, when asked for, numerically the plain path's.
No test here touches CUDA."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from rna2histo.__main__ import main
from rna2histo.errors import UserError
from rna2histo.generate import load_run
from rna2histo.models import MODELS, build_model
from rna2histo.runs import load_checkpoint
from rna2histo.training import fastpath
from rna2histo.training import loop as train
from rna2histo.training.distributed import _as_grad_of
from rna2histo.training.fastpath import FastPath, fast_path
from rna2histo.training.loop import fit

from .conftest import write_tiny_cohort

FAST = dict(model="cvae", batch_size=8, device="cpu", progress=False, sample_patients=2)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object makes no CUDA call
PLAIN = dict(channels_last=False, fused=False, cudnn_benchmark=False, compile=False, workers=0,
             pin_memory=False)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fastpath") / "cohort"
    write_tiny_cohort(out, patients=10, tiles_per_patient=4, size=32, genes=24)
    return out


def test_auto_is_fused_adam_alone_on_a_cpu_and_everything_on_cuda(monkeypatch):
    assert fast_path(CPU) == FastPath(**{**PLAIN, "fused": True})
    monkeypatch.setattr(fastpath, "_cpus", lambda: 16)
    on = fast_path(CUDA)
    assert (on.channels_last, on.fused, on.cudnn_benchmark, on.pin_memory) == (True, True, True, True)
    assert on.workers == 8 and not on.compile  # at most 8 workers; compile is opt-in
    assert fast_path(CUDA, processes=4).workers == 4  # four processes share the 16 CPUs
    assert fast_path(CUDA, workers=None).workers == 8


def test_explicit_switches_win_over_auto():
    off = fast_path(CUDA, channels_last=False, fused=False, cudnn_benchmark=False, workers=0)
    assert off == FastPath(pin_memory=True)  # pinning follows the device alone
    on = fast_path(CPU, channels_last=True, fused=True, cudnn_benchmark=True, compile=True, workers=2)
    assert on == FastPath(True, True, True, True, 2, pin_memory=False)


@pytest.mark.parametrize("workers", [-1, 1.5, "many", True])
def test_bad_workers_are_a_user_error(workers):
    with pytest.raises(UserError, match="workers must be 'auto' or an integer >= 0"):
        fast_path(CPU, workers=workers)


def test_fused_is_refused_where_torch_has_no_fused_adam():
    with pytest.raises(UserError, match="fused=True: .* no fused Adam for meta"):
        fast_path(torch.device("meta"), fused=True)
    assert not fast_path(torch.device("meta")).fused  # auto never asks for it there


@pytest.mark.parametrize("name", list(MODELS))
def test_optimisers_are_torchs_default_unless_fused(name):
    extra = {"perceptual": "none"} if name == "hybrid" else {}
    model = build_model(name, n_genes=12, image_size=16, **extra)
    # fused=None, not False: the implementation torch picked before the fast path existed
    assert {opt.defaults["fused"] for opt, _ in model.configure_optimizers(1).values()} == {None}
    assert {opt.defaults["fused"] for opt, _ in model.configure_optimizers(1, fused=True).values()} == {True}


def test_channels_last_batches_and_cudnn_flag_restored():
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2, 5)
    moved = FastPath(channels_last=True).to_device([x, c], CPU)
    assert moved[0].is_contiguous(memory_format=torch.channels_last) and moved[1].is_contiguous()
    assert torch.equal(moved[0], x)
    before = torch.backends.cudnn.benchmark
    with FastPath(cudnn_benchmark=True).backends():
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


def test_averaged_gradients_keep_the_parameters_layout():
    p = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    values = torch.arange(p.numel(), dtype=torch.float32)
    grad = _as_grad_of(p, values)
    assert grad.stride() == p.stride()  # CUDA's fused Adam refuses grads laid out otherwise
    assert torch.equal(grad, values.view(4, 3, 2, 2))  # logical order kept


def test_params_json_records_the_resolved_switches(cohort_dir, tmp_path):
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "plain", epochs=1, **FAST)
    params = json.loads((run / "params.json").read_text())
    assert params["fast_path"] == {**PLAIN, "fused": True}  # a CPU's auto: fused Adam alone
    assert params["workers"] == "auto" and params["channels_last"] is None  # as asked


SMALL = {"cgan": {}, "cvae": {}, "diffusion": {"sample_steps": 2}, "hybrid": {"perceptual": "none"}}


@pytest.mark.parametrize("model", list(SMALL))
def test_channels_last_and_fused_on_a_cpu_give_the_plain_losses(cohort_dir, tmp_path, model):
    kw = {**FAST, "model": model, **SMALL[model]}
    plain = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "plain", epochs=2, fused=False, **kw)
    fast = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "fast", epochs=2, channels_last=True,
               fused=True, **kw)
    assert json.loads((fast / "params.json").read_text())["fast_path"] == {
        **PLAIN, "channels_last": True, "fused": True}
    a, b = (pd.read_csv(run / "metrics.csv") for run in (plain, fast))
    losses = [k for k in a.columns if k.startswith(("train_", "val_"))]
    # measured: relative differences below 1e-6 (other conv kernels, other summation order);
    # the diffusion noise drawn in memory order once made them 1e-2
    np.testing.assert_allclose(b[losses].to_numpy(), a[losses].to_numpy(), rtol=1e-4, atol=1e-6)


def test_compile_keeps_the_checkpoint_keys(cohort_dir, tmp_path, monkeypatch):
    compiled, real = [], torch.compile

    def compile(fn, *args, **kw):  # aot_eager: traces forward and backward, generates no C++
        compiled.append(fn.__self__)
        return real(fn, *args, **{**kw, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile)  # what nn.Module.compile() calls
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "compiled", epochs=1, compile=True, **FAST)
    plain = build_model("cvae", n_genes=24, image_size=32)
    assert len(compiled) == len(list(plain.children()))  # each network: rna, encoder, decoder
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    assert state.keys() == plain.state_dict().keys()  # no `_orig_mod.` prefixes
    load_run(run)  # a plain model loads it
    assert json.loads((run / "params.json").read_text())["fast_path"]["compile"] is True


def test_the_train_command_asks_for_compile(cohort_dir, tmp_path, monkeypatch):
    asked = {}
    monkeypatch.setattr(train, "fit", lambda model, **params: asked.update(params) or tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text(f"cohort_dir: {cohort_dir}\nimage_size: 32\ndevice: cpu\n")
    assert main(["train", "cvae", "-f", str(params)]) == 0 and asked["compile"] is False
    assert main(["train", "cvae", "-f", str(params), "--compile"]) == 0 and asked["compile"] is True


def test_prepare_compiles_each_network_in_place():
    model = build_model("cgan", n_genes=12, image_size=16)
    keys = model.state_dict().keys()
    FastPath(compile=True).prepare(model)
    assert all(net._compiled_call_impl is not None for net in model.children())
    assert model.state_dict().keys() == keys


def test_the_train_command_overrides_the_rna_encoder(cohort_dir, tmp_path, monkeypatch):
    asked = {}
    monkeypatch.setattr(train, "fit", lambda model, **params: asked.update(params) or tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text(f"cohort_dir: {cohort_dir}\nimage_size: 32\ndevice: cpu\nrna_encoder: pca\n")
    assert main(["train", "cvae", "-f", str(params)]) == 0 and asked["rna_encoder"] == "pca"
    assert main(["train", "cvae", "-f", str(params), "--rna-encoder", "betavae", "--rna-latent", "16"]) == 0
    assert asked["rna_encoder"] == "betavae" and asked["rna_latent"] == 16
