"""The shared loop, run folders, resume, non-finite losses and generation, on a real small model."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from rna2histo.errors import UserError
from rna2histo.generate import generate, load_run
from rna2histo.models import model_class
from rna2histo.models.base import adam
from rna2histo.runs import load_checkpoint
from rna2histo.training.loop import fit
from rna2histo.training.step import NonFiniteLoss, Step

from .conftest import interrupt_after, write_tiny_cohort

FAST = dict(model="cvae", batch_size=8, device="cpu", progress=False, sample_patients=2)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "cohort"
    write_tiny_cohort(out, patients=10, tiles_per_patient=4, size=32, genes=24)
    return out


def test_a_step_computes_gradients_for_its_own_optimiser_only():
    """The generator's loss passes through the discriminator: no gradient may land there."""
    torch.manual_seed(0)
    g, d = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    step = Step({"g": (adam(g.parameters(), lr=0.1), None), "d": (adam(d.parameters(), lr=0.1), None)},
                torch.device("cpu"))
    before = {k: v.clone() for k, v in d.state_dict().items()}
    step("g", d(g(torch.randn(4, 3))).sum())
    assert g.weight.grad is not None and g.weight.grad.abs().sum() > 0
    assert d.weight.grad is None and d.bias.grad is None
    assert all(torch.equal(v, d.state_dict()[k]) for k, v in before.items())


def test_cpu_bf16_is_granted_only_where_the_cpu_computes_bf16(tmp_path, monkeypatch):
    from rna2histo.training import step as train

    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert train.cpu_has_bf16(info)
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not train.cpu_has_bf16(info) and not train.cpu_has_bf16(tmp_path / "absent")
    layer, x = torch.nn.Linear(3, 3), torch.randn(2, 3)
    optimisers = {"g": (adam(layer.parameters(), lr=0.1), None)}
    for native, asked, dtype in [(True, True, torch.bfloat16), (False, True, torch.float32),
                                 (True, False, torch.float32)]:
        monkeypatch.setattr(train, "cpu_has_bf16", lambda: native)
        step = Step(optimisers, torch.device("cpu"), cpu_bf16=asked)
        with step.autocast():
            assert layer(x).dtype == dtype


def test_cpu_bf16_trains_records_its_precision_and_is_part_of_the_run(cohort_dir, tmp_path, monkeypatch):
    import json

    from rna2histo.training import step as train

    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)  # any CPU: torch emulates bf16 where it must
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "bf16", epochs=1, cpu_bf16=True, **FAST)
    assert json.loads((run / "params.json").read_text())["precision"] == "bfloat16"
    assert np.isfinite(pd.read_csv(run / "metrics.csv").val_loss).all()
    with pytest.raises(UserError, match=r"cpu_bf16=True \(asked: False\)"):
        fit(cohort_dir=cohort_dir, run_dir=run, epochs=1, resume=True, **FAST)
    plain = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "fp32", epochs=1, **FAST)
    assert json.loads((plain / "params.json").read_text())["precision"] == "float32"


def test_run_folder_layout(cohort_dir, tmp_path):
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "run", epochs=2, ckpt_every=2, **FAST)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_002.pt", "last.pt"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.epoch) == [1, 2] and {"train_loss", "val_loss", "lr_main"} <= set(metrics.columns)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert (run / "params.json").exists()
    # plain values only: loads with weights_only=True, never unpickles a module
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["model"] == "cvae"
    assert {"state_dict", "optimizers", "scaler", "normaliser", "config", "format_version"} <= set(state)


@pytest.mark.parametrize("model", ["cvae", "cgan"])  # step-decay and cosine schedules
def test_resume_equals_an_uninterrupted_run(cohort_dir, tmp_path, monkeypatch, model):
    fast = {**FAST, "model": model}
    straight = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "a", epochs=3, **fast)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            fit(cohort_dir=cohort_dir, run_dir=tmp_path / "b", epochs=3, **fast)
    resumed = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "b", epochs=3, resume=True, **fast)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(pd.read_csv(resumed / "metrics.csv").epoch) == [1, 2, 3]


def test_best_is_the_latest_epoch_where_validation_loss_does_not_track_quality(cohort_dir, tmp_path,
                                                                             monkeypatch):
    from rna2histo.models.cgan import CGAN

    losses = iter(range(100))  # a validation loss that rises every batch and epoch
    monkeypatch.setattr(CGAN, "validation_step", lambda self, batch: {"loss": float(next(losses))})
    fast = {**FAST, "model": "cgan"}
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "last", epochs=3, **fast)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 3
    monkeypatch.setattr(CGAN, "best_by_validation", True)  # as the other three models
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "lowest", epochs=3, **fast)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1


