"""Training on two processes (torchrun, gloo on CPU) and from a chapter's parameters file.

Two processes at batch 4 take the steps of one process at batch 8: the same batches (each cut
in two) and the averaged gradient. Their random draws differ by design (each process has its
own, see `rna2histo.training.distributed`), so the comparison fixes them: no augmentation, and diffusion
timesteps, noise and dropped conditions as functions of the tile instead of draws.

Run by torchrun, this module is one training process (see `_worker`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from rna2histo.__main__ import main
from rna2histo.data import dataset as data
from rna2histo.data.rna import fit_on_training
from rna2histo.errors import UserError
from rna2histo.generate import load_run
from rna2histo.models.diffusion import Diffusion
from rna2histo.paths import ROOT
from rna2histo.runs import load_checkpoint
from rna2histo.training import distributed
from rna2histo.training.distributed import World, sharded_loader
from rna2histo.training.loop import Trainer, fit

from .conftest import write_tiny_cohort

# chapter parameters: two epochs of 4 steps at 16 px (36 training tiles, 8 per step)
PARAMS = dict(epochs=2, batch_size=4, image_size=16, device="cpu", ckpt_every=1, seed=3)


def fixed_noise_step(self, batch, step):
    """`Diffusion.training_step` with t, noise and the dropped conditions fixed per tile."""
    x, c, p = batch
    t = (p * 97 + 13) % self.cfg.timesteps
    noise = torch.sin(7 * x + p[:, None, None, None])  # not Gaussian: a fixed field per tile
    drop = p % 3 == 0  # on some steps one process drops a condition and the other none
    with step.autocast():
        loss = self.denoising_loss(self.net, x, c, t, noise, drop)
    return {"loss": step("main", loss)}


@contextlib.contextmanager
def fixed_randomness():
    saved = Diffusion.training_step, data.augmentation
    Diffusion.training_step, data.augmentation = fixed_noise_step, lambda name, image_size: None
    try:
        yield
    finally:
        Diffusion.training_step, data.augmentation = saved


def write_params(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _average(out: Path, world: World) -> None:
    """`average_gradients` on gradients that differ by process; the result goes to `out`."""
    a, b, c = (torch.zeros(n, requires_grad=True) for n in (3, 2, 1))
    a.grad = torch.full((3,), world.rank + 1.0)
    b.grad = torch.full((2,), 4.0) if world.rank == 1 else None  # reached on one process only
    loss = distributed.average_gradients([a, b, c], float(world.rank + 1), world)
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad, "loss": loss}, out / f"average_{world.rank}.pt")


@contextlib.contextmanager
def interrupted_after_one_epoch():
    """Ctrl-C on every process at the start of epoch 2."""
    original = Trainer.train_epoch

    def train_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self)

    Trainer.train_epoch = train_epoch
    try:
        yield
    finally:
        Trainer.train_epoch = original


def _worker(out: Path) -> int:
    """One torchrun process: gradient averaging, then the runs, through the command line.

    One session for all: torch cannot open a process group again after closing one.
    """
    train = ["train", "cgan", "-f", str(out / "cgan.yaml"), "--run-dir"]
    with distributed.session(torch.device("cpu")) as world:
        _average(out, world)
        with fixed_randomness():
            code = main(["train", "diffusion", "-f", str(out / "diffusion.yaml"), "--run-dir", str(out / "diffusion")])
        code = code or main([*train, str(out / "cgan")])
        with interrupted_after_one_epoch():
            assert main([*train, str(out / "resumed")]) == 130
        return code or main([*train, str(out / "resumed"), "--resume"])


def torchrun(*args: str, timeout: int = 300) -> str:
    """``torchrun --standalone --nproc_per_node 2 ARGS``; its process group is killed on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """On two gloo processes at batch 4: a diffusion run (fixed randomness), a cGAN run, and the
    same cGAN run interrupted after its first epoch and resumed."""
    out = tmp_path_factory.mktemp("ddp")
    cohort = out / "cohort"
    write_tiny_cohort(cohort, patients=10, tiles_per_patient=6, size=16, genes=12)
    write_params(out / "diffusion.yaml", cohort_dir=str(cohort), **PARAMS, sample_steps=2, cond_dropout=0.5)
    write_params(out / "cgan.yaml", cohort_dir=str(cohort), **PARAMS, z_dim=8)
    log = torchrun("-m", "tests.test_distributed", str(out))
    return out, log


def state_dict(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]


def test_the_shards_of_a_step_are_the_one_process_batch(tiny_cohort):
    train = data.TileDataset(tiny_cohort, "train", fit_on_training(tiny_cohort), augment="none")
    one = [p for _, _, p in data.make_loader(train, 6, shuffle=True, seed=5, drop_last=True)]
    shards = [list(sharded_loader(train, 3, World(rank, 2), seed=5)) for rank in (0, 1)]
    two = [torch.cat([a[2], b[2]]) for a, b in zip(*shards, strict=True)]
    assert len(one) == len(two) == len(train) // 6
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_gradients_are_averaged_over_processes(two_processes):
    out, _ = two_processes
    for rank in (0, 1):
        got = torch.load(out / f"average_{rank}.pt")
        assert torch.equal(got["a"], torch.full((3,), 1.5)) and got["loss"] == 1.5
        assert torch.equal(got["b"], torch.full((2,), 2.0))  # the mean counts the process without one
        assert got["c"] is None  # reached by no process: the optimiser skips it, as on one


