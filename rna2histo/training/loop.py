"""The one training loop for every generator (`fit`), as one generator's run goes through it.

The loop knows no model's losses: a model's ``training_step`` computes them and hands each to
`rna2histo.training.step.Step`, which backpropagates, clips the gradient norm at 1.0 and steps (see
`rna2histo.models.base`). The loop owns everything else: seeding, the device, mixed precision,
the GPU fast path (`rna2histo.training.fastpath`), validation, ``metrics.csv``, fixed-noise sample grids
and checkpoints (`rna2histo.runs`).

Every epoch re-seeds from (seed, epoch), so a run stopped after epoch k and resumed from its
``last`` checkpoint draws exactly the batches, augmentations and noise of an uninterrupted run.

Under torchrun the same loop trains on several processes (`rna2histo.training.distributed`): `Step`
averages gradients over them, each process trains on its shard of every batch, and process 0
alone validates and writes the run folder.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..cohort import load_cohort
from ..data.dataset import TileDataset, make_loader, to_uint8
from ..data.latent import Latent, fit_latent, reconstruction_report
from ..data.rna import Normaliser, fit_on_training
from ..evaluation.reprediction import ValidationCheck
from ..models import Generator, build_model
from ..paths import RUNS, atomic_write, resolve
from ..runs import (
    read_metrics,
    save_checkpoint,
    trained_run,
    write_json,
    write_metrics,
)
from ..settings import check_fit
from . import distributed
from .autoencoder import prepare as prepare_autoencoder
from .distributed import World
from .fastpath import SWITCHES, FastPath, fast_path
from .identity import matching_checkpoint, record_resume, reusable_run, training_code_version
from .step import NonFiniteLoss, Step, pick_device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: resuming at epoch k replays exactly what epoch k would have drawn."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclass
class Trainer:
    """The state of one run: model, data, optimisers and where they are written."""

    model: Generator
    run_dir: Path
    params: dict
    normaliser: Normaliser
    train: TileDataset
    val: TileDataset
    device: torch.device
    world: World = field(default_factory=World)
    latent: Latent | None = None  # the frozen RNA latent between normaliser and model, if any
    check: ValidationCheck | None = None  # held-out faithfulness every ckpt_every epochs, if asked
    optimizers: dict = field(default_factory=dict)
    epoch: int = 0
    best_val: float = math.inf
    best_reprediction: float = -math.inf  # the best val_reprediction so far, when `check` runs
    history: list = field(default_factory=list)
    bar: tqdm | None = None
    fast: FastPath = field(init=False, repr=False)

    def __post_init__(self):
        self.fast = self.resolve_fast_path()  # before the optimisers: compile and layout act on the model
        self.optimizers = self.model.configure_optimizers(self.params["epochs"], fused=self.fast.fused)
        self.step = Step(self.optimizers, self.device, amp=self.params["amp"], world=self.world,
                         cpu_bf16=self.params.get("cpu_bf16", False))
        self.params["precision"] = str(self.step.amp_dtype or torch.float32).removeprefix("torch.")

    def resolve_fast_path(self) -> FastPath:
        """The fast path's switches resolved for this device, recorded in params; the model prepared."""
        switches = {k: self.params[k] for k in SWITCHES if k in self.params}
        fast = fast_path(self.device, self.world.size, **switches)
        self.params["fast_path"] = dataclasses.asdict(fast)  # what ran, in params.json and checkpoints
        fast.prepare(self.model)
        return fast

    # -- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.name,
            "config": self.model.cfg.to_dict(),
            "state_dict": self.model.state_dict(),
            "optimizers": {n: opt.state_dict() for n, (opt, _) in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, (_, s) in self.optimizers.items() if s is not None},
            "scaler": self.step.scaler.state_dict(),
            "normaliser": self.normaliser.state_dict(),
            "rna_latent": None if self.latent is None else self.latent.state_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "best_reprediction": self.best_reprediction,
            "params": self.params,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["state_dict"])
        for name, (opt, sched) in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            if sched is not None:
                sched.load_state_dict(state["schedulers"][name])
        self.step.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_val = state["epoch"], state["best_val"]
        self.best_reprediction = state.get("best_reprediction", -math.inf)
        # rows of epochs after the checkpoint (a kill between metrics and checkpoint) are dropped
        self.history = [r for r in read_metrics(self.run_dir / "metrics.csv") if r["epoch"] <= self.epoch]

    def save(self, is_best: bool) -> None:
        folder, state = self.run_dir / "checkpoints", self.state()
        if is_best:
            save_checkpoint(folder / "best.pt", state)
        if self.epoch % self.params["ckpt_every"] == 0:
            save_checkpoint(folder / f"epoch_{self.epoch:03d}.pt", state)
        save_checkpoint(folder / "last.pt", state)  # last, so resume never skips a best

    # -- one epoch
    def train_epoch(self) -> dict:
        """One pass over the training tiles; the mean of each metric over steps (and processes)."""
        self.model.train()
        seed = epoch_seed(self.params["seed"], self.epoch)
        torch.manual_seed(distributed.rank_seed(seed, self.world.rank))  # the batch order is `seed`'s
        loader = self.train_loader(seed)
        totals: dict[str, float] = {}
        if self.bar is None:  # one bar for the whole run, redrawn at most every few seconds
            steps, quiet = len(loader), not (self.params["progress"] and self.world.main)
            self.bar = tqdm(total=steps * self.params["epochs"], initial=steps * self.epoch, unit="step",
                            mininterval=5, disable=quiet, desc=self.model.name)
        bar = self.bar
        for n, batch in enumerate(loader, start=1):
            metrics = self.model.training_step(self.to_device(batch), self.step)
            self.model.on_step_end()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.update()
            bar.set_postfix({"epoch": self.epoch + 1, **{k: f"{v / n:.3f}" for k, v in list(totals.items())[:2]}},
                            refresh=False)
        for _, sched in self.optimizers.values():
            if sched is not None:
                sched.step()
        return self.world.mean({f"train_{k}": v / max(n, 1) for k, v in totals.items()})

    def train_loader(self, seed: int):
        """This epoch's batches, shuffled by `seed`; on several processes, this one's shards."""
        size, workers, pin = self.params["batch_size"], self.fast.workers, self.fast.pin_memory
        if self.world.size > 1:
            return distributed.sharded_loader(self.train, size, self.world, seed, workers, pin_memory=pin)
        drop_last = len(self.train) > size
        return make_loader(self.train, size, shuffle=True, seed=seed, workers=workers, drop_last=drop_last,
                           pin_memory=pin)

    @torch.no_grad()
    def validate(self) -> dict:
        self.model.eval()
        torch.manual_seed(self.params["seed"])  # the same validation noise every epoch
        totals, batches = {}, 0
        val = make_loader(self.val, self.params["batch_size"], shuffle=False, pin_memory=self.fast.pin_memory)
        for batch in val:
            with self.step.autocast():
                metrics = self.model.validation_step(self.to_device(batch))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            batches += 1
        return {f"val_{k}": v / max(batches, 1) for k, v in totals.items()}

    def to_device(self, batch):
        return self.fast.to_device(batch, self.device)

    @torch.no_grad()
    def sample_grid(self, patients: list[int], per_patient: int = 4) -> np.ndarray:
        """Rows: one real tile of each fixed val patient, then samples from fixed noise."""
        self.model.eval()
        c = self.val.c[patients].repeat_interleave(per_patient, 0).to(self.device)
        generator = torch.Generator(self.device).manual_seed(self.params["seed"])
        fake = to_uint8(self.model.sample(c, generator=generator))
        rows = []
        for k, p in enumerate(patients):
            real = self.val[int(np.flatnonzero(self.val.patient.numpy() == p)[0])][0]
            rows.append([to_uint8(real[None])[0], *fake[k * per_patient : (k + 1) * per_patient]])
        return mosaic(rows)


