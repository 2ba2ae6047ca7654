"""How fast and how big: training throughput and FLOP utilisation, data, generation, memory.

``python -m rna2histo bench`` measures, in one run on one device:

- a reference rate R in FLOP/s: a square matmul (fp32 on a CPU, bf16 on CUDA), median of repeats,
  measured again right after each model's steps, so that a machine whose load drifts during the
  run slows the step and its reference alike;
- per model and preset, the training step exactly as the loop runs it (the model's own
  ``training_step`` through a real `rna2histo.train.Step`, then ``on_step_end``, with the loop's
  default fast path, `rna2histo.fastpath`: on CUDA channels_last, fused optimisers and cuDNN
  benchmark mode, on a CPU fused Adam alone) on a fixed random batch: images/s and the model FLOP
  utilisation

      MFU = F / t / R,   F = FLOPs of one step, t = median seconds per step,

  with F counted by `torch.utils.flop_counter.FlopCounterMode` over the first full step (every
  forward, backward and optimiser the step runs). It counts matmuls and convolutions, not
  elementwise work, so MFU says how close the step comes to the device's matmul rate;
- the data pipeline (`TileDataset` + `make_loader`, augmented) against the fastest model's appetite;
- generation in ms per image, the synthetic cohort build rate, and how far one epoch over a
  20,000-tile 128 px cohort raises the peak RSS above the RSS at its start, iterated in a fresh
  interpreter so that earlier allocations of this process do not hide it. The tiles stay
  memory-mapped: what the epoch adds are the file's pages, which the kernel can reclaim.

Ratios (MFU, pipeline / model) come from one run, so a busy machine lowers the absolute numbers
more than the ratios. `measure_book` times the whole book (``make bench-demo``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .cohort import CohortWriter, is_cohort, load_cohort, split_patients
from .data import TileDataset, make_loader
from .errors import UserError
from .fastpath import FastPath, fast_path
from .models import MODELS, STUDY_GENES, build_model
from .paths import DATA, PARAMS, ROOT
from .rna import fit_on_training
from .runs import write_json
from .train import Step

DEVICES = ("cpu", "cuda")
# The CPU targets, reported (never asserted): thesis training steps at batch 16 use at
# least 30% of the matmul rate, the data pipeline feeds 5x the fastest model, an epoch stays small.
TARGET_MFU, TARGET_PIPELINE_RATIO, TARGET_EPOCH_GB = 0.30, 5.0, 1.5
TARGET_BOOK_S, TARGET_BOOK_GB = 1800.0, 3.0  # `make book --profile demo`: 30 minutes (issue 24), 3 GB
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


# --- measuring -------------------------------------------------------------------------------


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


def random_cohort(out: Path, tiles: int, image_size: int, genes: int, patients: int = 200) -> Path:
    """A cohort of uniform random uint8 tiles and N(8, 2) RNA, written through `CohortWriter`:
    what the loader reads, in seconds (the synthetic renderer makes ~30 tiles/s)."""
    rng = np.random.default_rng(0)
    ids = [f"R{i:04d}" for i in range(patients)]
    owner = np.arange(tiles) * patients // tiles  # tile i -> patient, in blocks
    rna = pd.DataFrame(rng.normal(8, 2, (patients, genes)).astype(np.float32),
                       index=pd.Index(ids, name="patient_id"), columns=[f"G{j}" for j in range(genes)])
    with CohortWriter(out, image_size) as writer:
        for start in range(0, tiles, 1000):  # ~50 MB of tiles at a time at 128 px
            n = min(1000, tiles - start)
            writer.add_tiles(rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8))
        table = pd.DataFrame({"patient_id": [ids[k] for k in owner], "origin": "random",
                              "x": 0, "y": 0})
        return writer.commit(source="random", params={"tiles": tiles, "genes": genes}, rna=rna,
                             tiles_table=table, splits=split_patients(ids, 0))


def epoch_cohort(s: Settings) -> Path:
    """The epoch-memory cohort under `s.cache`, built on first use and kept."""
    out = s.cache / f"epoch-{s.epoch_tiles}-tiles-{s.epoch_image_size}px-{s.epoch_genes}-genes"
    if not is_cohort(out):
        random_cohort(out, s.epoch_tiles, s.epoch_image_size, s.epoch_genes)
    return out


def tile_loader(cohort_dir: Path, batch_size: int, augment: bool, fast: FastPath = FastPath()):
    """Every tile of a cohort, shuffled and (optionally) augmented, as training reads them:
    with `fast`'s workers and pinned memory (`fit`'s defaults: none on a CPU)."""
    cohort = load_cohort(cohort_dir)
    data = TileDataset(cohort, None, fit_on_training(cohort), augment="study" if augment else "none")
    return make_loader(data, batch_size, shuffle=True, seed=0, workers=fast.workers,
                       pin_memory=fast.pin_memory)


def pipeline_rate(cohort_dir: Path, batch_size: int, fast: FastPath = FastPath()) -> float:
    """Images/s of the augmented loader over one pass of a cohort whose pages are cached."""
    loader = tile_loader(cohort_dir, batch_size, augment=True, fast=fast)
    next(iter(loader))  # warm-up: first use of every transform
    started = time.perf_counter()
    n = sum(len(x) for x, _, _ in loader)
    return n / (time.perf_counter() - started)


def cohort_build_rate(patients: int, tiles_per_patient: int, image_size: int, genes: int) -> float:
    """Tiles/s of `build_synthetic`, RNA and writing included, into a temporary folder."""
    from .cohort.synthetic import build_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_synthetic(Path(tmp) / "cohort", patients=patients, tiles_per_patient=tiles_per_patient,
                        image_size=image_size, genes=genes)
        return patients * tiles_per_patient / (time.perf_counter() - started)


def epoch_memory(cohort_dir: Path, batch_size: int, augment: bool) -> dict:
    """Peak RSS of one loader epoch over a cohort, measured in a fresh interpreter (`_epoch_child`)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "epoch.json"
        code = "import sys; from rna2histo.bench import _epoch_child; _epoch_child(*sys.argv[1:])"
        args = [str(cohort_dir), str(batch_size), str(int(augment)), str(out)]
        cmd = [sys.executable, "-c", code, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"epoch-memory subprocess failed:\n{done.stderr[-2000:]}")
        return json.loads(out.read_text())