def test_two_processes_track_one_process_at_twice_the_batch(two_processes, tmp_path):
    out, _ = two_processes
    with fixed_randomness():
        params = write_params(tmp_path / "one.yaml", **{**yaml.safe_load((out / "diffusion.yaml").read_text()),
                                                        "batch_size": 8})
        assert main(["train", "diffusion", "-f", str(params), "--run-dir", str(tmp_path / "one")]) == 0
    one, two = state_dict(tmp_path / "one"), state_dict(out / "diffusion")
    assert one.keys() == two.keys()
    # Float sums in another order, over 8 AdamW steps (lr 1e-4) and the EMA. Adam divides by
    # sqrt(v), so where a gradient is near zero the order alone moved a weight by 1.7e-5 (one
    # element of the three-level U-Net); a wrong average moves nearly all of them by ~1e-4.
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=5e-5, msg=lambda m: f"{key}: {m}")
    assert not torch.equal(two["net.null"], torch.zeros_like(two["net.null"]))  # reached via one process
    m1, m2 = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(out / "diffusion" / "metrics.csv")
    assert list(m2.epoch) == [1, 2]
    assert m2.train_loss.to_numpy() == pytest.approx(m1.train_loss.to_numpy(), rel=1e-4)


def test_a_run_written_by_two_processes_loads_in_one(two_processes, capsys):
    out, log = two_processes
    run = out / "cgan"
    loaded = load_run(run, "last")
    keys = list(state_dict(run))
    assert not any(k.startswith("module.") for k in keys)
    assert keys == list(loaded.model.state_dict())
    params = load_checkpoint(run / "checkpoints" / "last.pt")["params"]
    assert (params["processes"], params["batch_size"]) == (2, 4)
    # process 0 alone wrote the folder: one row per epoch, one grid per epoch, no temporary files
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2]
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert files == ["checkpoints/best.pt", "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt",
                     "checkpoints/last.pt", "metrics.csv", "params.json", "samples/epoch_001.png",
                     "samples/epoch_002.png"]
    assert log.count("cgan: 2 epochs on cpu x 2 processes; lowest val_loss") == 2  # this run, "resumed"
    assert log.count(f"run in {run}\n") == 1  # printed by process 0 alone
    # resuming on one process would change a step's batch: refused, the run left as it was
    assert main(["train", "cgan", "-f", str(out / "cgan.yaml"), "--run-dir", str(run), "--resume"]) == 2
    assert "cannot resume: the run trained on 2 processes" in capsys.readouterr().err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == files


def test_a_run_resumed_on_two_processes_equals_an_uninterrupted_one(two_processes):
    out, _ = two_processes
    a, b = state_dict(out / "cgan"), state_dict(out / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(pd.read_csv(out / "resumed" / "metrics.csv").epoch) == [1, 2]


def test_the_train_command_is_fit_with_the_files_values(tiny_cohort, tmp_path, capsys):
    values = dict(cohort_dir=str(tiny_cohort.root), epochs=1, batch_size=6, device="cpu", seed=2, lr=1e-3)
    params = write_params(tmp_path / "p.yaml", **values, image_size=16, sample_steps=2)
    assert main(["train", "diffusion", "-f", str(params), "--run-dir", str(tmp_path / "cli")]) == 0
    defaults = dict(model_size="small", amp=True, ckpt_every=10, guidance=1.0, cond_dropout=0.1)
    fit("diffusion", run_dir=tmp_path / "fit", **values, **defaults, sample_steps=2, progress=False)
    a, b = state_dict(tmp_path / "cli"), state_dict(tmp_path / "fit")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # train=False shows a trained run and trains nothing
    last = tmp_path / "cli" / "checkpoints" / "last.pt"
    before = last.stat().st_mtime_ns
    assert fit("diffusion", run_dir=tmp_path / "cli", **values, train=False) == tmp_path / "cli"
    assert last.stat().st_mtime_ns == before and "has trained 1 of 1 epochs" in capsys.readouterr().out
    with pytest.raises(UserError, match="train=False, but there is no last.pt"):
        fit("diffusion", run_dir=tmp_path / "none", **values, train=False)

    # a key the chapter does not have, an image size the cohort does not have, another chapter's
    # file, text for a number: one line each, naming the file (the cohort for its size)
    cases = [("bad.yaml", dict(lr_g=1e-4), "bad.yaml: unknown parameter 'lr_g'"),
             ("size.yaml", dict(image_size=32), f"{tiny_cohort.root}: the cohort has 16 px tiles"),
             ("02_cvae.yaml", {}, "02_cvae.yaml: is chapter 02_cvae's file"),
             ("lr.yaml", dict(lr="2e-4"), "lr.yaml: lr: expected a number, got '2e-4'")]
    for name, extra, message in cases:
        bad = write_params(tmp_path / name, **{**values, **extra})
        assert main(["train", "diffusion", "-f", str(bad), "--run-dir", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "bad").exists()


if __name__ == "__main__":  # a torchrun process of `two_processes`
    sys.exit(_worker(Path(sys.argv[1])))
