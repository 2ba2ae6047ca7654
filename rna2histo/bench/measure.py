"""The measuring instruments of `bench`: timing, FLOP counts, the matmul reference rate, and the
training step and generation of each model and preset as the loop runs them."""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from ..models import MODELS, STUDY_GENES, build_model
from ..paths import DATA
from ..training.fastpath import fast_path
from ..training.step import Step

DEVICES = ("cpu", "cuda")


GB = 1e9


@dataclass
class Settings:
    """What one run measures and for how long; `default_settings` picks them per device."""

    quick: bool = False
    models: tuple[str, ...] = tuple(MODELS)
    # preset -> (image_size px, n_genes): small as the demo, thesis as the study (16,383 genes)
    shapes: dict = field(default_factory=lambda: {"small": (64, 2000), "thesis": (128, STUDY_GENES)})
    skip: tuple[str, ...] = ()  # "training/<preset>" or "generation/<model>"
    batch_size: int = 16
    warmup_steps: int = 1  # plain steps after the FLOP-counted first step, before timing
    min_steps: int = 3  # timed steps: at least this many, more while within budget_s
    max_steps: int = 20
    budget_s: float = 10.0
    reference_size: int = 2048  # n of the n x n matmul
    reference_repeats: int = 10
    generation_preset: str = "small"
    generation_batch: int = 16
    ddim_steps: int = 50
    pipeline_tiles: int = 1024
    cohort: tuple[int, int, int, int] = (4, 10, 64, 2000)  # patients, tiles each, px, genes
    epoch_tiles: int = 20_000
    epoch_image_size: int = 128
    epoch_genes: int = STUDY_GENES
    epoch_augment: bool = True
    cache: Path = DATA / "bench"  # the epoch cohort, built once (data/ is git-ignored)


def default_settings(device: torch.device, quick: bool = False) -> Settings:
    """Full: every model and preset. Quick (under a minute on 2 CPU cores): one timed step, and on
    a CPU no thesis training (tens of seconds per step each) and small generation batches."""
    s = Settings(quick=quick)
    if device.type == "cuda":
        s = dataclasses.replace(s, reference_size=8192, generation_preset="thesis")
    if not quick:
        return s
    s = dataclasses.replace(s, warmup_steps=0, min_steps=1, max_steps=3, budget_s=1.0,
                            reference_repeats=3, pipeline_tiles=256, cohort=(4, 4, 64, 2000),
                            epoch_augment=False)
    if device.type == "cpu":
        s = dataclasses.replace(s, skip=("training/thesis",), generation_batch=2)
    return s


def check_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device is available on this machine; use --device cpu")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, min_calls: int, max_calls: int, budget_s: float) -> list[float]:
    """Seconds of successive calls of `fn`: at least `min_calls`, more until `budget_s` has passed."""
    times, deadline = [], time.perf_counter() + budget_s
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def count_flops(fn) -> int:
    """FLOPs of one call of `fn` (matmuls and convolutions, forward and backward; 2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops_per_step: float, step_s: float, reference_flops_per_s: float) -> float:
    """Model FLOP utilisation: achieved FLOP/s of a step over the reference rate."""
    return flops_per_step / step_s / reference_flops_per_s


def reference_rate(device: torch.device, size: int, repeats: int) -> float:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs): fp32 on a CPU, bf16 on CUDA; median of `repeats`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def matmul():
        a @ b
        sync(device)

    matmul()  # warm-up: allocation, kernel choice
    return 2 * size**3 / statistics.median(time_calls(matmul, repeats, repeats, 0.0))


def _model(name: str, preset: str, image_size: int, n_genes: int, device: torch.device):
    torch.manual_seed(0)
    model = build_model(name, preset, n_genes=n_genes, image_size=image_size)
    model.initialise()  # the loop's initialisation: weight values can change CPU speed (denormals)
    return model.to(device)


def random_batch(batch_size: int, image_size: int, n_genes: int, device: torch.device):
    """(x, c, p) as the loader gives it: x (B, 3, S, S) in [-1, 1], c (B, G) ~ N(0, 1), p (B,)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=g) * 2 - 1
    c = torch.randn(batch_size, n_genes, generator=g)
    return [t.to(device) for t in (x, c, torch.zeros(batch_size, dtype=torch.long))]


def measure_training(name: str, preset: str, device: torch.device, s: Settings) -> dict:
    """One model's training step at batch `s.batch_size`: FLOPs, median seconds, images/s."""
    image_size, n_genes = s.shapes[preset]
    fast = fast_path(device)  # `fit`'s defaults on this device
    model = fast.prepare(_model(name, preset, image_size, n_genes, device).train())
    step = Step(model.configure_optimizers(epochs=1, fused=fast.fused), device)  # amp: bf16 on CUDA
    batch = fast.to_device(random_batch(s.batch_size, image_size, n_genes, device), device)

    def one_step():  # what `Trainer.train_epoch` does per batch
        model.training_step(batch, step)
        model.on_step_end()
        sync(device)

    with fast.backends():
        flops = count_flops(one_step)  # the first step: counts, and warms up
        for _ in range(s.warmup_steps):
            one_step()
        times = time_calls(one_step, s.min_steps, s.max_steps, s.budget_s)
    step_s = statistics.median(times)
    return {"images_per_s": s.batch_size / step_s, "step_s": step_s, "flops_per_step": flops,
            "steps": len(times), "image_size": image_size, "n_genes": n_genes,
            "notes": model.run_notes()}


def measure_generation(name: str, device: torch.device, s: Settings) -> float:
    """Milliseconds per image of ``sample`` at batch `s.generation_batch` (diffusion: DDIM steps)."""
    image_size, n_genes = s.shapes[s.generation_preset]
    model = _model(name, s.generation_preset, image_size, n_genes, device).eval()
    c = torch.randn(s.generation_batch, n_genes, generator=torch.Generator().manual_seed(0)).to(device)
    generator = torch.Generator(device).manual_seed(0)
    is_diffusion = hasattr(model.cfg, "sample_steps")

    def generate(steps: int):
        model.sample(c, generator=generator, **({"steps": steps} if is_diffusion else {}))
        sync(device)

    generate(1)  # warm-up at this batch shape: one network pass
    times = time_calls(lambda: generate(s.ddim_steps), 1, 5, s.budget_s / 2)
    return 1000 * statistics.median(times) / s.generation_batch


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Run the block with `n` torch intra-op threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