def _epoch_child(cohort_dir: str, batch_size: str, augment: str, out: str) -> None:
    """In a fresh interpreter: iterate one epoch; write to `out` how far the peak RSS rose (GB)
    above the RSS at its start, and the file-backed and anonymous RSS before and after.

    One intra-op thread: memory is the same, and per-tile ops on a busy CPU run many times
    faster without a second OpenMP thread to wait for.
    """
    torch.set_num_threads(1)
    loader = tile_loader(Path(cohort_dir), int(batch_size), augment=bool(int(augment)))
    # Linux: reset the peak to the current RSS, so that transients of loading the cohort (parquet,
    # normaliser fit) are not taken for the epoch's; elsewhere the earlier peak is the baseline.
    reset = _reset_peak_rss()
    status_before = _proc_status()
    before = status_before["VmRSS"] if reset else _peak_rss_gb()
    started = time.perf_counter()
    n = sum(len(x) for x, _, _ in loader)
    seconds = time.perf_counter() - started
    peak, status = _peak_rss_gb(), _proc_status()
    Path(out).write_text(json.dumps({
        "tiles": n, "seconds": seconds, "images_per_s": n / seconds, "rss_before_gb": before,
        "peak_rss_gb": peak, "increase_gb": peak - before,
        # file-backed pages (libraries; the memory-mapped tiles.npy, reclaimable) vs the heap
        "rss_file_before_gb": status_before.get("RssFile"), "rss_file_after_gb": status.get("RssFile"),
        "rss_anon_before_gb": status_before.get("RssAnon"), "rss_anon_after_gb": status.get("RssAnon"),
    }))


def _peak_rss_gb() -> float:
    """This process's peak RSS: VmHWM, which exec resets. Not ru_maxrss: Linux carries it over
    from the parent's size at fork, so a child of a big process would start at the parent's peak."""
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    return _maxrss_gb(resource.RUSAGE_SELF)