def mosaic(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile rows of equal-size uint8 images into one image with white gaps."""
    s = rows[0][0].shape[0]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (s + gap) - gap, ncol * (s + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            out[i * (s + gap) : i * (s + gap) + s, j * (s + gap) : j * (s + gap) + s] = image
    return out


def fit(
    model: str,
    cohort_dir: str | Path,
    run_dir: str | Path | None = None,
    *,
    epochs: int,
    batch_size: int,
    model_size: str = "small",
    device: str = "auto",
    seed: int = 0,
    resume: bool = False,
    amp: bool = True,
    cpu_bf16: bool = False,
    ckpt_every: int = 10,
    workers: int | str = "auto",
    channels_last: bool | None = None,
    fused: bool | None = None,
    cudnn_benchmark: bool | None = None,
    compile: bool = False,
    sample_patients: int = 4,
    progress: bool = True,
    train: bool = True,
    rna_encoder: str = "mlp",
    rna_latent: int = 200,
    rna_beta: float = 1.0,
    augment: str = "study",
    reprediction_tiles: int = 0,
    **options,
) -> Path:
    """Train `model` on a cohort; returns the run folder. `options` override model config fields.

    `rna_encoder` conditions the model on all normalised genes (``mlp``, the study) or on a
    compact latent fitted on the training patients (``pca`` with `rna_latent` components, or
    ``betavae`` with a `rna_latent`-dimensional posterior mean and KL weight `rna_beta`); see
    `rna2histo.data.latent`. The fitted latent is saved in every checkpoint.

    `augment` names the training tiles' augmentation (`rna2histo.data.augment.augmentation`): "study"
    (flips, rotations, shift and colour jitter), "geometric" (the same without the colour jitter,
    which the generators learn to draw) or "none".

    `reprediction_tiles` > 0 measures held-out faithfulness while training: every `ckpt_every`
    epochs (and at the last) that many tiles per validation patient go through the cohort's RNA
    re-prediction regressor (`rna2histo.evaluation.reprediction`, trained once per cohort on the
    training patients' real tiles); metrics.csv logs it as ``val_reprediction`` and the ``best``
    checkpoint is the epoch where it is highest. It only selects: no loss ever sees it.

    `amp` is mixed precision on CUDA; `cpu_bf16` is bf16 autocast on a CPU that computes bf16
    natively (AVX512-BF16 or AMX), fp32 on one that does not. params.json records what ran as
    ``precision``.

    `batch_size` is per process: under torchrun (`rna2histo.training.distributed`) a step sees
    processes x batch_size tiles. ``train=False`` trains nothing and returns the folder of a run
    trained before, e.g. by ``torchrun ... -m rna2histo train``; its ``last`` checkpoint must exist.

    The GPU fast path (`rna2histo.training.fastpath`): `channels_last`, `cudnn_benchmark` and loader
    `workers` with pinned memory are on where the device is CUDA when left at None / "auto", off
    elsewhere; `fused` optimisers wherever torch has them (CUDA and CPU); `compile`
    (``torch.compile`` of each network) is opt-in.
    params.json records them as asked and, under ``fast_path``, as resolved.
    """
    params = {k: v for k, v in locals().items() if k not in ("options", "train")}
    params.update(cohort_dir=str(cohort_dir), run_dir=str(run_dir or RUNS / model / "default"), options=options)
    if not train:
        return trained_run(model, resolve(params["run_dir"]), progress)
    check_fit(params)  # every number, the model's too, before any work
    params["code_version"] = training_code_version()
    reused = reusable_run(params)
    if reused is not None:
        return reused
    with distributed.session(pick_device(device)) as world:
        return _fit(params, options, world)


# fit's named settings; the rest of a chapter's parameters are the model's config fields
FIT_KEYWORDS = frozenset(inspect.signature(fit).parameters) - {"options"}


def _fit(params: dict, options: dict, world: World) -> Path:
    last = resolve(params["run_dir"]) / "checkpoints" / "last.pt"
    resuming = params["resume"] and last.exists()
    trainer = _make_trainer(params, options, world, resuming)
    if resuming:
        state = matching_checkpoint(last, trainer)
        trainer.restore(state)
        record_resume(params, state["params"], trainer.epoch)
    elif world.main:
        _clear_run(trainer.run_dir)
    if world.main:
        write_json(trainer.run_dir / "params.json", params)
    fixed = sorted(set(trainer.val.patient.tolist()))[: params["sample_patients"]]
    try:
        with trainer.fast.backends():  # cuDNN benchmark mode for this run only
            while trainer.epoch < params["epochs"]:
                _run_epoch(trainer, fixed)
    except NonFiniteLoss as err:
        kept = f"last good checkpoint: {last} (epoch {trainer.epoch})" if last.exists() else "no checkpoint yet"
        raise NonFiniteLoss(f"{trainer.run_dir}: {err} in epoch {trainer.epoch + 1}; {kept}") from None
    finally:
        if trainer.bar is not None:
            trainer.bar.close()
    world.barrier()  # every process returns once process 0 has written the run folder
    if params["progress"] and world.main:
        best = min(trainer.history, key=lambda r: r["val_loss"])
        on = params["device_used"] + (f" x {world.size} processes" if world.size > 1 else "")
        kept = "" if trainer.model.best_by_validation else " (best checkpoint: the last epoch)"
        if math.isfinite(trainer.best_reprediction):
            kept = f"; best checkpoint by val_reprediction ({trainer.best_reprediction:.3f})"
        print(f"{params['model']}: {params['epochs']} epochs on {on}; lowest val_loss {best['val_loss']:.4f} "
              f"at epoch {best['epoch']}{kept}; run in {trainer.run_dir}")
    return trainer.run_dir


def _make_trainer(params: dict, options: dict, world: World, resuming: bool) -> Trainer:
    seed_everything(params["seed"])
    cohort = load_cohort(resolve(params["cohort_dir"]))
    normaliser = fit_on_training(cohort)
    latent = _fit_latent(params, cohort, normaliser)
    n_condition = normaliser.n_genes if latent is None else latent.dim
    net = build_model(params["model"], params["model_size"], n_genes=n_condition,
                      image_size=cohort.image_size, **options)
    net.initialise()
    if not resuming:  # a resumed run's checkpoint holds its autoencoder: none is trained or loaded for it
        prepare_autoencoder(net, cohort, params["seed"], params["progress"] and world.main)
    params["model_notes"] = net.run_notes()
    device = world.device
    params["device_used"] = str(device)
    params["processes"] = world.size  # the batch of a step is processes x batch_size
    world.broadcast_state(net.to(device))
    val = TileDataset(cohort, "val", normaliser, augment="none", latent=latent)
    check = None
    if params["reprediction_tiles"] and world.main:
        check = ValidationCheck.of(cohort, normaliser, val.c, params["reprediction_tiles"], params["seed"])
    return Trainer(
        model=net,
        run_dir=resolve(params["run_dir"]),
        params=params,
        normaliser=normaliser,
        train=TileDataset(cohort, "train", normaliser, augment=params["augment"], latent=latent),
        val=val,
        device=device,
        world=world,
        latent=latent,
        check=check,
    )


def _fit_latent(params: dict, cohort, normaliser) -> Latent | None:
    """The run's RNA latent, with its reconstruction error and variance kept per split in params."""
    latent = fit_latent(params["rna_encoder"], cohort, normaliser, dim=params["rna_latent"],
                        beta=params["rna_beta"], seed=params["seed"])
    if latent is not None:
        splits = {s: normaliser.transform(cohort.rna.loc[cohort.patients(s)])[0] for s in ("train", "val", "test")}
        report = reconstruction_report(latent, splits, splits["train"])
        settings = {k: v for k, v in latent.settings.items() if k != "history"}
        params["rna_latent_fit"] = {"dim": latent.dim, **settings, "report": report.round(4).to_dict("index")}
    return latent


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: the accelerator's allocations on CUDA, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _clear_run(run_dir: Path) -> None:
    """A fresh run replaces what an earlier run left in the same folder."""
    for name in ("checkpoints", "samples"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "metrics.csv").unlink(missing_ok=True)


def _run_epoch(trainer: Trainer, fixed_patients: list[int]) -> None:
    started = time.perf_counter()
    row = trainer.train_epoch()
    trainer.epoch += 1
    if not trainer.world.main:
        return  # process 0 validates and writes; the others wait for it in the next collective
    row.update(trainer.validate())
    row = {"epoch": trainer.epoch, **row, "seconds": round(time.perf_counter() - started, 2)}
    row["peak_memory_gb"] = round(peak_memory_gb(trainer.device), 3)
    for name, (opt, _) in trainer.optimizers.items():
        row[f"lr_{name}"] = opt.param_groups[0]["lr"]
    is_best = row["val_loss"] < trainer.best_val or not trainer.model.best_by_validation
    trainer.best_val = min(trainer.best_val, row["val_loss"])
    if trainer.check is not None and _check_epoch(trainer):
        row["val_reprediction"] = score = trainer.check(trainer.model, trainer.device)
        if math.isfinite(score):
            is_best = score > trainer.best_reprediction
            trainer.best_reprediction = max(trainer.best_reprediction, score)
        row["seconds"] = round(time.perf_counter() - started, 2)  # the check is part of the epoch's cost
    if trainer.check is not None and math.isfinite(trainer.best_reprediction) and "val_reprediction" not in row:
        # between checks the best stays the best-scoring checked epoch (a provisional one before the first)
        is_best = not (trainer.run_dir / "checkpoints" / "best.pt").exists()
    trainer.history.append(row)
    write_metrics(trainer.run_dir / "metrics.csv", trainer.history)
    grid = trainer.sample_grid(fixed_patients)
    atomic_write(trainer.run_dir / "samples" / f"epoch_{trainer.epoch:03d}.png",
                 lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
    trainer.save(is_best)


def _check_epoch(trainer: Trainer) -> bool:
    """The epochs of the held-out faithfulness check: every ckpt_every, and the last."""
    return trainer.epoch % trainer.params["ckpt_every"] == 0 or trainer.epoch == trainer.params["epochs"]