def test_resume_refuses_another_model_config_or_schedule(cohort_dir, tmp_path):
    fit(cohort_dir=cohort_dir, run_dir=tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(UserError, match=r"cannot resume: .* different model config \(z_dim: \d+ -> 7\)"):
        fit(cohort_dir=cohort_dir, run_dir=tmp_path / "r", epochs=1, resume=True, z_dim=7, **FAST)
    with pytest.raises(UserError, match="cannot resume: .* for 1 epochs"):
        fit(cohort_dir=cohort_dir, run_dir=tmp_path / "r", epochs=2, resume=True, **FAST)


def test_resume_refuses_a_changed_seed_batch_augment_or_cohort_and_params_json_stays_true(
        cohort_dir, tmp_path):
    """Defect 2 of issue 23: a resume that changed what the run is continued it under its name."""
    import json
    import re
    import shutil

    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "r", epochs=1, **FAST)
    before = (run / "params.json").read_bytes()
    other_cohort = shutil.copytree(cohort_dir, tmp_path / "copy")  # same tiles, another cohort_dir
    for change, shown in [({"seed": 1}, "seed=0 (asked: 1)"), ({"augment": "none"}, "augment='study'"),
                          ({"cohort_dir": other_cohort}, "cohort_dir=")]:
        settings = {**FAST, "cohort_dir": cohort_dir, **change}
        with pytest.raises(UserError, match="cannot resume: the run was trained with " + re.escape(shown)):
            fit(run_dir=run, epochs=1, resume=True, **settings)
    with pytest.raises(UserError, match=r"batch_size=8 \(asked: 4\)"):
        fit(cohort_dir=cohort_dir, run_dir=run, epochs=1, resume=True, **{**FAST, "batch_size": 4})
    assert (run / "params.json").read_bytes() == before
    fit(cohort_dir=cohort_dir, run_dir=run, epochs=1, resume=True, ckpt_every=5, **FAST)  # may change
    params = json.loads((run / "params.json").read_text())
    assert params["ckpt_every"] == 5 and params["resumes"] == [{"epoch": 1, "changed": {"ckpt_every": [10, 5]}}]


def test_a_field_added_after_a_run_takes_its_default_on_resume():
    from rna2histo.models.cgan import CGANConfig
    from rna2histo.training.identity import config_changes

    cfg = CGANConfig.preset("small", n_genes=10, image_size=32)
    older = {k: v for k, v in cfg.to_dict().items() if k != "d_augment"}  # saved before the field
    assert config_changes(CGANConfig.from_saved(older), cfg) == ""
    cut = CGANConfig.preset("small", n_genes=10, image_size=32, d_augment="cutout")
    assert config_changes(CGANConfig.from_saved(older), cut) == "d_augment: 'none' -> 'cutout'"
    with pytest.raises(UserError, match="CGANConfig has fields this version does not know: g_widths"):
        CGANConfig.from_saved({**older, "g_widths": (1, 2)})  # a field since removed


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(cohort_dir, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            fit(cohort_dir=cohort_dir, run_dir=tmp_path / "nan", epochs=3, **FAST)
    run = tmp_path / "nan"
    cls = model_class("cvae")
    original = cls.training_step

    def poisoned(self, batch, step):  # fault injection: a NaN image reaches the real loss
        x, c, p = batch
        return original(self, (x * float("nan"), c, p), step)

    monkeypatch.setattr(cls, "training_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"last good checkpoint: .*last.pt \(epoch 1\)"):
        fit(cohort_dir=cohort_dir, run_dir=run, epochs=3, resume=True, **FAST)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


def test_generate_from_a_run(cohort_dir, tmp_path):
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "g", epochs=1, **FAST)
    loaded = load_run(run)
    rna = pd.read_parquet(cohort_dir / "rna.parquet").iloc[:3]
    images, index, alignment = generate(loaded, rna, n=2, seed=1)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert list(index.patient_id) == [p for p in rna.index for _ in range(2)]
    again, _, _ = generate(loaded, rna, n=2, seed=1)
    assert np.array_equal(images, again)
    assert alignment["genes_missing_filled_with_median"] == 0

    # the command line, with a profile that lacks a gene and has an extra one
    table = rna.drop(columns=["G0"]).assign(NOT_A_GENE=1.0)
    table.to_csv(tmp_path / "new.csv")
    out = tmp_path / "tiles"
    result = subprocess.run(
        [sys.executable, "-m", "rna2histo", "generate", "--run", str(run), "--rna", str(tmp_path / "new.csv"),
         "--n", "2", "--out", str(out), "--seed", "3"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "1 missing" in result.stdout and "1 extra ignored" in result.stdout
    index = pd.read_csv(out / "index.csv")
    assert len(index) == 6 and all((out / f).exists() for f in index.file)


def test_a_finished_run_of_the_same_settings_and_code_is_reused_and_a_changed_one_retrained(
        cohort_dir, tmp_path, capsys):
    run = fit(cohort_dir=cohort_dir, run_dir=tmp_path / "run", epochs=1, **FAST)
    stamp = (run / "metrics.csv").stat().st_mtime_ns
    assert fit(cohort_dir=cohort_dir, run_dir=run, epochs=1, **{**FAST, "progress": True}) == run
    assert (run / "metrics.csv").stat().st_mtime_ns == stamp  # nothing trained
    assert "reusing the finished run" in capsys.readouterr().out
    fit(cohort_dir=cohort_dir, run_dir=run, epochs=1, seed=1, **{**FAST, "progress": True})
    out = capsys.readouterr().out
    assert "retraining" in out and "seed=0 (asked: 1)" in out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["params"]["seed"] == 1


def test_the_training_code_version_leaves_out_whole_packages_and_counts_the_rest():
    from pathlib import Path

    import rna2histo
    from rna2histo.paths import source_version
    from rna2histo.training.identity import NOT_TRAINING, training_code_version

    package = Path(rna2histo.__file__).parent
    bench_files = tuple(p.relative_to(package).as_posix() for p in (package / "bench").rglob("*.py"))
    assert len(bench_files) > 1
    # "bench/" leaves out exactly the package's files, nothing more
    assert source_version(exclude=("bench/",)) == source_version(exclude=bench_files) != source_version()
    assert training_code_version() == source_version(exclude=NOT_TRAINING)
    # the loop and the held-out check that picks the best checkpoint are training code
    for counted in ("training/loop.py", "evaluation/reprediction.py", "models/diffusion.py"):
        assert training_code_version() != source_version(exclude=(*NOT_TRAINING, counted))