def _maxrss_gb(who: int) -> float:
    """`resource.getrusage(who).ru_maxrss` in GB: kB on Linux, bytes on macOS."""
    return resource.getrusage(who).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / GB


def _reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux 4.0+); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return "VmRSS" in _proc_status()


def _proc_status() -> dict[str, float]:
    """The kB fields of /proc/self/status, in GB (empty where there is no /proc)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.endswith(" kB"))
    return {key: int(value.split()[0]) * 1024 / GB for key, value in fields}


# --- one run ---------------------------------------------------------------------------------


def run(device="cpu", quick=False, settings: Settings | None = None, progress=None) -> dict:
    """Every measurement of the module docstring; `progress(message)` hears what starts."""
    dev = check_device(device)
    s = settings or default_settings(dev, quick)
    say = progress or (lambda message: None)
    started = time.perf_counter()
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(s).items()}
    out = {"device": device_name(dev), "device_type": dev.type, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "quick": s.quick,
           "settings": plain}
    fast = fast_path(dev)  # `fit`'s defaults here: what the training steps and the loader run with
    out["fast_path"] = dataclasses.asdict(fast)
    out["models"] = _training(dev, s, say)
    references = [m["reference_flops_per_s"] for ps in out["models"].values() for m in ps.values()
                  if m["images_per_s"] is not None]
    out["reference_flops_per_s"] = statistics.median(references)
    out.update(_pipeline(s, out["models"], fast, say))
    out["generation_ms_per_image"] = _generation(dev, s, say)
    say("cohort: build_synthetic")
    out["cohort_tiles_per_s"] = cohort_build_rate(*s.cohort)
    say(f"epoch memory: {s.epoch_tiles} tiles at {s.epoch_image_size} px")
    out["epoch"] = epoch_memory(epoch_cohort(s), s.batch_size, s.epoch_augment)
    out["epoch_peak_memory_gb"] = out["epoch"]["increase_gb"]
    out["targets"] = targets(out)
    out["seconds"] = time.perf_counter() - started
    return out


def _training(dev: torch.device, s: Settings, say) -> dict:
    """Every model and preset's step, each with the reference rate measured right after it."""
    models = {}
    for name in s.models:
        models[name] = {}
        for preset in s.shapes:
            if f"training/{preset}" in s.skip:
                models[name][preset] = {"images_per_s": None, "mfu": None, "skipped": _why(s)}
                continue
            say(f"training: {name} {preset}")
            result = measure_training(name, preset, dev, s)
            gc.collect()  # the model and its optimiser state, before the next one is built
            reference = reference_rate(dev, s.reference_size, s.reference_repeats)
            result.update(reference_flops_per_s=reference,
                          mfu=mfu(result["flops_per_step"], result["step_s"], reference))
            models[name][preset] = result
    return models


def _fastest(models: dict) -> tuple[str, str, dict]:
    measured = [(n, p, r) for n, ps in models.items() for p, r in ps.items() if r["images_per_s"]]
    return max(measured, key=lambda item: item[2]["images_per_s"])


def _pipeline(s: Settings, models: dict, fast: FastPath, say) -> dict:
    """The loader at the fastest model's image size and genes, against that model's images/s."""
    name, preset, fastest = _fastest(models)
    say(f"data pipeline: {s.pipeline_tiles} tiles at {fastest['image_size']} px")
    with tempfile.TemporaryDirectory() as tmp:
        cohort = random_cohort(Path(tmp) / "cohort", s.pipeline_tiles, fastest["image_size"],
                               fastest["n_genes"], patients=50)
        rate = pipeline_rate(cohort, s.batch_size, fast)
        with intra_op_threads(1):  # a diagnosis: what the per-tile ops cost without OpenMP fork-joins
            rate_1 = pipeline_rate(cohort, s.batch_size, fast)
    detail = {"image_size": fastest["image_size"], "n_genes": fastest["n_genes"],
              "fastest_model": f"{name} {preset}", "fastest_images_per_s": fastest["images_per_s"],
              "images_per_s_one_thread": rate_1}
    return {"data_pipeline_images_per_s": rate, "data_pipeline_ratio": rate / fastest["images_per_s"],
            "data_pipeline": detail}


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Run the block with `n` torch intra-op threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _generation(dev: torch.device, s: Settings, say) -> dict:
    ms = {}
    for name in s.models:
        if f"generation/{name}" in s.skip:
            ms[name] = None
            continue
        say(f"generation: {name} {s.generation_preset}")
        ms[name] = measure_generation(name, dev, s)
        gc.collect()
    return ms


SKIPPED_WHY = {"quick": "--quick skips thesis steps on a CPU (seconds each); `bench` measures them in ~5 min"}


def _why(s: Settings) -> str:
    return "quick" if s.quick else "settings"


def targets(results: dict) -> list[dict]:
    """The issue's CPU targets with the measured values; met is True, False or None (not measured)."""
    rows = []
    for name, presets in results["models"].items():
        thesis = presets.get("thesis", {})
        row = _target(f"MFU {name} thesis step >= {TARGET_MFU:.2f}", thesis.get("mfu"), TARGET_MFU, True)
        rows.append({**row, "why": SKIPPED_WHY.get(thesis.get("skipped"), thesis.get("skipped"))})
    rows.append(_target(f"data pipeline >= {TARGET_PIPELINE_RATIO:g}x the fastest model",
                        results["data_pipeline_ratio"], TARGET_PIPELINE_RATIO, True, "x"))
    rows.append(_target(f"epoch peak memory <= {TARGET_EPOCH_GB:g} GB", results["epoch_peak_memory_gb"],
                        TARGET_EPOCH_GB, False, " GB"))
    return rows + [{**row, "why": BOOK_WHY} for row in book_targets(None, None)]


BOOK_WHY = "the whole book; `make bench-demo` measures it (tens of minutes on a CPU)"


def book_targets(wall_s: float | None, peak_gb: float | None) -> list[dict]:
    """The targets of `make book` on the demo profile: wall time and peak memory."""
    minutes = None if wall_s is None else wall_s / 60
    return [
        _target(f"make book <= {TARGET_BOOK_S / 60:g} min", minutes, TARGET_BOOK_S / 60, False, " min"),
        _target(f"make book peak memory <= {TARGET_BOOK_GB:g} GB", peak_gb, TARGET_BOOK_GB, False, " GB"),
    ]


def _target(label: str, value, bound: float, higher: bool, unit: str = "") -> dict:
    met = None if value is None else bool(value >= bound if higher else value <= bound)
    return {"target": label, "value": value, "unit": unit, "bound": bound, "met": met}


def write_results(path: Path, results: dict) -> Path:
    """The results as JSON, atomically (a kill leaves an older file whole)."""
    return write_json(path, results)


# --- the whole book (make bench-demo) ---------------------------------------------------------


def measure_command(cmd: list[str], interval_s: float = 0.5) -> dict:
    """Wall time and peak memory of a command and every process it starts, sampled every interval.

    Peak memory is the largest PSS sum over the process tree (pages shared between processes,
    such as torch's libraries in each notebook kernel, count once in all) and, as an upper bound,
    the RSS sum; plus the peak RSS of the largest single process as the kernel accounts it when
    children end (what ``/usr/bin/time -v`` reports; over this interpreter's whole life).
    """
    import psutil  # installed with ipykernel, which the book needs

    started, peak_pss, peak_rss = time.perf_counter(), 0.0, 0.0
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        root = psutil.Process(proc.pid)
        while True:
            pss, rss = _tree_memory(root, psutil)
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            try:
                proc.wait(timeout=interval_s)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    largest = _maxrss_gb(resource.RUSAGE_CHILDREN)
    return {"command": cmd, "returncode": proc.returncode, "wall_s": time.perf_counter() - started,
            "interval_s": interval_s,
            "peak_tree_pss_gb": peak_pss, "peak_tree_rss_gb": peak_rss,
            "largest_process_rss_gb": largest}


def _tree_memory(root, psutil) -> tuple[float, float]:
    """(PSS, RSS) summed over a process and its descendants, in GB; processes that end are skipped."""
    pss = rss = 0
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for proc in tree:
        try:
            info = proc.memory_full_info()  # PSS: each shared page split among its sharers
            pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
        except psutil.Error:
            continue
    return pss / GB, rss / GB


def measure_book(profile: str = "demo") -> dict:
    """`measure_command` over ``python -m rna2histo book --profile PROFILE``, against the targets."""
    if not (PARAMS / profile).is_dir():
        raise UserError(f"no profile {profile!r}: {PARAMS / profile} does not exist")
    from .book import BUILD

    cmd = [sys.executable, "-m", "rna2histo", "book", "--profile", profile]
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    result = measure_command(cmd)
    if result["returncode"] != 0:
        status = result["returncode"]
        raise UserError(f"`{' '.join(cmd[1:])}` failed (exit status {status}); nothing measured")
    result.update(device=device_name(torch.device("cpu")), cpu_count=os.cpu_count(), started=started,
                  commit=_commit(), chapter_seconds=chapter_seconds(BUILD / "executed" / "book"))
    result["targets"] = book_targets(result["wall_s"], result["peak_tree_pss_gb"])
    return result


def _commit() -> str | None:
    """The checkout's git commit (None outside a git checkout): what the measurement ran."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    except OSError:  # no git on this machine
        return None
    return found.stdout.strip() or None


def chapter_seconds(executed: Path) -> dict[str, float]:
    """Seconds per executed chapter: the sum of the cell durations papermill records."""
    out = {}
    for notebook in sorted(executed.glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        durations = (cell.get("metadata", {}).get("papermill", {}).get("duration") for cell in cells)
        out[notebook.stem] = round(sum(d for d in durations if d), 1)
    return out


# --- reports ----------------------------------------------------------------------------------


def format_report(r: dict) -> str:
    """The printed table: header, training, data, generation, cohort, epoch memory, targets."""
    s = r["settings"]
    n, precision = s["reference_size"], "bf16" if r["device_type"] == "cuda" else "fp32"
    header = (
        f"rna2histo bench on {r['device_type']}: {r['device']}; {r['threads']} threads "
        f"({r['cpu_count']} CPUs); torch {r['torch']}" + ("; quick" if r["quick"] else "")
    )
    reference = (
        f"reference: {precision} matmul {n}x{n}, median of {s['reference_repeats']} right after each "
        f"model's steps (column ref); over the run {r['reference_flops_per_s'] / 1e9:,.1f} GFLOP/s"
    )
    return "\n".join([
        header, reference, "", *_training_lines(r), "", *_data_lines(r), "",
        f"total {r['seconds']:.0f} s", "", *_target_lines(r["targets"], "targets (stated for a CPU)"),
    ])


def _training_lines(r: dict) -> list[str]:
    s = r["settings"]
    shapes = "; ".join(f"{p}: {size} px, {genes} genes" for p, (size, genes) in s["shapes"].items())
    title = (
        f"training step at batch {s['batch_size']} ({shapes}): median of the timed steps after "
        f"{1 + s['warmup_steps']} warm-up; FLOPs of one step (forward, backward, every optimiser)"
        f"{_fast_path_note(r)}"
    )
    columns = (
        f"{'model':<10}{'preset':<8}{'images/s':>10}{'ms/step':>10}{'GFLOP/step':>12}"
        f"{'ref GFLOP/s':>13}{'MFU':>7}{'steps':>7}  notes"
    )
    lines = [title, columns]
    for name, presets in r["models"].items():
        for preset, m in presets.items():
            if m["images_per_s"] is None:
                lines.append(f"{name:<10}{preset:<8}  skipped ({m['skipped']})")
                continue
            notes = ", ".join(f"{k} {v}" for k, v in m["notes"].items())
            lines.append(
                f"{name:<10}{preset:<8}{m['images_per_s']:>10.1f}{1000 * m['step_s']:>10.0f}"
                f"{m['flops_per_step'] / 1e9:>12.1f}{m['reference_flops_per_s'] / 1e9:>13.1f}"
                f"{m['mfu']:>7.3f}{m['steps']:>7}  {notes}"
            )
    return lines


def _data_lines(r: dict) -> list[str]:
    s, p, e = r["settings"], r["data_pipeline"], r["epoch"]
    size = s["shapes"][s["generation_preset"]][0]
    skipped = "skipped (quick)" if r["quick"] else "skipped"
    ms = "   ".join(f"{name} {skipped if v is None else f'{v:,.1f}'}"
                   for name, v in r["generation_ms_per_image"].items())
    patients, tiles, cohort_px, cohort_genes = s["cohort"]
    augment = "augmented" if s["epoch_augment"] else "not augmented (quick)"
    pipeline = (
        f"data pipeline (TileDataset + make_loader, augmented, batch {s['batch_size']}, {_loader_note(r)}, "
        f"{p['image_size']} px, {p['n_genes']} genes): {r['data_pipeline_images_per_s']:,.0f} images/s "
        f"= {r['data_pipeline_ratio']:.1f}x the fastest model ({p['fastest_model']}, "
        f"{p['fastest_images_per_s']:.1f} images/s); with 1 intra-op thread "
        f"{p['images_per_s_one_thread']:,.0f} images/s"
    )
    generation = (
        f"generation, ms per image ({s['generation_preset']} preset, {size} px, batch "
        f"{s['generation_batch']}, diffusion {s['ddim_steps']} DDIM steps): {ms}"
    )
    cohort = (
        f"cohort build (build_synthetic, {patients} patients x {tiles} tiles, {cohort_px} px, "
        f"{cohort_genes} genes): {r['cohort_tiles_per_s']:.1f} tiles/s"
    )
    epoch = (
        f"epoch memory ({e['tiles']:,} random tiles at {s['epoch_image_size']} px written by "
        f"CohortWriter, as the synthetic builder is too slow for so many; memory-mapped uint8; "
        f"{augment}; a fresh process with 1 intra-op thread): peak RSS {e['increase_gb']:.2f} GB above "
        f"the RSS at the epoch's start "
        f"(process peak {e['peak_rss_gb']:.2f} GB; before -> after the epoch, file-backed "
        f"{_gb(e['rss_file_before_gb'])} -> {_gb(e['rss_file_after_gb'])}, anonymous "
        f"{_gb(e['rss_anon_before_gb'])} -> {_gb(e['rss_anon_after_gb'])}); "
        f"{e['images_per_s']:,.0f} images/s"
    )
    return [pipeline, generation, cohort, epoch]


def _fast_path_note(r: dict) -> str:
    """The fast path's switches the steps ran with (none on a CPU), for the training title."""
    fast = r.get("fast_path", {})  # absent in results saved before the fast path
    on = [k for k in ("channels_last", "fused", "cudnn_benchmark", "compile") if fast.get(k)]
    return f"; fast path: {', '.join(on)}" if on else ""


def _loader_note(r: dict) -> str:
    fast = r.get("fast_path", {})
    return f"workers {fast.get('workers', 0)}" + (", pinned memory" if fast.get("pin_memory") else "")


def _gb(value) -> str:
    return "?" if value is None else f"{value:.2f} GB"


def _target_lines(rows: list[dict], title: str) -> list[str]:
    lines = [title]
    for row in rows:
        if row["met"] is None:
            verdict, value = "not measured", "-"
        else:
            verdict, value = ("met" if row["met"] else "not met"), f"{row['value']:.2f}{row['unit']}"
        why = f": {row['why']}" if row["met"] is None and row.get("why") else ""
        lines.append(f"  {row['target']:<40}{value:>10}  {verdict}{why}")
    return lines


def format_book_report(r: dict) -> str:
    """Wall time and peak memory of the book run, against its targets."""
    memory = (
        f"  wall time {r['wall_s']:.0f} s; peak memory {r['peak_tree_pss_gb']:.2f} GB (PSS summed "
        f"over the process tree, sampled every {r['interval_s']:g} s; RSS sum "
        f"{r['peak_tree_rss_gb']:.2f} GB; largest single process {r['largest_process_rss_gb']:.2f} GB)"
    )
    command = " ".join(r["command"][1:])
    chapters = "  per chapter (papermill's cell durations): " + ", ".join(
        f"{stem} {seconds:.0f} s" for stem, seconds in r["chapter_seconds"].items())
    header = f"make bench-demo: {command} on {r['device']}; started {r['started']}"
    return "\n".join([header, memory, chapters, *_target_lines(r["targets"], "targets")])
